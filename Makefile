# Two entry points for a fresh machine: `make demo` and `make test`. Each builds .venv by itself.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast bench device-kit lock clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11) on PATH, or run: make PYTHON=python3 ..."; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"

# Runtime set only (what the demo and production need), from the pinned lock.
$(VENV)/.runtime: requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

# Runtime plus the test-only peers (captum, grad-cam, fairlearn, pytest, ...), from the pinned lock.
$(VENV)/.dev: requirements-dev.lock $(VENV)/.runtime
	$(BIN)/python -m pip install -q -r requirements-dev.lock
	touch $@

demo: $(VENV)/.runtime
	$(BIN)/python -m audit_tasks demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(VENV)/.dev
	$(BIN)/python bench/run_all.py

# The pure-Python packages the GPU machine lacks, to carry there for bench/device_check.sh.
device-kit: $(VENV)/.dev
	$(BIN)/python bench/device_kit.py .devpy

# Re-resolve the pins from requirements*.txt (needs the package registry).
lock:
	rm -rf /tmp/audit-lock-venv && $(PYTHON) -m venv /tmp/audit-lock-venv
	/tmp/audit-lock-venv/bin/pip install -q -r requirements.txt
	( echo "# Fully resolved runtime set. Regenerate with make lock."; /tmp/audit-lock-venv/bin/pip freeze ) > requirements.lock
	/tmp/audit-lock-venv/bin/pip install -q -r requirements-dev.txt
	( echo "# Fully resolved runtime + test set. Regenerate with make lock."; /tmp/audit-lock-venv/bin/pip freeze ) > requirements-dev.lock

clean:
	rm -rf $(VENV) demo_data audit_reports .pytest_cache

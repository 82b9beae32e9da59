# Two entry points for a fresh machine: `make demo` and `make test`. Each builds .venv by itself.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast distributed lint wheel-check bench device-kit lock clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11) on PATH, or run: make PYTHON=python3 ..."; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"

# Runtime set only (what the demo and production need), from the pinned lock, then the package itself
# (editable, so its entry points register the Airflow plugin and the [audit] provider config).
# --no-deps on purpose: the lock is the complete resolved set, so the package must need nothing beyond it,
# and `pip check` proves pyproject.toml's declared ranges are all met by it (a dependency added to
# pyproject.toml but not to the lock fails here, instead of being fetched unpinned). setuptools leaves
# audit_tasks.egg-info in the checkout; it goes, because with the checkout on sys.path (python -m from
# here, the demo's PYTHONPATH) Airflow would see the distribution twice and report the plugin twice.
$(VENV)/.runtime: requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	rm -rf audit_tasks.egg-info
	$(BIN)/python -m pip check
	touch $@

# Runtime plus the test-only peers (captum, grad-cam, fairlearn, pytest, ruff, mypy, ...), from the pinned lock.
$(VENV)/.dev: requirements-dev.lock $(VENV)/.runtime
	$(BIN)/python -m pip install -q -r requirements-dev.lock
	$(BIN)/python -m pip check
	touch $@

demo: $(VENV)/.runtime
	$(BIN)/python -m audit_tasks demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m "not slow"

# The audit on a real CeleryExecutor cluster made of local processes (Postgres, Redis, api-server, scheduler,
# dag-processor, a default and a gpu worker; tests/cluster.py): the fault tests, then the load benchmark.
# Installs Postgres and Redis with apt-get when they are missing and it may (root); skips where it cannot.
distributed: $(VENV)/.dev
	$(BIN)/python -m pytest -q -s -m distributed
	$(BIN)/python bench/distributed.py

# ruff (lint + format check) and mypy, configured in pyproject.toml; runs all three and fails if any does.
# The first step of .ci/run.
lint: $(VENV)/.dev
	@status=0; \
	$(BIN)/ruff check . || status=1; \
	$(BIN)/ruff format --check . || status=1; \
	$(BIN)/mypy audit_tasks audit_airflow || status=1; \
	exit $$status

# The package as users get it: a wheel in a fresh virtualenv with only its declared dependencies
# (pinned by requirements.lock), checked from outside the checkout. Also a step of .ci/run (after lint).
wheel-check:
	.ci/run wheel-check

bench: $(VENV)/.dev
	$(BIN)/python bench/run_all.py

# The pure-Python packages the GPU machine lacks, to carry there for bench/device_check.sh.
device-kit: $(VENV)/.dev
	$(BIN)/python bench/device_kit.py .devpy

# Re-resolve the pins from requirements*.txt, i.e. pyproject.toml's dependencies at the tested versions of
# the big pieces (needs the package registry). The package itself is left out of the locks.
lock:
	rm -rf /tmp/audit-lock-venv && $(PYTHON) -m venv /tmp/audit-lock-venv
	/tmp/audit-lock-venv/bin/pip install -q -r requirements.txt
	( echo "# Fully resolved runtime set. Regenerate with make lock."; \
	  /tmp/audit-lock-venv/bin/pip freeze --exclude audit-tasks ) > requirements.lock
	/tmp/audit-lock-venv/bin/pip install -q -r requirements-dev.txt
	( echo "# Fully resolved runtime + test set. Regenerate with make lock."; \
	  /tmp/audit-lock-venv/bin/pip freeze --exclude audit-tasks ) > requirements-dev.lock
	rm -rf audit_tasks.egg-info build

clean:
	rm -rf $(VENV) demo_data audit_reports .pytest_cache

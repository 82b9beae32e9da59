"""Headless Chromium for report tests: find (or once install) Debian's chromium, screenshot, dump the DOM.

Console messages come from Chromium's own stderr log (`--enable-logging=stderr --v=0` prints every
console message, uncaught exception and CSP violation as a `:CONSOLE` line), so no DevTools client is
needed. When chromium is missing and cannot be installed, the calling test is skipped with the reason.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

DEBIAN_CHROMIUM = "/usr/bin/chromium"
_CANDIDATES = (DEBIAN_CHROMIUM, "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
)
_CONSOLE_LINE = re.compile(r":CONSOLE[:(]")


def _find() -> str | None:
    for name in _CANDIDATES:
        found = shutil.which(name) if not os.path.isabs(name) else (name if os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


@functools.lru_cache(maxsize=1)
def _install_once() -> str:
    """Try `apt-get update && apt-get install -y chromium` once per test session; returns what happened."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not root, so chromium cannot be installed with apt-get"
    if shutil.which("apt-get") is None:
        return "apt-get is not available on this system"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(cmd)} failed: {exc}"
        if done.returncode != 0:
            return f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-300:]}"
    return "installed"


def chromium_or_skip() -> str:
    """The chromium binary; installs it once when missing (as root), else skips the test with the reason."""
    found = _find()
    if found:
        return found
    outcome = _install_once()
    found = _find()
    if found:
        return found
    pytest.skip(
        f"headless chromium is not installed and could not be installed ({outcome}); "
        f"install Debian's chromium (apt-get install -y chromium) to run browser tests"
    )


@dataclass(frozen=True)
class BrowserRun:
    """One chromium invocation: exit status, stdout (e.g. the dumped DOM), stderr (the log)."""

    returncode: int
    stdout: str
    stderr: str

    def console_messages(self) -> list[str]:
        """Every console line Chromium logged: errors, uncaught exceptions, CSP violations, console.* calls."""
        return [line for line in self.stderr.splitlines() if _CONSOLE_LINE.search(line)]


def run_chromium(chromium: str, page: Path, tmp: Path, *extra: str, timeout: float = 120) -> BrowserRun:
    """Open a local page with the test flags and `extra`; a fresh profile under `tmp`."""
    profile = tmp / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    cmd = [chromium, *_FLAGS, f"--user-data-dir={profile}", *extra, Path(page).resolve().as_uri()]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, env={**os.environ, "HOME": str(tmp)}
    )
    return BrowserRun(done.returncode, done.stdout, done.stderr)


def screenshot(
    chromium: str, page: Path, out_png: Path, tmp: Path, *, size: tuple[int, int] = (1280, 2000)
) -> BrowserRun:
    return run_chromium(chromium, page, tmp, f"--screenshot={out_png}", f"--window-size={size[0]},{size[1]}")


def dump_dom(chromium: str, page: Path, tmp: Path) -> BrowserRun:
    return run_chromium(chromium, page, tmp, "--dump-dom")

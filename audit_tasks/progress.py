"""Progress on stderr: a redrawn bar on a terminal, plain log lines (every ~10%) otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("audit_tasks")


class Progress:
    """Callable `(done, total)` reporter handed to long loops; cheap enough to call once per batch."""

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = max(int(total), 0)
        self.stream = stream if stream is not None else sys.stderr
        self._interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_decile = -1
        self._started = time.monotonic()

    def __call__(self, done: int, total: int | None = None) -> None:
        total = self.total if total is None else max(int(total), 0)
        fraction = 1.0 if total == 0 else min(done / total, 1.0)
        elapsed = time.monotonic() - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        if self._interactive:
            width = 30
            filled = int(round(fraction * width))
            bar = "#" * filled + "-" * (width - filled)
            end = "\n" if done >= total else ""
            self.stream.write(f"\r{self.label} [{bar}] {done}/{total} ({rate:.1f}/s){end}")
            self.stream.flush()
            return
        decile = int(fraction * 10)
        if decile > self._last_decile:
            self._last_decile = decile
            log.info("%s: %d/%d (%.0f%%, %.1f/s)", self.label, done, total, fraction * 100, rate)

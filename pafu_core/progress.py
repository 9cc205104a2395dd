"""A dependency-free progress bar for long CLI work (stderr; silent when ``enabled`` is False)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool = True, stream=None):
        self.total, self.desc, self.enabled = max(1, total), desc, enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self.t0 = time.perf_counter()
        self.postfix = ""
        self._last_draw = 0.0
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.done += n
        if postfix is not None:
            self.postfix = postfix
        if not self.enabled:
            return
        now = time.perf_counter()
        finished = self.done >= self.total
        # redraw at most 5x a second on a terminal, every ~10% into a log file
        if not finished and (now - self._last_draw < (0.2 if self._tty else 30.0)
                             and (self._tty or self.done % max(1, self.total // 10))):
            return
        self._last_draw = now
        elapsed = now - self.t0
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        filled = int(30 * self.done / self.total)
        lead = "\r" if self._tty else ""
        self.stream.write(f"{lead}{self.desc}: [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} "
                          f"{elapsed:.0f}s<{eta:.0f}s {self.postfix}")
        if finished or not self._tty:
            self.stream.write("\n")
        self.stream.flush()

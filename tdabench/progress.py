"""Progress bars on a terminal, plain log lines otherwise."""
from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Optional

log = logging.getLogger("tdabench")


#: Updates closer together than this are one burst: the results of one chunk of models, arriving at once.
BURST_SECONDS = 0.05


class Progress:
    """Counts finished units of work; a tqdm bar when stderr is a terminal, else a log line about
    every 10 % (and at the end) with the rate and the time left.  Units that finish together (a chunk of
    models trained at once) are reported as the one step they are: a line is written when a burst of
    updates has ended, never for counts inside it."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self.start = self._last = time.perf_counter()
        self._bar = None
        self._next_log = max(1, total // 10)
        self._pending = False
        if sys.stderr.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False)

    def update(self, n: int = 1) -> None:
        now = time.perf_counter()
        if self._pending and now - self._last > BURST_SECONDS:   # the burst that crossed a 10 % step has ended
            self._emit(self._last)
        self.done += n
        self._last = now
        if self._bar is not None:
            self._bar.update(n)
        elif self.done == self.total:
            self._emit(now)
        elif self.done >= self._next_log:
            self._pending = True

    def _emit(self, at: float) -> None:
        elapsed = at - self.start
        rate = self.done / elapsed if elapsed > 0 else float("inf")
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        log.info("%s: %d/%d (%.2f/s, %.0f s left)", self.desc, self.done, self.total, rate, left)
        self._next_log = self.done + max(1, self.total // 10)
        self._pending = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        if self._bar is not None:
            self._bar.close()

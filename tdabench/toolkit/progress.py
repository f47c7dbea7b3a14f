"""Progress bars on a terminal, plain log lines otherwise."""
from __future__ import annotations

import logging
import sys
import threading
import time
from types import TracebackType
from typing import Optional

log = logging.getLogger("tdabench")


#: Updates closer together than this are one burst: the results of one chunk of models, arriving at once.
BURST_SECONDS = 0.05


class Progress:
    """Counts finished units of work; a tqdm bar when stderr is a terminal, else a log line about
    every 10 % (and at the end) with the rate and the time left.  Units that finish together (a chunk of
    models trained at once) are reported as the one step they are: the line for a burst of updates is
    written once it has ended (no update for ``BURST_SECONDS``, by a timer), never for counts inside it."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self.start = self._last = time.perf_counter()
        self._bar = None
        self._next_log = max(1, total // 10)
        self._lock = threading.Lock()
        self._timer: Optional[threading.Timer] = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False)

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            self._last = time.perf_counter()
            if self._bar is not None:
                self._bar.update(n)
            elif self.done == self.total:
                self._emit(self._last)
            elif self.done >= self._next_log and self._timer is None:
                self._arm(BURST_SECONDS)

    def _arm(self, seconds: float) -> None:
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        """The timer: once the burst has gone quiet, write the line for where it ended."""
        with self._lock:
            self._timer = None
            quiet = time.perf_counter() - self._last
            if quiet < BURST_SECONDS:                      # still arriving: look again when it may have ended
                self._arm(BURST_SECONDS - quiet)
            elif self._next_log <= self.done < self.total:
                self._emit(self._last)

    def _emit(self, at: float) -> None:
        elapsed = at - self.start
        rate = self.done / elapsed if elapsed > 0 else float("inf")
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        log.info("%s: %d/%d (%.2f/s, %.0f s left)", self.desc, self.done, self.total, rate, left)
        self._next_log = self.done + max(1, self.total // 10)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if self._bar is not None:
            self._bar.close()

"""Wall-clock time and peak memory of one stage of work (the one shared timing implementation)."""
from __future__ import annotations

import ctypes
import gc
import re
import resource
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Optional

import torch


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark of this process (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _status_mb(field: str) -> Optional[float]:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in MB; None where the kernel does not say."""
    try:
        with open("/proc/self/status") as fh:
            match = re.search(rf"{field}:\s+(\d+) kB", fh.read())
        return int(match.group(1)) / 1024 if match else None
    except OSError:
        return None


def _peak_rss_mb() -> float:
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def release_freed_memory() -> None:
    """Collect garbage and hand the C allocator's free pages back to the kernel (glibc's ``malloc_trim``),
    so that what an earlier stage of this process freed is no longer resident when the next one is
    measured; where there is no glibc, the garbage is collected only."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def machine_memory() -> int:
    """Bytes of physical memory of this machine (``MemTotal``; 0 where the kernel does not say)."""
    try:
        with open("/proc/meminfo") as fh:
            return int(next(line for line in fh if line.startswith("MemTotal")).split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        return 0


@dataclass
class Usage:
    """What one stage cost: seconds, peak RSS of this process (MB), CUDA peak (MB) or None, and the RSS the
    stage began from (MB; its baseline: what the process held before, the data and model included)."""

    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    peak_cuda_mb: Optional[float] = None
    start_rss_mb: Optional[float] = None


class Meter:
    """``with Meter(device) as m: ...`` then ``m.usage``.  Peak RSS is the high-water mark during
    the block where the kernel lets it be reset (Linux), else the process lifetime peak."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.usage = Usage()

    def __enter__(self) -> "Meter":
        release_freed_memory()      # what an earlier stage freed is not this stage's peak
        _reset_peak_rss()
        self.usage.start_rss_mb = _status_mb("VmRSS")   # after the reset: the peak is never below it
        if self.cuda:   # the run's device, not whichever is current
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.usage.peak_cuda_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        self.usage.seconds = time.perf_counter() - self._start
        self.usage.peak_rss_mb = _peak_rss_mb()

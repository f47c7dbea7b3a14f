"""``toolkit/meter.py``: a stage's peak memory is measured from where the stage began, and what an earlier
stage of the same process left behind as garbage is released first, not charged to the stage."""
from __future__ import annotations

import gc

import pytest
import torch

from tdabench.toolkit.meter import Meter, _status_mb

MB = 2**20


@pytest.mark.skipif(_status_mb("VmRSS") is None, reason="needs /proc/self/status (Linux)")
def test_garbage_an_earlier_stage_left_in_a_reference_cycle_is_not_the_next_stages_peak():
    class Holder:
        pass

    gc.disable()                                   # so that only the meter can collect the cycle
    try:
        held = Holder()
        held.me, held.buffer = held, torch.ones(300 * MB // 4)   # 300 MB, touched
        del held                                   # unreachable, still resident until collected
        before = _status_mb("VmRSS")
        with Meter() as meter:
            torch.ones(20 * MB // 4).sum()         # the stage's own work: 20 MB
    finally:
        gc.enable()
    usage = meter.usage
    assert usage.start_rss_mb is not None and usage.start_rss_mb < before - 250   # the cycle was released
    assert usage.peak_rss_mb - usage.start_rss_mb < 100                         # the stage's 20 MB, not 300
    assert usage.peak_rss_mb < before                                           # the old peak is not reported


def test_the_baseline_is_where_the_stage_began():
    with Meter() as meter:
        kept = torch.ones(50 * MB // 4)            # resident at the end of the stage
    usage = meter.usage
    assert usage.start_rss_mb is not None and usage.peak_rss_mb >= usage.start_rss_mb + 45
    del kept

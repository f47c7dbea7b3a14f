"""Where the plan traces and how it extrapolates: the multilinear fit against closed forms, the loop
counts it varies, and a BIF plan traced at a few SGLD steps against the trace of every step."""
from __future__ import annotations

import itertools

import torch

from tdabench.plan import costplan
from tdabench.plan.costplan import trace
from tdabench.engine.groundtruth import GroundTruthConfig
from tdabench.plan.plansizes import LOOP_LOW, loop_corners, loops, multilinear
from tdabench.engine.spec import make_method, make_task


def test_multilinear_is_exact_on_a_multilinear_cost():
    """BIF's FLOPs have the form a + b·n + c·C·(B + T) + d·C·T·n: traced at two values of each, the
    fit gives the value at any size."""
    cost = lambda n, c, b, t: 7 + 3 * n + 5 * c * (b + t) + 2 * c * t * n   # noqa: E731
    values = {k: float(cost(*k)) for k in itertools.product((10, 20), (2, 3), (2, 3), (2, 3))}
    for target in ((1000, 4, 50, 500), (20, 3, 3, 3), (4096, 8, 0 + 3, 300)):
        assert multilinear(values, target) == cost(*target)


def test_multilinear_never_shrinks_and_holds_a_coordinate_traced_once():
    values = {(10, 1): 100.0, (20, 1): 90.0}                # a cost falling with the rows (noise)
    assert multilinear(values, (1000, 1)) == 100.0          # slope clamped at 0, not below the traced
    assert multilinear({(10, 5): 4.0, (20, 5): 6.0}, (30, 50)) == 8.0   # the second coordinate held


def test_loops_are_the_iteration_counts_above_the_traced_ones():
    task = make_task("digits", {}, torch.device("cpu"))
    bif = make_method("bif", task, {"chains": "4", "draws": "100", "burn_in": "0", "thin": "1"})
    assert loops(bif.config) == {"chains": 4, "draws": 100}     # burn-in 0 and thin 1 are traced as they are
    corners = loop_corners(bif.config)
    assert len(corners) == 4 and corners[0] == {"chains": LOOP_LOW, "draws": LOOP_LOW}
    assert loops(make_method("gradsim", task, {}).config) == {}


def test_bif_traced_at_a_few_steps_agrees_with_every_step(monkeypatch):
    """The plan of a BIF run from 2–3 chains × 2–3 draws against the trace of all 4 × 12 (+ burn-in):
    FLOPs within 1 %, the peak within −5 %/+30 % (measured: FLOPs equal, peak 0.986×)."""
    make = lambda d: make_task("digits", {"n_train": "200", "n_query": "50"}, d)   # noqa: E731
    bif = make_method("bif", make(torch.device("cpu")), {"chains": "4", "draws": "12", "burn_in": "5"})
    small = next(s for s in trace(make, [bif], GroundTruthConfig(), "cpu").stages if s.stage == "bif score")
    monkeypatch.setattr(costplan, "loops", lambda config: {})
    full = next(s for s in trace(make, [bif], GroundTruthConfig(), "cpu", max_ops=0).stages if s.stage == "bif score")
    assert "of 12 draws" in small.note and "of 4 chains" in small.note and full.note == ""
    assert abs(small.flops - full.flops) <= 0.01 * full.flops, (small.flops, full.flops)
    assert 0.95 * full.peak_bytes <= small.peak_bytes <= 1.3 * full.peak_bytes, (small.peak_bytes, full.peak_bytes)


def test_peak_fit_leaves_out_products_of_three_loops():
    """Memory stores at most chains × draws of anything: with ``loop_order=2`` a pairwise cost is
    still exact, and a third-order difference (rounding at a few iterations) is not multiplied up by
    the product of three long steps, which is what the full fit does."""
    peak = lambda c, t, b: 1000 + 10 * c * t + 3 * b   # noqa: E731
    values = {(1, 1, *k): float(peak(*k)) for k in itertools.product((2, 3), (2, 3), (2, 3))}
    target = (1, 1, 4, 100, 50)
    assert multilinear(values, target, loop_order=2) == peak(4, 100, 50)
    values[(1, 1, 3, 3, 3)] += 512                      # one allocator block more at the largest corner
    steps = (4 - 3) * (100 - 3) * (50 - 3)
    assert multilinear(values, target) - multilinear(values, target, loop_order=2) == 512 * steps

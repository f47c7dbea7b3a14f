"""The sparse JL projection: its structure, inner products of real gradients within the JL bound
(next to the dense Gaussian projection), and TRAK's LDS with it on digits against the dense one."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import make_context
from tdabench.cli.main import main
from tdabench.toolkit.grads import Projector, per_example_grads, select_params
from tdabench.toolkit.sparse_projection import SparseProjector
from tdabench.tasks.digits import Digits, DigitsConfig


def test_each_coordinate_adds_plus_or_minus_one_over_root_nnz_to_one_output_per_block():
    proj = SparseProjector(1000, 64, seed=5, nnz=4)
    dense = proj.matrix_t.to_dense().T                                   # shape: [d, k]
    assert torch.equal((dense != 0).sum(1), torch.full((1000,), 4))
    for block in range(4):                                               # one nonzero in each block of 16 outputs
        assert torch.equal((dense[:, 16 * block : 16 * (block + 1)] != 0).sum(1), torch.ones(1000, dtype=torch.long))
    assert torch.allclose(dense[dense != 0].abs(), torch.tensor(0.5))
    torch.testing.assert_close(SparseProjector(1000, 64, seed=5, nnz=4).matrix_t.to_dense(), proj.matrix_t.to_dense())
    g = torch.randn(3, 1000)
    torch.testing.assert_close(proj(g), g @ dense)


@pytest.fixture(scope="module")
def digit_gradients(tmp_path_factory) -> torch.Tensor:
    task = Digits(DigitsConfig())
    ctx = make_context(task, tmp_path_factory.mktemp("jl"))
    data = tuple(t[:80] for t in ctx.train_data)
    return per_example_grads(ctx.model, task.loss, data, select_params(ctx.model))   # shape: [80, 2410]


@pytest.mark.parametrize("kind", ["dense", "sparse-1", "sparse-2", "sparse-4"])
def test_inner_products_of_real_gradients_stay_within_the_jl_bound(digit_gradients, kind):
    """⟨Pg, Ph⟩ − ⟨g, h⟩ has standard deviation at most √(2/k)·|g||h| for a JL projection; over 3,240
    pairs none may be 5 of those away, and the mean relative error must be near 0 (unbiased)."""
    g, k = digit_gradients, 512
    proj = Projector(g.shape[1], k, 0, torch.device("cpu")) if kind == "dense" else \
        SparseProjector(g.shape[1], k, 0, nnz=int(kind.split("-")[1]))
    p = proj(g)
    norms = g.norm(dim=1)
    rel = ((p @ p.T) - (g @ g.T)) / torch.outer(norms, norms)
    pairs = rel[torch.triu_indices(80, 80)[0], torch.triu_indices(80, 80)[1]]
    assert pairs.abs().max() < 5 * math.sqrt(2 / k)
    assert pairs.mean().abs() < 0.01


def test_trak_with_the_sparse_projection_scores_digits_as_well_as_the_dense_one(tmp_path, capsys):
    """Same ensemble and ground truth; the sparse projection may not cost more than one SE of LDS."""
    lds = {}
    for projector in ("dense", "sparse"):
        assert main(["run", "--task", "digits", "--method", "trak", "--seeds", "3", "--results-dir", str(tmp_path),
                     "--set", "gt.num_subsets=60", "--set", f"trak.projector={projector}", "--set", "trak.proj_dim=512",
                     "--json"]) == 0
        row = json.loads(capsys.readouterr().out)[0]
        lds[projector] = (row["mean"], row["se"])
    (dense, se), (sparse, _) = lds["dense"], lds["sparse"]
    assert dense > 0.1 and sparse >= dense - se, lds

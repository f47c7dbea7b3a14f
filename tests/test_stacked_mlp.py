"""The hand-written passes of stacked MLP classifiers against autograd, and the generic vmap path
(``batched.train_many_adam``, which plug-in tasks use) against the one-model retrain."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tdabench.toolkit.batched import stack_models, train_many_adam
from tdabench.toolkit.retrain import train_and_measure
from tdabench.toolkit import batched, stacked_mlp
from tdabench.toolkit.stacked_mlp import cross_entropy_grads, group_size, mlp_layers, train_many_mlp_adam
from tdabench.tasks.digits import Digits, DigitsConfig


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)   # three Linear layers: one without a bias, two products in a row without a ReLU
    return nn.Sequential(nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 5, bias=False), nn.Linear(5, 4)).double()


def test_hand_written_gradients_equal_autograd_for_every_model():
    models = [_mlp(s) for s in range(3)]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 9, 7, generator=gen, dtype=torch.float64)               # shape: [M, B, in]
    y = torch.randint(0, 4, (3, 9), generator=gen)
    keep = torch.ones(3, 9, dtype=torch.float64)
    keep[1, 5:] = 0                                                              # padding: a shorter last batch
    keep[2, 1:] = 0
    params = {n: p.detach() for n, p in stack_models(models).items()}
    grads = cross_entropy_grads(mlp_layers(models[0]), params, x, y, batched.mean_weights(torch.where(keep > 0, 0, -1), torch.float64))
    for m, model in enumerate(models):
        rows = keep[m].bool()
        loss = F.cross_entropy(model(x[m][rows]), y[m][rows])                   # the one-model mean loss
        expected = torch.autograd.grad(loss, list(model.parameters()))
        for (name, _), g in zip(model.named_parameters(), expected):
            torch.testing.assert_close(grads[name][m], g, atol=1e-12, rtol=1e-10, msg=name)


@pytest.mark.parametrize("model, bad", [(nn.Linear(3, 2), "nn.Sequential"),
                                        (nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2)), "Tanh"),
                                        (nn.Sequential(nn.Linear(3, 2), nn.ReLU()), "end in a Linear"),
                                        (nn.Sequential(nn.ReLU(), nn.Linear(3, 2)), "ReLU")])
def test_anything_but_an_mlp_of_linear_and_relu_is_refused(model, bad):
    with pytest.raises(TypeError, match=bad):
        mlp_layers(model)


def test_the_generic_vmap_path_and_the_hand_written_one_agree_with_the_one_model_retrain():
    """``train_many_adam`` (the task's own loss under vmap) and ``train_many_mlp_adam`` (digits' path)
    each give the one-model retrain's measurements for subsets of four sizes in one batch."""
    task = Digits(DigitsConfig(n_train=200, n_query=30, epochs=2, batch_size=16))
    gen = torch.Generator().manual_seed(3)
    masks = torch.stack([torch.rand(200, generator=gen) < a for a in (0.05, 0.5, 0.95, 0.3)])
    seeds = [21, 22, 23, 24]
    one = torch.stack([train_and_measure(task, m, s) for m, s in zip(masks, seeds)])
    c = task.config
    generic = train_many_adam(task, masks, seeds, c.epochs, c.batch_size, c.lr, c.weight_decay)
    by_hand = train_many_mlp_adam(task, masks, seeds, c.epochs, c.batch_size, c.lr, c.weight_decay)
    torch.testing.assert_close(generic, one, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(by_hand, one, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(one[0], one[2], atol=1e-3)                        # the models really differ


def test_group_size_counts_six_copies_of_the_weights_and_three_of_the_activations():
    model = Digits().make_model(0)                                  # 64 → 32 → 10: 2,410 parameters
    per_model = 4 * (6 * 2410 + 3 * 64 * (64 + 32 + 10))
    assert group_size(model, 64) == stacked_mlp.GROUP_BYTES // per_model == 60
    assert group_size(model.double(), 64) == stacked_mlp.GROUP_BYTES // (2 * per_model)


def test_models_trained_in_groups_equal_the_models_trained_all_at_once(monkeypatch):
    """Groups of 3 (with one left over) give each model what one group of all 7 gives, in order."""
    task = Digits(DigitsConfig(n_train=120, n_query=20, epochs=2, batch_size=16))
    gen = torch.Generator().manual_seed(5)
    masks = torch.stack([torch.rand(120, generator=gen) < a for a in (0.1, 0.9, 0.5, 0.3, 0.7, 0.6, 0.2)])
    seeds, c = list(range(40, 47)), task.config
    run = lambda: train_many_mlp_adam(task, masks, seeds, c.epochs, c.batch_size, c.lr, c.weight_decay)
    together = run()
    per_model = 4 * (6 * sum(p.numel() for p in task.make_model(0).parameters()) + 3 * 16 * (64 + 32 + 10))
    monkeypatch.setattr(stacked_mlp, "GROUP_BYTES", 3 * per_model)
    assert group_size(task.make_model(0), 16) == 3
    torch.testing.assert_close(run(), together, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(together[0], together[1], atol=1e-3)


def test_in_groups_trains_runs_of_equal_length_together_and_answers_in_the_callers_order():
    """Six runs of 1, 2 or 3 steps in groups of two: each group holds runs of one length (a group steps
    until its longest run ends), each model keeps its seed, and the results come back in input order."""
    sizes = [5, 25, 15, 28, 8, 19]                               # batches of 10: 1, 3, 2, 3, 1, 2 steps
    masks = torch.stack([torch.arange(30) < n for n in sizes])
    groups = []

    def train(group_masks, group_seeds):
        groups.append([(int(m.sum()), s) for m, s in zip(group_masks, group_seeds)])
        return group_masks.sum(1, keepdim=True).float()

    out = batched.in_groups(masks, [100 + n for n in sizes], epochs=1, batch_size=10, size=2, train=train)
    assert out[:, 0].tolist() == sizes
    assert all(seed == 100 + n for group in groups for n, seed in group)
    assert [sorted(-(-n // 10) for n, _ in group) for group in groups] == [[3, 3], [2, 2], [1, 1]]


def test_stacked_adam_hands_the_fused_kernel_its_step_counts_on_the_parameters_device(monkeypatch):
    """``torch.optim.Adam(fused=True)`` keeps each step count as a float32 tensor on the parameter's device; the
    CUDA kernel raises on CPU counts (and the update fell back to the slow path).  Checked on the meta device,
    which no CPU count matches, through a stand-in kernel that records what it was given."""
    seen = []

    def kernel(ps, gs, ms, vs, maxs, steps, **kwargs):
        seen.extend((p.device, s.device, s.dtype, float(s.item()) if s.device.type != "meta" else None)
                    for p, s in zip(ps, steps))

    monkeypatch.setattr(torch, "_fused_adam_", kernel, raising=False)
    params = {"w": torch.zeros(3, 4, device="meta"), "b": torch.zeros(3, 2, device="meta")}
    opt = batched.StackedAdam(params, lr=0.1)
    opt.step({n: torch.zeros_like(p) for n, p in params.items()})
    assert [(p.type, s.type, dtype) for p, s, dtype, _ in seen] == [("meta", "meta", torch.float32)] * 2
    seen.clear()
    cpu = {"w": torch.zeros(3, 4)}
    opt = batched.StackedAdam(cpu, lr=0.1)
    for _ in range(2):
        opt.step({"w": torch.ones(3, 4)})
    assert [count for *_, count in seen] == [1.0, 2.0]


def test_the_stacked_measurement_passes_the_tasks_measure_batch_size_rows_per_model(monkeypatch):
    """``stacked_measure`` bounds a pass as ``task.measure`` does, by the task's ``measure_batch_size`` (a fixed
    1,024 rows asked Pythia-14M's logits for 400 GB), and the passes give the one-pass result."""
    task = Digits(DigitsConfig(n_train=60, n_query=10))
    models = [task.make_model(s) for s in range(3)]
    params = {n: p.detach() for n, p in stack_models(models).items()}
    whole = batched.stacked_measure(task, models[0], params, task.query_data())
    rows, measurement = [], task.measurement

    def counted(model, batch):
        rows.append(batch[0].shape[0])
        return measurement(model, batch)

    monkeypatch.setattr(type(task), "measure_batch_size", property(lambda self: 4))
    monkeypatch.setattr(task, "measurement", counted)
    parts = batched.stacked_measure(task, models[0], params, task.query_data())
    assert rows == [4, 4, 2] and torch.allclose(parts, whole, atol=1e-6)
    assert torch.allclose(whole[1], task.measure(models[1], task.query_data()), atol=1e-6)

"""Per-token influence over a language model's pretraining (002 §4 and D.2): a study, not a benchmark number.

tinylm's base model is pretrained again exactly as its task pretrains it (the task's
``pretraining_checkpoints`` hook: the same text, tokenizer, seed and recipe), keeping evenly spaced checkpoints; the last one is the
cached base every retrain starts from (tested).  At each checkpoint w*, localized RMSprop-SGLD on
the pretraining text (the BIF's sampler, with the bif settings the task resolves) records the
per-token losses of a probe set: sequences of random tokens whose second half repeats the first,
no token shared between two sequences (002 D.2).  The normalized BIF between two token positions is
the correlation of their losses over the draws; its mean over pairs of positions in *different*
sequences is reported per pair of classes — repeated (a target the first half predicts by
induction) and non-repeated (a random target) — next to two behavioural measures of induction: the
loss drop from the first half's targets to the second's, and the strongest head's induction
attention (Olsson et al.).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor, nn

from tdabench.api.checks import fail, integer
from tdabench.api.config import ConfigError
from tdabench.api.seeds import derive_seed
from tdabench.toolkit.sgld import (
    DivergenceGuard, LocalSGLD, TraceEstimator, correlation, minibatch, run_chains,
)

CLASSES = ("repeated", "non-repeated")
#: What the study asks of a task: its pretraining run again with checkpoints, documents of its grammar, and
#: per-token losses of any sequences (tinylm implements them).
HOOKS = ("pretraining_checkpoints", "probe_documents", "token_losses")


@dataclass(frozen=True)
class ProbeSettings:
    """The probe set and the checkpoints of the study."""

    checkpoints: int = 8      # evenly spaced points of the pretraining run (the last: its end)
    sequences: int = 12       # probe sequences
    half: int = 12            # tokens in a sequence's first half (its second half repeats them)
    probe: str = "text"       # text: each first half opens a new document of the grammar; random: distinct
                              # random tokens of the text's vocabulary, none shared between sequences (002 D.2)
    seed: int = 0             # the random probe's tokens and the chains' noise

    def __post_init__(self) -> None:
        if self.probe not in ("text", "random"):
            fail("study", "probe", self.probe, "text or random", "what the probe's first halves are", "text")
        integer(self, "study", "checkpoints", "points of the pretraining run", minimum=1)
        integer(self, "study", "sequences", "probe sequences (pairs need two)", minimum=2)
        integer(self, "study", "half", "tokens in a probe sequence's first half", minimum=2)
        integer(self, "study", "seed", "the probe's seed")


class PretrainingRun(NamedTuple):
    steps: list[int]                      # the checkpoints' steps
    states: list[dict[str, Tensor]]       # the model's state dict at each
    ids: Tensor                           # the pretraining sequences, shape: [N, T]
    model: nn.Module                      # the model, holding the last state
    tokenizer: Any                        # the tokenizer trained with it


def pretraining_run(task: Any, count: int) -> PretrainingRun:
    """Ask the task to re-run its base pretraining with ``count`` evenly spaced checkpoints (its
    ``pretraining_checkpoints`` hook, with ``probe_documents`` and ``token_losses``: tinylm has them)."""
    missing = [hook for hook in HOOKS if not callable(getattr(task, hook, None))]
    if missing:
        raise ConfigError(f"token-classes re-runs a base model's pretraining and probes it with new documents: task "
                          f"{task.name} has no {', '.join(missing)} hook; use --task tinylm")
    return PretrainingRun(*task.pretraining_checkpoints(count))


def probe_set(task: Any, run: PretrainingRun, settings: ProbeSettings) -> Tensor:
    """``[sequences, 2·half]`` token ids, each row's second half a copy of its first: the opening
    ``half`` tokens of new documents of the task's grammar (``probe="text"``), or distinct random
    tokens of those the pretraining text uses, no token in two rows (``probe="random"``)."""
    if settings.probe == "text":
        return torch.cat([_document_openings(task, run.tokenizer, settings)] * 2, 1)
    used = run.ids.flatten().unique()
    need = settings.sequences * settings.half
    if used.numel() < need:
        raise ConfigError(f"study.sequences × study.half = {need} distinct tokens, but the pretraining text uses "
                          f"{used.numel()}; lower study.sequences or study.half")
    gen = torch.Generator().manual_seed(derive_seed(settings.seed, 0x70C))
    first = used[torch.randperm(used.numel(), generator=gen)[:need]].view(settings.sequences, settings.half)
    return torch.cat([first, first], 1)


def _document_openings(task: Any, tokenizer: Any, settings: ProbeSettings) -> Tensor:
    """The first ``half`` tokens of ``sequences`` documents drawn afresh from the task's grammar
    (phase "probe": neither the pretraining nor the finetuning text)."""
    rows = []
    for doc in task.probe_documents(64 * settings.sequences):
        ids = tokenizer(doc)["input_ids"]
        if len(ids) >= settings.half:
            rows.append(ids[: settings.half])
        if len(rows) == settings.sequences:
            return torch.tensor(rows)
    raise ConfigError(f"study.half={settings.half}: fewer than {settings.sequences} documents of the grammar are "
                      f"that long; lower study.half")


def position_classes(half: int) -> dict[str, Tensor]:
    """Indices into a probe row's per-token losses ``[2·half − 1]`` (entry t predicts token t + 1):
    repeated targets t + 1 in half+1 … 2·half−1 (the token after the earlier copy tells them), and
    non-repeated targets 1 … half−1.  The first repeated token (t + 1 = half) is in neither."""
    return {"repeated": torch.arange(half, 2 * half - 1), "non-repeated": torch.arange(0, half - 1)}


def group_influence(corr: Tensor, probe: Tensor, half: int) -> dict[str, float]:
    """Mean normalized BIF per pair of classes over pairs of positions in different probe sequences
    whose target tokens differ (002 drops same-token scores).  ``corr``: ``[P, P]`` over positions
    ``(sequence, t)`` flattened row-major, P = sequences·(2·half − 1); ``probe``: ``[sequences, 2·half]``."""
    sequences, width = probe.shape[0], 2 * half - 1
    c = corr.view(sequences, width, sequences, width)
    targets = probe[:, 1:]                                                      # shape: [S, width]
    other = ~torch.eye(sequences, dtype=torch.bool)[:, None, :, None]          # different sequences
    counted = other & (targets[:, :, None, None] != targets[None, None, :, :])
    cls = position_classes(half)
    out = {}
    for i, a in enumerate(CLASSES):
        for b in CLASSES[i:]:
            keep = counted[:, cls[a]][:, :, :, cls[b]]                          # shape: [S, |a|, S, |b|]
            out[f"{a} ~ {b}"] = float(c[:, cls[a]][:, :, :, cls[b]][keep].mean())
    return out


def token_bif(model: nn.Module, pretraining: Tensor, probe: Tensor, bif: Any, seed: int,
              token_losses: Callable[[nn.Module, Tensor], Tensor]) -> Tensor:
    """The normalized BIF ``[P, P]`` between the probe's token positions at the model's weights (w*):
    ``bif.chains`` chains of localized SGLD on minibatches of ``bif.batch_size`` pretraining sequences,
    each draw recording every probe token's loss (the probe never enters the potential); ``token_losses``:
    the task's ``[B, T-1]`` next-token losses of a batch of sequences."""
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(derive_seed(seed, 0x5A1))
    sampler, est = LocalSGLD(params, bif.settings(), gen), TraceEstimator()

    def potential() -> Tensor:
        idx = minibatch(pretraining.shape[0], bif.batch_size, gen)
        return token_losses(model, pretraining if idx is None else pretraining[idx]).mean()

    def record(chain: int, draw: int) -> float:
        with torch.no_grad():
            losses = token_losses(model, probe).flatten()                       # shape: [P]
        est.add(losses, losses)
        return float(losses.mean())

    with torch.no_grad():
        start = max(float(potential()), float(token_losses(model, probe).mean()))
    guard = DivergenceGuard(start, bif.diverge_factor, bif.settings(), prefix="bif.",
                            n_params=sum(p.numel() for p in params))
    run_chains(sampler, potential, record, bif.chains, bif.draws, bif.burn_in, bif.thin, guard)
    return correlation(est)


@torch.no_grad()
def induction_measures(model: nn.Module, probe: Tensor, half: int,
                       token_losses: Callable[[nn.Module, Tensor], Tensor]) -> dict[str, float]:
    """The probe's mean loss on non-repeated and on repeated targets, and the largest induction score
    of any head: its mean attention from a second-half token to the token after that token's first
    occurrence (what an induction head copies)."""
    losses = token_losses(model, probe)                                        # shape: [S, 2·half − 1]
    cls = position_classes(half)
    out = {f"loss {name}": float(losses[:, idx].mean()) for name, idx in cls.items()}
    attentions = model(input_ids=probe, output_attentions=True, use_cache=False).attentions
    if attentions and attentions[0] is not None:
        i = torch.arange(half, 2 * half)                                        # second-half positions
        score = torch.stack(attentions)[..., i, i - half + 1]                   # shape: [L, S, H, half]
        out["induction head"] = float(score.mean((1, 3)).max())
    return out


def token_class_study(task: Any, bif: Any, settings: ProbeSettings) -> dict[str, Any]:
    """The study's rows, one per checkpoint of the pretraining run: step, group BIF per pair of
    classes, and the induction measures."""
    run = pretraining_run(task, settings.checkpoints)
    probe, model = probe_set(task, run, settings), run.model.eval()
    rows = []
    for step, state in zip(run.steps, run.states):
        model.load_state_dict(state)
        corr = token_bif(model, run.ids, probe, bif, settings.seed, task.token_losses)
        rows.append({"step": step, **group_influence(corr, probe, settings.half),
                     **induction_measures(model, probe, settings.half, task.token_losses)})
    return {"task": task.name, "probe_kind": settings.probe, "probe": probe.tolist(), "rows": rows,
            "bif": {k: getattr(bif, k) for k in ("nbeta", "gamma", "epsilon", "chains", "draws", "burn_in", "batch_size")}}


def plot_study(report: dict[str, Any], path: Path) -> Path:
    """Two panels over pretraining steps, as 002 Fig. 15: the group BIF per pair of classes; the loss
    on repeated and non-repeated targets and the strongest head's induction score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    steps = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
    for key in (k for k in rows[0] if "~" in k):
        top.plot(steps, [r[key] for r in rows], marker="o", label=key)
    top.set(ylabel="mean normalized BIF", title=f"{report['task']}: per-token influence over pretraining")
    top.axhline(0, color="grey", lw=0.5)
    top.legend(fontsize=8)
    for key in (k for k in rows[0] if k.startswith("loss ")):
        bottom.plot(steps, [r[key] for r in rows], marker="o", label=key)
    bottom.set(xlabel="pretraining step", ylabel="probe loss")
    if "induction head" in rows[0]:
        twin = bottom.twinx()
        twin.plot(steps, [r["induction head"] for r in rows], color="black", ls="--", label="induction head")
        twin.set_ylabel("strongest induction score")
        twin.legend(loc="center right", fontsize=8)
    bottom.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""The per-token study over tinylm's pretraining (002 D.2): the pretraining re-run ends at the cached
base, the probe and the class bookkeeping against hand-built cases, and the command end to end."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tdabench import cli
from tdabench.api.config import ConfigError
from tdabench.engine.spec import make_task
from tdabench.tasks.tinylm import generate_documents
from tdabench.studies.token_classes import (
    ProbeSettings, group_influence, induction_measures, position_classes, pretraining_run, probe_set,
)

TINY = {"context_length": "16", "pretrain_sequences": "64", "pretrain_epochs": "2", "batch_size": "16",
        "micro_batch": "16", "hidden": "16", "heads": "2", "vocab_size": "300", "n_train": "20", "n_query": "10"}


def test_the_pretraining_rerun_ends_at_the_cached_base_model(tmp_path):
    from transformers import AutoModelForCausalLM

    task = make_task("tinylm", {**TINY, "cache_dir": str(tmp_path)}, torch.device("cpu"))
    run = pretraining_run(task, 3)
    steps, states, ids = run.steps, run.states, run.ids
    assert steps == [3, 5, 8] and len(states) == 3 and ids.shape == (64, 16)   # 2 epochs × 4 batches of 16
    base = AutoModelForCausalLM.from_pretrained(task.model_source()[0]).state_dict()
    for name, value in states[-1].items():
        torch.testing.assert_close(value, base[name], rtol=0, atol=0)
    assert any(not torch.equal(states[0][k], states[-1][k]) for k in states[0])   # the checkpoints differ
    with pytest.raises(ConfigError, match="tinylm"):
        pretraining_run(make_task("digits", {}, torch.device("cpu")), 3)


def test_the_probe_repeats_each_first_half_and_the_random_one_shares_no_token_between_sequences(tmp_path):
    from types import SimpleNamespace as Run

    text = torch.arange(100).repeat(3).view(-1, 10)
    probe = probe_set(None, Run(ids=text), ProbeSettings(sequences=4, half=5, probe="random"))
    assert probe.shape == (4, 10) and torch.equal(probe[:, :5], probe[:, 5:])
    assert probe[:, :5].unique().numel() == 20 and set(probe.flatten().tolist()) <= set(range(100))
    with pytest.raises(ConfigError, match="study.sequences"):
        probe_set(None, Run(ids=text), ProbeSettings(sequences=30, half=5, probe="random"))
    with pytest.raises(ConfigError, match="study.probe"):
        ProbeSettings(probe="words")
    assert position_classes(4) == {"repeated": pytest.approx(torch.tensor([4, 5, 6])),
                                   "non-repeated": pytest.approx(torch.tensor([0, 1, 2]))}
    task = make_task("tinylm", {**TINY, "cache_dir": str(tmp_path)}, torch.device("cpu"))
    tokenizer = task.tokenizer
    opening = probe_set(task, Run(tokenizer=tokenizer), ProbeSettings(sequences=3, half=6))
    assert opening.shape == (3, 12) and torch.equal(opening[:, :6], opening[:, 6:])
    words = tokenizer.decode(opening[0, :6].tolist()).split()
    assert words and all(any(w.strip(".") in doc for doc in generate_documents(task.config, 200, "probe")) for w in words)


def test_group_influence_averages_pairs_of_different_sequences_and_different_target_tokens():
    half, seqs = 3, 3
    width = 2 * half - 1
    probe = torch.tensor([[1, 2, 3, 1, 2, 3], [4, 5, 6, 4, 5, 6], [7, 8, 3, 7, 8, 3]])   # token 3 in rows 0 and 2
    cls = position_classes(half)
    kind = torch.full((width,), -1)
    kind[cls["repeated"]], kind[cls["non-repeated"]] = 1, 0                   # position 2 (t+1 = half): neither
    value = {(1, 1): 0.5, (0, 0): -0.2, (0, 1): 0.1, (1, 0): 0.1}
    corr = torch.full((seqs, width, seqs, width), 7.0)                         # 7: what must not be counted
    for s in range(seqs):
        for r in range(seqs):
            for a in range(width):
                for b in range(width):
                    same_target = probe[s, a + 1] == probe[r, b + 1]
                    if s != r and not same_target and (int(kind[a]), int(kind[b])) in value:
                        corr[s, a, r, b] = value[int(kind[a]), int(kind[b])]
    got = group_influence(corr.view(seqs * width, seqs * width), probe, half)
    assert got == pytest.approx({"repeated ~ repeated": 0.5, "repeated ~ non-repeated": 0.1,
                                 "non-repeated ~ non-repeated": -0.2})


def test_a_head_that_attends_to_the_token_after_the_earlier_copy_scores_one():
    half, seqs, heads = 4, 2, 3
    length = 2 * half
    exact = torch.zeros(1, seqs, heads, length, length)
    for i in range(half, length):
        exact[:, :, 0, i, i - half + 1] = 1.0                                  # head 0: induction
    exact[:, :, 1:] = 1.0 / length                                             # the others: uniform

    class Fake(torch.nn.Module):
        def forward(self, input_ids, output_attentions=False, use_cache=False):
            logits = torch.zeros(*input_ids.shape, 50)
            return SimpleNamespace(logits=logits, attentions=tuple(exact) if output_attentions else None)

    from tdabench.tasks.pythia import token_losses

    out = induction_measures(Fake(), torch.arange(seqs * length).view(seqs, length) % 50, half, token_losses)
    assert out["induction head"] == pytest.approx(1.0)
    assert out["loss repeated"] == pytest.approx(torch.log(torch.tensor(50.0)).item())   # uniform logits


def test_the_command_writes_rows_per_checkpoint_and_the_figure(tmp_path, capsys):
    sets = [x for k, v in {**TINY, "cache_dir": str(tmp_path)}.items() for x in ("--set", f"task.{k}={v}")]
    code = cli.main(["token-classes", "--checkpoints", "2", "--sequences", "3", "--half", "4", *sets,
                     "--set", "bif.draws=6", "--set", "bif.chains=2", "--set", "bif.burn_in=2",
                     "--results-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "repeated ~ repeated" in out
    report = json.loads((tmp_path / "stagewise" / "tinylm-token-classes.json").read_text())
    assert [r["step"] for r in report["rows"]] == [4, 8]
    assert all(-1 <= r["repeated ~ repeated"] <= 1 and 0 <= r["induction head"] <= 1 for r in report["rows"])
    assert (tmp_path / "stagewise" / "tinylm-token-classes.png").stat().st_size > 1000
    assert cli.main(["token-classes", "--half", "1", "--results-dir", str(tmp_path)]) == 2
    assert "study.half" in capsys.readouterr().err

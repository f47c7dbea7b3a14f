"""The pythia task on causal LMs of other architectures (GPT-2, Llama), each a tiny random model saved
locally with ``save_pretrained``: loading through the Auto classes, the measurement against
transformers' own loss, the layers BIF and EK-FAC restrict themselves to, early failures, and
``tdabench run --task pythia --set task.model_name=DIR --method gradsim,ekfac,bif`` end to end."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from tdabench import cli  # noqa: E402
from tdabench.toolkit.grads import select_params  # noqa: E402
from tdabench.tasks.pythia import Pythia, PythiaConfig  # noqa: E402
from tdabench.tasks.tinylm import train_tokenizer  # noqa: E402

WORDS = "red green blue cyan magenta yellow black white grey brown".split()
ARCHS = ("gpt2", "llama")


def _model(arch: str, vocab: int) -> torch.nn.Module:
    """A tiny random model of ``arch`` (2 blocks, width 32, 32 positions)."""
    import transformers as tf

    torch.manual_seed(0)
    if arch == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=32))
    return tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """Per architecture a directory with the model and a locally trained tokenizer; one text file."""
    root = tmp_path_factory.mktemp("hf")
    gen = torch.Generator().manual_seed(2)
    docs = [" ".join(WORDS[j] for j in torch.randint(len(WORDS), (4 + i % 9,), generator=gen).tolist()) + "."
            for i in range(200)]
    (root / "text.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    tokenizer = train_tokenizer(docs, 280)
    for arch in ARCHS:
        _model(arch, len(tokenizer)).save_pretrained(root / arch)
        tokenizer.save_pretrained(root / arch)
    return {"root": root, "tokenizer": tokenizer}


def _task(saved: dict, arch: str, tmp_path: Path, **kw) -> Pythia:
    cfg = dict(model_name=str(saved["root"] / arch), revision="", data=str(saved["root"] / "text.jsonl"),
               context_length=16, n_train=40, n_query=8, batch_size=8, micro_batch=8, lr=1e-3,
               attn_implementation="eager", cache_dir=str(tmp_path))
    return Pythia(PythiaConfig(**(cfg | kw)))


@pytest.mark.parametrize("arch", ARCHS)
def test_any_causal_lm_loads_and_measures_as_transformers_does(saved, arch, tmp_path):
    """The task's per-token losses equal transformers' own ``labels=`` loss of the model as saved
    (GPT-2's Conv1D layers, now nn.Linear, compute the same function)."""
    from transformers import AutoModelForCausalLM

    task = _task(saved, arch, tmp_path)
    original = AutoModelForCausalLM.from_pretrained(saved["root"] / arch, attn_implementation="eager").eval()
    model, (ids,) = task.make_model(0).eval(), task.query_data()
    assert type(model) is type(original) and ids.shape == (8, 16)
    with torch.no_grad():
        reference = torch.stack([original(input_ids=s[None], labels=s[None]).loss for s in ids])
        tokens = task.token_measurement(model, (ids,))
    assert tokens.shape == (8, 15)
    torch.testing.assert_close(tokens.mean(1), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch, attention, blocks", [
    ("gpt2", {"attn.c_attn", "attn.c_proj"}, 2 * 12),
    ("llama", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}, 2 * 9)])
def test_bif_and_ekfac_restrict_to_the_architectures_attention_and_blocks(saved, arch, attention, blocks, tmp_path):
    task = _task(saved, arch, tmp_path)
    recs, model = task.recommendations(), task.base_model
    chosen = select_params(model, recs["bif"]["patterns"])
    prefix = "transformer.h" if arch == "gpt2" else "model.layers"
    assert sorted(chosen) == sorted(f"{prefix}.{i}.{a}.weight" for i in (0, 1) for a in attention)
    inside = select_params(model, recs["ekfac"]["patterns"])
    assert len(inside) == blocks and all(n.startswith(prefix + ".") for n in inside)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(prefix)]
    assert len(linears) == (4 if arch == "gpt2" else 7) * 2      # every projection is one kronfluence can track


def test_a_model_without_attention_blocks_says_which_setting_chooses(saved, tmp_path, caplog):
    """A model whose blocks hold no attention (here: attention modules renamed away) keeps BIF on every
    weight and says so, naming bif.patterns."""
    task = _task(saved, "llama", tmp_path)
    for block in task.base_model.model.layers:
        block.mixer = block.self_attn
        del block.self_attn
    with caplog.at_level(logging.WARNING):
        assert task.recommendations()["bif"]["patterns"] == ()
    assert "bif.patterns" in caplog.text and "no attention layers" in caplog.text


@pytest.mark.parametrize("arch", ARCHS)
def test_data_that_does_not_fit_the_model_fails_naming_the_field(saved, arch, tmp_path):
    with pytest.raises(ValueError, match=r"task.context_length=64 exceeds the model's 32 positions.*<=32"):
        _ = _task(saved, arch, tmp_path, context_length=64).base_model
    big = train_tokenizer([f"w{i} " * 3 for i in range(2000)], 600)
    big.save_pretrained(tmp_path / "big-tokenizer")
    with pytest.raises(ValueError, match="600 ids but the model's embedding has 280 rows; set task.tokenizer"):
        _ = _task(saved, arch, tmp_path, tokenizer=str(tmp_path / "big-tokenizer")).base_model


@pytest.mark.parametrize("arch", ARCHS)
def test_run_pythia_on_a_local_model_end_to_end(saved, arch, tmp_path, capsys):
    """``tdabench run --task pythia --set task.model_name=DIR --method gradsim,ekfac,bif`` on the CPU."""
    pytest.importorskip("kronfluence")
    model = saved["root"] / arch
    args = ["run", "--task", "pythia", "--method", "gradsim,ekfac,bif", "--seeds", "1", "--serial", "--threads", "1",
            "--results-dir", str(tmp_path / "results"), "--set", f"task.model_name={model}", "--set", "task.revision=",
            "--set", f"task.data={saved['root'] / 'text.jsonl'}", "--set", "task.query_split=",
            "--set", "task.context_length=16", "--set", "task.n_train=40", "--set", "task.n_query=8",
            "--set", "task.batch_size=8", "--set", "task.micro_batch=8", "--set", "task.lr=1e-3",
            "--set", "task.attn_implementation=eager", "--set", f"task.cache_dir={tmp_path}", "--set", "gt.num_subsets=12",
            "--set", "bif.chains=2", "--set", "bif.draws=10", "--set", "bif.burn_in=2", "--set", "bif.batch_size=8",
            "--set", "bif.record_batch_size=8"]
    code = cli.main(args)
    out = capsys.readouterr().out
    assert code == 0, out
    for method in ("gradsim", "ekfac", "bif"):
        record = json.loads(next((tmp_path / "results" / "runs" / "pythia" / method).glob("*/seed0.json")).read_text())
        lds = record["metrics"]["lds"]["value"]
        assert math.isfinite(lds) and -1 <= lds <= 1, (method, lds)
        if method != "bif":        # chance LDS has sd ≈ 1/√((K−1)·Q) = 1/√(11·8) ≈ 0.11: 0.4 is ~4 sd above it
            assert lds > 0.4, (arch, method, lds)                 # measured 0.55–0.67 on both architectures
        assert record["task_config"]["model_name"] == str(model)
        assert f"\n{method}" in out or f"| {method}" in out or f" {method} " in out, out

"""The pythia task's loading, packing, measurement and training on a tiny saved GPT-NeoX, and the
tinylm task end to end through the pipeline."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from tdabench.toolkit.grads import select_params  # noqa: E402
from tdabench.engine.pipeline import evaluate as run
from tdabench.engine.spec import RunSpec  # noqa: E402
from tdabench.tasks._lm_data import MissingResource  # noqa: E402
from tdabench.tasks.pythia import Pythia, PythiaConfig, linear_schedule  # noqa: E402
from tdabench.tasks.tinylm import train_tokenizer  # noqa: E402

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def _documents(n: int = 120) -> list[str]:
    """Documents "doc<i> ... end": a readable id at the start of each, bodies of varying length."""
    gen = torch.Generator().manual_seed(1)
    return [f"doc{i} " + " ".join(WORDS[j] for j in torch.randint(len(WORDS), (5 + i % 7,), generator=gen).tolist())
            + " end." for i in range(n)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """A tiny random GPT-NeoX and a locally trained tokenizer, written with save_pretrained."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    root = tmp_path_factory.mktemp("lm")
    docs = _documents()
    tokenizer = train_tokenizer(docs, 300)
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=64, max_position_embeddings=32))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "text.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    return {"root": root, "model": model, "docs": docs}


def _task(saved: dict, tmp_path: Path, **kw) -> Pythia:
    cfg = dict(model_name=str(saved["root"] / "model"), revision="", data=str(saved["root"] / "text.jsonl"),
               context_length=16, n_train=40, n_query=8, batch_size=16, micro_batch=5, lr=1e-3, cache_dir=str(tmp_path))
    return Pythia(PythiaConfig(**(cfg | kw)))


def test_model_and_tokenizer_load_from_a_local_directory(saved, tmp_path):
    task = _task(saved, tmp_path)
    loaded = task.make_model(0)
    for name, tensor in saved["model"].state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert task.tokenizer.encode(saved["docs"][0]) == train_tokenizer(saved["docs"], 300).encode(saved["docs"][0])


def test_loads_from_the_hugging_face_cache_by_name_and_revision(saved, tmp_path, monkeypatch):
    """The layout a Hub download leaves (refs/<revision> → snapshots/<commit>), read with no network."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tdabench-test--tiny-neox"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "step7").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in (saved["root"] / "model").iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = _task(saved, tmp_path, model_name="tdabench-test/tiny-neox", revision="step7")
    weight = "gpt_neox.layers.0.attention.query_key_value.weight"
    assert torch.equal(task.make_model(0).state_dict()[weight], saved["model"].state_dict()[weight])
    with pytest.raises(MissingResource, match="revision step8"):
        _ = _task(saved, tmp_path, model_name="tdabench-test/tiny-neox", revision="step8").base_model


def test_missing_model_or_text_fails_at_once_naming_the_fix(saved, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(MissingResource) as err:
        _ = _task(saved, tmp_path, model_name="tdabench-test/not-downloaded", revision="step45000").base_model
    assert "'tdabench-test/not-downloaded'" in str(err.value) and "task.model_name=" in str(err.value)
    assert "from_pretrained('tdabench-test/not-downloaded', revision='step45000')" in str(err.value)
    with pytest.raises(MissingResource) as err:     # the model's own tokenizer: the fix is the model, both fetched
        _ = _task(saved, tmp_path, model_name="tdabench-test/not-downloaded", revision="step45000").tokenizer
    assert "task.model_name=" in str(err.value) and "AutoTokenizer.from_pretrained" in str(err.value)
    assert "AutoModelForCausalLM.from_pretrained('tdabench-test/not-downloaded', revision='step45000')" in str(err.value)
    with pytest.raises(MissingResource, match="task.data"):
        _task(saved, tmp_path, data="tdabench-test/no-such-dataset").train_data()
    with pytest.raises(MissingResource, match="does not exist"):
        _task(saved, tmp_path, data=str(tmp_path / "missing.jsonl")).train_data()
    assert time.perf_counter() - start < 20


def _doc_ids(tokenizer, ids: torch.Tensor) -> list[int]:
    return [int(m) for m in re.findall(r"doc(\d+) ", tokenizer.decode(ids.reshape(-1)))]


def test_packing_is_exact_and_attribution_and_query_share_no_document(saved, tmp_path):
    task = _task(saved, tmp_path)
    (train,), (query,) = task.train_data(), task.query_data()
    assert train.shape == (40, 16) and query.shape == (8, 16)
    tok = task.tokenizer
    order = torch.randperm(len(saved["docs"]), generator=torch.Generator().manual_seed(0)).tolist()  # data_seed 0
    pieces = [tok.encode(saved["docs"][i], add_special_tokens=False) + [tok.eos_token_id] for i in order]
    lengths = torch.tensor([len(p) for p in pieces]).cumsum(0)
    assert query.reshape(-1).tolist() == [t for p in pieces for t in p][: query.numel()]
    first_train_doc = int((lengths < query.numel()).sum()) + 1      # after the last document the query touched
    assert train.reshape(-1).tolist() == [t for p in pieces[first_train_doc:] for t in p][: train.numel()]
    assert not set(_doc_ids(tok, query)) & set(_doc_ids(tok, train))
    assert len(_doc_ids(tok, query)) >= 3 and len(_doc_ids(tok, train)) >= 20


def test_query_text_from_its_own_split_of_a_saved_dataset(saved, tmp_path):
    import datasets

    docs = saved["docs"]
    splits = {"train": docs[:90], "validation": docs[90:]}
    datasets.DatasetDict({k: datasets.Dataset.from_dict({"text": v}) for k, v in splits.items()}).save_to_disk(tmp_path / "ds")
    task = _task(saved, tmp_path, data=str(tmp_path / "ds"), data_split="train", query_split="validation")
    assert task.separate_query
    query_ids, train_ids = _doc_ids(task.tokenizer, task.query_data()[0]), _doc_ids(task.tokenizer, task.train_data()[0])
    assert query_ids and min(query_ids) >= 90 and train_ids and max(train_ids) < 90


def test_wikitext_from_a_copy_of_its_hub_repository_offline(saved, tmp_path, monkeypatch):
    """The WikiText-2 recipe's data (``published/wikitext2_gpt2.py``: Salesforce/wikitext, wikitext-2-raw-v1) from
    the Hub repository's own files copied to a directory (what ``huggingface-cli download Salesforce/wikitext
    --repo-type dataset --local-dir DIR`` leaves: one folder of parquet shards per configuration, and the README
    whose YAML names each configuration's files), read with no network: train and validation as the splits."""
    import datasets
    import pandas as pd

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    repo, docs = tmp_path / "wikitext", saved["docs"]
    for config, rows in (("wikitext-2-raw-v1", docs), ("wikitext-103-raw-v1", docs[:10])):
        (repo / config).mkdir(parents=True)
        cut = 90 * len(rows) // len(docs)
        for split, part in (("train", rows[:cut]), ("validation", rows[cut:]), ("test", rows[cut:])):
            pd.DataFrame({"text": part}).to_parquet(repo / config / f"{split}-00000-of-00001.parquet")
    (repo / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: {c}\n  data_files:\n" + "".join(f"  - split: {s}\n    path: {c}/{s}-*\n"
                                                      for s in ("train", "validation", "test"))
        for c in ("wikitext-2-raw-v1", "wikitext-103-raw-v1")) + "---\n")
    task = _task(saved, tmp_path, data=str(repo), data_config="wikitext-2-raw-v1", data_split="train",
                 query_split="validation")
    assert task.separate_query and list(task.documents("train")) == docs[:90]
    query_ids, train_ids = _doc_ids(task.tokenizer, task.query_data()[0]), _doc_ids(task.tokenizer, task.train_data()[0])
    assert query_ids and min(query_ids) >= 90 and train_ids and max(train_ids) < 90
    other = _task(saved, tmp_path, data=str(repo), data_config="wikitext-103-raw-v1", query_split="validation")
    assert list(other.documents("train")) == docs[:7]                         # the configuration picks the files


def test_prepared_data_are_cached_by_content(saved, tmp_path, monkeypatch):
    first = _task(saved, tmp_path).train_data()[0]
    monkeypatch.setattr(Pythia, "prepare", lambda self: pytest.fail("the cache was not used"))
    assert torch.equal(_task(saved, tmp_path).train_data()[0], first)
    edited = tmp_path / "edited.jsonl"
    edited.write_text((saved["root"] / "text.jsonl").read_text().replace("alpha", "omega"))
    with pytest.raises(pytest.fail.Exception, match="cache was not used"):
        _task(saved, tmp_path, data=str(edited)).train_data()


def test_token_and_sequence_measurements_agree_with_transformers_loss(saved, tmp_path):
    task = _task(saved, tmp_path)
    model, batch = task.make_model(0).eval(), task.query_data()
    with torch.no_grad():
        tokens, per_seq = task.token_measurement(model, batch), task.measurement(model, batch)
        reference = torch.stack([model(input_ids=s[None], labels=s[None]).loss for s in batch[0]])
    assert tokens.shape == (8, 15) and per_seq.shape == (8,)
    torch.testing.assert_close(tokens.mean(1), per_seq)
    torch.testing.assert_close(per_seq, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(task.output_loss(task.outputs(model, batch), batch), per_seq)


def test_training_steps_checkpoints_and_linear_schedule(saved, tmp_path):
    task = _task(saved, tmp_path)
    seen: list[tuple[int, float]] = []
    model = task.make_model(0)
    before = task.measure(model, task.train_data())
    task.train(model, torch.arange(40), seed=3, on_checkpoint=lambda s, m, lr: seen.append((s, lr)),
               checkpoint_steps=(0, 1, 3))
    assert task.total_steps(40) == 3
    assert [s for s, _ in seen] == [0, 1, 3]
    assert seen[1][1] == pytest.approx(1e-3) and seen[2][1] == pytest.approx(1e-3 / 3)  # linear decay to 0
    assert [linear_schedule(s, 10, 2) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 0.125]
    assert task.measure(model, task.train_data()).mean() < before.mean() - 0.05


def test_method_default_patterns_pick_attention_weights_and_spare_the_output_layer(saved, tmp_path):
    recs = _task(saved, tmp_path).recommendations()
    assert recs["bif"]["patterns"] == (r"attention\.(query_key_value|dense)\.weight",)   # as before any other architecture
    attention = select_params(saved["model"], recs["bif"]["patterns"])
    assert sorted(attention) == [f"gpt_neox.layers.{i}.attention.{n}.weight" for i in (0, 1)
                                 for n in ("dense", "query_key_value")]
    blocks = select_params(saved["model"], recs["ekfac"]["patterns"])
    assert not any("embed" in n or "lm_head" in n for n in blocks) and len(blocks) == 24


def test_bif_accumulates_a_minibatch_larger_than_one_pass_in_pieces(saved, tmp_path):
    """A minibatch of 16 sequences backpropagated in pieces of 5 moves the chain as one pass of 16 does."""
    from conftest import make_context
    from tdabench.methods.bif import BIF, BIFConfig

    task = _task(saved, tmp_path)
    ctx = make_context(task, tmp_path)
    ctx.model.double()   # float32 sums in other orders move the chain by rounding, which the covariance amplifies
    common = dict(chains=1, draws=6, burn_in=2, batch_size=16, epsilon=1e-5, nbeta=50.0, gamma=1000.0)
    whole = BIF(BIFConfig(record_batch_size=1024, **common)).score(ctx)
    pieces = BIF(BIFConfig(record_batch_size=5, **common)).score(ctx)
    assert whole.abs().max() > 0
    torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-6 * float(whole.abs().max()))


# ----- tinylm end to end: ground truth, then gradsim, bif and ekfac ------------------------------------
# A small base (400 sequences, one epoch), 120 attribution and 30 query sequences of 32 tokens, 32 retrains.
# Measured LDS on seeds 0/1/2 (z against each matrix's permutation null): gradsim 0.45/0.47/0.44 (z 7.8–7.9),
# ekfac 0.58/0.56/0.57 (z 8.6–10.2), bif with 2×30 draws 0.29/0.34/0.37 (z 5.7–6.9), random −0.01/0.00/0.06.
SUBSETS = 32
TINY = {"n_train": "120", "n_query": "30", "context_length": "32", "pretrain_sequences": "400", "pretrain_epochs": "1",
        "batch_size": "16", "micro_batch": "16"}


@pytest.fixture(scope="module")
def tinylm_run(tmp_path_factory):
    """Runs methods on one tiny tinylm set-up (base, prepared text, ground truth and reference model are
    built by the first call and reused); returns ``{method: (lds, scores, masks, targets)}`` as the
    pipeline's lds metric evaluated them (its ``lds_per_query`` call is observed)."""
    from tdabench.metrics import lds as lds_metric

    root = tmp_path_factory.mktemp("tinylm")

    def go(methods: tuple[str, ...], **method_overrides: dict[str, str]) -> dict:
        overrides = {"task": {**TINY, "cache_dir": str(root)}, "gt": {"num_subsets": str(SUBSETS)}, **method_overrides}
        spec = RunSpec(task="tinylm", methods=methods, seeds=(0,), overrides=overrides, results_dir=root / "results",
                       executor="serial", force=True)
        seen, real = [], lds_metric.lds_per_query
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(lds_metric, "lds_per_query", lambda s, m, t: seen.append((s, m, t)) or real(s, m, t))
            summaries, failures = run(spec)
        assert not failures, failures
        return {s["method"]: (s["mean"], *evaluated) for s, evaluated in zip(summaries, seen)}

    return go


def _permutation_null(scores: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor, n: int = 300):
    """LDS of ``scores`` against targets whose rows (subsets) are shuffled: what this score matrix reaches
    by chance with this K.  Shuffling keeps the scores' own cross-query structure, which sets the spread
    (from 1/√((K−1)·Q) for independent columns up to 1/√(K−1) for identical ones)."""
    from tdabench.toolkit.lds import lds

    gen = torch.Generator().manual_seed(0)
    return torch.tensor([lds(scores, masks, targets[torch.randperm(targets.shape[0], generator=gen)])
                         for _ in range(n)])


def _assert_informative(result: tuple, z: float = 4.0) -> None:
    """The LDS lies ``z`` sd above the permutation null (z=4: one-sided p ≈ 3·10⁻⁵ for a normal null)."""
    value, scores, masks, targets = result
    null = _permutation_null(scores, masks, targets)
    margin = float(null.mean() + z * null.std())
    assert value > margin, f"LDS {value:.3f} not above the permutation null's mean + {z}·sd = {margin:.3f}"


def test_tinylm_end_to_end_gradsim_beats_random(tinylm_run):
    """Random's columns are independent, so its LDS has sd 1/√((K−1)·Q) ≈ 0.033 around 0; gradsim must clear
    it by 0.15 (4.5 of those sd) and its own permutation null by 4 sd."""
    result = tinylm_run(("random", "gradsim"), gradsim={"proj_dim": "256"})
    lds = {m: r[0] for m, r in result.items()}
    assert abs(lds["random"]) < 4 / ((SUBSETS - 1) * 30) ** 0.5, lds
    _assert_informative(result["gradsim"])
    assert lds["gradsim"] > lds["random"] + 0.15, lds


def test_tinylm_end_to_end_bif(tinylm_run):
    """The task's BIF defaults (every weight, nβ=800, γ=5·10⁴, ε=5·10⁻⁶) with 2×30 draws and minibatches
    of 16 (the tiny set-up's cost)."""
    _assert_informative(tinylm_run(("bif",), bif={"chains": "2", "draws": "30", "burn_in": "5", "batch_size": "16"})["bif"])


def test_tinylm_end_to_end_ekfac(tinylm_run):
    pytest.importorskip("kronfluence")
    _assert_informative(tinylm_run(("ekfac",))["ekfac"])


def test_pythia_unroll_is_train_and_its_metagradient_matches_finite_differences(saved, tmp_path):
    """The LM recipe as pure steps (AdamW, linear schedule, whole batches instead of micro-batches)
    lands where ``train`` does, and magic's metagradient matches central differences of the weighted
    run (ε = 0.1: O(ε²) ≈ 1 % curvature error, float32 rounding ≈ 1e-6/ε)."""
    from tdabench.toolkit.metagrad import Replay
    from tdabench.api.unroll import stateless

    task = _task(saved, tmp_path, warmup_steps=1, epochs=2, attn_implementation="eager")
    idx = torch.arange(task.n_train)
    model = task.train(task.make_model(0), idx, 3)
    unroll = task.unroll(task.make_model(0), idx, 3)
    final = unroll.run()["params"]
    for name, p in model.named_parameters():
        torch.testing.assert_close(final[name], p.detach(), rtol=1e-4, atol=1e-4)
    template = unroll.model(unroll.initial())
    phi = lambda p: task.measurement(stateless(template, p), task.query_data())   # noqa: E731
    scores, _ = Replay(unroll, 2)(phi, unroll.ones())
    for i in (0, 23):
        plus, minus = unroll.ones(), unroll.ones()
        plus[i], minus[i] = 1.1, 0.9
        fd = (phi(unroll.run(plus)["params"]) - phi(unroll.run(minus)["params"])).double() / 0.2
        assert (fd - scores[i]).abs().max() <= 0.05 * scores[i].abs().max(), (i, fd, scores[i])

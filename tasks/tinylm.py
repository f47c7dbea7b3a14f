"""tinylm: the pythia task's code path on a tiny GPT-NeoX that trains in seconds on a CPU.

Mirrors the Pythia protocol: a base model is *pretrained* once (fixed seed, cached) on generated
text, saved with ``save_pretrained`` together with a byte-level BPE tokenizer trained here with
``tokenizers``; every retrain then *finetunes* that base for one epoch on its subset of the
attribution sequences, through ``tasks/pythia.py`` unchanged (loading, packing, AdamW + linear
schedule, per-token losses).  Finetuning from a fixed base rather than training from scratch keeps
one retrain to one short epoch and removes initialisation noise from the ground truth, as in 001 C.3.

The text is a small probabilistic grammar of made-up words.  Each document has a topic whose
nouns, verbs and adjectives it prefers (Zipf weights); a fraction of documents repeat their first
half (induction structure, 002 D.2).  The finetuning text re-draws each topic's word preferences,
so what a finetuning example teaches is mostly about its own topic.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from tdabench.api.checks import fail, integer, number
from tdabench.api.config import ConfigError, content_hash
from tdabench.api.registry import register_task
from tdabench.api.task import CheckpointHook
from tdabench.toolkit.checkpoints import checkpoint_steps
from tdabench.tasks._lm_data import INSTALL, pack, token_stream
from tdabench.tasks.pythia import Pythia, PythiaConfig, token_losses, train_lm

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class TinyLMConfig(PythiaConfig):
    model_name: str = ""            # empty: the base pretrained here (cached); or a save_pretrained directory
    revision: str = ""
    data: str = ""                  # empty: generated text; or local text as for the pythia task
    data_config: str = ""
    query_split: str = ""
    context_length: int = 64
    n_train: int = 1000
    n_query: int = 100
    batch_size: int = 32
    micro_batch: int = 32
    lr: float = 1e-3
    bf16: bool = False
    attn_implementation: str = "eager"
    vocab_size: int = 512           # BPE vocabulary (≤ 1024)
    hidden: int = 64                # GPT-NeoX width (the MLP is 4× wider)
    layers: int = 2                 # transformer blocks
    heads: int = 4                  # attention heads
    topics: int = 8                 # topics of the generated grammar, each with its own words
    repeat_fraction: float = 0.3    # documents whose second half repeats the first
    text_seed: int = 0              # the grammar's lexicon and word preferences
    pretrain_sequences: int = 4000  # packed sequences the base model is pretrained on
    pretrain_epochs: int = 2        # base pretraining passes
    pretrain_lr: float = 3e-3       # base pretraining peak AdamW learning rate (10 warmup steps)
    pretrain_seed: int = 0          # base initialisation and pretraining order

    def __post_init__(self) -> None:
        super().__post_init__()
        integer(self, "task", "vocab_size", "BPE vocabulary: 256 bytes, end-of-text, merges", minimum=257)
        if self.vocab_size > 1024:
            fail("task", "vocab_size", self.vocab_size, "at most 1024", "BPE vocabulary size", 512)
        for name, meaning in (("hidden", "GPT-NeoX width"), ("layers", "transformer blocks"), ("heads", "attention heads"),
                              ("topics", "topics of the grammar"), ("pretrain_sequences", "pretraining sequences"),
                              ("pretrain_epochs", "pretraining passes")):
            integer(self, "task", name, meaning, minimum=1)
        if self.hidden % self.heads:
            fail("task", "heads", self.heads, f"a divisor of task.hidden={self.hidden}", "attention heads", 4)
        number(self, "task", "repeat_fraction", "documents whose second half repeats", at_least=0, at_most=1)
        number(self, "task", "pretrain_lr", "pretraining peak learning rate", above=0)


# ----- the generated text -------------------------------------------------------------------------
def _lexicon(seed: int, topics: int) -> dict[str, Any]:
    """Made-up words: per topic nouns/verbs/adjectives, plus shared function words and common words."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    seen: set[str] = set()

    def words(n: int, lengths: tuple[int, ...]) -> list[str]:
        out = []
        while len(out) < n:
            w = "".join(rng.choice(syllables) for _ in range(rng.choice(lengths)))
            if w not in seen:
                seen.add(w)
                out.append(w)
        return out

    topic = [{"noun": words(16, (2, 3)), "verb": words(10, (2, 3)), "adj": words(8, (2, 3))} for _ in range(topics)]
    return {"det": words(4, (1,)), "prep": words(5, (1,)), "conj": words(3, (1,)),
            "common": {"noun": words(12, (2,)), "verb": words(8, (2,)), "adj": words(6, (2,))}, "topic": topic}


def _preferences(lex: dict[str, Any], seed: int) -> list[dict[str, list[float]]]:
    """Per topic and part of speech, Zipf weights over that topic's words in a seeded order."""
    rng = random.Random(seed)
    prefs = []
    for words in lex["topic"]:
        ranks = {pos: rng.sample(range(len(ws)), len(ws)) for pos, ws in words.items()}
        prefs.append({pos: [1.0 / (1 + r) for r in rs] for pos, rs in ranks.items()})
    return prefs


def _word(rng: random.Random, lex: dict[str, Any], prefs: dict[str, list[float]], t: int, pos: str) -> str:
    if rng.random() < 0.15:
        return rng.choice(lex["common"][pos])
    return rng.choices(lex["topic"][t][pos], weights=prefs[pos])[0]


def _sentence(rng: random.Random, lex: dict[str, Any], prefs: dict[str, list[float]], t: int) -> str:
    """S → NP V [NP] [prep NP] [conj S]; NP → det [adj] noun."""
    def np() -> list[str]:
        adj = [_word(rng, lex, prefs, t, "adj")] if rng.random() < 0.4 else []
        return [rng.choice(lex["det"]), *adj, _word(rng, lex, prefs, t, "noun")]
    out = [*np(), _word(rng, lex, prefs, t, "verb")]
    out += np() if rng.random() < 0.7 else []
    out += [rng.choice(lex["prep"]), *np()] if rng.random() < 0.3 else []
    if rng.random() < 0.15:
        return " ".join(out) + " " + rng.choice(lex["conj"]) + " " + _sentence(rng, lex, prefs, t)
    return " ".join(out) + "."


def generate_documents(cfg: TinyLMConfig, n: int, phase: str) -> list[str]:
    """``n`` documents of the ``phase`` ("pretrain" or "finetune") distribution, reproducible."""
    lex = _lexicon(cfg.text_seed, cfg.topics)
    prefs = _preferences(lex, cfg.text_seed * 7919 + (0 if phase == "pretrain" else 1))
    rng = random.Random(f"{phase}-{cfg.text_seed}")
    docs = []
    for _ in range(n):
        t = rng.randrange(cfg.topics)
        body = " ".join(_sentence(rng, lex, prefs[t], t) for _ in range(rng.randint(2, 4)))
        docs.append(f"{body} {body}" if rng.random() < cfg.repeat_fraction else body)
    return docs


# ----- the pretrained base ------------------------------------------------------------------------
def train_tokenizer(docs: Sequence[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on ``docs`` (GPT-NeoX style), as a transformers tokenizer."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        raise ImportError(f"the tinylm task needs tokenizers and transformers: {INSTALL}") from None
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def pretrain_base(cfg: TinyLMConfig, out: Path, on_checkpoint: Optional[CheckpointHook] = None,
                  checkpoint_steps: tuple[int, ...] = ()) -> tuple[Tensor, nn.Module, Any]:
    """Pretrain the base model from ``cfg.pretrain_seed``, write it and its tokenizer to ``out`` and return
    the pretraining sequences ``[N, T]``, the model and the tokenizer; ``on_checkpoint(step, model, lr)``
    is called after each of ``checkpoint_steps`` (as ``train_lm`` does)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    n_docs = cfg.pretrain_sequences * cfg.context_length // 8       # a document has ≥ 8 tokens: always enough text
    docs = generate_documents(cfg, n_docs, "pretrain")
    tokenizer = train_tokenizer(docs, cfg.vocab_size)
    stream, _ = token_stream(tokenizer, docs, cfg.pretrain_sequences * cfg.context_length)
    ids = pack(stream, cfg.pretrain_sequences, cfg.context_length, "pretrain")   # shape: [pretrain_sequences, context]
    torch.manual_seed(cfg.pretrain_seed)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, intermediate_size=4 * cfg.hidden, max_position_embeddings=cfg.context_length,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        attn_implementation=cfg.attn_implementation))
    recipe = dataclasses.replace(cfg, epochs=cfg.pretrain_epochs, lr=cfg.pretrain_lr, warmup_steps=10)
    train_lm(model, (ids,), torch.arange(ids.shape[0]), cfg.pretrain_seed, recipe,
             lambda m, b: token_losses(m, b[0]).mean(1),     # the pythia task's loss
             on_checkpoint=on_checkpoint, checkpoint_steps=checkpoint_steps)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:                                          # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return ids, model, tokenizer


@register_task
class TinyLM(Pythia):
    name = "tinylm"
    version = "1"
    description = "tiny GPT-NeoX (CPU): pretrained on a generated grammar, finetuned one epoch; pythia's code path"
    Config = TinyLMConfig

    def model_source(self) -> tuple[str, str]:
        c = self.config
        if c.model_name:
            return c.model_name, c.revision
        keys = ("vocab_size", "hidden", "layers", "heads", "context_length", "topics", "repeat_fraction", "text_seed",
                "pretrain_sequences", "pretrain_epochs", "pretrain_lr", "pretrain_seed", "attn_implementation")
        key = content_hash([self.version, {k: getattr(c, k) for k in keys}])
        out = self.cache_root / "tinylm_base" / key
        if not (out / "config.json").exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            pretrain_base(c, out)
        return str(out), ""

    def documents(self, split: str) -> Sequence[str]:
        c = self.config
        if c.data:
            return super().documents(split)
        return generate_documents(c, (c.n_train + c.n_query) * c.context_length // 8, "finetune")

    @property
    def separate_query(self) -> bool:
        return bool(self.config.data) and super().separate_query

    def bif_defaults(self) -> dict[str, Any]:
        """Table 3's LLM row (nβ=800, γ=5·10⁴) with two changes chosen on this task (seed 0; RMSprop-SGLD
        with 2×60 draws over nβ ∈ {100, 300, 800, 1000, 3000, 10⁴}, γ ∈ {100, 10³, 10⁴, 5·10⁴}, ε and the
        sampled weights).  Every weight rather than the attention weights only: LDS 0.25 against 0.18
        (0.21 for the transformer blocks alone) at nβ=800, γ=10⁴, ε=10⁻⁵, and 0.235 against 0.162 at
        Table 3's values with ε=2·10⁻⁶.  ε=5·10⁻⁶ (ε·γ/(2δ) = 1.25): the chains stay near w* (mean
        training loss +0.03) and mix faster than at 2·10⁻⁶ (LDS 0.26); where they leave it (ε=2·10⁻⁵ at
        γ=10⁴, nβ ≥ 3000 at ε=10⁻⁵, or the digits defaults: loss +0.4 to +3) the LDS falls to 0.10–0.23.
        The LDS grows with the draws (4 chains: 0.27 at 37 per chain, 0.30 at 75, 0.33 at 150) and each
        draw records all 1,100 sequences (~1 s on one CPU thread), so T=100.  b=100 divides n_train and
        n_query, which devinterp's bif() needs (benchmarks/bif_vs_devinterp.py); recording passes of
        ~100 sequences are the fastest on the CPU."""
        return {"patterns": (), "batch_size": 100, "chains": 4, "draws": 100, "burn_in": 30, "nbeta": 800.0,
                "gamma": 50000.0, "epsilon": 5e-6, "record_batch_size": 100 if self.device.type == "cpu" else 1024}

    def data_identity(self) -> Any:
        c = self.config
        if c.data:
            return super().data_identity()
        return ["generated", c.topics, c.repeat_fraction, c.text_seed]

    def pretraining_checkpoints(self, count: int) -> tuple[list[int], list[dict[str, Tensor]], Tensor, nn.Module, Any]:
        """The base model's pretraining run again, exactly as ``model_source`` runs it (same text, tokenizer,
        seed and recipe), keeping ``count`` evenly spaced checkpoints: (their steps, the state dict at each,
        the pretraining sequences ``[N, T]``, the model at the last, the tokenizer).  The token-classes study
        asks the task for it; a task pretrained elsewhere (``task.model_name``) has no run to repeat."""
        c = self.config
        if c.model_name:
            raise ConfigError(f"token-classes re-runs a base model's pretraining, which only tinylm's own generated "
                              f"base has (task.model_name={c.model_name}); use --task tinylm without task.model_name")
        steps = list(checkpoint_steps(c.pretrain_epochs * math.ceil(c.pretrain_sequences / c.batch_size), count, "even"))
        states: list[dict[str, Tensor]] = []
        keep = lambda step, m, lr: states.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        with tempfile.TemporaryDirectory() as tmp:
            ids, model, tokenizer = pretrain_base(c, Path(tmp) / "base", keep, tuple(steps))
        return steps, states, ids, model, tokenizer

    def probe_documents(self, n: int) -> list[str]:
        """``n`` documents drawn afresh from the task's grammar (phase "probe": neither pretraining nor finetuning text)."""
        return generate_documents(self.config, n, "probe")

"""pythia: finetune a pretrained causal LM (Pythia by default; any transformers architecture) for one
epoch on packed text.

The language benchmark of the local-BIF paper (001, Appendix C.3): Pythia-14M at step 45,000,
finetuned with AdamW (one epoch, linear learning-rate decay, batch 256, weight decay 0.01) on 4,096
attribution sequences of 1,024 tokens; the measurement is the mean token loss of 256 query
sequences.  The model (``AutoModelForCausalLM``: GPT-NeoX, GPT-2, Llama, ...) and tokenizer
(``AutoTokenizer``) come from a local directory (``save_pretrained``) or the Hugging Face cache; the
layers that BIF and EK-FAC restrict themselves to are found in the loaded model (``_hf_arch``).  The
text comes from a local directory / JSON-lines file or a ``datasets`` name.  Tokenized,
packed data are cached under ``task.cache_dir`` keyed by their content.  ``tasks/tinylm.py`` runs
this same code path on a tiny model for the CPU.

This file is longer than 300 lines: loading a Hugging Face model and data, packing, the training
loop, the measurements and the unroll hook are one task's recipe, and ``tinylm`` reuses all of it.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdabench.api.checks import integer, number
from tdabench.api.config import content_hash
from tdabench.api.registry import register_task
from tdabench.api.task import Batch, CheckpointHook, Task, TaskConfig, take
from tdabench.toolkit.training import epoch_batches
from tdabench.api.unroll import Optimizer, Unroll, weighted_mean
from tdabench.tasks._hf_arch import attention_pattern, block_pattern, linearize
from tdabench.tasks._lm_data import (
    INSTALL, MissingResource, Shuffled, dataset_documents, fingerprint, is_dataset_dir, load_pretrained,
    local_documents, pack, token_stream,
)

log = logging.getLogger(__name__)
MEASURE_BYTES = 2 << 30         # logits memory of one measuring pass
GRADIENT_BYTES = 2 << 30        # float32 per-example gradients of every example above this: project them
PROJECTED = ("gradsim", "tracin", "trackstar")   # methods whose gradients a proj_dim setting shrinks


@dataclass(frozen=True)
class PythiaConfig(TaskConfig):
    model_name: str = "EleutherAI/pythia-14m"   # Hub id or a directory written by save_pretrained
    revision: str = "step45000"            # Hub revision (ignored for directories)
    tokenizer: str = ""                    # Hub id or directory; empty: the model's
    data: str = "Salesforce/wikitext"      # dir of .txt/.jsonl, a .jsonl file, a save_to_disk dir, a Hub dataset repo's files, or a datasets name
    data_config: str = "wikitext-103-raw-v1"   # datasets configuration name (datasets sources only)
    data_split: str = "train"              # datasets split the attribution text comes from
    query_split: str = "validation"        # datasets only: the split the query text comes from ("" → held-out docs)
    text_field: str = "text"               # the text column (datasets) or key (.jsonl lines)
    context_length: int = 1024             # tokens per packed sequence
    n_train: int = 4096                    # attribution sequences
    n_query: int = 256                     # query sequences (documents disjoint from the attribution set)
    data_seed: int = 0                     # document order
    epochs: int = 1                        # finetuning passes over the (subset of the) attribution set
    batch_size: int = 256                  # sequences per optimiser step
    micro_batch: int = 8                   # sequences per forward pass (gradient accumulation)
    lr: float = 1e-4                       # peak AdamW learning rate (blank in 001 Table 4; our choice)
    warmup_steps: int = 0                  # linear warmup steps before the linear decay to 0
    weight_decay: float = 0.01             # AdamW (decoupled) weight decay
    bf16: bool = True                      # bf16 autocast when training on CUDA
    attn_implementation: str = "sdpa"      # transformers attention kernel ("eager" is faster for tiny models on CPU)
    cache_dir: str = ""                    # prepared data; empty: $TDABENCH_CACHE or ~/.cache/tdabench
    gpu_fraction: float = 1.0              # share of a GPU each Ray retrain asks for

    def __post_init__(self) -> None:
        integer(self, "task", "context_length", "tokens per packed sequence", minimum=2)
        for name, meaning in (("n_train", "attribution sequences"), ("n_query", "query sequences"),
                              ("epochs", "finetuning passes"), ("batch_size", "sequences per optimiser step"),
                              ("micro_batch", "sequences per forward pass")):
            integer(self, "task", name, meaning, minimum=1)
        integer(self, "task", "warmup_steps", "linear warmup steps", minimum=0)
        integer(self, "task", "data_seed", "the document order's seed")
        number(self, "task", "lr", "AdamW's peak learning rate", above=0)
        number(self, "task", "weight_decay", "AdamW's decoupled weight decay", at_least=0)
        number(self, "task", "gpu_fraction", "GPU share of one retrain", above=0, at_most=1)


# ----- per-token loss and the training loop ---------------------------------------------------------
def token_losses(model: nn.Module, ids: Tensor) -> Tensor:
    """Next-token cross-entropy of every position, shape ``[B, T-1]`` (float32).  Log-softmax over the
    contiguous vocabulary axis, then a gather: 20% faster on the CPU than cross-entropy over the
    transposed logits; no key/value cache is built."""
    logits = model(input_ids=ids, use_cache=False).logits              # shape: [B, T, V]
    logp = torch.log_softmax(logits.float(), dim=-1)[:, :-1]           # shape: [B, T-1, V]
    return -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor of ``step`` (0-based): linear warmup over ``warmup`` steps, then linear
    decay that reaches 0 one step after the last."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def train_lm(model: nn.Module, data: Batch, indices: Tensor, seed: int, cfg: PythiaConfig,
             loss: Callable[[nn.Module, Batch], Tensor], on_checkpoint: Optional[CheckpointHook] = None,
             checkpoint_steps: tuple[int, ...] = ()) -> nn.Module:
    """AdamW with linear warmup then linear decay to 0, ``cfg.epochs`` seeded passes, batches of
    ``cfg.batch_size`` accumulated over micro-batches; bf16 autocast on CUDA when ``cfg.bf16``."""
    order = epoch_batches(indices, seed, cfg.epochs, cfg.batch_size)
    steps = len(order)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_schedule(s, steps, cfg.warmup_steps))
    device = next(model.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    wanted = set(checkpoint_steps)
    model.train()
    if on_checkpoint is not None and 0 in wanted:
        on_checkpoint(0, model, opt.param_groups[0]["lr"])
    for step, batch in enumerate(order, start=1):
        opt.zero_grad(set_to_none=True)
        for micro in batch.split(cfg.micro_batch):
            with autocast:
                (loss(model, take(data, micro)).sum() / batch.numel()).backward()
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        if on_checkpoint is not None and step in wanted:
            on_checkpoint(step, model, lr)
    return model.eval()


@register_task
class Pythia(Task):
    name = "pythia"
    version = "1"
    description = "finetune a pretrained causal LM (Pythia-14M; any transformers architecture) one epoch on text; mean token loss"
    Config = PythiaConfig

    # ----- where model, tokenizer and text come from (tinylm overrides these) -----
    def model_source(self) -> tuple[str, str]:
        """(name or directory, revision) of the starting model."""
        return self.config.model_name, self.config.revision

    def tokenizer_source(self) -> tuple[str, str]:
        c = self.config
        return (c.tokenizer, "") if c.tokenizer else self.model_source()

    def _local_text(self) -> Optional[Path]:
        """The path of ``task.data`` when it is local .txt/.jsonl text (None for a datasets source)."""
        c = self.config
        if not c.data:
            raise MissingResource("task.data is empty: give a directory of .txt/.jsonl files, a .jsonl file, "
                                  "a save_to_disk directory, or a datasets name")
        path = Path(c.data).expanduser()
        if path.is_file() or (path.is_dir() and not is_dataset_dir(path)):
            return path
        if c.data.startswith((".", "/", "~")) and not path.exists():
            raise MissingResource(f"task.data={c.data!r} does not exist; give a directory of .txt/.jsonl files, "
                                  "a .jsonl file, a save_to_disk directory, or a datasets name")
        return None

    def documents(self, split: str) -> Sequence[str]:
        """Documents of ``split``: "train", or "query" (used when ``query_split`` names a datasets split)."""
        c, path = self.config, self._local_text()
        if path is not None:
            return local_documents(path, c.text_field)
        return dataset_documents(str(Path(c.data).expanduser()) if Path(c.data).expanduser().is_dir() else c.data,
                                  c.data_config, c.query_split if split == "query" else c.data_split, c.text_field)

    @property
    def separate_query(self) -> bool:
        """True when the query text is its own datasets split rather than held-out documents."""
        path = Path(self.config.data).expanduser()
        one_split = (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists()  # a saved Dataset
        return bool(self.config.query_split) and self._local_text() is None and not one_split

    def data_identity(self) -> Any:
        """What the prepared tokens depend on besides the tokenizer (a content hash for local files)."""
        c, path = self.config, Path(self.config.data).expanduser()
        source = fingerprint(path) if path.exists() else [c.data, c.data_config, c.data_split]
        return [source, c.query_split if self.separate_query else "", c.text_field]

    # ----- cached pieces -----
    @property
    def cache_root(self) -> Path:
        return Path(self.config.cache_dir or os.environ.get("TDABENCH_CACHE", "~/.cache/tdabench")).expanduser()

    def _fetch(self, tokenizer: bool, model: bool) -> str:
        """The command that downloads into the Hugging Face cache what is missing (a tokenizer that is
        the model's comes with it)."""
        steps, what = [], []
        for wanted, (name, rev), cls in ((tokenizer, self.tokenizer_source(), "AutoTokenizer"),
                                         (model, self.model_source(), "AutoModelForCausalLM")):
            if wanted:
                what.append(cls)
                steps.append(f"{cls}.from_pretrained('{name}', revision='{rev or 'main'}')")
        return f"python -c \"from transformers import {', '.join(what)}; {'; '.join(steps)}\""

    @cached_property
    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer
        name, rev = self.tokenizer_source()
        own = bool(self.config.tokenizer)          # else the model's: the fix is task.model_name
        return load_pretrained(AutoTokenizer.from_pretrained, name, rev, "tokenizer", "tokenizer" if own else "model_name",
                               self._fetch(tokenizer=True, model=not own))

    @cached_property
    def base_model(self) -> nn.Module:
        """The starting model on the CPU in float32 (copied for every run), any causal-LM architecture;
        ``Conv1D`` layers become ``nn.Linear``; its positions and vocabulary must fit the data."""
        try:
            from transformers import AutoModelForCausalLM
            from transformers.utils.logging import disable_progress_bar
        except ImportError:
            raise ImportError(f"the {self.name} task needs transformers: {INSTALL}") from None
        disable_progress_bar()       # a bar per load, in every Ray worker, says nothing the log does not
        name, rev = self.model_source()
        own = bool(self.config.tokenizer)
        try:
            model = load_pretrained(AutoModelForCausalLM.from_pretrained, name, rev, "model", "model_name",
                                    self._fetch(tokenizer=not own, model=True),
                                    attn_implementation=self.config.attn_implementation)
        except ValueError as err:    # an architecture without this attention kernel, or not a causal LM
            raise ValueError(f"task.model_name={name!r} cannot be loaded as a causal LM with "
                             f"task.attn_implementation={self.config.attn_implementation!r}: {str(err)[:300]} "
                             "(try task.attn_implementation=eager, or a causal LM checkpoint)") from None
        linearize(model)
        self._check_fits(model)
        return model.float().eval()   # Hub checkpoints may be stored in float16

    def _check_fits(self, model: nn.Module) -> None:
        """The packed sequences fit the model's positions and the tokenizer's ids its vocabulary."""
        c, positions = self.config, getattr(model.config, "max_position_embeddings", None)
        if positions is not None and c.context_length > positions:
            raise ValueError(f"task.context_length={c.context_length} exceeds the model's {positions} positions "
                             f"(max_position_embeddings); set task.context_length<={positions}")
        rows = model.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > rows:
            raise ValueError(f"the tokenizer has {len(self.tokenizer)} ids but the model's embedding has {rows} rows; "
                             "set task.tokenizer to the model's own tokenizer (empty: the one saved with the model)")

    @cached_property
    def layer_patterns(self) -> dict[str, Optional[str]]:
        """Regexes of the attention projections' weights and of the transformer blocks' parameters,
        found in the model (None where it has none: BIF and EK-FAC then keep their own defaults)."""
        found = {"attention": attention_pattern(self.base_model), "blocks": block_pattern(self.base_model)}
        for what, setting in (("attention", "bif.patterns"), ("blocks", "ekfac.patterns")):
            if found[what] is None:
                log.warning("%s: no %s found in %s; %s is left at its default (every weight); set it to choose",
                            self.name, "attention layers" if what == "attention" else "list of transformer blocks",
                            type(self.base_model).__name__, setting)
        return found

    @cached_property
    def _split(self) -> tuple[Tensor, Tensor]:
        c = self.config
        tok = self.tokenizer
        tok_id = hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()[:16] if tok.is_fast else repr(self.tokenizer_source())
        key = content_hash([self.data_identity(), tok_id, c.context_length, c.n_train, c.n_query, c.data_seed, "pack-v3"])
        path = self.cache_root / "lm_data" / f"{self.name}-{key}.pt"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(self.prepare(), path.with_suffix(f".tmp{os.getpid()}"))
            os.replace(path.with_suffix(f".tmp{os.getpid()}"), path)
        train, query = torch.load(path)
        return train.to(self.device), query.to(self.device)

    def prepare(self) -> tuple[Tensor, Tensor]:
        """Tokenize and pack: attribution ``[n_train, context]`` and query ``[n_query, context]`` ids.

        Query documents come from ``query_split`` when it names one (datasets), else they are the
        first documents in seeded order; the attribution set is packed from the documents after them,
        so no document contributes to both sets.
        """
        c = self.config
        docs = Shuffled(self.documents("train"), c.data_seed)
        query_docs = Shuffled(self.documents("query"), c.data_seed) if self.separate_query else docs
        stream, used = token_stream(self.tokenizer, query_docs, c.n_query * c.context_length)
        query = pack(stream, c.n_query, c.context_length, "query")
        stream, _ = token_stream(self.tokenizer, docs, c.n_train * c.context_length, start=0 if self.separate_query else used)
        train = pack(stream, c.n_train, c.context_length, "train")
        return train, query

    # ----- the Task interface -----
    def train_data(self) -> Batch:
        return (self._split[0],)   # shape: [n_train, context]

    def query_data(self) -> Batch:
        return (self._split[1],)   # shape: [n_query, context]

    def make_model(self, seed: int) -> nn.Module:
        """A copy of the pretrained model (finetuning starts from the same weights for every seed)."""
        return copy.deepcopy(self.base_model).to(self.device)

    @property
    def measure_batch_size(self) -> int:
        """Sequences per measuring pass: one sequence's float32 logits and their log-softmax take
        8·T·V bytes (412 MB for Pythia-14M at T=1,024, V=50,304), so passes stay within 2 GiB."""
        per_sequence = 8 * self.config.context_length * self.base_model.config.vocab_size
        return max(1, min(1024, MEASURE_BYTES // per_sequence))

    def token_losses(self, model: nn.Module, ids: Tensor) -> Tensor:
        """Next-token losses of every position of ``ids`` ``[B, T]``, shape ``[B, T-1]`` (for studies that
        probe the model with sequences of their own)."""
        return token_losses(model, ids)

    def token_measurement(self, model: nn.Module, batch: Batch) -> Tensor:
        return token_losses(model, batch[0])   # shape: [B, context-1]

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return self.token_measurement(model, batch).mean(1)   # shape: [B] mean token loss

    def outputs(self, model: nn.Module, batch: Batch) -> Tensor:
        """Next-token logits, shape ``[B, T-1, V]`` (per position, not ``[B, C]``)."""
        return model(input_ids=batch[0], use_cache=False).logits[:, :-1].float()

    def output_loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(outputs.transpose(1, 2), batch[0][:, 1:], reduction="none").mean(1)

    def total_steps(self, n_examples: int) -> int:
        return self.config.epochs * math.ceil(n_examples / self.config.batch_size)

    def train(self, model: nn.Module, indices: Tensor, seed: int, on_checkpoint: Optional[CheckpointHook] = None,
              checkpoint_steps: tuple[int, ...] = ()) -> nn.Module:
        return train_lm(model, self.train_data(), indices, seed, self.config, self.loss, on_checkpoint, checkpoint_steps)

    def unroll_unavailable(self) -> str:
        c = self.config
        if c.attn_implementation != "eager":    # the fused kernels have no second derivative (metagradients)
            return f"task.attn_implementation={c.attn_implementation} has no second derivative; set task.attn_implementation=eager"
        if c.bf16 and self.device.type == "cuda":
            return "task.bf16=true trains under autocast, which the pure steps do not reproduce; set task.bf16=false"
        return ""

    def unroll(self, model: nn.Module, indices: Tensor, seed: int) -> Unroll:
        """``train`` as pure steps: the same seeded batches (whole, not micro-batched: the same gradient),
        mean sequence loss, AdamW under the linear schedule."""
        c = self.config
        if self.unroll_unavailable():
            raise ValueError(self.unroll_unavailable())
        order = epoch_batches(indices, seed, c.epochs, c.batch_size)
        schedule = lambda t, total=len(order): linear_schedule(t, total, c.warmup_steps)   # noqa: E731
        return Unroll(model, self.train_data(), order, weighted_mean(self.loss),
                      Optimizer("adamw", c.lr, weight_decay=c.weight_decay, schedule=schedule))

    def bif_defaults(self) -> dict[str, Any]:
        """001 Table 3's "Retraining LLM" row (b=128, C=4, T=300, burn-in 150, nβ=800, γ=5·10⁴) on the
        attention weights (001 B.1).  The paper gives no step size: ε=2·10⁻⁶ keeps ε·γ/(2δ) at 0.5 for
        RMSprop-SGLD (sweep it).  Recording and the SGLD minibatch's backward pass run 32 sequences at a
        time: the full vocabulary's logits of 128 sequences of 1,024 tokens take 26 GB in float32."""
        attention = self.layer_patterns["attention"]
        return {"patterns": (attention,) if attention else (), "batch_size": 128, "chains": 4, "draws": 300, "burn_in": 150,
                "nbeta": 800.0, "gamma": 50000.0, "epsilon": 2e-6, "record_batch_size": 32}

    def recommendations(self) -> dict[str, dict[str, Any]]:
        """As data, on every device: BIF ``bif_defaults``; EK-FAC on the transformer blocks (without the
        embeddings and the output layer, whose vocabulary-square covariance is 50,304² on Pythia); a
        4,096-dimensional projection for gradient methods when float32 gradients of every attribution
        and query sequence exceed 2 GiB (230 GB for Pythia-14M's 4,096 + 256 sequences); and passes of
        ``measure_batch_size`` sequences for EK-FAC (training and query) and the gradient methods when
        that is under their 64 (on an H200, EK-FAC's 256 Pythia-14M queries in one pass asked for 49 GiB
        of logits on top of 112 GiB, and GradSim's 64-sequence passes peaked at 50 GB)."""
        recs: dict[str, dict[str, Any]] = {"bif": self.bif_defaults(), "ekfac": {}}
        if self.layer_patterns["blocks"]:
            recs["ekfac"] = {"patterns": (self.layer_patterns["blocks"],)}
        n_params = sum(p.numel() for p in self.base_model.parameters())
        if 4 * n_params * (self.config.n_train + self.config.n_query) > GRADIENT_BYTES:
            recs |= {method: {"proj_dim": 4096} for method in PROJECTED}
        chunk = self.measure_batch_size
        if chunk < 64:   # the methods' default of 64 sequences a pass would hold more logits than a measuring pass
            recs["ekfac"] |= {"batch_size": chunk, "query_micro_batch": chunk}
            for method in PROJECTED:
                recs[method] = recs.get(method, {}) | {"batch_size": chunk}
        return {k: v for k, v in recs.items() if v}

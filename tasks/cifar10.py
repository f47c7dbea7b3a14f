"""cifar10: a ResNet-9 in the fast-training style of Jordan (2024) on CIFAR-10 — the vision benchmark
of 001 (Section 4.2, Appendix C.2, Table 4).

Recipe (Table 4): Nesterov SGD, momentum 0.85, weight decay 0.0153, learning rate 10.0 in the
decoupled ("per 1024 examples") parametrisation, batch 1024, label smoothing 0.2, 64× learning rate on
the BatchNorm shifts, 1 epoch (8 as an option), and 100 steps on a held-out warmup set before every
run to prime the optimiser state and BatchNorm statistics.  The first layer is a frozen 2×2
convolution that whitens image patches (fit on the warmup set, so it is the same for every subset);
its bias is not trained (Table 4), so it has none.  BatchNorm scales are fixed at 1; only shifts are
learnt.  The learning rate follows a triangle over the run (0.2 → 1 at 23% → 0.07 of the peak); the
warmup phase runs at the starting value.  Not taken from the fast recipe: lookahead/EMA, test-time
augmentation, the alternating flip and the whitening-bias freezing schedule.  The default sizes
(N = 10,000, warmup set 5,000) are this project's choice: 001's numbers were lost in conversion.

Images stay one uint8 tensor on the training device; normalisation, random flip and random
translation (reflect padding) are batched tensor operations there; on CUDA training runs in
channels_last with bf16 autocast (config).  Losses and measurements are evaluated in float32.

This file is longer than 300 lines: the task's recipe (warmup, training many at once, measurement and
recommendations) is one class; its files, images and network are in ``_cifar10_*.py`` and ``_resnet9.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdabench.api.checks import choices_and_patterns, fail, integer, number
from tdabench.api.registry import register_task
from tdabench.api.task import Batch, CheckpointHook, Task, TaskConfig
from tdabench.tasks._cifar10_files import ENV_DIR, MD5, TRAIN_FILES, read_batches, resolve_folder  # noqa: F401  (re-exported)
from tdabench.tasks._cifar10_images import (  # noqa: F401  (re-exported)
    augment, channel_stats, normalize, resize, whitening_filters,
)
from tdabench.tasks._resnet9 import ResNet9

TRAK_PROJ_DIM = 2048               # TRAK's default k (its method config), the width of the matrix it projects with


@dataclass(frozen=True)
class Cifar10Config(TaskConfig):
    data_dir: str = ""               # folder holding cifar-10-batches-py/ (or it, or the .tar.gz); empty: $TDABENCH_CIFAR10_DIR, else ~/.cache/tdabench/cifar10
    download: bool = True            # fetch through torchvision when the files are missing (needs torchvision + network)
    verify: bool = True              # check the files against the published md5 checksums
    classes: tuple[int, ...] = ()    # empty: all ten; 3,5: dattri's CIFAR-2 (cat, dog), relabelled 0..C−1
    n_train: int = 10000             # attribution set size N (drawn from the 50,000 training images)
    warmup_size: int = 5000          # held-out warmup set (fits the whitening layer, primes the optimiser)
    n_query: int = 0                 # 0: the full test set (10,000); k: a seeded subset of k test images
    data_seed: int = 0               # fixes the warmup/attribution split and the query subset
    measurement: Literal["loss", "margin"] = "loss"  # loss: cross-entropy (unsmoothed); margin: logit_y − logsumexp(other logits)
    fit_on_full: bool = True         # fit_data: every non-warmup training image (001) instead of the attribution set
    image_size: int = 32             # images are area-downsampled when smaller (≥ 9; reduced CPU configurations)
    widths: tuple[int, ...] = (64, 256, 256)  # channels of the three conv blocks
    epochs: int = 1                  # 001 trains 1 (or 8) epochs
    batch_size: int = 1024           # images per SGD step
    lr: float = 10.0                 # per 1024 examples, momentum-decoupled
    momentum: float = 0.85           # Nesterov
    weight_decay: float = 0.0153     # per 1024 examples, decoupled from the learning rate
    label_smoothing: float = 0.2     # of the training loss only (the measurement is unsmoothed)
    bias_scaler: float = 64.0        # learning-rate multiplier of the BatchNorm shifts
    warmup_steps: int = 100          # steps on the warmup set before each run (0: none)
    flip: bool = True                # random horizontal flips
    translate: int = 2               # random translation in pixels (reflect padding)
    bn_momentum: float = 0.6         # running-statistics decay (torch momentum = 1 − this)
    whiten_eps: float = 5e-4         # eigenvalue floor of the whitening layer's patch covariance
    channels_last: bool = True       # CUDA only
    bf16: bool = True                # bf16 autocast for training on CUDA only
    gpu_fraction: float = 0.25       # GPU share of one retrain under Ray

    def __post_init__(self) -> None:
        choices_and_patterns(self, "task")
        if len(self.widths) != 3 or min(self.widths) < 1:
            fail("task", "widths", self.widths, "three positive block widths", "channels of the conv blocks", (64, 256, 256))
        integer(self, "task", "image_size", "image side after downsampling (three 2× poolings after a 2×2 conv)", minimum=9)
        if self.image_size > 32:
            fail("task", "image_size", self.image_size, "in 9..32", "CIFAR-10 images are 32×32", 32)
        for name, meaning in (("n_train", "attribution set size"), ("epochs", "training passes"),
                              ("batch_size", "images per SGD step")):
            integer(self, "task", name, meaning, minimum=1)
        for name, meaning in (("warmup_size", "held-out warmup images"), ("warmup_steps", "warmup steps"),
                              ("n_query", "query images (0: the full test set)"), ("translate", "random translation")):
            integer(self, "task", name, meaning, minimum=0)
        if self.classes and (len(set(self.classes)) != len(self.classes) or len(self.classes) < 2
                             or not all(0 <= c <= 9 for c in self.classes)):
            fail("task", "classes", self.classes, "two or more distinct classes in 0..9 (or empty: all ten)",
                 "the CIFAR-10 classes kept", (3, 5))
        pool, tests = (5000 * len(self.classes), 1000 * len(self.classes)) if self.classes else (50000, 10000)
        if self.n_train + self.warmup_size > pool:
            fail("task", "n_train", self.n_train, f"at most {pool - self.warmup_size} with task.warmup_size="
                 f"{self.warmup_size}", f"the training set has {pool:,} images of these classes", pool - self.warmup_size)
        if self.n_query > tests:
            fail("task", "n_query", self.n_query, f"at most {tests}", f"the test set has {tests:,} images of these classes", 0)
        for name, meaning in (("lr", "learning rate per 1024 examples"), ("bias_scaler", "BatchNorm shift lr multiplier"),
                              ("whiten_eps", "whitening eigenvalue floor")):
            number(self, "task", name, meaning, above=0)
        number(self, "task", "momentum", "Nesterov momentum", at_least=0, below=1)
        number(self, "task", "weight_decay", "decoupled weight decay", at_least=0)
        number(self, "task", "label_smoothing", "training-loss label smoothing", at_least=0, below=1)
        number(self, "task", "bn_momentum", "running-statistics decay", at_least=0, at_most=1)
        number(self, "task", "gpu_fraction", "GPU share of one retrain", above=0, at_most=1)


# ----- data -----------------------------------------------------------------------------------
# ----- task -----------------------------------------------------------------------------------
def triangle(step: int, total: int, start: float = 0.2, peak: float = 0.23, end: float = 0.07) -> float:
    """Learning-rate factor before update ``step`` of ``total``: linear start → 1 (at ``peak``·total) → end."""
    top = max(1, int(peak * total))
    if step <= top:
        return start + (1.0 - start) * step / top
    return 1.0 + (end - 1.0) * (step - top) / max(1, total - top)


@register_task
class Cifar10(Task):
    name = "cifar10"
    version = "1"
    description = ("CIFAR-10, ResNet-9 in the fast (airbench) style, Nesterov SGD with warmup-set priming "
                   f"(001 Table 4); files from task.data_dir or ${ENV_DIR}")
    Config = Cifar10Config

    def __init__(self, config: Optional[Cifar10Config] = None, device: str | torch.device = "cpu") -> None:
        super().__init__(config, device)
        self._cuda = self.device.type == "cuda"   # cuDNN autotuning stays off: subset sizes vary per retrain

    @cached_property
    def _data(self) -> dict[str, Tensor]:
        """All tensors on the device: warmup/attribution/fit images (uint8) and labels, queries."""
        c = self.config
        folder = resolve_folder(c.data_dir, c.download, c.verify)
        checksums = MD5 if c.verify else None
        train_x, train_y = read_batches(folder, TRAIN_FILES, checksums, c.classes)   # classes: relabelled 0..C−1
        test_x, test_y = read_batches(folder, ("test_batch",), checksums, c.classes)
        if c.warmup_size + c.n_train > len(train_y):
            raise ValueError(f"task.warmup_size + task.n_train = {c.warmup_size + c.n_train} exceeds the "
                             f"{len(train_y)} training images")
        if c.n_query > len(test_y):
            raise ValueError(f"task.n_query={c.n_query} exceeds the {len(test_y)} test images; 0 takes them all")
        gen = torch.Generator().manual_seed(c.data_seed)
        perm = torch.randperm(len(train_y), generator=gen)
        warm, attr, rest = perm[: c.warmup_size], perm[c.warmup_size : c.warmup_size + c.n_train], perm[c.warmup_size:]
        query = torch.randperm(len(test_y), generator=gen)[: c.n_query] if c.n_query else torch.arange(len(test_y))
        train_x, test_x = resize(train_x, c.image_size), resize(test_x, c.image_size)
        out = {"warm_x": train_x[warm], "warm_y": train_y[warm], "attr_x": train_x[attr], "attr_y": train_y[attr],
               "query_x": test_x[query], "query_y": test_y[query]}
        if c.fit_on_full:
            out |= {"fit_x": train_x[rest], "fit_y": train_y[rest]}
        return {k: v.to(self.device) for k, v in out.items()}

    def train_data(self) -> Batch:
        return self._data["attr_x"], self._data["attr_y"]   # shapes: [N, 3, S, S] uint8, [N]

    def query_data(self) -> Batch:
        return self._data["query_x"], self._data["query_y"]

    def fit_data(self) -> Batch:
        d = self._data
        return (d["fit_x"], d["fit_y"]) if self.config.fit_on_full else self.train_data()

    @property
    def n_classes(self) -> int:
        return len(self.config.classes) or 10

    @cached_property
    def _whiten(self) -> Tensor:
        """Whitening filters from (at most 5,000 of) the warmup images, else the attribution images."""
        d = self._data
        source = d["warm_x"] if len(d["warm_x"]) else d["attr_x"]
        return whitening_filters(source[:5000], self.config.whiten_eps)

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = ResNet9(self._whiten.cpu(), self.config.widths, self.config.bn_momentum, self.n_classes).to(self.device)
        if self._cuda and self.config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    # ----- objective and measurement --------------------------------------------------------
    def outputs(self, model: nn.Module, batch: Batch) -> Tensor:
        return model(normalize(batch[0])).float()   # shape: [B, C] logits

    def output_loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(outputs, batch[1], label_smoothing=self.config.label_smoothing, reduction="none")

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return self.output_loss(self.outputs(model, batch), batch)   # shape: [B]

    def measurement(self, model: nn.Module, batch: Batch) -> Tensor:
        logits, labels = self.outputs(model, batch), batch[1]
        if self.config.measurement == "loss":
            return F.cross_entropy(logits, labels, reduction="none")  # shape: [B]
        own = torch.arange(logits.shape[1], device=logits.device) == labels[:, None]
        return logits.gather(1, labels[:, None]).squeeze(1) - logits.masked_fill(own, float("-inf")).logsumexp(1)

    def _groups(self, model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(BatchNorm shifts, all other trained tensors)."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return [p for n, p in named if n.endswith("shift")], [p for n, p in named if not n.endswith("shift")]

    def regularizer(self, model: nn.Module) -> Tensor:
        """Weight decay as the L2 term of mean(loss) + R: coefficient weight_decay/lr per example
        (÷ bias_scaler on the shifts, whose learning rate is that much larger)."""
        c = self.config
        shifts, others = self._groups(model)
        lam = c.weight_decay / c.lr
        return 0.5 * lam * (sum(p.square().sum() for p in others) + sum(p.square().sum() for p in shifts) / c.bias_scaler)

    # ----- training ---------------------------------------------------------------------------
    def total_steps(self, n_examples: int) -> int:
        """Steps of the main phase (the warmup-set steps before step 0 are not counted)."""
        return self.config.epochs * math.ceil(n_examples / self.config.batch_size)

    def _optimizer(self, model: nn.Module) -> torch.optim.SGD:
        """SGD on the summed loss: the per-1024 lr and wd divided by the Nesterov step gain 1 + 1/(1−m)."""
        c = self.config
        scale = 1024 * (1 + 1 / (1 - c.momentum))
        lr, wd = c.lr / scale, c.weight_decay * c.batch_size / scale
        shifts, others = self._groups(model)
        groups = [{"params": shifts, "lr": lr * c.bias_scaler, "weight_decay": wd / (lr * c.bias_scaler)},
                  {"params": others, "lr": lr, "weight_decay": wd / lr}]
        opt = torch.optim.SGD(groups, lr=lr, momentum=c.momentum, nesterov=True)
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
        return opt

    def _update(self, model: nn.Module, opt: torch.optim.SGD, x: Tensor, y: Tensor, gen: torch.Generator) -> None:
        """One SGD step on the uint8 images ``x`` ``[B, 3, S, S]``: augment, forward, summed loss."""
        c = self.config
        x = augment(normalize(x), c.flip, c.translate, gen)
        x = x.contiguous(memory_format=torch.channels_last if self._cuda and c.channels_last else torch.contiguous_format)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._cuda and c.bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=c.label_smoothing, reduction="sum")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def _set_lr(self, opt: torch.optim.SGD, factor: float) -> float:
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        return opt.param_groups[1]["lr"]

    def _warmup(self, model: nn.Module, opt: torch.optim.SGD, cpu_gen: torch.Generator, gen: torch.Generator) -> float:
        """``warmup_steps`` steps on the warmup set at the schedule's starting learning rate."""
        c, d = self.config, self._data
        lr = self._set_lr(opt, triangle(0, 1))
        n = len(d["warm_y"])
        if n == 0 or c.warmup_steps == 0:
            return lr
        size = min(c.batch_size, n)
        rounds = math.ceil(c.warmup_steps * size / n)
        order = torch.cat([torch.randperm(n, generator=cpu_gen) for _ in range(rounds)]).to(self.device)
        for s in range(c.warmup_steps):
            idx = order[s * size : (s + 1) * size]
            self._update(model, opt, d["warm_x"][idx], d["warm_y"][idx], gen)
        return lr

    def train(self, model: nn.Module, indices: Tensor, seed: int, on_checkpoint: Optional[CheckpointHook] = None,
              checkpoint_steps: tuple[int, ...] = ()) -> nn.Module:
        """Warmup phase, then ``epochs`` shuffled passes over ``indices`` in ⌈m/batch_size⌉ near-equal
        batches (a tiny last batch would skew the fast-moving BatchNorm statistics); checkpoint hooks
        receive the per-example step size of the weights (the loss is summed over each batch)."""
        c = self.config
        cpu_gen = torch.Generator().manual_seed(seed)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        opt = self._optimizer(model)
        x, y = self.train_data()
        total, wanted, step = self.total_steps(indices.numel()), set(checkpoint_steps), 0
        model.train()
        lr = self._warmup(model, opt, cpu_gen, gen)
        if on_checkpoint is not None and 0 in wanted:
            on_checkpoint(0, model, lr)
        for _ in range(c.epochs):
            order = indices.cpu()[torch.randperm(indices.numel(), generator=cpu_gen)].to(self.device)
            for idx in torch.tensor_split(order, total // c.epochs):   # equal batches: no tiny last one
                lr = self._set_lr(opt, triangle(step, total))
                self._update(model, opt, x[idx], y[idx], gen)
                step += 1
                if on_checkpoint is not None and step in wanted:
                    on_checkpoint(step, model, lr)
        return model

    def recommendations(self) -> dict[str, dict[str, object]]:
        """Exact per-example gradients of every weight (~2M at full width) do not fit in memory for
        thousands of images: gradient methods then project to 512 dimensions (the shared projector
        draws its matrix blocks on the device), in large batches on CUDA.  BIF takes 001 Table 3's
        CIFAR-10 row (b=1024, C=4, T=100, no burn-in, nβ=200, γ=10⁴); the paper gives no step size, and
        ε=1e-5 keeps ε·γ/(2δ) below 1 for RMSprop-SGLD (sweep it: `tdabench sweep ... --grid epsilon=...`).
        SOURCE scores its queries in passes that keep their gradients under 8 GB (the dattri influence
        functions do so by default); DataInf's Fisher then comes from as many rows, and CG's and Arnoldi's
        Hessian-vector products go over the attribution set a training batch at a time.  On CUDA, TRAK holds its
        projection matrix: redrawn in blocks for every featurize batch of 128, the 2M × 2,048 Gaussian would
        be 390 × 16 GB of random numbers per model at 50,000 images."""
        c = self.config
        chans = (24, *c.widths)
        dim = sum(9 * (a * b + b * b) + 2 * b for a, b in zip(chans, chans[1:])) + self.n_classes * c.widths[-1]
        recs: dict[str, dict[str, object]] = {
            "bif": {"batch_size": 1024, "chains": 4, "draws": 100, "burn_in": 0, "nbeta": 200.0,
                    "gamma": 10000.0, "epsilon": 1e-5}}
        if 4 * dim * (c.n_train + (c.n_query or 1000 * self.n_classes)) > 2**31:   # float32 gradients above 2 GiB
            projected = {"proj_dim": 512, "batch_size": 1024 if self._cuda else 64}
            recs |= {"gradsim": projected, "tracin": dict(projected)}
        queries = c.n_query or 1000 * self.n_classes
        if 8 * dim * queries > 2**33:   # SOURCE's query side, [Q, d] float32 held twice: 160 GB at 10,000 queries
            recs["source"] = {"query_batch": max(1, 2**33 // (8 * dim))}
        rows = max(1, 2**33 // (4 * dim))   # the dattri methods' passes: 8 GB of float32 gradients (1,090 at full width)
        if c.n_train > rows:                # DataInf's Fisher keeps every row it is estimated from
            recs["datainf"] = {"fit_fraction": rows / c.n_train}
        if c.n_train > c.batch_size:        # else CG's and Arnoldi's H·v over the whole set's activations, twice
            recs |= {name: {"hessian_batch": c.batch_size} for name in ("cg", "arnoldi")}   # differentiated
        if self._cuda:   # TRAK's d × 2,048 Gaussian (16 GB at full width) held once, not redrawn for every batch
            recs["trak"] = {"projector_memory_mb": math.ceil(4 * dim * TRAK_PROJ_DIM / 2**20)}
        return recs

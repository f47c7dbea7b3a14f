"""Running a task's or method's own code on fake tensors: shapes, dtypes, memory and FLOPs without
the memory or the compute (the toolkit under ``tdabench plan``).

Inside ``fake_run(device)`` every tensor the code creates is a ``FakeTensor`` (torch's fake tensor
mode): operators compute output shapes only (about a millisecond each, whatever their size).
``LiveBytes`` counts the bytes of the fake storages alive at every operator —
their peak is the memory the real run's allocator would hold for tensors (rounded to its 512-byte
blocks), without its cache or the CUDA context — and counts the arithmetic with torch's
per-operator FLOP formulas.  Shims let ordinary model code run: random generators on any device
draw from a CPU generator (values do not matter, shapes do), ``Module.to`` replaces parameters instead of swapping
fake tensors in place, ``deepcopy`` clones fake tensors, saving and loading keep fake tensors in
memory, a fake tensor copied to numpy gives zeros of its shape, and values a fake tensor lacks
(``.item()``, ``nonzero``) are stood in for.  On a machine
without CUDA, trace the CPU path (``tdabench.plan.costplan`` does): a fake CUDA tensor there cannot
even be sliced.

This file is longer than 300 lines: live-byte accounting, the stand-ins for data-dependent operators and
the file hooks act together inside one fake-tensor context.
"""
from __future__ import annotations

import contextlib
import warnings
import weakref
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

#: CUDA's caching allocator hands out blocks in multiples of 512 bytes.
BLOCK = 512


def _scalar(t: torch.Tensor) -> Any:
    return True if t.dtype == torch.bool else 1.0 if t.is_floating_point() or t.is_complex() else 0


def _nonzero(t: torch.Tensor) -> torch.Tensor:
    return torch.empty((t.numel(), t.dim()), dtype=torch.long, device=t.device)


#: Operators whose result depends on values a fake tensor does not have: ``.item()`` reads 1.0 for a
#: float (a finite loss, one round of a tolerance loop), 0 for an integer (no failures counted, a
#: factorization's info code) and True for a flag; ``nonzero`` finds every element nonzero (an
#: upper bound on what it allocates).
_DATA_DEPENDENT = {torch.ops.aten._local_scalar_dense.default: _scalar,
                   torch.ops.aten.nonzero.default: _nonzero}


class OverBudget(RuntimeError):
    """Raised by ``LiveBytes`` when a stage has run its ``budget`` of operators."""


class LiveBytes(TorchDispatchMode):
    """Bytes of fake storages alive on ``device``'s type, now (``current``) and at most (``peak``).
    With ``fake_only=False`` it counts real tensors' storages too (the same bookkeeping for a real run)."""

    def __init__(self, device: torch.device, fake_only: bool = True) -> None:
        super().__init__()
        self.device, self.device_type, self.fake_only = device, device.type, fake_only
        self.current = self.peak = 0
        self.guessed = 0     # data-dependent values stood in for (see _DATA_DEPENDENT)
        self.ops, self.budget = 0, 0   # operators run since reset_peak; stop after budget (0: never)
        self.flops = 0                 # FLOPs of every operator torch's FLOP counter knows, all stages
        self._live: dict[int, tuple[weakref.ref, int, int]] = {}   # id → (weak storage, bytes, serial)
        self._serial = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        self.ops += 1
        if self.budget and self.ops > self.budget and func.namespace == "aten" \
                and torch._C._current_graph_task_id() == -1:
            self.check_budget()   # an aten operator outside backward: the exception reaches Python
        if func in _DATA_DEPENDENT and isinstance(args[0], FakeTensor):
            self.guessed += 1
            return _DATA_DEPENDENT[func](args[0])
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, FakeTensor) and t.device.type == "meta":
                t.fake_device = self.device   # torch.func's forward-mode AD hands back meta fakes
        out = func(*args, **(kwargs or {}))
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.flops += count(*args, **(kwargs or {}), out_val=out)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == self.device_type \
                    and (isinstance(t, FakeTensor) or not self.fake_only):
                self._count(t.untyped_storage())
        return out

    def _count(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        if key in self._live:
            return
        size = -(-storage.nbytes() // BLOCK) * BLOCK
        self.current += size
        self.peak = max(self.peak, self.current)
        self._serial += 1
        self._live[key] = (weakref.ref(storage, lambda _, key=key: self._free(key)), size, self._serial)

    def _free(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self.current -= entry[1]

    def get_total_flops(self) -> int:
        """FLOPs counted so far (the interface of torch's ``FlopCounterMode``)."""
        return self.flops

    def mark(self) -> int:
        """A point to ``forget_since``."""
        return self._serial

    def forget_since(self, mark: int) -> None:
        """Stop counting what was allocated after ``mark`` and is still alive (what an interrupted
        stage left behind must not weigh on the stages after it)."""
        for key in [k for k, (_, _, serial) in self._live.items() if serial > mark]:
            self._free(key)

    def check_budget(self, *_: Any) -> None:
        """Stop the stage once it has run its budget.  Called before each module's forward (plain
        Python): raised from inside an operator, the exception can meet C++ (autograd) and abort."""
        if self.budget and self.ops > self.budget:
            raise OverBudget(f"stopped after {self.budget:,} operators")

    def hold(self, nbytes: int) -> None:
        """Count ``nbytes`` held outside the fake run (real tensors the device would hold) as live."""
        self.current += nbytes
        self.peak = max(self.peak, self.current)

    def reset_peak(self) -> None:
        """Start a new stage: its peak (and operator count) counts from what is alive now."""
        self.peak, self.ops = self.current, 0


def _module_to(self: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
    device, dtype, _, memory_format = torch._C._nn._parse_to(*args, **kwargs)

    def convert(t: torch.Tensor) -> torch.Tensor:
        extra: dict[str, Any] = {"device": device} if device is not None else {}
        if dtype is not None and t.is_floating_point():
            extra["dtype"] = dtype
        if memory_format is not None and t.dim() == 4:
            extra["memory_format"] = memory_format
        return t.to(**extra) if extra else t

    for module in self.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and (q := convert(p)) is not p:
                module._parameters[name] = nn.Parameter(q, requires_grad=p.requires_grad)
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = convert(b)
    return self


class _Generator:
    """Stands in for ``torch.Generator(device=...)``: a CPU generator whatever the device."""

    def __new__(cls, device: Any = "cpu") -> torch.Generator:   # noqa: ARG003 — fake draws only need shapes
        return _REAL_GENERATOR()


_REAL_GENERATOR = torch.Generator


def _deepcopy(original: Any) -> Any:
    """Tensor.__deepcopy__ reads a subclass's data pointer, which a fake tensor does not have."""
    def deepcopy(self: torch.Tensor, memo: dict) -> torch.Tensor:
        if not isinstance(self, FakeTensor):
            return original(self, memo)
        if id(self) not in memo:
            memo[id(self)] = self.detach().clone().requires_grad_(self.requires_grad)
        return memo[id(self)]
    return deepcopy


class _Files:
    """``torch.save``/``torch.load`` and safetensors' ``save_file``/``load_file`` during a fake run:
    fake tensors cannot be serialised, so an object holding any stays in memory under its path and
    loading that path returns it (under ``scratch`` an empty file marks it, for code that checks
    whether it exists; nowhere else is such a file written); everything else is saved and loaded for
    real (a tokenised-data cache written during a plan is a real, complete file)."""

    def __init__(self, real: dict[str, Any], scratch: Optional[Path]) -> None:
        self.real, self.kept, self.scratch = real, {}, scratch.resolve() if scratch else None

    def _keep(self, key: str, obj: Any) -> None:
        self.kept[key] = obj
        if self.scratch is not None and Path(key).is_relative_to(self.scratch):
            Path(key).touch()

    @staticmethod
    def _key(f: Any) -> Optional[str]:
        return str(Path(f).resolve()) if isinstance(f, (str, Path)) else None

    def save(self, obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if self._key(f) and any(isinstance(t, FakeTensor) for t in tree_flatten(obj)[0]):
            self._keep(self._key(f), obj)
        else:
            self.real["save"](obj, f, *args, **kwargs)

    def load(self, f: Any, *args: Any, **kwargs: Any) -> Any:
        return self.kept[self._key(f)] if self._key(f) in self.kept else self.real["load"](f, *args, **kwargs)

    def save_file(self, tensors: Any, filename: Any, metadata: Any = None) -> None:
        if self._key(filename) and any(isinstance(t, FakeTensor) for t in tensors.values()):
            self._keep(self._key(filename), tensors)
        else:
            self.real["save_file"](tensors, filename, metadata)

    def load_file(self, filename: Any, device: Any = "cpu") -> Any:
        key = self._key(filename)
        return self.kept[key] if key in self.kept else self.real["load_file"](filename, device)


def _file_patches(scratch: Optional[Path]) -> list[tuple[Any, Any]]:
    """(original, replacement) of the four functions."""
    import safetensors.torch as st

    real = {"save": torch.save, "load": torch.load, "save_file": st.save_file, "load_file": st.load_file}
    files = _Files(real, scratch)
    return [(real[name], getattr(files, name)) for name in real]


@contextlib.contextmanager
def _bound_everywhere(pairs: list[tuple[Any, Any]]) -> Iterator[None]:
    """Replace each original function in every loaded module that holds it under some name; on exit
    put the original back wherever a replacement is found, in modules imported meanwhile too (a
    library first imported during a plan's trace, such as kronfluence, binds ``save_file`` to the
    replacement: left there, the next trace saved through the previous trace's files and lost them)."""
    swaps = _holders(pairs)
    for module, name, new in swaps:
        setattr(module, name, new)
    try:
        yield
    finally:
        for module, name, old in _holders([(new, old) for old, new in pairs]):
            setattr(module, name, old)


def _holders(swap: list[tuple[Any, Any]]) -> list[tuple[Any, str, Any]]:
    """(module, name, replacement) for every loaded module's global that is (by identity) the first
    of a pair of ``swap``."""
    import sys

    return [(module, name, new) for module in list(sys.modules.values()) if module is not None
            for name, value in list(getattr(module, "__dict__", {}).items())
            for old, new in swap if value is old]


def _numpy(original: Any) -> Any:
    """``Tensor.numpy`` of a fake tensor: zeros of its shape (host memory; the values do not matter),
    so that libraries that copy tensors into numpy arrays or memory maps (traker) run."""
    def numpy(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(self, FakeTensor):
            return original(self, *args, **kwargs)
        import numpy as np

        dtype = torch.float32 if self.dtype == torch.bfloat16 else self.dtype   # numpy has no bfloat16
        with unset_fake_temporarily():
            kind = torch.empty(0, dtype=dtype).numpy().dtype
        return np.zeros(tuple(self.shape), dtype=kind)
    return numpy


#: ``Module.double()`` and its kin convert by ``_apply``, which swaps fake tensors in place and fails
#: ("Couldn't swap Linear.weight": the fake mode holds weak references to them); ``_module_to`` replaces.
_CASTS = {"double": torch.float64, "float": torch.float32, "half": torch.float16, "bfloat16": torch.bfloat16}


@contextlib.contextmanager
def _shims(scratch: Optional[Path]) -> Iterator[None]:
    saved = torch.Generator, nn.Module.to, torch.Tensor.__deepcopy__, torch.Tensor.numpy
    casts = {name: getattr(nn.Module, name) for name in _CASTS}
    torch.Generator, nn.Module.to = _Generator, _module_to
    torch.Tensor.__deepcopy__, torch.Tensor.numpy = _deepcopy(saved[2]), _numpy(saved[3])
    for name, dtype in _CASTS.items():
        setattr(nn.Module, name, lambda self, dtype=dtype: _module_to(self, dtype))
    try:
        with _bound_everywhere(_file_patches(scratch)):
            yield
    finally:
        torch.Generator, nn.Module.to, torch.Tensor.__deepcopy__, torch.Tensor.numpy = saved
        for name, method in casts.items():
            setattr(nn.Module, name, method)


@contextlib.contextmanager
def fake_run(device: torch.device, scratch: Optional[Path] = None) -> Iterator[tuple[LiveBytes, LiveBytes]]:
    """Run the enclosed code on fake tensors; yields (live bytes on ``device``'s type, FLOP counter):
    one mode counts both, with torch's per-operator FLOP formulas (``FlopCounterMode`` itself tracks
    modules with hooks that kept every traced model's tensors alive: the live bytes grew with each
    trace, and the loop extrapolation multiplied that drift up to terabytes).
    ``scratch``: a directory of this run's own where saved fake tensors leave marker files."""
    live = LiveBytes(torch.device(device))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*data pointer of FakeTensor.*")
            hook = nn.modules.module.register_module_forward_pre_hook(live.check_budget)
            try:
                with FakeTensorMode(allow_non_fake_inputs=True), _shims(scratch), live:
                    yield live, live
            finally:
                hook.remove()
    finally:
        _clear_caches()


def _clear_caches() -> None:
    """Empty every ``functools`` cache outside torch and the standard library: a task's per-device
    constants cached during a fake run would be fake tensors in the real run that follows."""
    import functools
    import gc

    for obj in gc.get_objects():
        if isinstance(obj, functools._lru_cache_wrapper):
            module = getattr(obj, "__module__", "") or ""
            if module.split(".")[0] not in _KEEP_CACHES and obj.cache_info().currsize:
                obj.cache_clear()


#: Top-level packages whose caches hold no tensors of a fake run (and are costly to rebuild).
_KEEP_CACHES = {"torch", "functools", "typing", "re", "importlib", "inspect", "sympy", "transformers", "tokenizers",
                "numpy", "pathlib", "collections", "enum", "abc", "dataclasses", "email", "urllib", "json", "ast"}

"""Name → class registries for tasks and methods, with did-you-mean errors.

A built-in task or method registers itself in its own file with ``@register_task`` /
``@register_method``; the registry imports every module of ``tdabench.tasks`` /
``tdabench.methods`` the first time it is asked.  Third-party packages add theirs through the
entry-point groups ``tdabench.tasks`` and ``tdabench.methods`` (the entry point loads the class).
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown task or method name; ``str()`` lists the known names and a did-you-mean."""

    def __str__(self) -> str:  # KeyError would print the repr
        return str(self.args[0])


class Registry(Generic[T]):
    """Holds the classes of one kind (``task`` or ``method``) by their ``name``."""

    def __init__(self, kind: str, package: str, group: str) -> None:
        self.kind, self.package, self.group = kind, package, group
        self._classes: dict[str, type[T]] = {}
        self._loaded = False
        #: Modules or entry points that failed to import: name → error (shown, never swallowed).
        self.broken: dict[str, str] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: add ``cls`` under ``cls.name``."""
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__qualname__} needs a class attribute `name` to be registered")
        other = self._classes.get(name)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"{self.kind} name {name!r} is taken by {other.__module__}.{other.__qualname__}")
        self._classes[name] = cls
        return cls

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                self._try(f"{self.package}.{info.name}", lambda n=info.name: importlib.import_module(f"{self.package}.{n}"))
        for ep in entry_points(group=self.group):
            self._try(f"entry point {ep.name} ({ep.value})", lambda ep=ep: self.register(ep.load()))

    def _try(self, label: str, load: "Callable[[], object]") -> None:
        """One broken plug-in must not take down the others: record its error and go on."""
        try:
            load()
        except Exception as err:  # reported by get(), names() callers and `tdabench list`
            self.broken[label] = f"{type(err).__name__}: {err}"

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load()
        return sorted(self._classes)

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``; unknown names fail with a did-you-mean."""
        self._load()
        if name in self._classes:
            return self._classes[name]
        broken = "".join(f"\n  {label} failed to import: {err}" for label, err in self.broken.items())
        raise unknown_name(self.kind, name, self.names(), broken)


def unknown_name(kind: str, name: str, known: list[str], extra: str = "") -> UnknownNameError:
    """The error for an unknown name: the known names and the closest one."""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(sorted(known))}{extra}")


TASKS: Registry = Registry("task", "tdabench.tasks", "tdabench.tasks")
METHODS: Registry = Registry("method", "tdabench.methods", "tdabench.methods")
METRICS: Registry = Registry("metric", "tdabench.metrics", "tdabench.metrics")
register_task = TASKS.register
register_metric = METRICS.register
register_method = METHODS.register

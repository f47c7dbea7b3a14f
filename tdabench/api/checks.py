"""Validation shared by the method configs, called from their ``__post_init__`` so that a bad
setting fails when the config is built (``--set`` parsing, a record's JSON, a test), before any
training.  Every error is a ``ConfigError`` that reads ``METHOD.FIELD=VALUE: must be RULE (what the
field means); set --set METHOD.FIELD=FIX``.

A toolkit: third-party method configs may use it the same way.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
import typing
from typing import Any, Literal, NoReturn, Optional

from tdabench.api.config import ConfigError


def fail(scope: str, name: str, value: Any, rule: str, meaning: str, fix: Any) -> NoReturn:
    """Raise the ConfigError for ``scope.name=value`` breaking ``rule``, suggesting ``fix``."""
    shown = value if isinstance(value, numbers.Number) or value is None else repr(value)
    raise ConfigError(f"{scope}.{name}={shown}: must be {rule} ({meaning}); set --set {scope}.{name}={_fmt(fix)}")


def _fmt(value: Any) -> str:
    """A value as the command line spells it (``none`` for None, comma lists for tuples)."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _default(config: Any, name: str) -> Any:
    for f in dataclasses.fields(config):
        if f.name == name and f.default is not dataclasses.MISSING:
            return f.default
    return None


def integer(config: Any, scope: str, name: str, meaning: str, minimum: Optional[int] = None,
            optional: bool = False, fix: Any = None) -> None:
    """``name`` is an integer (not a bool) of at least ``minimum``; ``None`` too when ``optional``."""
    value = getattr(config, name)
    if optional and value is None:
        return
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and (minimum is None or value >= minimum):
        return
    rule = "an integer" + (f" ≥ {minimum}" if minimum is not None else "") + (" or none" if optional else "")
    fail(scope, name, value, rule, meaning, fix if fix is not None else _default(config, name))


def number(config: Any, scope: str, name: str, meaning: str, *, above: Optional[float] = None,
           at_least: Optional[float] = None, below: Optional[float] = None, at_most: Optional[float] = None,
           finite: bool = True, optional: bool = False, fix: Any = None) -> None:
    """``name`` is a real number within the given bounds (finite unless ``finite=False``; NaN never
    passes); ``None`` too when ``optional``."""
    value = getattr(config, name)
    if optional and value is None:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        ok = (not finite or math.isfinite(value)) and (above is None or value > above) \
            and (at_least is None or value >= at_least) and (below is None or value < below) \
            and (at_most is None or value <= at_most)
    if ok:
        return
    low = f"> {above:g}" if above is not None else f"≥ {at_least:g}" if at_least is not None else ""
    high = f"< {below:g}" if below is not None else f"≤ {at_most:g}" if at_most is not None else ""
    if low and high:
        left = "(" if above is not None else "["
        right = ")" if below is not None else "]"
        lo, hi = (above if above is not None else at_least), (below if below is not None else at_most)
        rule = f"in {left}{lo:g}, {hi:g}{right}"
    else:
        rule = " ".join(filter(None, ["a", "finite" if finite else "", "number", low or high]))
    fail(scope, name, value, rule + (" or none" if optional else ""), meaning,
         fix if fix is not None else _default(config, name))


def choices_and_patterns(config: Any, scope: str) -> None:
    """Every ``Literal`` field holds one of its choices (the command line checks this, a config
    built in code does not), and every regex in ``patterns`` compiles."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        tp, value = hints[f.name], getattr(config, f.name)
        if typing.get_origin(tp) is Literal and value not in typing.get_args(tp):
            options = ", ".join(map(str, typing.get_args(tp)))
            raise ConfigError(f"{scope}.{f.name}={value!r}: must be one of {options}; "
                              f"set --set {scope}.{f.name}={_fmt(f.default)}")
    patterns = getattr(config, "patterns", ())
    if isinstance(patterns, str):   # a bare string would be iterated character by character
        raise ConfigError(f"{scope}.patterns={patterns!r}: must be a tuple of regular expressions, not a string; "
                          f"set --set {scope}.patterns={patterns}")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as err:
            raise ConfigError(f"{scope}.patterns={_fmt(config.patterns)}: must be regular expressions ({pattern!r}: "
                              f"{err}); correct it, or use every parameter: set --set {scope}.patterns=") from None

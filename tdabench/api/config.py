"""Frozen-dataclass configs: type-checked ``--set key=value`` overrides and content hashes."""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import io
import json
import re
import tokenize
import types
import typing
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message says which and what is allowed."""


def config_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (frozen) dataclass config; tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def content_hash(payload: Any, length: int = 16) -> str:
    """A stable hex digest of any JSON-serialisable payload (keys sorted)."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def field_summary(config_cls: type) -> list[tuple[str, str, Any]]:
    """``[(name, type name, default), ...]`` for every field of a config dataclass."""
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append((f.name, _type_name(hints[f.name]), default))
    return out


def field_docs(config_cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of each field's line in the config's source (and its bases'),
    which is where every config documents its fields; ``{}`` when the source is not available."""
    docs: dict[str, str] = {}
    for cls in reversed(config_cls.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type != tokenize.COMMENT:
                continue
            match = re.match(r"\s+(\w+)\s*:", lines[tok.start[0] - 1])
            if match:
                docs[match.group(1)] = tok.string.lstrip("#").strip()
    return docs


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def coerce(value: str, tp: Any, key: str) -> Any:
    """Parse the string ``value`` as type ``tp`` (int, float, bool, str, Literal, Optional, tuple)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and value.lower() in ("none", "null"):
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}={value!r}: not a valid {_type_name(tp)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if str(choice) == value:
                return choice
        raise ConfigError(f"{key}={value!r}: must be one of {', '.join(map(str, choices))}")
    if origin is tuple:
        args = typing.get_args(tp)
        inner = args[0] if args else str
        parts = [p for p in value.split(",") if p != ""] if value else []
        return tuple(coerce(p, inner, key) for p in parts)
    if tp is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={value!r}: must be true or false")
    if tp in (int, float, str):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r}: must be {tp.__name__}") from None
    raise ConfigError(f"{key}: fields of type {_type_name(tp)} cannot be set from the command line")


def coerce_known(config: Any, key: str, value: str, scope: str) -> Any:
    """``value`` parsed as the type of ``config``'s field ``key`` (unknown keys: the list of valid ones)."""
    hints = typing.get_type_hints(type(config))
    if key not in hints:
        listing = ", ".join(f"{scope}.{f.name}" for f in dataclasses.fields(config)) or "(none)"
        raise ConfigError(f"unknown setting {scope}.{key}; valid keys: {listing}")
    return coerce(value, hints[key], f"{scope}.{key}")


def apply_overrides(config: Any, overrides: dict[str, str], scope: str) -> Any:
    """A copy of ``config`` with string overrides parsed against its field types.

    Unknown keys fail with the list of valid keys for ``scope`` (e.g. ``task.n_train``).
    """
    parsed = {key: coerce_known(config, key, value, scope) for key, value in overrides.items()}
    try:
        return dataclasses.replace(config, **parsed)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:   # a config's own check that is not yet a ConfigError
        raise ConfigError(f"{scope}: {err}") from None


def with_values(config_cls: type, values: dict[str, Any] | None) -> Any:
    """Build ``config_cls`` from already-typed values (e.g. a record's JSON), lists → tuples."""
    values = dict(values or {})
    hints = typing.get_type_hints(config_cls)
    for key, val in list(values.items()):
        if key not in hints:
            raise ConfigError(f"{config_cls.__qualname__} has no field {key!r}")
        if isinstance(val, list):
            values[key] = tuple(val)
    return config_cls(**values)


def parse_set_args(items: list[str]) -> dict[str, dict[str, str]]:
    """``["task.n_train=500", "gradsim.proj_dim=64"]`` → ``{"task": {"n_train": "500"}, ...}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(
                f"--set {item!r}: expected SCOPE.KEY=VALUE, e.g. task.n_train=500 or gradsim.proj_dim=64"
            )
        lhs, value = item.split("=", 1)
        scope, key = lhs.split(".", 1)
        out.setdefault(scope, {})[key] = value
    return out

"""Build (nested) dataclasses from plain mappings, checking keys and types against annotations.

`from_mapping(TrainConfig, {"lr": "fast"}, "train", lines)` raises
`ConfigError("config.yaml:12: train.lr: expected a number, got 'fast'")`. Supported annotations:
int, float (ints accepted), bool, str, Path (from str), Literal, list[X], tuple[X, ...] and
tuple[X, Y] (YAML lists accepted), dict[str, X], X | None, unions (arms tried in the order
written, so write `int | float` to keep 2 an int), nested dataclasses and Any.

Validation that needs more than a type lives in each dataclass's `__post_init__`; raising
`FieldError(key, message)` there lets the error point at that key's line.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from kallm.config.yamlsrc import Lines, join_key, located
from kallm.errors import ConfigError, KallmError
from kallm.registry import unknown_name_message

T = TypeVar("T")

# Dataclass fields with this metadata are set by code (e.g. the source file), never from a config.
INTERNAL = {"kallm_internal": True}


class FieldError(ConfigError):
    """A validation error about one key of a dataclass (`key` is relative: 'lr', 'seeds[2]')."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class _ParseError(Exception):
    """A text value that its type's parser refused (the parser's message names what is wrong)."""

    def __init__(self, path: str, message: str) -> None:
        self.path, self.message = path, message


class _TypeMismatch(Exception):
    def __init__(self, path: str, expected: str, value: Any, hint: str = "") -> None:
        self.path, self.expected, self.value, self.hint = path, expected, value, hint


def describe(tp: Any) -> str:
    """A reader's name for a type annotation: 'a number', 'a list of integers', ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "any value"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is Path:
        return "a path (string)"
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and hasattr(tp, "from_text"):
        return f"a {tp.__name__} written as a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is list:
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} items ({', '.join(describe(a) for a in args)})"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _plural(tp: Any) -> str:
    names = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
    return names.get(tp, f"items that are {describe(tp)}")


def _convert(value: Any, tp: Any, path: str, lines: Lines | None) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(value, tp, path, lines)
    if origin is Literal:
        return _convert_literal(value, tp, path)
    if tp in _SCALARS:
        accepts, make = _SCALARS[tp]
        if accepts(value):
            return make(value)
        raise _TypeMismatch(path, describe(tp), value)
    if origin in (list, tuple, dict):
        return _convert_container(value, tp, path, lines)
    if isinstance(tp, type) and hasattr(tp, "from_text") and not isinstance(value, tp):
        return _parse_text(value, tp, path)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _TypeMismatch(path, describe(tp), value)
        return from_mapping(tp, value, path, lines)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _TypeMismatch(path, describe(tp), value)
    raise TypeError(f"from_mapping: unsupported annotation {tp!r} at {path!r}")


# scalar type -> (does a YAML value fit it, how to convert it)
_SCALARS: dict[Any, tuple[Any, Any]] = {
    bool: (lambda v: isinstance(v, bool), lambda v: v),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), lambda v: v),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), float),
    str: (lambda v: isinstance(v, str), lambda v: v),
    Path: (lambda v: isinstance(v, str | Path), Path),
}


def _convert_union(value: Any, tp: Any, path: str, lines: Lines | None) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    hint = ""
    for arm in args:
        if arm is type(None):
            continue
        try:
            return _convert(value, arm, path, lines)
        except _TypeMismatch as exc:
            if exc.path != path:  # the arm matched here but something inside it is wrong
                raise
            hint = hint or exc.hint
    raise _TypeMismatch(path, describe(tp), value, hint)


def _convert_literal(value: Any, tp: Any, path: str) -> Any:
    args = typing.get_args(tp)
    if value in args and not isinstance(value, bool) or any(value is a for a in args):
        return value
    close = difflib.get_close_matches(value, [str(a) for a in args], n=1) if isinstance(value, str) else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise _TypeMismatch(path, describe(tp), value, hint)


def _convert_container(value: Any, tp: Any, path: str, lines: Lines | None) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _TypeMismatch(path, describe(tp), value)
        key_tp, val_tp = args if args else (Any, Any)
        return {_convert(k, key_tp, path, lines): _convert(v, val_tp, join_key(path, str(k)), lines)
                for k, v in value.items()}
    if not isinstance(value, list | tuple):
        raise _TypeMismatch(path, describe(tp), value)
    if origin is list or (len(args) == 2 and args[1] is Ellipsis):
        items = [_convert(v, args[0] if args else Any, join_key(path, i), lines) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if args and len(value) != len(args):
        raise _TypeMismatch(path, describe(tp), value)
    item_tps = args or (Any,) * len(value)
    return tuple(_convert(v, t, join_key(path, i), lines) for i, (v, t) in enumerate(zip(value, item_tps)))


def _parse_text(value: Any, tp: type, path: str) -> Any:
    """Types that are written as text in configs (e.g. VariantSpec) are parsed once, here, by `tp.from_text`."""
    if not isinstance(value, str):
        raise _TypeMismatch(path, describe(tp), value)
    try:
        return tp.from_text(value)
    except KallmError as exc:
        raise _ParseError(path, str(exc)) from None


def config_fields(cls: type) -> list[dataclasses.Field]:
    """The fields a config file may set (internal ones excluded)."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("kallm_internal")]


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "", lines: Lines | None = None) -> T:
    """Build dataclass `cls` from `data`, which sits at key path `where` of a file described by `lines`."""
    if not isinstance(data, Mapping):
        raise ConfigError(located(f"expected a mapping, got {data!r}", where, lines))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in config_fields(cls)}
    for key in data:
        if key not in fields:
            msg = unknown_name_message("key", str(key), list(fields))
            raise ConfigError(located(msg, join_key(where, str(key)), lines))
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required:
                raise ConfigError(located(f"missing required key {name!r}", where, lines))
            continue
        path = join_key(where, name)
        try:
            kwargs[name] = _convert(data[name], hints[name], path, lines)
        except _TypeMismatch as exc:
            raise ConfigError(located(f"expected {exc.expected}, got {exc.value!r}{exc.hint}", exc.path, lines)) from None
        except _ParseError as exc:
            raise ConfigError(located(exc.message, exc.path, lines)) from None
    try:
        return cls(**kwargs)
    except FieldError as exc:
        raise ConfigError(located(exc.message, join_key(where, exc.key), lines)) from None
    except KallmError as exc:  # a section type's own validation, which knows no key
        raise ConfigError(located(str(exc), where, lines)) from None

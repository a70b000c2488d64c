"""YAML loading that remembers where every key came from, with `include:` and deep merging.

Errors in a config must point at the line to fix, so loading returns, next to the plain data, a
map `key path -> SourceLine`. Key paths look like `train.lr` and `variants[2].spec`; the root
mapping itself has the path "".
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kallm.errors import ConfigError

INCLUDE_KEY = "include"
# Bounds that no real config comes near, so that a hostile one is refused in milliseconds: a config file's
# size, the nesting of its collections, and the size of its data once aliases are expanded (a few
# hundred bytes of nested aliases expand to billions of nodes: "billion laughs").
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000


@dataclass(frozen=True)
class SourceLine:
    """A position in a config file, printed as `file:line` (1-based, like editors show it)."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


Lines = dict[str, SourceLine]


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float.

    YAML 1.1 (PyYAML) wants a dot in the mantissa, so `lr: 1e-4` would silently become a string;
    learning rates are written that way all the time.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def join_key(prefix: str, key: str | int) -> str:
    """`join_key("train", "lr") == "train.lr"`, `join_key("variants", 2) == "variants[2]"`."""
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


def locate(lines: Lines | None, path: str) -> SourceLine | None:
    """The line of `path`, or of its nearest ancestor that has one (a missing key has no line)."""
    if not lines:
        return None
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""


def located(message: str, path: str, lines: Lines | None) -> str:
    """'config.yaml:12: train.lr: <message>' (parts that are unknown are left out)."""
    where = locate(lines, path)
    prefix = f"{where}: " if where else ""
    return f"{prefix}{path}: {message}" if path else f"{prefix}{message}"


def _walk(node: yaml.Node, loader: _Loader, path: str, file: str, lines: Lines) -> Any:
    lines[path] = SourceLine(file, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves YAML merge keys (<<: *anchor)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = SourceLine(file, key_node.start_mark.line + 1)
            scalar = isinstance(key_node, yaml.ScalarNode)  # a collection as a key is not built: it is refused
            key = loader.construct_object(key_node, deep=True) if scalar else type(key_node.value).__name__
            if not isinstance(key, str) or not scalar:
                raise ConfigError(f"{line}: {path or 'top level'}: keys must be strings, got {key!r}")
            child = join_key(path, key)
            if key in out:
                raise ConfigError(f"{line}: {child}: duplicate key (first given on line {lines[child].line})")
            out[key] = _walk(value_node, loader, child, file, lines)
            lines[child] = line  # the key's line, which is where a reader looks for it
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, loader, join_key(path, i), file, lines) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _check_nesting(text: str, file: str) -> None:
    """Refuse collections nested deeper than MAX_DEPTH, from the parser's events (composing them recurses)."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"{file}:{event.start_mark.line + 1}: collections nested more than {MAX_DEPTH} "
                                  "deep; a config needs a few levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_expansion(root: yaml.Node, file: str) -> None:
    """Refuse an alias that contains itself, and data that aliases expand beyond MAX_NODES nodes."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise ConfigError(f"{file}:{node.start_mark.line + 1}: a YAML alias refers to the node that holds it")
        open_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(item) for item in node.value)
        else:
            total = 1
        open_nodes.discard(id(node))
        if total > MAX_NODES:
            raise ConfigError(f"{file}:{node.start_mark.line + 1}: YAML aliases expand this config beyond "
                              f"{MAX_NODES:,} values; write it out without nested aliases")
        sizes[id(node)] = total
        return total

    size(root)


def parse_yaml(text: str, file: str) -> tuple[Any, Lines]:
    """Parse one YAML document into plain data plus the line of every key path (nesting and alias expansion
    bounded before any data is built)."""
    loader = _Loader(text)
    try:
        _check_nesting(text, file)
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node, file)
        lines: Lines = {}
        data = None if node is None else _walk(node, loader, "", file, lines)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{file}:{mark.line + 1}" if mark else file
        raise ConfigError(f"{where}: invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    return data, lines


def deep_merge(base: dict[str, Any], base_lines: Lines, over: dict[str, Any], over_lines: Lines,
               prefix: str = "") -> tuple[dict[str, Any], Lines]:
    """Merge `over` onto `base`: mappings merge key by key, anything else (lists too) replaces."""
    merged = dict(base)
    lines = dict(base_lines) if not prefix else base_lines
    for key, value in over.items():
        path = join_key(prefix, key)
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            merged[key], lines = deep_merge(old, lines, value, over_lines, path)
            lines[path] = over_lines[path]
            continue
        # The replaced value's lines (e.g. items of a replaced list) must not outlive it.
        for stale in [p for p in lines if p == path or p.startswith(path + ".") or p.startswith(path + "[")]:
            del lines[stale]
        for p, line in over_lines.items():
            if p == path or p.startswith(path + ".") or p.startswith(path + "["):
                lines[p] = line
        merged[key] = value
    return merged, lines


def read_config_text(path: Path) -> str:
    """The text of config file `path`: a regular file (a FIFO or device is refused before it is opened: it
    could block or never end) of at most MAX_CONFIG_BYTES, in UTF-8."""
    file = str(path)
    if "\0" in file:
        raise ConfigError(f"cannot read config file {file!r}: the path contains a NUL character")
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(21, "Is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{file}: not a regular file; a config must be a YAML file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{file}: {info.st_size:,} bytes is too large for a config (at most "
                              f"{MAX_CONFIG_BYTES:,}); is it the right file?")
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:  # grew since the stat
            raise ConfigError(f"{file}: too large for a config (more than {MAX_CONFIG_BYTES:,} bytes)")
        return data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {file}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not a YAML text file ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror or exc}") from None


def load_yaml_mapping(path: str | Path, _stack: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Lines]:
    """Load a YAML mapping, resolving `include:` (a path, or a list of paths, relative to this file).

    Included files are merged in order, then this file's own keys are merged on top.
    """
    path = Path(path)
    file = str(path)
    text = read_config_text(path)
    resolved = path.resolve()
    if resolved in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, resolved))
        raise ConfigError(f"{file}: include cycle: {chain}")
    data, lines = parse_yaml(text, file)
    if data is None:
        raise ConfigError(f"{file}: the config is empty; expected a mapping of keys such as 'name', 'model'")
    if not isinstance(data, dict):
        raise ConfigError(f"{file}:1: the config must be a mapping of keys, got {type(data).__name__}")
    if INCLUDE_KEY not in data:
        return data, lines

    includes = data.pop(INCLUDE_KEY)
    include_lines = {p: line for p, line in lines.items() if p == INCLUDE_KEY or p.startswith(INCLUDE_KEY + "[")}
    for p in include_lines:
        del lines[p]
    names = includes if isinstance(includes, list) else [includes]
    merged: dict[str, Any] = {}
    merged_lines: Lines = {}
    for i, name in enumerate(names):
        key = INCLUDE_KEY if not isinstance(includes, list) else join_key(INCLUDE_KEY, i)
        if not isinstance(name, str) or not name:
            raise ConfigError(located(f"expected a file path (string), got {name!r}", key, include_lines))
        target = path.parent / name
        if not target.exists():
            raise ConfigError(located(f"included file not found: {target}", key, include_lines))
        sub, sub_lines = load_yaml_mapping(target, (*_stack, resolved))
        merged, merged_lines = deep_merge(merged, merged_lines, sub, sub_lines)
    merged, merged_lines = deep_merge(merged, merged_lines, data, lines)
    merged_lines[""] = lines.get("", SourceLine(file, 1))
    return merged, merged_lines

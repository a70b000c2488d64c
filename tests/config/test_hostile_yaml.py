"""Hostile configs of at most 1 KB are refused in at most 2 s and 200 MB, with one line naming the file:
nested aliases ("billion laughs"), an alias inside itself, deep nesting, merge keys of aliases, and files
that are not regular files (a FIFO would block the reader, /dev/zero never ends)."""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import pytest

from kallm.config.yamlsrc import MAX_DEPTH, load_yaml_mapping
from kallm.errors import ConfigError
from kallm.experiment import load_config


def laughs(levels: int) -> str:
    text = 'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, levels + 1):
        text += f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]\n"
    return text


def merges(levels: int) -> str:
    text = "m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9}\n"
    for i in range(1, levels + 1):
        text += f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 9) + "]}\n"
    return text


HOSTILE = {
    "laughs-9": (laughs(9), r"YAML aliases expand this config beyond 100,000 values"),
    "laughs-6": (laughs(6), r"YAML aliases expand this config beyond"),
    "merge-keys": (merges(8), r"YAML aliases expand this config beyond"),
    "self-alias": ("a: &a [1, *a]\n", r":1: a YAML alias refers to the node that holds it"),
    "self-mapping": ("a: &a {b: *a}\n", r"a YAML alias refers to the node that holds it"),
    "deep-flow": ("a: " + "[" * 480 + "]" * 480 + "\n", rf"collections nested more than {MAX_DEPTH} deep"),
    "deep-block": ("a:\n" + "- " * 300 + "1\n",
                   rf"collections nested more than {MAX_DEPTH} deep"),
    "collection-key": ("? [1, 2]\n: x\n", r"keys must be strings"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_config_is_refused_fast_and_small(tmp_path, name):
    text, pattern = HOSTILE[name]
    assert len(text.encode()) <= 1024
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(path)
    assert time.perf_counter() - start <= 2.0
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError):
            load_yaml_mapping(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 200 * 2**20, f"{peak / 2**20:.0f} MB"


def test_aliases_that_expand_a_little_still_load(tmp_path):
    """Anchors and merge keys are YAML a config may use; only their expansion is bounded."""
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {lr: 0.001, steps: 2}\nrun: {<<: *b, seed: 3}\nlist: &l [1, 2]\nagain: *l\n")
    data, lines = load_yaml_mapping(path)
    assert data == {"base": {"lr": 0.001, "steps": 2}, "run": {"lr": 0.001, "steps": 2, "seed": 3}, "list": [1, 2],
                    "again": [1, 2]}
    assert lines["run.seed"].line == 2


@pytest.mark.parametrize("kind", ["fifo", "device", "include-fifo", "too-large"])
def test_only_regular_files_of_bounded_size_are_read(tmp_path, kind):
    fifo = tmp_path / "f.yaml"
    os.mkfifo(fifo)  # opening it to read would block until a writer comes: it must not be opened
    path = {"fifo": fifo, "device": Path("/dev/zero")}.get(kind, tmp_path / "c.yaml")
    if kind == "include-fifo":
        path.write_text("include: f.yaml\nname: x\n")
    if kind == "too-large":
        path.write_text("name: x\n" + "#" * (1 << 20))
    message = r"1,048,\d+ bytes is too large for a config" if kind == "too-large" else \
        rf"{'f.yaml' if 'fifo' in kind else '/dev/zero'}: not a regular file"
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        load_yaml_mapping(path)
    assert time.perf_counter() - start <= 2.0

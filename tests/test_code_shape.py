"""The shape of the code itself: short functions and modules, and no import cycles between kallm's modules.

Imports inside functions count too: a cycle that is only broken by deferring an import is still a cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "kallm"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The kallm modules `name` imports, anywhere in the file (`from pkg import sub` counts as pkg.sub)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in known else base)
    return {m for m in found if m in known and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_function_or_module_is_too_long():
    too_long = []
    for path in _modules().values():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(SRC)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, too_long


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    assert graph["kallm.experiment.runner"] >= {"kallm.training", "kallm.retrofitting"}  # the graph is real
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []



MAX_TOP_LEVEL_MODULES = 6  # errors, io, locks, progress, provenance, registry: everything else is a package
CONTRACT = "kallm/folders/layout.py"  # the one module that spells the file names of kallm's folders
_WORDS = re.compile(r"[\s/\\'\"`()\[\],;:{}]+")


def test_few_top_level_modules():
    modules = sorted(p.stem for p in SRC.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (module, class, function): those may name files."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _contract_file_names() -> set[str]:
    """The file names of kallm.folders.layout: its module-level string constants with a dot in the name
    (folder names such as `train` or `eval` are ordinary words everywhere else)."""
    names = set()
    for node in ast.parse((SRC.parent / CONTRACT).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign):
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            names |= {v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)
                      and "." in v.value.strip(".")}
    return names


def _spelled(path: Path, names: set[str]) -> list[str]:
    """`line 'name'` for each name of `names` a non-docstring string constant of `path` holds as a word
    (f-string parts included: `f"{run}/heldout.json"` counts)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docstrings(tree)
    return [f"{node.lineno} {n!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
            for n in sorted(set(_WORDS.split(node.value)) & names)]


def test_only_the_layout_spells_the_folders_file_names():
    names = _contract_file_names()
    assert {"heldout.json", "results.jsonl", "manifest.json", "retrofit.safetensors", "config.json", "distill.json",
            "metrics.jsonl", "state.json", "notes.md", "report.md", "scores.json"} <= names  # the check is real
    spelled = [f"{path.relative_to(SRC.parent)}:{hit}" for path in _modules().values()
               if path.relative_to(SRC.parent).as_posix() != CONTRACT for hit in _spelled(path, names)]
    assert spelled == []


def test_the_file_name_check_finds_names_outside_docstrings(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('"""Writes heldout.json."""\nPATH = "runs/x/heldout.json"\n'
                      'def f(run):\n    """results.jsonl"""\n    return f"see {run} results.jsonl"\n')
    assert _spelled(module, {"heldout.json", "results.jsonl"}) == ["2 'heldout.json'", "5 'results.jsonl'"]


def test_the_folders_contract_is_low_level():
    """kallm.folders is read by every writer and reader, so it imports none of them (nor torch)."""
    modules = _modules()
    allowed = {"kallm.errors", "kallm.io"}
    folders = [name for name in modules if name.startswith("kallm.folders")]
    assert {"kallm.folders.layout", "kallm.folders.records"} <= set(folders)
    for name, path in modules.items():
        if name in folders:
            outside = {m for m in _imports(name, path, set(modules)) if not m.startswith("kallm.folders")}
            assert outside <= allowed, (name, outside - allowed)
            tree = ast.parse(path.read_text(encoding="utf-8"))
            third_party = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            third_party |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
                            if isinstance(n, ast.ImportFrom) and not n.level}
            assert not third_party & {"torch", "numpy", "transformers"}, (name, third_party)

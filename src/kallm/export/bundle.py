"""The code an exported model folder carries: kallm's own modules, copied, plus two generated files.

transformers loads a folder's model code (`auto_map` + `trust_remote_code=True`) by copying the named
file and, recursively, every file it imports as `from .name import ...` from the same folder; a file
may import only installed packages besides those. So kallm ships the module closure of
`kallm.export.portable` (the KAN library with every basis family of `kallm.kan.families`, the FFN
wrapper, the layer finder, the freeze policies)
as flat files `kallm_<package>_<module>.py`, each kallm's source with only its `from kallm.x import`
lines pointed at the folder: one implementation, shipped, not a second one written for export.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
from pathlib import Path

from kallm import __version__
from kallm.errors import KallmError

ENTRY_MODULE = "kallm.export.portable"
CONFIG_FILE = "configuration_kallm.py"
MODELING_FILE = "modeling_kallm.py"

_CONFIG_TEMPLATE = '''"""The configuration class of this kallm retrofit (written by `kallm export`, kallm {version})."""

from transformers import {base_config}


class {config_class}({base_config}):
    # A model type of its own: loading without trust_remote_code fails instead of silently building
    # a plain {base_config} model that lacks the retrofitted FFNs.
    model_type = "{model_type}"
'''

_MODELING_TEMPLATE = '''"""The model class of this kallm retrofit (written by `kallm export`, kallm {version}).

{base_class} with the FFNs listed in the config's "kallm" section rebuilt as kallm built them;
the code that does so is kallm_export_portable.py and the kallm_*.py files beside it.
"""

from transformers import {base_class}

from .configuration_kallm import {config_class}
from .kallm_export_portable import RetrofitModelMixin


class {model_class}(RetrofitModelMixin, {base_class}):
    config_class = {config_class}
'''


def shipped_name(module: str) -> str:
    """The file-module name of a kallm module in an exported folder: kallm.kan.fused -> kallm_kan_fused."""
    return module.replace(".", "_")


def _source_path(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or spec.submodule_search_locations is not None:
        raise KallmError(f"cannot ship {module!r} in an export: only kallm modules (not packages) can be copied")
    return Path(spec.origin)


def _kallm_imports(tree: ast.Module, module: str) -> list[ast.ImportFrom]:
    """The `from kallm.x import ...` statements of a module (anywhere in it); other forms are refused."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "kallm" for a in node.names):
            raise KallmError(f"{module} uses `import kallm...`; shipped modules must use `from kallm.x import`")
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "kallm":
            found.append(node)
    return found


def _rewrite(source: str, module: str) -> tuple[str, list[str]]:
    """(source with its kallm imports pointed at the folder, the kallm modules it imports)."""
    lines = source.splitlines(keepends=True)
    needed = []
    for node in _kallm_imports(ast.parse(source), module):
        target = str(node.module)
        needed.append(target)
        line = lines[node.lineno - 1]
        new, count = re.subn(rf"\bfrom\s+{re.escape(target)}\s+import\b", f"from .{shipped_name(target)} import",
                             line, count=1)
        if count != 1:
            raise KallmError(f"cannot rewrite the import of {target} in {module} (line {node.lineno})")
        lines[node.lineno - 1] = new
    return "".join(lines), needed


def shipped_sources(entry: str = ENTRY_MODULE) -> dict[str, str]:
    """{file name: text} of `entry` and every kallm module it imports, recursively, imports rewritten."""
    return dict(_shipped_sources(entry))


@functools.cache  # the sources do not change while kallm runs; parsing them costs ~0.1 s per export
def _shipped_sources(entry: str) -> tuple[tuple[str, str], ...]:
    files: dict[str, str] = {}
    todo, seen = [entry], {entry}
    while todo:
        module = todo.pop()
        path = _source_path(module)
        text, needed = _rewrite(path.read_text(encoding="utf-8"), module)
        origin = path.relative_to(path.parents[len(module.split(".")) - 1]).as_posix()
        header = (f"# Shipped by kallm {__version__} (`kallm export`): {origin}, unchanged but for its kallm "
                  "imports,\n# which point at the files of this folder.\n")
        files[f"{shipped_name(module)}.py"] = header + text
        for name in needed:
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return tuple(sorted(files.items()))


def class_names(base_class: str, base_config: str, base_model_type: str) -> tuple[str, str, str]:
    """(model class, config class, model type) of an export of a `base_class` model."""
    return f"Kallm{base_class}", f"Kallm{base_config}", f"kallm_{base_model_type}"


def generated_sources(base_class: str, base_config: str, base_model_type: str) -> dict[str, str]:
    """{file name: text} of the folder's configuration and modeling files."""
    model_class, config_class, model_type = class_names(base_class, base_config, base_model_type)
    values = dict(version=__version__, base_class=base_class, base_config=base_config, model_class=model_class,
                  config_class=config_class, model_type=model_type)
    return {CONFIG_FILE: _CONFIG_TEMPLATE.format(**values), MODELING_FILE: _MODELING_TEMPLATE.format(**values)}


def write_code(folder: Path, base_class: str, base_config: str, base_model_type: str) -> list[str]:
    """Write the folder's model code; returns the file names."""
    files = {**shipped_sources(), **generated_sources(base_class, base_config, base_model_type)}
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return sorted(files)

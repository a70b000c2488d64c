"""The code an export carries: kallm's own modules with only their kallm imports rewritten."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

from kallm.errors import KallmError
from kallm.export.bundle import _rewrite, generated_sources, shipped_name, shipped_sources


def test_shipped_files_are_kallms_sources_importing_only_each_other():
    files = shipped_sources()
    assert {"kallm_export_portable.py", "kallm_kan_fused.py", "kallm_kan_build.py",
            "kallm_retrofitting_ffn.py", "kallm_errors.py"} <= set(files)
    for name, text in files.items():
        origin = re.search(r": (kallm/\S+)\.py,", text.splitlines()[0]).group(1)  # the header names the source
        assert name == f"{shipped_name(origin.replace('/', '.'))}.py"
        original = Path(importlib.util.find_spec(origin.replace("/", ".")).origin).read_text(encoding="utf-8")
        original = original.splitlines()
        shipped = text.splitlines()[2:]  # after the two header lines
        assert len(shipped) == len(original)
        changed = [(a, b) for a, b in zip(original, shipped) if a != b]
        assert all(a.lstrip().startswith("from kallm.") and b.lstrip().startswith("from .kallm_") for a, b in changed)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in {"torch", "transformers", "numpy", "__future__", "collections",
                                                     "typing", "dataclasses", "math", "re", "difflib"}, (name, node.module)
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert f"{node.module}.py" in files, (name, node.module)  # every relative import is shipped


def test_only_from_imports_of_modules_can_be_shipped():
    assert _rewrite("from kallm.kan.bases import Basis\n", "m")[0] == "from .kallm_kan_bases import Basis\n"
    with pytest.raises(KallmError, match="import kallm"):
        _rewrite("import kallm.kan.bases\n", "m")
    with pytest.raises(KallmError, match="only kallm modules"):
        shipped_sources("kallm.kan")  # a package has no single file to copy
    assert shipped_name("kallm.kan.fused") == "kallm_kan_fused"


def test_generated_files_subclass_the_base_classes():
    files = generated_sources("GPT2LMHeadModel", "GPT2Config", "gpt2")
    for text in files.values():
        compile(text, "<generated>", "exec")
    assert "class KallmGPT2Config(GPT2Config):" in files["configuration_kallm.py"]
    assert 'model_type = "kallm_gpt2"' in files["configuration_kallm.py"]
    assert "class KallmGPT2LMHeadModel(RetrofitModelMixin, GPT2LMHeadModel):" in files["modeling_kallm.py"]

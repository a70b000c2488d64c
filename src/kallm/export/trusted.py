"""Loading a kallm export back into kallm, running only kallm's own code.

An export's model code runs through transformers' `trust_remote_code`, which executes whatever Python
the folder holds. kallm loads an export only when every .py file in it is, byte for byte, a file this
kallm writes into an export of that base class (`kallm.export.bundle`), and its `auto_map` names only
those files: another folder's code (or an export changed after writing, or written by another kallm
version) is refused, never run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kallm.errors import KallmError
from kallm.export.bundle import CONFIG_FILE, MODELING_FILE, class_names, generated_sources, shipped_sources
from kallm.export.portable import CONFIG_KEY, check_export_info
from kallm.folders.layout import HF_CONFIG
from kallm.io import read_json

_MODEL_TYPE = re.compile(r"^[a-z0-9_]+$")


def is_export_config(config: Any) -> bool:
    """Whether a parsed config.json is that of a kallm export (a `kallm` section beside a model type)."""
    return isinstance(config, dict) and isinstance(config.get(CONFIG_KEY), dict) and "model_type" in config


def _transformers_class(name: Any, where: Path) -> str:
    import transformers

    if not isinstance(name, str) or not name.isidentifier() or not isinstance(getattr(transformers, name, None), type):
        raise KallmError(f"{where}: {name!r} is not a transformers class; this is not an export kallm wrote")
    return name


def expected_code(folder: Path, config: dict[str, Any]) -> dict[str, str]:
    """{file name: text} of the code kallm writes into an export with this config (names checked first:
    they go into the generated files)."""
    where = folder / HF_CONFIG
    try:
        info = check_export_info(config.get(CONFIG_KEY))
    except KallmError as exc:
        raise KallmError(f"{where}: {exc}") from None
    base_class = _transformers_class(info.get("base_class"), where)
    model_type = info.get("base_model_type")
    if not isinstance(model_type, str) or not _MODEL_TYPE.match(model_type):
        raise KallmError(f"{where}: base_model_type {model_type!r} is not a model type")
    auto_map = config.get("auto_map")
    config_ref = auto_map.get("AutoConfig", "") if isinstance(auto_map, dict) else ""
    base_config = _transformers_class(str(config_ref).rpartition(".")[2].removeprefix("Kallm"), where)
    model_class, config_class, _ = class_names(base_class, base_config, model_type)
    expected_map = {"AutoConfig": f"{CONFIG_FILE.removesuffix('.py')}.{config_class}",
                    "AutoModelForCausalLM": f"{MODELING_FILE.removesuffix('.py')}.{model_class}"}
    if auto_map != expected_map:
        raise KallmError(f"{where}: auto_map {auto_map!r} is not the one kallm writes ({expected_map!r}); kallm "
                         "does not run other code")
    return {**shipped_sources(), **generated_sources(base_class, base_config, model_type)}


def check_export_code(folder: Path) -> dict[str, Any]:
    """The export's config, once its code is known to be kallm's own (else a KallmError naming the file)."""
    config = read_json(folder / HF_CONFIG, "model config")
    if not is_export_config(config):
        raise KallmError(f"{folder} is not a kallm export (its {HF_CONFIG} has no {CONFIG_KEY!r} section)")
    expected = expected_code(folder, config)
    present = sorted(p.name for p in folder.iterdir() if p.suffix == ".py" or p.is_dir() and not p.name.startswith("."))
    for name in present:
        path = folder / name
        if name not in expected or not path.is_file():
            raise KallmError(f"{path} is not a file kallm writes into an export; kallm runs only its own export code "
                             "(load a folder you trust yourself with trust_remote_code=True)")
        if path.read_text(encoding="utf-8", errors="replace") != expected[name]:
            raise KallmError(f"{path} differs from the code this kallm writes (changed, or written by another "
                             "kallm version); kallm runs only its own export code")
    missing = sorted(set(expected) - set(present))
    if missing:
        raise KallmError(f"{folder} lacks {missing[0]} of its model code; export it again")
    return config


def load_export(folder: str | Path, dtype: Any = "float32", device: str | None = None):
    """`(model, tokenizer)` of a kallm export, its code checked first (`check_export_code`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kallm.models.loading import record_source, resolve_dtype

    folder = Path(folder)
    check_export_code(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=resolve_dtype(dtype))
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KallmError(f"could not load the export {folder}: {first}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    record_source(model, str(folder))
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer

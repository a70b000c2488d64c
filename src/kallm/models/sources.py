"""What a path given to kallm is, and how to load it: one resolver for `kallm eval`, `inspect`, `export`
and `plot-functions`.

    model        a Hugging Face model folder, a hub id or the embedded model
    retrofit     a folder written by save_retrofit (manifest.json + retrofit.safetensors)
    training run a `kallm train --out` folder (its retrofit in retrofit/)
    grid run     an experiment's runs/<run_id>/ folder (its retrofit in retrofit/)
    export       a `kallm export` folder (loaded only when its code is kallm's own: `kallm.export.trusted`)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kallm.errors import KallmError
from kallm.export.trusted import is_export_config, load_export
from kallm.folders.layout import HF_CONFIG, MANIFEST, RESULTS, RETROFIT, RETROFIT_WEIGHTS, RUNS
from kallm.io import read_json
from kallm.retrofitting.saving import load_retrofit, read_manifest

RETROFIT_SUBDIR = RETROFIT


@dataclass(frozen=True)
class Source:
    kind: str  # "model", "retrofit", "training run", "grid run" or "export"
    given: str  # as the user wrote it
    path: Path | None = None  # the folder (None: a hub id, the embedded model, or a path load_model will refuse)
    retrofit: Path | None = None  # the retrofit folder of a retrofit or run

    def record(self) -> dict[str, Any]:
        """What was evaluated, for scores.json: the kind, the path or model id, and for a retrofit its base
        model, the base's fingerprint digest and the sha256 of its weights."""
        out: dict[str, Any] = {"kind": self.kind, "path": str(self.path.resolve()) if self.path else self.given}
        if self.retrofit is not None:
            manifest = read_manifest(self.retrofit)
            out["retrofit"] = str(self.retrofit.resolve())
            out["base_model"] = manifest["base_model"]
            out["base_fingerprint"] = (manifest.get("base_fingerprint") or {}).get("digest")
            out["retrofit_sha256"] = _sha256(self.retrofit / RETROFIT_WEIGHTS)
        elif self.kind == "export":
            info = read_json(self.path / HF_CONFIG, "model config").get("kallm", {})
            out.update(base_model=info.get("base_model"), variant=info.get("variant"), layers=info.get("layers"))
        return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _config(folder: Path) -> Any:
    path = folder / HF_CONFIG
    return read_json(path, "config") if path.is_file() else None


def resolve_source(path: str | Path) -> Source:
    """What `path` names (see the module's table); a folder that is none of them is a KallmError saying why."""
    given = str(path)
    folder = Path(given).expanduser()
    if not folder.is_dir():
        return Source("model", given)  # a hub id or the embedded model; a missing folder is load_model's to say
    if (folder / MANIFEST).is_file():
        return Source("retrofit", given, folder, folder)
    config = _config(folder)
    if (folder / RETROFIT_SUBDIR / MANIFEST).is_file():
        kind = "training run" if isinstance(config, dict) and "train" in config else "grid run"
        return Source(kind, given, folder, folder / RETROFIT_SUBDIR)
    if is_export_config(config):
        return Source("export", given, folder)
    if isinstance(config, dict) and "model_type" in config:
        return Source("model", given, folder)
    if (folder / RESULTS).is_file() or (folder / RUNS).is_dir():
        raise KallmError(f"{folder} is an experiment folder; name one of its runs (runs/<run_id>) or its model")
    if isinstance(config, dict) and "train" in config:
        raise KallmError(f"{folder} is a kallm training run without a retrofit yet (training did not finish); "
                         "finish it with kallm train --resume")
    if config is not None:
        raise KallmError(f"{folder / HF_CONFIG} names no model_type: {folder} is not a Hugging Face model "
                         "folder, a retrofit, a run folder or a kallm export")
    return Source("model", given, folder)


def retrofit_folder(path: str | Path) -> Path:
    """The retrofit folder of a retrofit or a run folder (what `export` and `plot-functions` read)."""
    source = resolve_source(path)
    if source.retrofit is not None:
        return source.retrofit
    if source.kind == "export" or (source.path is not None and (source.path / HF_CONFIG).is_file()):
        what = "a kallm export" if source.kind == "export" else "a model folder"
        raise KallmError(f"{path} is {what}, not a retrofit; give a retrofit folder or a run folder holding "
                         f"{RETROFIT_SUBDIR}/")
    read_manifest(path)  # says what is missing
    return Path(path)


def load_source(source: Source, dtype: Any = "float32", device: str | None = None, allow_other_base: bool = False,
                allow_trained_base: bool = False):
    """`(model, tokenizer)` of any kind of source."""
    from kallm.models.loading import load_model

    if source.retrofit is not None:
        return load_retrofit(source.retrofit, dtype=dtype, device=device, allow_other_base=allow_other_base,
                             allow_trained_base=allow_trained_base)
    if source.kind == "export":
        return load_export(source.path, dtype=dtype, device=device)
    return load_model(source.given, dtype=dtype, device=device)

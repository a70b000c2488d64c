"""`kallm.train`: load a model, retrofit it, train it on chat data and save the retrofit, in one call."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

from kallm.data import DEFAULT_DATASET, load_training_data
from kallm.errors import KallmError
from kallm.folders.layout import DEFAULT_TRAINING_FOLDER, HF_CONFIG, MANIFEST
from kallm.io import (
    check_not_source,
    check_output_dir,
    is_new_folder,
    mark_output,
    read_json,
    remove_stale_temps,
)
from kallm.locks import Busy, held
from kallm.models.loading import load_model, model_source
from kallm.retrofitting import VariantSpec, defaults, retrofit, save_retrofit
from kallm.retrofitting.variant import as_variant
from kallm.training.callbacks import TrainCallback
from kallm.training.checkpoint import newest_readable_checkpoint
from kallm.training.config import TrainConfig, TrainResult
from kallm.training.loop import train_model
from kallm.training.state import RunFiles, check_out_dir
from kallm.training.tracking import check_installed


def _data_sources(data: str | Path | Sequence[str | Path]) -> tuple[list[str | Path], list[str]]:
    """(as given, as recorded): local paths are recorded absolute so the record means the same anywhere."""
    sources = [data] if isinstance(data, str | Path) else list(data)
    resolved = [str(Path(s).resolve()) if Path(str(s)).expanduser().exists() else str(s) for s in sources]
    return sources, resolved


def check_run_folder(out: Path, model: str) -> None:
    """`out` may not be (or hold, or lie in) the model folder, nor be a model or retrofit folder: a run's
    files would mix with, or replace, what it was made from."""
    local = Path(model).expanduser()  # a local folder (the embedded model's cache is kallm's own)
    check_not_source(out, [("the model folder", local if local.is_dir() else None)], "training run folder")
    config = out / HF_CONFIG
    if (out / MANIFEST).is_file() or (config.is_file() and "model_type" in (read_json(config) or {})):
        kind = "a retrofit folder" if (out / MANIFEST).is_file() else "a model folder"
        raise KallmError(f"training run folder {out} is {kind}; choose another --out")


def train(
    model: str = defaults.MODEL,
    layers: str = defaults.LAYERS,
    variant: str | VariantSpec = defaults.VARIANT,
    freeze: str = defaults.FREEZE,
    data: str | Path | Sequence[str | Path] = DEFAULT_DATASET,
    out: str | Path = DEFAULT_TRAINING_FOLDER,
    config: TrainConfig | None = None,
    resume: bool = False,
    progress: bool | None = None,
    callbacks: Sequence[TrainCallback] = (),
) -> TrainResult:
    """Load a model, retrofit it, train it on chat data, and save the retrofit to `out/retrofit`."""
    from accelerate import PartialState

    config = config or TrainConfig()
    spec = as_variant(variant)
    sources, recorded = _data_sources(data)
    files = RunFiles(Path(out))
    run_meta = {"model": model_source(model), "layers": layers, "variant": str(spec), "freeze": freeze,
                "data": recorded}
    check_output_dir(files.root, "training run folder")  # before any loading
    check_run_folder(files.root, model)
    new_folder = is_new_folder(files.root)
    check_out_dir(files, {"train": config.to_dict(), "run": run_meta}, resume)
    if resume:
        newest_readable_checkpoint(files.checkpoints, warn=False)  # none readable: say so before loading
    check_installed(config.report_to)
    conversations = load_training_data(sources, on_bad_row=config.on_bad_row,
                                       max_conversations=config.max_conversations, seed=config.data_seed)
    net, tokenizer = load_model(model)
    retrofit(net, layers=layers, variant=spec, freeze=freeze, seed=config.seed)
    main = PartialState().is_main_process  # only the main process writes (and locks) the folder
    try:
        with held(files.lock, wait=False) if main else nullcontext():
            if main:
                remove_stale_temps(files.root)
                if new_folder:
                    mark_output(files.root, "kallm train")
            result = train_model(net, tokenizer, conversations, config, out, resume=resume, progress=progress,
                                 callbacks=callbacks, run_meta=run_meta)
            if files.config.is_file() and main:
                save_retrofit(net.cpu(), files.retrofit, base_model=model_source(model), overwrite=True,
                              extra={"training": result.to_dict()})
    except Busy as busy:
        raise KallmError(f"{files.root} is being trained by another process (pid {busy.holder}); wait for it to "
                         "finish, or choose another output folder") from None
    return result

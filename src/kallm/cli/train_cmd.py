"""`kallm train`: retrofit a model and train it on chat data, from flags or a YAML config file.

A config file holds the same names as the flags (model, layers, variant, freeze, data, out, resume)
plus a `train:` mapping of TrainConfig fields; flags given on the command line win over the file.
Relative paths in the file (model, data, out) are relative to the file, as in experiment configs.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from kallm.data import DEFAULT_DATASET
from kallm.folders import layout
from kallm.retrofitting import defaults
from kallm.runtime.precision import PRECISIONS
from kallm.training.config import KD_POSITIONS, TrainConfig

_RUN_KEYS = {"model": defaults.MODEL, "layers": defaults.LAYERS, "variant": defaults.VARIANT,
             "freeze": defaults.FREEZE, "data": DEFAULT_DATASET, "out": None, "resume": False}
_CHOICES = {"precision": PRECISIONS, "kd_positions": KD_POSITIONS}
# TrainConfig fields exposed as flags (the rest are set in a config file's `train:` section).
_TRAIN_FLAGS = ("steps", "batch_size", "grad_accum", "max_length", "lr", "weight_decay", "warmup_steps",
                "clip_grad_norm", "eval_every", "eval_batches", "val_size", "save_every", "seed", "precision",
                "logits_chunk_size", "max_conversations", "on_bad_row", "report_to", "loss", "kd_temperature",
                "kd_positions")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="retrofit a model and train the new blocks on chat data",
                       description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML file with the settings below (flags override it)")
    p.add_argument("--model", help=f"hub id, local folder, or the embedded default ({_RUN_KEYS['model']})")
    p.add_argument("--layers", help=f"decoder layers to retrofit, e.g. last:5, 20-24 (default {defaults.LAYERS})")
    p.add_argument("--variant", help=f"baseline | linear | pruned | kan:<spec> | kat:<basis>[;groups=N][;ungated] "
                   f"[@budget=...] (default {defaults.VARIANT})")
    p.add_argument("--freeze", help=f"ffn | blocks | blocks+embeddings | none (default {defaults.FREEZE})")
    p.add_argument("--data", nargs="+", help="hub dataset id, or .jsonl/.json/.parquet chat files or folders; "
                                             "for --loss kd also plain text (.txt, .jsonl with a text field) "
                                             f"(default {DEFAULT_DATASET})")
    p.add_argument("--out", help=f"run folder: config, {layout.METRICS}, {layout.CHECKPOINTS}/, {layout.RETROFIT}/")
    p.add_argument("--resume", action="store_true", default=None, help="continue the run in --out")
    train_defaults = TrainConfig()
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    for name in _TRAIN_FLAGS:
        kind = types[name]
        conv = int if "int" in str(kind) else float if "float" in str(kind) else str
        extra: dict[str, Any] = {"choices": _CHOICES[name]} if name in _CHOICES else {}
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=conv, default=None,
                       help=f"(default {getattr(train_defaults, name)})", **extra)
    p.add_argument("--prefix-cache", action="store_true", default=None,
                   help="cache the frozen prefix's hidden states (pays off over several epochs)")
    p.set_defaults(func=run)


def _relative_to_file(key: str, value: Any, lines) -> Any:
    """Paths in the file are relative to the file (like an experiment config's); flags stay relative to the
    working directory."""
    from pathlib import Path

    from kallm.data.loading import source_in
    from kallm.folders.relative import path_in
    from kallm.models.loading import model_in

    folder = Path(lines[key].file).resolve().parent
    if key == "model" and isinstance(value, str):
        return model_in(value, folder)
    if key == "data" and isinstance(value, str | list):
        return [source_in(v, folder) if isinstance(v, str) else v for v in ([value] if isinstance(value, str) else value)]
    if key == "out" and isinstance(value, str):
        return str(path_in(value, folder))
    return value


def resolve(args: argparse.Namespace) -> tuple[dict[str, Any], TrainConfig]:
    """Merge defaults < config file < flags into (run settings, TrainConfig)."""
    from kallm.config.yamlsrc import load_yaml_mapping, located
    from kallm.errors import ConfigError
    from kallm.registry import unknown_name_message

    run_settings = dict(_RUN_KEYS)
    train_data: dict[str, Any] = {}
    lines = None
    if args.config:
        data, lines = load_yaml_mapping(args.config)
        for key, value in data.items():
            if key == "train":
                if not isinstance(value, dict):
                    raise ConfigError(located("expected a mapping of training settings", "train", lines))
                train_data.update(value)
            elif key in _RUN_KEYS:
                run_settings[key] = _relative_to_file(key, value, lines)
            else:
                raise ConfigError(located(unknown_name_message("key", key, [*_RUN_KEYS, "train"]), key, lines))
    for key in _RUN_KEYS:
        if getattr(args, key, None) is not None:
            run_settings[key] = getattr(args, key)
    for name in (*_TRAIN_FLAGS, "prefix_cache"):
        if getattr(args, name, None) is not None:
            train_data[name] = getattr(args, name)
    config = TrainConfig.from_dict(train_data, "train", lines)
    if not run_settings["out"]:
        raise ConfigError("no output folder: pass --out DIR (or set 'out' in the config file)")
    return run_settings, config


def run(args: argparse.Namespace) -> int:
    from kallm.retrofitting import parse_variant
    from kallm.training import train

    settings, config = resolve(args)
    result = train(model=settings["model"], layers=settings["layers"], variant=parse_variant(settings["variant"]),
                   freeze=settings["freeze"], data=settings["data"], out=settings["out"], config=config,
                   resume=bool(settings["resume"]), progress=args.progress)
    evals = ""
    if result.initial_eval_loss is not None and result.final_eval_loss is not None:
        evals = f"; held-out loss {result.initial_eval_loss:.4f} -> {result.final_eval_loss:.4f}"
    print(f"trained {result.steps} steps in {result.precision} ({result.tokens:,} tokens, "
          f"{result.tokens_per_s:,.0f} tokens/s){evals}; "
          f"retrofit saved in {settings['out']}/retrofit")
    return 0

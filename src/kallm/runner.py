"""The per-run pipeline of an experiment grid, with the caches every run of the grid shares.

`experiments.py` plans the grid and keeps the books; `GridRunner` does the work of one run:
load -> (collect activations) -> retrofit -> (distill) -> train -> save -> evaluate -> record.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from kallm.config import ExperimentConfig
from kallm.errors import KallmError
from kallm.experiments import PlannedRun, final_variant_string, record_result, resolve_device, variant_string
from kallm.io import write_json_atomic
from kallm.progress import progress_bar
from kallm.runinfo import run_info

log = logging.getLogger(__name__)


class GridRunner:
    def __init__(self, config: ExperimentConfig, out: Path, progress: bool | None = None) -> None:
        self.config = config
        self.out = out
        self.progress = progress
        self.device = resolve_device(config.device)
        self.cache_dir = out / "cache"
        self._conversations = None
        self._train_cache = None
        self._eval_forward = None
        self._distill_io = None

    # ------------------------------------------------------------ shared inputs

    def load_base(self):
        from kallm.models import load_model

        return load_model(self.config.model, dtype=self.config.dtype, device=self.device)

    def conversations(self):
        from kallm.data import load_conversations

        if self._conversations is None:
            train = self.config.train
            self._conversations = load_conversations(train.data, on_bad_row=train.on_bad_row,
                                                     max_conversations=train.max_conversations)
        return self._conversations

    def train_prefix_cache(self, model, layer_index: int):
        """One cache of training-data prefix states for the whole grid, kept on disk between runs."""
        from kallm.prefix import PrefixCache, prefix_fingerprint

        if self._train_cache is None or self._train_cache.layer_index != layer_index:
            path = self.cache_dir / f"prefix-train-layer{layer_index}.safetensors"
            fingerprint = prefix_fingerprint(model, layer_index)
            cache = PrefixCache.load(path) if path.is_file() else None
            if cache is None or cache.fingerprint != fingerprint:
                cache = PrefixCache(layer_index, fingerprint)
            self._train_cache = cache
        return self._train_cache

    def save_train_cache(self) -> None:
        if self._train_cache is not None and len(self._train_cache):
            self._train_cache.save(self.cache_dir / f"prefix-train-layer{self._train_cache.layer_index}.safetensors")

    def distill_io(self, model, tokenizer, layer_indices: tuple[int, ...]):
        """(input, output) pairs of the original FFNs, collected once per grid and kept on disk."""
        from kallm.data import collate
        from kallm.distill import DistillConfig, collect_ffn_io, load_ffn_io, save_ffn_io
        from kallm.training import prepare_data

        cfg = self.config.distill or DistillConfig()
        path = self.cache_dir / f"distill-io-{cfg.tokens}-{'_'.join(map(str, layer_indices))}.safetensors"
        if self._distill_io is None and path.is_file():
            self._distill_io = load_ffn_io(path)
        if self._distill_io is None:
            train_cfg = self.config.train.train_config(self.config.seeds[0])
            examples, _ = prepare_data(tokenizer, self.conversations(), train_cfg, progress=False)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            batches = (collate(examples[i : i + 8], pad) for i in range(0, len(examples), 8))
            self._distill_io = collect_ffn_io(model, batches, layer_indices, cfg.tokens, progress=self.progress)
            save_ffn_io(self._distill_io, path)
        return self._distill_io

    def eval_forward(self, model, report):
        """The shared prefix-cached forward for likelihood evaluation, when it is valid."""
        from kallm.eval_cache import CachedPrefixForward

        ecfg = self.config.eval
        first = min(report.layer_indices)
        if ecfg.mode != "mc" or not ecfg.prefix_cache or first < 1:
            return None
        trained = report.first_trainable_layer
        if trained is None and report.trainable_params > 0:
            return None  # something below the layers (embeddings) trains: no shared prefix
        if trained is not None and trained < first:
            return None
        if self._eval_forward is None:
            self._eval_forward = CachedPrefixForward(first)
        return self._eval_forward.bind(model)

    # ------------------------------------------------------------ one run

    def run(self, runs: list[PlannedRun]) -> None:
        for run in progress_bar(runs, desc="experiment", unit="run", progress=self.progress):
            self.run_one(run)

    def run_one(self, run: PlannedRun) -> dict[str, Any]:
        from kallm.models import model_source
        from kallm.retrofit_io import save_retrofit
        from kallm.surgery import retrofit

        start = time.perf_counter()
        run_dir = self.out / "runs" / run.run_id
        v = run.variant
        log.info("run %s: %s (init %s)", run.run_id, v.spec, v.init)
        model, tokenizer = self.load_base()
        record: dict[str, Any] = {"run_id": run.run_id, "variant": v.name, "spec": v.spec, "init": v.init,
                                  "seed": run.seed, "budget": v.budget, "curriculum": v.curriculum}
        if not v.trained:
            report = retrofit(model, layers=self.config.layers, variant="baseline", freeze=self.config.freeze)
        else:
            report, record["distill"], record["train"] = self._train(run, model, tokenizer, run_dir)
            save_retrofit(model, run_dir / "retrofit", base_model=model_source(self.config.model), overwrite=True)
        record["params"] = {"total": report.total_params,
                            "trainable": report.trainable_params if v.trained else 0,
                            "replaced_old": report.replaced_old_params, "replaced_new": report.replaced_new_params,
                            "hidden_width": report.hidden_width}
        record.update(self._evaluate(model, tokenizer, report, run_dir / "eval"))
        info = run_info()
        record.update({"config_hash": self.config.config_hash, "versions": info["versions"],
                       "git_commit": info["git_commit"], "time": info["time"], "device": info["device_name"],
                       "wall_s": time.perf_counter() - start})
        record_result(self.out, record)
        del model
        return record

    def _train(self, run: PlannedRun, model, tokenizer, run_dir: Path):
        from kallm.checkpoint import latest_checkpoint
        from kallm.curriculum import DegreeCurriculum
        from kallm.distill import DistillConfig, distill_retrofit, fits_to_dict
        from kallm.surgery import retrofit
        from kallm.training import CHECKPOINTS, CONFIG, train_model

        v, seed = run.variant, int(run.seed)
        train_dir = run_dir / "train"
        resuming = (train_dir / CONFIG).is_file()
        has_checkpoint = latest_checkpoint(train_dir / CHECKPOINTS) is not None
        io = None
        if v.init == "distill" and not has_checkpoint:
            from kallm.arch import find_decoder_layers
            from kallm.layer_select import parse_layer_spec

            _, layers = find_decoder_layers(model)
            io = self.distill_io(model, tokenizer, parse_layer_spec(self.config.layers, len(layers)))
        report = retrofit(model, layers=self.config.layers, variant=variant_string(v), freeze=self.config.freeze,
                          seed=seed)
        distill_file = run_dir / "distill.json"
        distill_record = None
        if io is not None:
            fits = distill_retrofit(model, io, self.config.distill or DistillConfig(), seed=seed, progress=self.progress)
            distill_record = {"fvu": {str(f.layer): f.fvu for f in fits}, "layers": fits_to_dict(fits)}
            write_json_atomic(distill_file, distill_record)
        elif distill_file.is_file():
            distill_record = json.loads(distill_file.read_text(encoding="utf-8"))
        tcfg = self.config.train.train_config(seed)
        shared = None
        k = report.first_trainable_layer
        if tcfg.prefix_cache and k:
            shared = self.train_prefix_cache(model, k)
        callbacks = [DegreeCurriculum(tuple(tuple(p) for p in v.curriculum))] if v.curriculum else []
        meta = {"experiment": self.config.name, "run_id": run.run_id, "variant": report.variant,
                "layers": self.config.layers, "freeze": self.config.freeze, "init": v.init}
        result = train_model(model, tokenizer, self.conversations(), tcfg, train_dir, resume=resuming,
                             progress=self.progress, callbacks=callbacks, prefix_cache=shared, run_meta=meta)
        self.save_train_cache()
        if v.curriculum:  # the modules now have the final degree; the manifest must say so
            from kallm.surgery import refresh_report

            report = refresh_report(model, final_variant_string(v))
        train_record = result.to_dict()
        train_record["metrics_path"] = str(Path(result.metrics_path).resolve().relative_to(self.out.resolve()))
        if distill_record is not None:
            distill_record["eval_loss_after"] = result.initial_eval_loss
        return report, distill_record, train_record

    def _evaluate(self, model, tokenizer, report, eval_dir: Path) -> dict[str, Any]:
        from kallm.bbh import evaluate_bbh

        ecfg = self.config.eval
        model.eval()
        forward = self.eval_forward(model, report)
        t0 = time.perf_counter()
        with torch.inference_mode():
            scores = evaluate_bbh(model, tokenizer, tasks=ecfg.tasks, mode=ecfg.mode, limit=ecfg.limit,
                                  data_dir=ecfg.data_dir, batch_size=ecfg.batch_size,
                                  chat_template=ecfg.chat_template, max_gen_toks=ecfg.max_gen_toks,
                                  progress=self.progress, out_dir=eval_dir, forward_fn=forward)
        wall = time.perf_counter() - t0
        return {**summarise_scores(scores, ecfg), "eval": {"mode": ecfg.mode, "limit": ecfg.limit,
                                                            "chat_template": ecfg.chat_template,
                                                            "n_examples": scores["counts"]["examples"],
                                                            "wall_s": wall}}


def summarise_scores(scores: dict[str, Any], ecfg) -> dict[str, Any]:
    """The record's `metric` and `scores` block from evaluate_bbh's output."""
    names = list(scores["metrics"])
    metric = ecfg.metric or scores["headline_metric"]
    if metric not in names:
        raise KallmError(f"eval.metric {metric!r} is not one of this mode's metrics: {', '.join(names)}")
    metrics = {m: {"average": scores["macro"][m], "per_task": {t: row[m] for t, row in scores["tasks"].items()}}
               for m in names}
    return {"metric": metric, "scores": {"average": metrics[metric]["average"],
                                         "per_task": metrics[metric]["per_task"], "metrics": metrics}}

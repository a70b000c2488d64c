"""The per-run pipeline of an experiment grid, with the caches every run of the grid shares.

`kallm.experiment` plans the grid and keeps the books; `GridRunner` does the work of one run:
load -> (collect activations) -> retrofit -> (distill) -> train -> save -> evaluate -> record.

Every variant keeps decoder layers below the first replaced one untouched, so their hidden states
are computed once for the training data (train.prefix_cache) and for the evaluation batches
(eval.prefix_cache, likelihood mode) and reused by every variant and seed. A cache file that does not
read is rebuilt, with a warning.

Several processes may run one grid into one folder (shards, or the same command started twice). Each
run is done under its lock (`GridRunFolder.lock`): a process skips the runs another one holds, does
the rest, then waits for the skipped ones, each of which it does itself only if nobody recorded it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kallm.data import ConversationSet, TextSet, load_training_data
from kallm.data.sampling import count_by_source
from kallm.distill.layerwise import (
    DistillConfig,
    collect_ffn_io,
    distill_retrofit,
    fits_to_dict,
    load_ffn_io,
    save_ffn_io,
)
from kallm.distill.sequential import sequential_distill
from kallm.distill.teacher import build_teacher
from kallm.errors import KallmError
from kallm.evaluation.bbh import evaluate_bbh, load_tasks
from kallm.evaluation.bbh.chance import chance_levels
from kallm.experiment.data_record import batch_counts, fitting_order, training_counts
from kallm.experiment.distill_data import DistillData, cache_tag, distill_data
from kallm.experiment.eval_cache import CachedPrefixForward
from kallm.experiment.heldout_sets import GridHeldout, heldout_record, write_scores
from kallm.experiment.plan import PlannedRun
from kallm.experiment.results import finished_runs, record_result
from kallm.experiment.run_memory import run_memory
from kallm.experiment.schema import EvalConfig, ExperimentConfig
from kallm.folders.layout import ExperimentFolder, GridRunFolder, cache_file
from kallm.folders.records import HeldoutScores, RunRecord, read_heldout_scores
from kallm.io import read_json, remove_stale_temps, write_json_atomic
from kallm.locks import Busy, held
from kallm.models.loading import load_model, model_source, resolve_device
from kallm.models.prefix import PrefixCache
from kallm.progress import progress_bar
from kallm.provenance import run_info
from kallm.retrofitting import RetrofitReport, retrofit, retrofit_report, save_retrofit
from kallm.retrofitting.arch import find_decoder_layers
from kallm.retrofitting.curriculum import DegreeCurriculum
from kallm.retrofitting.displaced import restore_original_weights
from kallm.retrofitting.layers import parse_layer_spec
from kallm.retrofitting.surgery import refresh_report
from kallm.runtime.precision import resolve_precision
from kallm.training import train_model
from kallm.training.checkpoint import latest_checkpoint
from kallm.training.examples import prepare_data

log = logging.getLogger(__name__)


class GridRunner:
    def __init__(self, config: ExperimentConfig, out: Path, progress: bool | None = None) -> None:
        self.config = config
        self.out = out
        self.progress = progress
        self.device = resolve_device(config.device)
        # Resolved once per grid: every run, cache and record of the grid uses the same arithmetic.
        self.train_precision = resolve_precision(config.train.precision, self.device)
        self.eval_precision = resolve_precision(config.eval.precision, self.device)
        self.folder = ExperimentFolder(out)
        self.cache_dir = self.folder.cache
        self.heldout = GridHeldout(config, self.cache_dir, self.cache_lock, self.eval_precision, progress)
        self._loaded: ConversationSet | TextSet | None = None
        self._conversations: ConversationSet | TextSet | None = None
        self._train_cache: PrefixCache | None = None
        self._eval_forwards: dict[int, CachedPrefixForward] = {}
        self._chance: dict[str, float] | None = None
        self._distill_io: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._prepared: tuple[list, list] | None = None
        self._data: dict[str, Any] | None = None  # the grid's data record: the same for every run
        self._fit_counts: dict[str, Any] | None = None  # ... and what the fit reads, for runs that fit
        self._fit_data: DistillData | None = None

    # ------------------------------------------------------------ shared inputs

    def load_base(self):
        return load_model(self.config.model_path(), dtype=self.config.dtype, device=self.device)

    def loaded_data(self) -> ConversationSet | TextSet:
        """All of `train.data`, read once (a file that does not read fails here, before any work)."""
        if self._loaded is None:
            train = self.config.train
            self._loaded = load_training_data(self.config.data_sources(), on_bad_row=train.on_bad_row,
                                              max_conversations=train.max_conversations, seed=train.data_seed,
                                              mix=train.mix)
        return self._loaded

    def conversations(self, tokenizer) -> ConversationSet | TextSet:
        """The training data, without the held-out conversations every run is scored on."""
        if self._conversations is None:
            data = self.loaded_data()
            if isinstance(data, TextSet):  # plain text (for loss: kd) has no assistant turns to carve from
                if self.config.eval.heldout_size:
                    raise KallmError("train.data is plain text: set eval.heldout_size: 0 and score on chat files "
                                     "given in eval.heldout")
                self.heldout.split_training_data(ConversationSet([], [], [], data.source), tokenizer)
                self._conversations = data
            else:
                self._conversations = self.heldout.split_training_data(data, tokenizer)
        return self._conversations

    def cache_lock(self):
        """Held while a cache file is written (or stale temporary ones removed): processes share cache/."""
        return held(self.folder.cache_lock)

    def train_prefix_cache(self, model: nn.Module, layer_index: int) -> PrefixCache:
        """One cache of training-data prefix states for the whole grid, kept on disk between runs."""
        if self._train_cache is None or self._train_cache.layer_index != layer_index:
            path = self._cache_file(f"prefix-train-layer{layer_index}")
            p = self.train_precision
            self._train_cache = PrefixCache.for_model(path, model, layer_index, p.storage_dtype, p.name)
        return self._train_cache

    def _cache_file(self, stem: str) -> Path:
        """A grid cache file of training-side states; a bf16 grid's are kept apart from float32 ones."""
        return cache_file(self.cache_dir, stem, self.train_precision.name)

    def save_train_cache(self) -> None:
        if self._train_cache is not None and len(self._train_cache):
            with self.cache_lock():
                self._train_cache.save(self._cache_file(f"prefix-train-layer{self._train_cache.layer_index}"))

    def distill_io(self, model: nn.Module, tokenizer) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """(input, output) pairs of the original FFNs, collected once per grid and kept on disk."""
        cfg = self.config.distill or DistillConfig()
        _, layers = find_decoder_layers(model)
        indices = parse_layer_spec(self.config.layers, len(layers))
        path = self._cache_file(f"distill-io-{cfg.tokens}-{'_'.join(map(str, indices))}{cache_tag(self.config)}")
        if self._distill_io is None and path.is_file():
            try:
                self._distill_io = load_ffn_io(path)
            except KallmError as exc:
                log.warning("%s; collecting the activations again", exc)
        if self._distill_io is None:
            with self.train_precision.autocast(self.device, model):  # the FFNs as training will run them
                self._distill_io = collect_ffn_io(model, self.distill_batches(tokenizer), indices, cfg.tokens,
                                                  progress=self.progress)
            with self.cache_lock():
                save_ffn_io(self._distill_io, path)
        return self._distill_io

    def prepared(self, tokenizer) -> tuple[list, list]:
        """The training data tokenised and split as the first seed's run splits it (once per grid)."""
        if self._prepared is None:
            train_cfg = self.config.train.train_config(self.config.seeds[0])
            self._prepared = prepare_data(tokenizer, self.conversations(tokenizer), train_cfg, progress=False)
        return self._prepared

    def distill_batches(self, tokenizer) -> list[dict]:
        """What distillation fits on: the first `distill.tokens` tokens of the split, in an order stratified
        by source file (data_seed), so the fit sees every source in proportion; with `distill.text`, that
        share of plain-text blocks interleaved (kallm.experiment.distill_data)."""
        if self._fit_data is None:
            examples = fitting_order(self.prepared(tokenizer)[0], self.conversations(tokenizer),
                                     self.config.train.data_seed)
            self._fit_data = distill_data(self.config, tokenizer, examples)
        return self._fit_data.batches

    def data_record(self, tokenizer, fitted: bool) -> dict[str, Any]:
        """Per-source conversation/token counts of training, fitting (when `fitted`) and the carved set."""
        if self._data is None:
            train = self.config.train
            counts = training_counts(self.prepared(tokenizer), self.conversations(tokenizer))
            self._data = {"seed": train.data_seed, "max_conversations": train.max_conversations, "mix": train.mix,
                          "loaded": count_by_source(self.loaded_data().item_files()), "train": counts,
                          "heldout": self.heldout.carved_counts()}
        if not fitted:
            return dict(self._data)
        if self._fit_counts is None:
            self.distill_batches(tokenizer)
            self._fit_counts = batch_counts(self._fit_data.sample, self.conversations(tokenizer))
        return {**self._data, "fit": self._fit_counts, "fit_text": self._fit_data.record()}

    def eval_forward(self, model: nn.Module, report: RetrofitReport) -> CachedPrefixForward | None:
        """The shared prefix-cached forward for likelihood evaluation, when it is valid."""
        ecfg = self.config.eval
        k = report.unchanged_prefix
        if ecfg.mode != "mc" or not ecfg.prefix_cache or k < 1:
            return None
        if k not in self._eval_forwards:
            self._eval_forwards[k] = CachedPrefixForward(k)
        return self._eval_forwards[k].bind(model)

    def score_heldout(self, model: nn.Module, tokenizer, report: RetrofitReport):
        """Every held-out set scored on the model as it is now (the grid's shared prefix computed once)."""
        self.conversations(tokenizer)  # the held-out sets are carved from the training data
        return self.heldout.score(model, tokenizer, report.unchanged_prefix)

    def chance_levels(self) -> dict[str, float]:
        """Each evaluated task's chance accuracy (read once per grid from the tasks' answer sets)."""
        if self._chance is None:
            ecfg = self.config.eval
            self._chance = chance_levels(load_tasks(ecfg.tasks, self.config.bbh_data_dir(), ecfg.limit))
        return self._chance

    # ------------------------------------------------------------ one run

    def run(self, runs: list[PlannedRun]) -> None:
        """Every run of `runs` not recorded yet: those no other process holds first, then the held ones."""
        with self.cache_lock():
            remove_stale_temps(self.cache_dir)
        bar = progress_bar(total=len(runs), desc="experiment", unit="run", progress=self.progress)
        held_elsewhere = []
        for run in runs:
            try:
                self.run_locked(run, wait=False)
            except Busy as busy:
                if busy.path != self.run_lock(run):
                    raise
                log.info("run %s is being worked on by another process (pid %s); moving on to the next run",
                         run.run_id, busy.holder)
                held_elsewhere.append(run)
                continue
            bar.update(1)
        for run in held_elsewhere:
            log.info("waiting for run %s, which another process is working on", run.run_id)
            self.run_locked(run, wait=True)
            bar.update(1)
        bar.close()

    def run_lock(self, run: PlannedRun) -> Path:
        return self.folder.run(run.run_id).lock

    def run_locked(self, run: PlannedRun, wait: bool) -> RunRecord | None:
        """`run_one` under the run's lock, unless another process recorded the run meanwhile (then None)."""
        with held(self.run_lock(run), wait=wait):
            if run.run_id in finished_runs(self.out):
                log.info("run %s was finished by another process", run.run_id)
                return None
            for folder in self.folder.run(run.run_id).folders():
                remove_stale_temps(folder)  # ours now: whatever a killed process left half-written goes
            return self.run_one(run)

    def run_one(self, run: PlannedRun) -> RunRecord:
        """One run, recorded with its peak memory; what it leaves behind is released when it ends."""
        with run_memory(self._release_run) as memory:
            record = self._run(run)
        record.memory = memory.to_dict()
        record_result(self.out, record)
        return record

    def _release_run(self) -> None:
        """The grid's references to the run's model and per-run data go; the grid's prefix caches stay."""
        for forward in self._eval_forwards.values():
            forward.release()
        self._distill_io = None  # kept on disk: read again by the next run that distils, not held by all runs

    def _run(self, run: PlannedRun) -> RunRecord:
        start = time.perf_counter()
        folder = self.folder.run(run.run_id)
        v = run.variant
        log.info("run %s: %s (init %s)", run.run_id, run.spec, v.init)
        model, tokenizer = self.load_base()
        record = RunRecord(run_id=run.run_id, variant=v.name, spec=str(run.spec), kind=run.spec.kind, init=v.init,
                           seed=run.seed, same_as=v.same_as, curriculum=v.curriculum)
        scores: HeldoutScores = {}
        if not v.trained:
            report = retrofit(model, layers=self.config.layers, variant=run.spec, freeze=self.config.freeze)
        else:
            report, record.distill, record.train = self._train(run, model, tokenizer, folder, scores)
            save_retrofit(model, folder.retrofit.root, base_model=model_source(self.config.model_path()),
                          overwrite=True)
        scores["final"] = self.score_heldout(model, tokenizer, report)
        write_scores(folder.root, scores)
        record.heldout = heldout_record(scores["final"])
        record.heldout_init = heldout_record(scores.get("init", {}))
        record.data = self.data_record(tokenizer, fitted=v.init == "distill")
        record.params = {"total": report.total_params, "trainable": report.trainable_params if v.trained else 0,
                         "replaced_old": report.replaced_old_params, "replaced_new": report.replaced_new_params,
                         "hidden_width": report.hidden_width, "new_per_layer": report.new_params_per_layer}
        record.metric, record.scores, record.eval = self._evaluate(model, tokenizer, report, folder.eval.root)
        info = run_info()
        record.config_hash, record.versions = self.config.config_hash, info["versions"]
        record.git_commit, record.time, record.device = info["git_commit"], info["time"], info["device_name"]
        record.wall_s = time.perf_counter() - start
        return record

    def _distill(self, run: PlannedRun, model: nn.Module, io, folder: GridRunFolder) -> dict[str, Any] | None:
        """Fit the new FFNs (once per run): to the recorded activations (`io`, layerwise) or bottom-up on
        the retrofit's own states (`io` is then the batches, sequential); or read the earlier fit's record."""
        distill_file = folder.distill
        if io is None:
            return read_json(distill_file, "distillation record") if distill_file.is_file() else None
        cfg = self.config.distill or DistillConfig()
        start = time.perf_counter()
        if cfg.mode == "sequential":
            k = min(retrofit_report(model).layer_indices)
            cache = self.train_prefix_cache(model, k) if self.config.train.prefix_cache else None
            fits = sequential_distill(model, build_teacher(model), io, cfg, target=cfg.target, seed=int(run.seed),
                                      cache=cache, progress=self.progress)
            self.save_train_cache()
        else:
            fits = distill_retrofit(model, io, cfg, seed=int(run.seed), progress=self.progress)
        record = {"fvu": {str(f.layer): f.fvu for f in fits}, "layers": fits_to_dict(fits), "mode": cfg.mode,
                  "target": cfg.target, "wall_s": time.perf_counter() - start}
        write_json_atomic(distill_file, record)
        return record

    def _initial_scores(self, model: nn.Module, tokenizer, report: RetrofitReport, folder: GridRunFolder,
                        has_checkpoint: bool) -> dict:
        """Held-out scores right after initialisation: computed before training, read back on resume."""
        if not self.config.eval.heldout_before_training:
            return {}
        if has_checkpoint:
            return read_heldout_scores(folder.heldout).get("init", {})
        init = self.score_heldout(model, tokenizer, report)
        write_scores(folder.root, {"init": init})
        return init

    def _train(self, run: PlannedRun, model: nn.Module, tokenizer, folder: GridRunFolder, scores: HeldoutScores):
        v, seed = run.variant, int(run.seed)
        files = folder.train
        resuming = files.config.is_file()
        has_checkpoint = latest_checkpoint(files.checkpoints) is not None
        fresh_distill = v.init == "distill" and not has_checkpoint
        sequential = (self.config.distill or DistillConfig()).mode == "sequential"
        io = self.distill_io(model, tokenizer) if fresh_distill and not sequential else None
        report = retrofit(model, layers=self.config.layers, variant=run.build_spec, freeze=self.config.freeze,
                          seed=seed)
        io = self.distill_batches(tokenizer) if fresh_distill and sequential else io
        if v.init == "original" and not has_checkpoint:
            restore_original_weights(model)
        distill_record = self._distill(run, model, io, folder)
        scores["init"] = self._initial_scores(model, tokenizer, report, folder, has_checkpoint)
        tcfg = self.config.train.train_config(seed)
        k = report.first_trainable_layer
        shared = self.train_prefix_cache(model, k) if tcfg.prefix_cache and k else None
        callbacks = [DegreeCurriculum(v.curriculum)] if v.curriculum else []
        meta = {"experiment": self.config.name, "run_id": run.run_id, "variant": str(report.variant),
                "layers": self.config.layers, "freeze": self.config.freeze, "init": v.init,
                "data": self.data_record(tokenizer, fitted=False)["train"]}
        result = train_model(model, tokenizer, self.conversations(tokenizer), tcfg, files.root, resume=resuming,
                             progress=self.progress, callbacks=callbacks, prefix_cache=shared, run_meta=meta)
        self.save_train_cache()
        if v.curriculum:  # the modules now have the final degree; the manifest must say so
            report = refresh_report(model, run.spec)
        train_record = result.to_dict()
        # from this folder's files: a finished run's result.json names where the folder was (it may be a copy)
        train_record["metrics_path"] = str(files.metrics.resolve().relative_to(self.out.resolve()))
        if distill_record is not None:
            distill_record["eval_loss_after"] = result.initial_eval_loss
            distill_record["data"] = self.data_record(tokenizer, fitted=True)["fit_text"]
        return report, distill_record, train_record

    def _evaluate(self, model: nn.Module, tokenizer, report: RetrofitReport,
                  eval_dir: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """(the record's metric, scores, eval) of BIG-Bench Hard; predictions and scores go to `eval_dir`."""
        ecfg = self.config.eval
        model.eval()
        forward = self.eval_forward(model, report)
        t0 = time.perf_counter()
        with torch.inference_mode(), self.eval_precision.autocast(self.device, model):
            scores = evaluate_bbh(model, tokenizer, tasks=ecfg.tasks, mode=ecfg.mode, limit=ecfg.limit,
                                  data_dir=self.config.bbh_data_dir(), batch_size=ecfg.batch_size,
                                  chat_template=ecfg.chat_template, max_gen_toks=ecfg.max_gen_toks,
                                  progress=self.progress, out_dir=eval_dir, forward_fn=forward)
        wall = time.perf_counter() - t0
        summary = summarise_scores(scores, ecfg)
        summary["scores"]["chance"] = self.chance_levels()
        summary["scores"]["n"] = {task: row["n"] for task, row in scores["tasks"].items()}
        return summary["metric"], summary["scores"], {
            "mode": ecfg.mode, "limit": ecfg.limit, "chat_template": ecfg.chat_template,
            "n_examples": scores["counts"]["examples"], "precision": self.eval_precision.to_dict(), "wall_s": wall}


def summarise_scores(scores: dict[str, Any], ecfg: EvalConfig) -> dict[str, Any]:
    """The record's `metric` and `scores` block from evaluate_bbh's output."""
    names = list(scores["metrics"])
    metric = ecfg.metric or scores["headline_metric"]
    if metric not in names:
        raise KallmError(f"eval.metric {metric!r} is not one of this mode's metrics: {', '.join(names)}")
    metrics = {m: {"average": scores["macro"][m], "per_task": {t: row[m] for t, row in scores["tasks"].items()}}
               for m in names}
    return {"metric": metric, "scores": {"average": metrics[metric]["average"],
                                         "per_task": metrics[metric]["per_task"], "metrics": metrics}}

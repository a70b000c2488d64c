"""The training loop (on Hugging Face Accelerate): set-up, step, evaluation and checkpoint in parts.

One optimizer step sees a *global* batch: `batch_size x processes` conversations per micro-step,
`grad_accum` micro-steps. Which conversations is a pure function of (seed, step), so a resumed run
and a run spread over several processes see exactly the same batches as a single uninterrupted run.
The loss is `train.loss` (`kallm.training.objective`: cross-entropy on labelled tokens by default, or
distillation from the original model); each term is a mean over the global batch, and each process
scales its share by the global counts (known up front from the schedule) so the gradient does not
depend on how the batch was split. Evaluation always reports the cross-entropy.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kallm.data import BatchSchedule, ConversationSet, TokenizedExample, collate
from kallm.distill.teacher import build_teacher
from kallm.errors import KallmError
from kallm.folders.layout import DEFAULT_TRAINING_FOLDER
from kallm.io import read_json, write_json_atomic
from kallm.models.prefix import PrefixCache, prefix_fingerprint
from kallm.progress import progress_bar
from kallm.retrofitting.freeze import first_trainable_layer
from kallm.runtime.precision import Precision, resolve_precision
from kallm.training.callbacks import TrainCallback
from kallm.training.checkpoint import (
    apply_checkpoint,
    latest_checkpoint,
    newest_readable_checkpoint,
    non_finite_tensor,
    remove_partial,
    save_checkpoint,
)
from kallm.training.config import TrainConfig, TrainResult
from kallm.training.examples import prepare_data, validation_batches
from kallm.training.loss import StepLoss, check_lm_head
from kallm.training.memory import current_memory, peak_memory, reset_peak_memory
from kallm.training.objective import ObjectiveLoss, term_means
from kallm.training.optim import build_optimizer, lr_at, rebuild_optimizer, set_lr, trainable_named_params
from kallm.training.state import MetricsLog, RunFiles, TrainState, check_out_dir
from kallm.training.tracking import check_installed, flat_hparams, tracked_values, tracking_dir

log = logging.getLogger(__name__)


def prefix_layer(model: nn.Module) -> int:
    """Decoder layers below this one are frozen (0: nothing can be skipped)."""
    k = first_trainable_layer(model)
    return 0 if k is None else k


def make_prefix_cache(model: nn.Module, layer_index: int, config: TrainConfig, shared: PrefixCache | None,
                      precision: Precision) -> PrefixCache | None:
    if shared is not None:
        shared.check(model, layer_index, precision.name)
        return shared
    if not config.prefix_cache or layer_index == 0:
        return None
    return PrefixCache(layer_index, prefix_fingerprint(model, layer_index), precision.storage_dtype, precision.name)


class TrainLoop:
    """One training run of a retrofitted model's trainable parameters (requires_grad) on chat data.

    `callbacks` follow `TrainCallback`; `prefix_cache` shares a cache across runs (otherwise
    `config.prefix_cache` makes a private one); `run_meta` is recorded in config.json and must match
    on resume.
    """

    def __init__(self, model: nn.Module, tokenizer, config: TrainConfig, out_dir: str | Path, *,
                 callbacks: Sequence[TrainCallback] = (), progress: bool | None = None,
                 prefix_cache: PrefixCache | None = None, run_meta: dict[str, Any] | None = None) -> None:
        from accelerate import Accelerator

        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.files = RunFiles(Path(out_dir))
        self.callbacks = list(callbacks)
        self.progress = progress
        self.meta = {"train": config.to_dict(), **({"run": run_meta} if run_meta else {})}
        self.shared_cache = prefix_cache
        # Autocast is applied here rather than through Accelerate's mixed_precision, whose process-wide
        # state cannot change between runs in one process (experiment grids, tests).
        check_installed(config.report_to)  # before any data is loaded
        trackers = list(config.report_to)
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), log_with=trackers or None,
                                       project_dir=str(tracking_dir(self.files.root)) if trackers else None)
        self.device = self.accelerator.device
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process
        self.precision = resolve_precision(config.precision, self.device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    # ------------------------------------------------------------------ set-up

    def setup(self, train_data: ConversationSet | Sequence, val_data: ConversationSet | Sequence | None,
              resume: bool) -> TrainState:
        """Data, optimizer, caches and the state to start from (restored from the last checkpoint)."""
        from accelerate.utils import set_seed

        config = self.config
        check_out_dir(self.files, self.meta, resume)
        check_lm_head(self.model)
        self.train, val = prepare_data(self.tokenizer, train_data, config, self.progress)
        if val_data is not None:
            val = prepare_data(self.tokenizer, val_data, config.replace(val_size=0, val_fraction=None),
                               self.progress)[0]
        self.val = val
        self.val_batches = validation_batches(val, config, self.world)
        reset_peak_memory()
        self.schedule = BatchSchedule([len(e) for e in self.train], config.batch_size * self.world, config.seed,
                                      config.group_by_length)
        set_seed(config.seed)
        self.model.to(self.device)
        self.model.train()
        self.metrics = MetricsLog(self.files.metrics, self.is_main)
        # before _restore: the teacher copies what trains (if anything) as it was before training
        self.teacher = build_teacher(self.model) if config.loss.needs_teacher else None
        state = self._restore(resume)
        self._bind_prefix()
        if self.config.report_to:
            run_name = str((self.meta.get("run") or {}).get("run_id") or self.files.root.name)
            self.accelerator.init_trackers(run_name, config=flat_hparams(self.meta))
        return state

    def _restore(self, resume: bool) -> TrainState:
        latest = newest_readable_checkpoint(self.files.checkpoints) if resume else None
        start = latest.step if latest else 0
        for step in range(start):  # replay parameter-replacing callbacks deterministically
            for cb in self.callbacks:
                cb.on_step_start(step, self.model)
        self.optimizer = build_optimizer(self.model, self.config)
        state = TrainState(processes=self.world)
        if latest:
            state = TrainState.from_dict(apply_checkpoint(latest, self.model, self.optimizer), str(latest.path))
            log.info("resuming %s from step %d", self.files.root, state.step)
        if self.is_main:
            if resume:
                self._check_resumed_precision()
                remove_partial(self.files.checkpoints)
                self.metrics.truncate(state.step if latest else -1)
            else:
                self._write_run_files()
        return state

    def _write_run_files(self) -> None:
        from kallm.provenance import run_info

        self.files.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.files.config, self.meta)
        write_json_atomic(self.files.run_info, {**run_info(), "seed": self.config.seed, "processes": self.world,
                                                "precision": self.precision.to_dict()})

    def _check_resumed_precision(self) -> None:
        """A resumed run is exact only within one precision: say so when `auto` now resolves differently."""
        if not self.files.run_info.is_file():
            return
        before = read_json(self.files.run_info, "run info").get("precision", {}).get("name")
        if before is not None and before != self.precision.name:
            log.warning("%s started in %s and resumes in %s (%s); the rest of the run will not match an "
                        "uninterrupted one (pass precision=%s to keep it)", self.files.root, before,
                        self.precision.name, self.precision.reason, before)

    def _bind_prefix(self) -> None:
        """(Re)build the loss module for the model's current first trainable layer, with its cache."""
        self.layer_index = prefix_layer(self.model)
        self.cache = make_prefix_cache(self.model, self.layer_index, self.config, self.shared_cache, self.precision)
        self.step_loss = StepLoss(self.model, self.layer_index, self.config.logits_chunk_size)
        c = self.config
        self.objective = ObjectiveLoss(self.model, self.teacher, self.layer_index, c.loss, c.kd_positions,
                                       c.kd_temperature, c.logits_chunk_size)
        self.wrapped = self.accelerator.prepare(self.objective)

    # ------------------------------------------------------------------ one batch, one step

    def run_batch(self, examples: list[TokenizedExample], module: nn.Module,
                  **kwargs: Any) -> tuple[torch.Tensor, Any, int]:
        """(the module's two outputs, tokens) of one local batch: (sum of CE, labelled positions) for the
        evaluation's StepLoss, (scaled loss, term sums) for the training objective (`scales=`)."""
        batch = collate(examples, self.pad_id)
        states = None
        if self.cache is not None:
            self.cache.fill(self.model, batch)
            states = self.cache.batch_states(batch, self.device)
        with self.precision.autocast(self.device, self.model, self.teacher):
            out, extra = module(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device),
                                batch["labels"].to(self.device), states, **kwargs)
        return out, extra, int(batch["attention_mask"].sum())

    def _start_step(self, step: int) -> None:
        """Callbacks first: a callback that replaced parameters needs a new optimizer (and maybe prefix)."""
        old_names = {id(p): n for n, p in trainable_named_params(self.model)}
        changed = [bool(cb.on_step_start(step, self.model)) for cb in self.callbacks]
        if any(changed):
            self.optimizer = rebuild_optimizer(self.model, self.optimizer, old_names, self.config)
            if prefix_layer(self.model) != self.layer_index:
                self.shared_cache = None
            self._bind_prefix()
        set_lr(self.optimizer, lr_at(step, self.config))

    def step(self, step: int, state: TrainState) -> dict[str, Any]:
        """One optimizer step over the global batch `step`; returns its metrics record."""
        self._start_step(step)
        config, acc = self.config, self.accelerator
        bs, ga = config.batch_size, config.grad_accum
        micro = [self.schedule[step * ga + a] for a in range(ga)]
        global_examples = [self.train[i] for mb in micro for i in mb]
        scales = self.objective.scales(global_examples)  # each term's weight / its global count
        t0 = time.perf_counter()
        loss_acc = torch.zeros((), dtype=torch.float64, device=self.device)
        parts_acc = torch.zeros(len(config.loss.logged), dtype=torch.float64, device=self.device)
        tokens = 0
        for a, mb in enumerate(micro):
            sync = acc.no_sync(self.wrapped) if a < ga - 1 and self.world > 1 else nullcontext()
            with sync:
                rows = mb[self.rank * bs: (self.rank + 1) * bs]
                loss, parts, n_tok = self.run_batch([self.train[i] for i in rows], self.wrapped, scales=scales)
                acc.backward(loss * self.world)  # DDP averages gradients over processes
            loss_acc += loss.detach().double()
            parts_acc += parts
            tokens += n_tok
        params = [p for _, p in trainable_named_params(self.model)]
        max_norm = config.clip_grad_norm if config.clip_grad_norm is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = float(acc.reduce(loss_acc, "sum"))
        terms = term_means(acc.reduce(parts_acc, "sum"), global_examples, config)
        tokens = int(acc.reduce(torch.tensor(tokens, device=self.device), "sum"))
        dt = time.perf_counter() - t0
        state.step, state.data_position, state.last_loss = step + 1, (step + 1) * ga, loss
        state.tokens += tokens
        state.train_s += dt
        return {"step": step + 1, "loss": loss, **terms, "lr": lr_at(step, config), "grad_norm": grad_norm,
                "tokens_per_s": tokens / dt, "tokens": state.tokens, "memory_bytes": current_memory()[0]}

    # ------------------------------------------------------------------ evaluation and checkpoints

    def evaluate(self) -> float | None:
        """Mean CE per labelled token over the validation batches (None without validation data)."""
        if not self.val_batches:
            return None
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for batch in self.val_batches:
                rows = batch[self.rank::self.world]
                if rows:
                    loss_sum, n, _ = self.run_batch([self.val[i] for i in rows], self.step_loss)
                    total += torch.tensor([float(loss_sum), n], dtype=torch.float64, device=self.device)
        self.model.train()
        total = self.accelerator.reduce(total, "sum")
        return float(total[0] / total[1])

    def check_finite(self, record: dict[str, Any]) -> None:
        """Stop a diverged run: a nan/inf loss is no result, and the weights it made are never saved (the
        newest checkpoint stays the last finite one)."""
        bad = [k for k in ("loss", "eval_loss") if k in record and not math.isfinite(record[k])]
        if bad:
            self.metrics.add(record)  # the diverged step is on record in metrics.jsonl
            self.diverged(record["step"], f"{bad[0]} is {record[bad[0]]}")

    def diverged(self, step: int, what: str) -> None:
        self.metrics.flush()
        self.close_trackers()
        found = latest_checkpoint(self.files.checkpoints)
        kept = f"the last finite checkpoint is {found}" if found else "no checkpoint was written"
        raise KallmError(f"training diverged at step {step}: {what} (lr {self.config.lr:g}); no retrofit was "
                         f"saved, {kept}; lower the learning rate or check the loss")

    def log(self, record: dict[str, Any]) -> None:
        self.check_finite(record)
        self.metrics.add(record)
        if self.config.report_to:
            self.accelerator.log(tracked_values(record), step=record["step"])
        for cb in self.callbacks:
            cb.on_log(record)

    def close_trackers(self) -> None:
        if self.config.report_to:
            self.accelerator.end_training()  # flushes and closes the trackers' files

    def checkpoint(self, state: TrainState) -> None:
        bad = non_finite_tensor(dict(trainable_named_params(self.model)))
        if bad is not None:
            self.diverged(state.step, f"parameter {bad} holds nan/inf")
        self.metrics.flush()
        if self.is_main:
            save_checkpoint(self.files.checkpoints, state.step, self.model, self.optimizer, state.to_dict(),
                            keep=self.config.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def finish(self, state: TrainState) -> TrainResult:
        """The run's result record (written to result.json), and a shared cache's new entries saved."""
        self.metrics.flush()
        peak, kind = peak_memory()
        result = TrainResult(
            steps=self.config.steps, tokens=state.tokens, wall_s=state.wall_s,
            tokens_per_s=state.tokens / state.train_s if state.train_s else 0.0,
            peak_memory_bytes=peak, memory_kind=kind, final_train_loss=state.last_loss,
            initial_eval_loss=state.initial_eval_loss, final_eval_loss=state.last_eval_loss,
            trainable_params=sum(p.numel() for _, p in trainable_named_params(self.model)),
            metrics_path=str(self.files.metrics), out_dir=str(self.files.root), precision=self.precision.name,
        )
        self.close_trackers()
        if self.is_main:
            write_json_atomic(self.files.result, result.to_dict())
            if self.cache is not None and self.cache.path is not None and self.cache.dirty:
                self.cache.save(self.cache.path)
        return result

    # ------------------------------------------------------------------ the run

    def run(self, train_data: ConversationSet | Sequence, val_data: ConversationSet | Sequence | None = None,
            resume: bool = False) -> TrainResult:
        config = self.config
        state = self.setup(train_data, val_data, resume)
        if state.step >= config.steps and self.files.result.is_file():
            self.close_trackers()
            return TrainResult(**read_json(self.files.result, "training result"))
        wall_before, wall_start = state.wall_s, time.perf_counter()
        if state.step == 0:
            state.initial_eval_loss = state.last_eval_loss = self.evaluate()
            if state.initial_eval_loss is not None:
                self.log({"step": 0, "eval_loss": state.initial_eval_loss})
        bar = progress_bar(total=config.steps, initial=state.step, desc="training", unit="step",
                           progress=self.progress if self.is_main else False)
        for step in range(state.step, config.steps):
            record = self.step(step, state)
            self.log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}")
            done = step + 1
            if done == config.steps or (config.eval_every and done % config.eval_every == 0):
                state.last_eval_loss = self.evaluate()
                if state.last_eval_loss is not None:
                    self.log({"step": done, "eval_loss": state.last_eval_loss})
            if done == config.steps or (config.save_every and done % config.save_every == 0):
                state.wall_s = wall_before + time.perf_counter() - wall_start
                self.checkpoint(state)
        bar.close()
        state.wall_s = wall_before + time.perf_counter() - wall_start
        return self.finish(state)


def train_model(model: nn.Module, tokenizer, train_data: ConversationSet | Sequence, config: TrainConfig | None = None,
                out_dir: str | Path = DEFAULT_TRAINING_FOLDER, *, resume: bool = False, progress: bool | None = None,
                callbacks: Sequence[TrainCallback] = (), val_data: ConversationSet | Sequence | None = None,
                prefix_cache: PrefixCache | None = None, run_meta: dict[str, Any] | None = None) -> TrainResult:
    """Train the model's trainable parameters on chat data (see `TrainLoop`); returns the run's result."""
    loop = TrainLoop(model, tokenizer, config or TrainConfig(), out_dir, callbacks=callbacks, progress=progress,
                     prefix_cache=prefix_cache, run_meta=run_meta)
    return loop.run(train_data, val_data, resume)

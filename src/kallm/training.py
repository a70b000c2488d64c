"""The training loop (on Hugging Face Accelerate) and the high-level `kallm.train`.

One optimizer step sees a *global* batch: `batch_size x processes` conversations per micro-step,
`grad_accum` micro-steps. Which conversations is a pure function of (seed, step), so a resumed run
and a run spread over several processes see exactly the same batches as a single uninterrupted run.
The loss is the mean next-token cross-entropy over all labelled tokens of the global batch; each
process scales its share by the global label count (known up front from the schedule) so the
gradient does not depend on how the batch was split.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kallm.checkpoint import latest_checkpoint, load_checkpoint, read_state, remove_partial, save_checkpoint
from kallm.data import (
    DEFAULT_DATASET,
    BatchSchedule,
    ConversationSet,
    TokenizedExample,
    collate,
    epoch_batches,
    load_conversations,
    split_indices,
    tokenize_conversations,
)
from kallm.errors import KallmError
from kallm.io import append_jsonl_atomic, read_jsonl, write_json_atomic, write_text_atomic
from kallm.lm_loss import check_lm_head, labelled_lm_loss
from kallm.optim import build_optimizer, lr_at, rebuild_optimizer, set_lr, trainable_named_params
from kallm.prefix import PrefixCache, first_trainable_layer, prefix_fingerprint, tail_hidden_states
from kallm.progress import progress_bar
from kallm.train_config import TrainConfig, TrainResult

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
CONFIG = "config.json"
RUN_INFO = "run_info.json"
RESULT = "result.json"
CHECKPOINTS = "checkpoints"
RETROFIT = "retrofit"


class StepLoss(nn.Module):
    """(sum of CE over labelled tokens, count) for a batch: frozen prefix without autograd (or from
    cached states), then the tail, then logits only at labelled positions. A module of its own so
    that DDP wraps exactly the computation that produces gradients."""

    def __init__(self, model: nn.Module, layer_index: int, chunk_size: int) -> None:
        super().__init__()
        self.model = model
        self.layer_index = layer_index
        self.chunk_size = chunk_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                prefix_states: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        hidden = tail_hidden_states(self.model, input_ids, attention_mask, self.layer_index, prefix_states)
        return labelled_lm_loss(hidden, labels, check_lm_head(self.model), self.chunk_size)


def prepare_data(tokenizer, data: ConversationSet | Sequence, config: TrainConfig,
                 progress: bool | None = None) -> tuple[list[TokenizedExample], list[TokenizedExample]]:
    """Tokenise and split into (train, validation) examples, deterministically by `config.seed`."""
    if not isinstance(data, ConversationSet):
        data = ConversationSet([list(m) for m in data], [f"conversation {i}" for i in range(len(data))])
    if config.max_conversations is not None and len(data) > config.max_conversations:
        data = data.subset(range(config.max_conversations))
    if len(data) == 0:
        raise KallmError("no training conversations given")
    train_idx, val_idx = split_indices(len(data), val_size=None if config.val_fraction is not None else config.val_size,
                                       val_fraction=config.val_fraction or 0.0, seed=config.seed)
    tokenized = tokenize_conversations(tokenizer, data.conversations, config.max_length, progress=progress)
    val_set = set(val_idx)
    train = [e for e in tokenized.examples if e.index not in val_set]
    val = [e for e in tokenized.examples if e.index in val_set]
    if not train:
        raise KallmError("no training conversation left after the validation split and truncation")
    return train, val


def _use_bf16(config: TrainConfig) -> bool:
    return config.precision == "bf16" or (config.precision == "auto" and torch.cuda.is_available())


def _memory() -> tuple[int, str]:
    """(bytes, kind): CUDA peak allocated on GPU, current RSS on CPU."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda"
    import psutil

    return int(psutil.Process().memory_info().rss), "rss"


def reset_peak_memory() -> None:
    """Start a new peak-memory window: CUDA's peak counter, or Linux's peak RSS (VmHWM) of this process.

    Without the reset, several runs in one process (an experiment grid) would all report the largest
    peak seen so far.
    """
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # not Linux, or not permitted: the process-lifetime peak is reported instead
        pass


def _peak_memory() -> tuple[int, str]:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda"
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "rss"
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "rss"  # Linux reports KiB


def _json_roundtrip(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _check_out_dir(out: Path, meta: dict[str, Any], resume: bool) -> None:
    cfg = out / CONFIG
    if not resume:
        if cfg.exists():
            raise KallmError(f"{out} already holds a training run; resume it (--resume) or choose another --out")
        return
    if not cfg.is_file():
        raise KallmError(f"cannot resume: {out} holds no kallm training run (no {CONFIG})")
    saved = json.loads(cfg.read_text(encoding="utf-8"))
    now = _json_roundtrip(meta)
    diffs = [f"{sec}.{k}: {saved.get(sec, {}).get(k)!r} -> {now.get(sec, {}).get(k)!r}"
             for sec in sorted(set(saved) | set(now)) if isinstance(saved.get(sec, {}), dict)
             for k in sorted(set(saved.get(sec, {})) | set(now.get(sec, {})))
             if saved.get(sec, {}).get(k) != now.get(sec, {}).get(k)]
    if diffs:
        raise KallmError(f"cannot resume {out}: it was started with another configuration ({'; '.join(diffs[:4])})")


class _Metrics:
    """metrics.jsonl, appended in small atomic batches (a killed run never leaves half a line)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled, self.buffer, self.flushed_at = path, enabled, [], time.monotonic()

    def add(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self.buffer.append(record)
            if len(self.buffer) >= 50 or time.monotonic() - self.flushed_at > 30:
                self.flush()

    def flush(self) -> None:
        if self.enabled and self.buffer:
            append_jsonl_atomic(self.path, self.buffer)
            self.buffer = []
        self.flushed_at = time.monotonic()

    def truncate(self, last_step: int) -> None:
        """Drop records past the checkpoint being resumed (the killed run may have logged further)."""
        if self.enabled and self.path.exists():
            keep = [r for r in read_jsonl(self.path) if r.get("step", 0) <= last_step]
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))


def _prefix_layer(model: nn.Module) -> int:
    k = first_trainable_layer(model)
    return 0 if k is None else k


def train_model(
    model: nn.Module,
    tokenizer,
    train_data: ConversationSet | Sequence,
    config: TrainConfig | None = None,
    out_dir: str | Path = "runs/train",
    *,
    resume: bool = False,
    progress: bool | None = None,
    callbacks: Sequence[Any] = (),
    val_data: ConversationSet | Sequence | None = None,
    prefix_cache: PrefixCache | None = None,
    run_meta: dict[str, Any] | None = None,
) -> TrainResult:
    """Train the model's trainable parameters (requires_grad) on chat data; see the module docstring.

    `callbacks` may define `on_step_start(step, model) -> bool`; True means parameters were replaced,
    and the optimizer is rebuilt (state carried over for surviving parameters). On resume the
    callbacks are replayed for the steps already done, so they must depend only on the step.
    `prefix_cache` shares a cache across runs (otherwise `config.prefix_cache` makes a private one).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    config = config or TrainConfig()
    out = Path(out_dir)
    meta = {"train": config.to_dict(), **({"run": run_meta} if run_meta else {})}
    _check_out_dir(out, meta, resume)
    check_lm_head(model)
    train, val = prepare_data(tokenizer, train_data, config, progress)
    if val_data is not None:
        val = prepare_data(tokenizer, val_data, config.replace(val_size=0, val_fraction=None), progress)[0]

    # Autocast is applied here rather than through Accelerate's mixed_precision, whose process-wide
    # state cannot change between runs in one process (experiment grids, tests).
    reset_peak_memory()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    bf16 = _use_bf16(config)
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    schedule = BatchSchedule([len(e) for e in train], config.batch_size * world, config.seed, config.group_by_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    set_seed(config.seed)
    model.to(accelerator.device)
    model.train()

    ckpt_root = out / CHECKPOINTS
    metrics = _Metrics(out / METRICS, main)
    latest = latest_checkpoint(ckpt_root) if resume else None
    start_step = read_state(latest)["step"] if latest else 0
    for step in range(start_step):  # replay parameter-replacing callbacks deterministically
        for cb in callbacks:
            if hasattr(cb, "on_step_start"):
                cb.on_step_start(step, model)
    optimizer = build_optimizer(model, config)
    state: dict[str, Any] = {"tokens": 0, "train_s": 0.0, "wall_s": 0.0, "initial_eval_loss": None,
                             "last_loss": None}
    if latest:
        state.update(load_checkpoint(latest, model, optimizer))
        log.info("resuming %s from step %d", out, start_step)
        if start_step >= config.steps and (out / RESULT).is_file():
            return TrainResult(**json.loads((out / RESULT).read_text(encoding="utf-8")))
    if main:
        if resume:
            remove_partial(ckpt_root)
            metrics.truncate(start_step if latest else -1)
        else:
            from kallm.runinfo import run_info

            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out / CONFIG, meta)
            write_json_atomic(out / RUN_INFO, {**run_info(), "seed": config.seed, "processes": world})

    layer_index = _prefix_layer(model)
    cache = _make_cache(model, layer_index, config, prefix_cache)
    step_loss = StepLoss(model, layer_index, config.logits_chunk_size)
    wrapped = accelerator.prepare(step_loss)
    device = accelerator.device

    def run_batch(examples: list[TokenizedExample], module: nn.Module) -> tuple[torch.Tensor, int, int]:
        batch = collate(examples, pad_id)
        states = None
        if cache is not None:
            cache.fill(model, batch)
            states = cache.batch_states(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss_sum, n = module(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                 batch["labels"].to(device), states)
        return loss_sum, n, int(batch["attention_mask"].sum())

    val_batches = epoch_batches([len(e) for e in val], config.batch_size * world, config.seed, 0,
                                config.group_by_length) if val else []
    if val and not val_batches:  # fewer held-out conversations than one global batch
        val_batches = [list(range(len(val)))]
    val_batches = val_batches[: config.eval_batches] if config.eval_batches else val_batches

    def evaluate() -> float | None:
        if not val_batches:
            return None
        model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.no_grad():
            for gb in val_batches:
                rows = gb[rank::world]
                if rows:
                    loss_sum, n, _ = run_batch([val[i] for i in rows], step_loss)
                    total += torch.tensor([float(loss_sum), n], dtype=torch.float64, device=device)
        model.train()
        total = accelerator.reduce(total, "sum")
        return float(total[0] / total[1])

    wall_before, wall_start = state["wall_s"], time.perf_counter()
    if start_step == 0:
        state["initial_eval_loss"] = evaluate()
        if state["initial_eval_loss"] is not None:
            metrics.add({"step": 0, "eval_loss": state["initial_eval_loss"]})
    eval_loss = state["initial_eval_loss"] if start_step == 0 else state.get("last_eval_loss")
    bar = progress_bar(total=config.steps, initial=start_step, desc="training", unit="step",
                       progress=progress if main else False)
    bs, ga = config.batch_size, config.grad_accum
    for step in range(start_step, config.steps):
        old_names = {id(p): n for n, p in trainable_named_params(model)}
        changed = [bool(cb.on_step_start(step, model)) for cb in callbacks if hasattr(cb, "on_step_start")]
        if any(changed):
            optimizer = rebuild_optimizer(model, optimizer, old_names, config)
            new_k = _prefix_layer(model)
            if new_k != layer_index:
                layer_index = step_loss.layer_index = new_k
                cache = _make_cache(model, layer_index, config, None)
            wrapped = accelerator.prepare(step_loss) if world > 1 else step_loss
        set_lr(optimizer, lr_at(step, config))
        micro = [schedule[step * ga + a] for a in range(ga)]
        n_global = sum(train[i].num_labels for mb in micro for i in mb)
        t0 = time.perf_counter()
        loss_acc = torch.zeros((), dtype=torch.float64, device=device)
        tokens = 0
        for a, mb in enumerate(micro):
            sync = accelerator.no_sync(wrapped) if a < ga - 1 and world > 1 else nullcontext()
            with sync:
                loss_sum, _, n_tok = run_batch([train[i] for i in mb[rank * bs : (rank + 1) * bs]], wrapped)
                accelerator.backward(loss_sum * (world / n_global))
            loss_acc += loss_sum.detach().double()
            tokens += n_tok
        params = [p for _, p in trainable_named_params(model)]
        max_norm = config.clip_grad_norm if config.clip_grad_norm is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = float(accelerator.reduce(loss_acc, "sum")) / n_global
        tokens = int(accelerator.reduce(torch.tensor(tokens, device=device), "sum"))
        dt = time.perf_counter() - t0
        state["tokens"] += tokens
        state["train_s"] += dt
        state["last_loss"] = loss
        memory, _ = _memory()
        metrics.add({"step": step + 1, "loss": loss, "lr": lr_at(step, config), "grad_norm": grad_norm,
                     "tokens_per_s": tokens / dt, "tokens": state["tokens"], "memory_bytes": memory})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens / dt:,.0f}")
        done = step + 1
        if done < config.steps and config.eval_every and done % config.eval_every == 0:
            eval_loss = evaluate()
            metrics.add({"step": done, "eval_loss": eval_loss})
        if done == config.steps:
            eval_loss = evaluate()
            if eval_loss is not None:
                metrics.add({"step": done, "eval_loss": eval_loss})
        if done == config.steps or (config.save_every and done % config.save_every == 0):
            metrics.flush()
            state["last_eval_loss"] = eval_loss
            state["wall_s"] = wall_before + time.perf_counter() - wall_start
            if main:
                save_checkpoint(ckpt_root, done, model, optimizer,
                                {**state, "data_position": done * ga, "processes": world},
                                keep=config.keep_checkpoints)
            accelerator.wait_for_everyone()
    bar.close()
    metrics.flush()
    if start_step < config.steps:
        state["wall_s"] = wall_before + time.perf_counter() - wall_start
    peak, kind = _peak_memory()
    result = TrainResult(
        steps=config.steps, tokens=state["tokens"], wall_s=state["wall_s"],
        tokens_per_s=state["tokens"] / state["train_s"] if state["train_s"] else 0.0,
        peak_memory_bytes=peak, memory_kind=kind, final_train_loss=state["last_loss"],
        initial_eval_loss=state["initial_eval_loss"], final_eval_loss=eval_loss,
        trainable_params=sum(p.numel() for _, p in trainable_named_params(model)),
        metrics_path=str(out / METRICS), out_dir=str(out),
    )
    if main:
        write_json_atomic(out / RESULT, result.to_dict())
        if cache is not None and cache.path is not None and cache.dirty:
            cache.save(cache.path)
    return result


def _make_cache(model: nn.Module, layer_index: int, config: TrainConfig,
                shared: PrefixCache | None) -> PrefixCache | None:
    if shared is not None:
        shared.check(model, layer_index)
        return shared
    if not config.prefix_cache or layer_index == 0:
        return None
    return PrefixCache(layer_index, prefix_fingerprint(model, layer_index))


def train(
    model: str = "smollm2-135m-instruct",
    layers: str = "last:5",
    variant: str = "kan:chebyshev2:2",
    freeze: str = "ffn",
    data: str | Path | Sequence[str | Path] = DEFAULT_DATASET,
    out: str | Path = "runs/train",
    config: TrainConfig | None = None,
    resume: bool = False,
    progress: bool | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Load a model, retrofit it, train it on chat data, and save the retrofit to `out/retrofit`."""
    from kallm.models import load_model, model_source
    from kallm.retrofit_io import save_retrofit
    from kallm.surgery import retrofit

    config = config or TrainConfig()
    sources = [data] if isinstance(data, (str, Path)) else list(data)
    resolved = [str(Path(s).resolve()) if Path(str(s)).expanduser().exists() else str(s) for s in sources]
    run_meta = {"model": model_source(model), "layers": layers, "variant": str(variant), "freeze": freeze,
                "data": resolved}
    _check_out_dir(Path(out), {"train": config.to_dict(), "run": run_meta}, resume)
    conversations = load_conversations(sources, on_bad_row=config.on_bad_row,
                                       max_conversations=config.max_conversations)
    net, tokenizer = load_model(model)
    retrofit(net, layers=layers, variant=variant, freeze=freeze, seed=config.seed)
    result = train_model(net, tokenizer, conversations, config, out, resume=resume, progress=progress,
                         callbacks=callbacks, run_meta=run_meta)
    if Path(out, CONFIG).is_file():  # only the main process wrote the run folder
        from accelerate import PartialState

        if PartialState().is_main_process:
            save_retrofit(net.cpu(), Path(out) / RETROFIT, base_model=model_source(model), overwrite=True,
                          extra={"training": result.to_dict()})
    return result

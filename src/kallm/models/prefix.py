"""The frozen prefix: decoder layers below the first trainable one, run without autograd or cached.

Training only the last layers of a frozen model means most of a forward pass produces the same
hidden states for the same tokens, step after step, epoch after epoch, variant after variant. This
module computes the hidden states entering decoder layer K once (no autograd, eval mode), then runs
only layers K.. on them. It swaps layers 0..K-1 for passthrough modules (the last one returns the
given states) instead of calling layers directly, so the model still builds its own masks, position
ids and rotary embeddings: this relies on decoder layers returning a plain tensor (transformers 5.x).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from kallm.errors import KallmError
from kallm.io import write_with_atomic
from kallm.progress import progress_bar
from kallm.retrofitting.arch import find_decoder_layers
from kallm.runtime.precision import autocast

log = logging.getLogger(__name__)


class _StopForward(Exception):
    pass


class _Passthrough(nn.Module):
    """Stands in for a skipped decoder layer: returns its input, or the injected states."""

    def __init__(self, states: torch.Tensor | None = None) -> None:
        super().__init__()
        self.states = states

    def forward(self, *args, **kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        return hidden if self.states is None else self.states.to(hidden.dtype)


@torch.no_grad()
def prefix_hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                         layer_index: int) -> torch.Tensor:
    """Hidden states entering decoder layer `layer_index`, computed in eval mode without autograd."""
    _, layers = find_decoder_layers(model)
    if not 0 < layer_index < len(layers):
        raise KallmError(f"prefix layer index {layer_index} out of range 1..{len(layers) - 1}")
    captured: list[torch.Tensor] = []

    def hook(_module, args, kwargs):
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _StopForward

    handle = layers[layer_index].register_forward_pre_hook(hook, with_kwargs=True)
    was_training = model.training
    model.eval()
    try:
        model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
        model.train(was_training)
    return captured[0]


@contextmanager
def skip_prefix(model: nn.Module, layer_index: int, states: torch.Tensor) -> Iterator[None]:
    """Within the block, decoder layers below `layer_index` are skipped and `states` enter that layer."""
    _, layers = find_decoder_layers(model)
    originals = [layers[i] for i in range(layer_index)]
    try:
        for i in range(layer_index):
            layers[i] = _Passthrough(states if i == layer_index - 1 else None)
        yield
    finally:
        for i, module in enumerate(originals):
            layers[i] = module


def tail_hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       layer_index: int, states: torch.Tensor | None = None) -> torch.Tensor:
    """Final (post-norm) hidden states, running only layers `layer_index`.. when prefix states are given.

    Without `states` the prefix is computed here first (no autograd); layer_index 0 runs the whole model.
    """
    base = model.base_model
    if layer_index == 0:
        return base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    if states is None:
        states = prefix_hidden_states(model, input_ids, attention_mask, layer_index)
    with skip_prefix(model, layer_index, states):
        return base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def prefix_fingerprint(model: nn.Module, layer_index: int) -> str:
    """A short hash of what the prefix states depend on: config, K, and the prefix's weights."""
    _, layers = find_decoder_layers(model)
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    h.update(json.dumps(config.to_dict() if config is not None else {}, sort_keys=True, default=str).encode())
    h.update(str(layer_index).encode())
    tensors = list(model.get_input_embeddings().parameters())
    for layer in list(layers)[:layer_index]:
        tensors.extend(layer.parameters())
    with torch.no_grad():
        for t in tensors:
            # A weighted sum catches any change of the weights without hashing hundreds of MB of bytes.
            # float64 so the sum does not depend on memory layout (a deep copy gives the same value)
            flat = t.detach().double().flatten()
            weights = torch.linspace(1.0, 2.0, flat.numel(), device=flat.device, dtype=torch.float64)
            h.update(f"{tuple(t.shape)}:{float(flat @ weights):.10e}".encode())
    return h.hexdigest()[:16]


class PrefixCache:
    """Hidden states entering decoder layer `layer_index`, one (length, hidden) tensor per conversation.

    Entries are keyed by the conversation's token content (`example_key`), so a cache built once can be
    shared by several variants, seeds and epochs over the same data. `fingerprint` ties it to the model
    prefix that produced it; a cache from another model or K is refused. `precision` ('fp32' | 'bf16')
    is the arithmetic the states are computed in (`fill` applies it), `dtype` the one they are stored in;
    a run of another precision refuses the cache, so its trajectory does not depend on who built it.
    """

    def __init__(self, layer_index: int, fingerprint: str, dtype: torch.dtype = torch.float32,
                 precision: str = "fp32") -> None:
        self.layer_index = layer_index
        self.fingerprint = fingerprint
        self.dtype = dtype
        if precision not in ("fp32", "bf16"):
            raise KallmError(f"prefix cache precision must be 'fp32' or 'bf16', got {precision!r}")
        self.precision = precision
        self._states: dict[str, torch.Tensor] = {}
        self._file = None  # lazily read safetensors handle of a loaded cache
        self._file_keys: set[str] = set()
        self.path: Path | None = None  # where build/load/save last put it
        self.dirty = False  # entries added since then

    def __len__(self) -> int:
        return len(self._states.keys() | self._file_keys)

    def __contains__(self, key: object) -> bool:
        return key in self._states or key in self._file_keys

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._states.values())

    def get(self, key: str) -> torch.Tensor:
        if key in self._states:
            return self._states[key]
        if key in self._file_keys:
            return self._file.get_tensor(key)
        raise KeyError(f"prefix cache has no entry {key!r}")

    def add(self, key: str, states: torch.Tensor) -> None:
        self._states[key] = states.detach().to("cpu", self.dtype).contiguous()
        self.dirty = True

    def check(self, model: nn.Module, layer_index: int, precision: str | None = None) -> None:
        if layer_index != self.layer_index or prefix_fingerprint(model, layer_index) != self.fingerprint:
            raise KallmError(
                f"prefix cache was built for another model prefix (layer {self.layer_index}, fingerprint "
                f"{self.fingerprint}); rebuild it for layer {layer_index} of this model"
            )
        if precision is not None and precision != self.precision:
            raise KallmError(f"prefix cache states were computed in {self.precision}, this run computes in "
                             f"{precision}; build the cache with precision={precision!r}")

    def fill(self, model: nn.Module, batch: dict) -> None:
        """Compute and store the entries of a collated batch that are not cached yet."""
        keys = batch["cache_keys"]
        missing = [i for i, k in enumerate(keys) if k not in self]
        if not missing:
            return
        mask = batch["attention_mask"][missing]
        width = int(mask.sum(1).max())
        device = next(model.parameters()).device
        with autocast(self.precision, device, model):
            states = prefix_hidden_states(
                model, batch["input_ids"][missing, :width].to(device), mask[:, :width].to(device), self.layer_index
            )
        for row, i in enumerate(missing):
            self.add(keys[i], states[row, : int(mask[row].sum())])

    def batch_states(self, batch: dict, device: torch.device | str = "cpu") -> torch.Tensor:
        """(batch, width, hidden) states for a collated batch, zero on padding."""
        width = batch["input_ids"].shape[1]
        rows = [self.get(k) for k in batch["cache_keys"]]
        out = torch.zeros((len(rows), width, rows[0].shape[-1]), dtype=self.dtype)
        for i, r in enumerate(rows):
            out[i, : r.shape[0]] = r
        return out.to(device)

    @classmethod
    def build(cls, model: nn.Module, batches: Iterable[dict], layer_index: int, path: str | Path | None = None,
              *, dtype: torch.dtype = torch.float32, precision: str = "fp32",
              progress: bool | None = None) -> PrefixCache:
        """Compute the states of every conversation in `batches` (collated, with `cache_keys`).

        With `path`, an existing cache file of the same fingerprint is reused (and extended), and the
        result is written there atomically. To share it, pass it to `train_model(prefix_cache=...)`
        of each variant/seed with the same base model and first trainable layer; entries those runs
        add are written back to `path` at their end. Batches come from `kallm.data.collate`.
        """
        fingerprint = prefix_fingerprint(model, layer_index)
        cache = cls.load_or_none(path) if path is not None else None
        if cache is None:
            cache = cls(layer_index, fingerprint, dtype, precision)
        cache.check(model, layer_index, precision)
        for batch in progress_bar(batches, progress=progress, desc="prefix cache", unit="batch"):
            cache.fill(model, batch)
        if path is not None:
            cache.save(path)
        log.info("prefix cache: %d conversations at layer %d (%.1f MB)", len(cache), layer_index, cache.nbytes / 1e6)
        return cache

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        tensors = {k: self.get(k) for k in sorted(self._states.keys() | self._file_keys)}
        meta = {"layer_index": str(self.layer_index), "fingerprint": self.fingerprint, "dtype": str(self.dtype),
                "precision": self.precision}
        write_with_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
        self.path, self.dirty = Path(path), False

    @classmethod
    def load_or_none(cls, path: str | Path) -> PrefixCache | None:
        """The cache at `path`; None when there is none, or (with a warning) when it is damaged: it is rebuilt."""
        if not Path(path).is_file():
            return None
        try:
            return cls.load(path)
        except KallmError as exc:
            log.warning("%s; rebuilding it", exc)
            return None

    @classmethod
    def for_model(cls, path: str | Path, model: nn.Module, layer_index: int, dtype: torch.dtype = torch.float32,
                  precision: str = "fp32") -> PrefixCache:
        """The cache kept at `path` if it was built on this model's prefix in this precision (and is readable),
        else a new one that will be saved there: one cache file per grid, shared by every run."""
        fingerprint = prefix_fingerprint(model, layer_index)
        cache = cls.load_or_none(path)
        if cache is None or (cache.fingerprint, cache.layer_index, cache.precision) != (fingerprint, layer_index,
                                                                                         precision):
            cache = cls(layer_index, fingerprint, dtype, precision)
        cache.path = Path(path)
        return cache

    @classmethod
    def load(cls, path: str | Path) -> PrefixCache:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise KallmError(f"prefix cache file {str(path)!r} does not exist")
        try:
            handle = safe_open(str(path), framework="pt")
        except (SafetensorError, OSError) as exc:
            raise KallmError(f"prefix cache {path} is damaged: {exc}") from None
        meta = handle.metadata() or {}
        dtype = getattr(torch, meta.get("dtype", "").replace("torch.", ""), None)
        if "fingerprint" not in meta or not meta.get("layer_index", "").isdigit() or not isinstance(dtype, torch.dtype):
            raise KallmError(f"{path} is not a kallm prefix cache (its metadata lacks fingerprint, layer or dtype)")
        cache = cls(int(meta["layer_index"]), meta["fingerprint"], dtype, meta.get("precision", "fp32"))
        cache._file = handle
        cache._file_keys = set(handle.keys())
        cache.path = path
        return cache

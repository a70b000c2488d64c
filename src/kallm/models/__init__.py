"""The models kallm works on: loading any causal LM (hub id, folder, the embedded default) and running it
from a decoder layer on (the frozen prefix, computed once or cached).

| module | concept |
| --- | --- |
| `loading` | `load_model`, `load_model_skeleton`, the embedded GGUF → cached safetensors conversion, devices |
| `prefix` | hidden states below the first changed layer: run without autograd, cached on disk, skipped |

The frozen-prefix runner serves training, held-out scoring, the distillation teacher and the sequential
fit alike, so it lives beside the model rather than inside any one of them.
"""

from __future__ import annotations

from kallm.models.loading import (
    EMBEDDED_MODEL,
    load_model,
    load_model_skeleton,
    loaded_from,
    resolve_device,
    resolve_dtype,
)

__all__ = ["EMBEDDED_MODEL", "load_model", "load_model_skeleton", "loaded_from", "resolve_device", "resolve_dtype"]

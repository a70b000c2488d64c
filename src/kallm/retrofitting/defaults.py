"""The defaults of a retrofit, in one place: `kallm.retrofit`, `kallm.train`, `kallm train` and experiment
configs all read them from here (the training settings' defaults are TrainConfig's own)."""

from __future__ import annotations

from kallm.models.loading import EMBEDDED_MODEL

MODEL = EMBEDDED_MODEL  # the embedded SmolLM2-135M-Instruct: no download
LAYERS = "last:5"
VARIANT = "kan:chebyshev2:2"
FREEZE = "ffn"

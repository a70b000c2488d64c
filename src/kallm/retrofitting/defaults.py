"""The defaults of a retrofit, in one place: `kallm.retrofit`, `kallm.train`, `kallm train` and experiment
configs all read them from here (the training settings' defaults are TrainConfig's own)."""

from __future__ import annotations

from typing import Final

from kallm.models.loading import EMBEDDED_MODEL

MODEL: Final = EMBEDDED_MODEL  # the embedded SmolLM2-135M-Instruct: no download
LAYERS: Final = "last:5"
VARIANT: Final = "kan:chebyshev2:2"
FREEZE: Final = "ffn"  # Final: its type is the literal, so it fits experiment configs' Literal of policies

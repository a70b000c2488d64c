"""Retrofitting a pretrained causal LM: find its decoder layers and FFNs, replace the chosen FFNs with
KAN or linear modules (`retrofit`), decide what trains, save and reload only what changed, distil the
new FFNs from the old ones, and raise a KAN's degree during training.

| module | concept |
| --- | --- |
| `arch` | decoder layers and FFN sites of any Hugging Face causal LM |
| `layers` | layer selections (`last:5`, `-3..-1`, ...) |
| `variant` | `VariantSpec`, `Budget`, the one variant grammar, and the registry of variant kinds |
| `kinds` | kallm's variant kinds (baseline, linear, kan): grammar, modules, sizing, export entry |
| `kat` | the `kat` kind: learnable activations between the original MLP's projections (KAT / GR-KAN) |
| `sizing` | hidden widths that meet a parameter budget; narrower copies of the model's MLP |
| `surgery` | `retrofit`: each chosen FFN replaced by what its variant kind builds |
| `freeze` | freeze policies; the first trainable layer |
| `report` | `RetrofitReport` and its one accessor, `retrofit_report(model)` |
| `folder` | `save_retrofit` / `load_retrofit` (safetensors + JSON manifest) |
| `distill` | fit new FFNs to the original FFNs' recorded inputs and outputs |
| `curriculum` | degree schedules and the training callback that applies them |
"""

from __future__ import annotations

# First: registering kallm's variant kinds makes every variant text readable once the package is imported
# (kat's module imports the built-ins' and registers after them).
from kallm.retrofitting.kat import KAT_KIND  # noqa: F401
from kallm.retrofitting.kinds import BUILTIN_KINDS  # noqa: F401
from kallm.retrofitting.saving import load_retrofit, save_retrofit
from kallm.retrofitting.surgery import retrofit
from kallm.retrofitting.surgery_report import RetrofitReport, find_report, retrofit_report
from kallm.retrofitting.variant import Budget, VariantKind, VariantSpec, parse_variant, register_variant_kind

__all__ = [
    "Budget", "RetrofitReport", "VariantKind", "VariantSpec", "find_report", "load_retrofit", "parse_variant",
    "register_variant_kind", "retrofit", "retrofit_report", "save_retrofit",
]

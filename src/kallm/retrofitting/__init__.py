"""Retrofitting a pretrained causal LM: find its decoder layers and FFNs, replace the chosen FFNs with
KAN or linear modules (`retrofit`), decide what trains, save and reload only what changed, distil the
new FFNs from the old ones, and raise a KAN's degree during training.

| module | concept |
| --- | --- |
| `arch` | decoder layers and FFN sites of any Hugging Face causal LM |
| `layers` | layer selections (`last:5`, `-3..-1`, ...) |
| `variant` | `VariantSpec`, `Budget` and the one variant grammar |
| `sizing` | hidden widths that meet a parameter budget; narrower copies of the model's MLP |
| `surgery` | `retrofit`, the variant builders |
| `freeze` | freeze policies; the first trainable layer |
| `report` | `RetrofitReport` and its one accessor, `retrofit_report(model)` |
| `folder` | `save_retrofit` / `load_retrofit` (safetensors + JSON manifest) |
| `distill` | fit new FFNs to the original FFNs' recorded inputs and outputs |
| `curriculum` | degree schedules and the training callback that applies them |
"""

from __future__ import annotations

from kallm.retrofitting.saving import load_retrofit, save_retrofit
from kallm.retrofitting.surgery import retrofit
from kallm.retrofitting.surgery_report import RetrofitReport, find_report, retrofit_report
from kallm.retrofitting.variant import Budget, VariantSpec, parse_variant

__all__ = [
    "Budget", "RetrofitReport", "VariantSpec", "find_report", "load_retrofit", "parse_variant", "retrofit",
    "retrofit_report", "save_retrofit",
]

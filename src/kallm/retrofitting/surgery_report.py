"""What a retrofit did to a model: the report, its parameter counts, and the one accessor for it.

The report of a retrofitted model is kept beside the model (a weak-keyed table), not on the Hugging
Face object: `retrofit_report(model)` is the one way to read it, `find_report(model)` the one way to
ask whether there is one.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from kallm.errors import KallmError
from kallm.retrofitting.variant import VariantSpec, parse_variant

_REPORTS: weakref.WeakKeyDictionary[nn.Module, RetrofitReport] = weakref.WeakKeyDictionary()


@dataclass
class LayerReport:
    layer: int
    old_kind: str
    new_kind: str
    old_params: int
    new_params: int
    params: int  # the whole decoder layer after surgery
    trainable: int


@dataclass
class RetrofitReport:
    model_class: str
    n_layers: int
    layer_spec: str
    layer_indices: tuple[int, ...]
    variant: VariantSpec
    freeze: str
    seed: int
    total_params: int
    trainable_params: int
    replaced_old_params: int
    replaced_new_params: int
    first_trainable_layer: int | None  # None: nothing trains, or something below the layers does
    layers: list[LayerReport] = field(default_factory=list)
    hidden_width: int | None = None  # a sized FFN's width: a stacked KAN's hidden, a linear control's MLP

    @property
    def unchanged_prefix(self) -> int:
        """Decoder layers below this index are exactly the original model's (0: nothing can be shared).

        Every run of a grid retrofits the same layers, so below this index they all compute the same
        hidden states: evaluations compute them once per grid and run only the rest per model.
        """
        first = min(self.layer_indices)
        if self.first_trainable_layer is None:
            return 0 if self.trainable_params > 0 else first  # something before the layers trains
        return min(first, self.first_trainable_layer)

    @property
    def new_params_per_layer(self) -> int:
        """The replacement FFN's parameter count (the same in every replaced layer of a uniform model)."""
        return self.replaced_new_params // max(1, len(self.layer_indices))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layer_indices"] = list(self.layer_indices)
        data["variant"] = str(self.variant)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrofitReport:
        """Rebuild from `to_dict()` output (e.g. a manifest); wrong types raise KallmError."""
        try:
            values = dict(data)
            values["layers"] = [LayerReport(**row) for row in values.get("layers", [])]
            values["layer_indices"] = tuple(values["layer_indices"])
            values["variant"] = parse_variant(values["variant"])
            return cls(**values)
        except (TypeError, KeyError) as exc:
            raise KallmError(f"not a retrofit report: {exc}") from None


def find_report(model: nn.Module) -> RetrofitReport | None:
    """The model's retrofit report, or None when `kallm.retrofit` was not applied to it."""
    return _REPORTS.get(model)


def retrofit_report(model: nn.Module) -> RetrofitReport:
    """The model's retrofit report; a model that was not retrofitted is an error."""
    report = _REPORTS.get(model)
    if report is None:
        raise KallmError("the model has not been retrofitted (apply kallm.retrofit first)")
    return report


def attach_report(model: nn.Module, report: RetrofitReport) -> None:
    _REPORTS[model] = report


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable), counting tied weights once."""
    params = list(model.parameters())  # deduplicated by identity
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def module_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

"""Experiment configs: YAML with `include:`, validated into dataclasses, errors naming file:line and key.

- `yamlsrc`: YAML loading that records the line of every key, `include:` and deep merging.
- `mapping`: `from_mapping(cls, data, where, lines)`, generic dataclass building and type checks.
- `experiment`: the experiment schema (`ExperimentConfig`, `VariantConfig`) and its loader.
"""

from __future__ import annotations

from kallm.config.experiment import (
    ExperimentConfig,
    VariantConfig,
    experiment_from_mapping,
    load_experiment_config,
    validate_spec,
)
from kallm.config.mapping import FieldError, from_mapping
from kallm.config.yamlsrc import SourceLine, deep_merge, load_yaml_mapping, parse_yaml

__all__ = [
    "ExperimentConfig",
    "FieldError",
    "SourceLine",
    "VariantConfig",
    "deep_merge",
    "experiment_from_mapping",
    "from_mapping",
    "load_experiment_config",
    "load_yaml_mapping",
    "parse_yaml",
    "validate_spec",
]

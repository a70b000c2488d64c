"""Config files: YAML with `include:`, validated into dataclasses, errors naming file:line and key.

- `yamlsrc`: YAML loading that records the line of every key, `include:` and deep merging.
- `mapping`: `from_mapping(cls, data, where, lines)`, generic dataclass building and type checks;
  types written as text in configs (a class with `from_text`, like `VariantSpec`) are parsed here, once.

The experiment schema built on these lives in `kallm.experiment.schema`.
"""

from __future__ import annotations

from kallm.config.mapping import FieldError, from_mapping
from kallm.config.yamlsrc import SourceLine, deep_merge, load_yaml_mapping, parse_yaml

__all__ = ["FieldError", "SourceLine", "deep_merge", "from_mapping", "load_yaml_mapping", "parse_yaml"]

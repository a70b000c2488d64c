"""Reports of an experiment folder: `write_report(DIR)` writes `report.md` and PNG plots from its records.

| module | concept |
| --- | --- |
| `write` | `write_report`: the sections of report.md, the plots it links |
| `records` | reading the results and summarising them per variant |
| `stats` | mean ± std, paired bootstrap intervals, detectable differences |
| `heldout_comparisons` | each variant against the original, each KAN against its controls (paired, per set) |
| `verdict` | the verdict paragraph |
| `tables`, `plots`, `kan_functions` | markdown tables, figures, learned-function plots |
"""

from __future__ import annotations

from kallm.report.records import load_results, summarise
from kallm.report.write import comparisons, write_report

__all__ = ["comparisons", "load_results", "summarise", "write_report"]

"""Evaluation settings of an experiment (`eval:` section), passed on to `kallm.evaluate_bbh`."""

from __future__ import annotations

from dataclasses import dataclass

from kallm.bbh.evaluate import EvalSettings


@dataclass(frozen=True)
class EvalConfig(EvalSettings):
    """`EvalSettings` (mode, limit, batch_size, chat_template, max_gen_toks) plus what the runner needs."""

    data_dir: str | None = None  # BBH folder (official layout) or hub id; default $KALLM_BBH_DIR or ../shared/data/bbh
    tasks: str | list[str] = "all"  # names, 'all', or groups
    metric: str | None = None  # headline metric; default: the evaluator's headline for the mode
    prefix_cache: bool = True  # mc: reuse the frozen prefix's states across variants and seeds

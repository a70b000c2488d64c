"""Printing and records shared by the precision benchmarks (train_precision.py, bbh_precision.py)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 2) -> None:
    """A markdown table; columns from `numeric_from` on are right-aligned."""
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---:" if i >= numeric_from else "---" for i in range(len(header))) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def print_resolutions(rows: Sequence[dict]) -> None:
    """One line per arm: what it computed in, and why (`resolve_precision`'s reason)."""
    print()
    for r in rows:
        print(f"- {r['arm']}: {r['computes_in']} ({r['reason']})")


def verdict(text: str, value: float, ok: bool, note: str = "") -> None:
    print(f"- {text}: {value:.2f} {'PASS' if ok else 'FAIL'}{note}")


def malloc_as_the_command_line() -> None:
    """Tune malloc as `kallm` does at start (KALLM_MALLOC=system: glibc's defaults): the timings are the CLI's."""
    from kallm.runtime.allocator import keep_freed_memory

    keep_freed_memory()


def conditions() -> str:
    """What else shaped the timings, for a benchmark's header: the load average now, malloc's set-up."""
    from kallm.runtime.allocator import allocator_state

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"load average {load:.1f} at the end; malloc: {allocator_state()}"


def write_record(path: str, args: argparse.Namespace, rows: list[dict]) -> None:
    """The run's arguments, malloc set-up and rows as JSON."""
    from kallm.runtime.allocator import allocator_state

    record = {"args": vars(args), "malloc": allocator_state(), "rows": rows}
    Path(path).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

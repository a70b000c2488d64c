"""`kallm report DIR`: write DIR/report.md and DIR/plots/*.png from DIR/results.jsonl."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write report.md and plots for an experiment folder",
        description="Write report.md (tables, paired comparison, provenance) and PNG plots for an "
                    "experiment folder, computed only from its results.jsonl.",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="experiment folder holding results.jsonl")
    parser.add_argument("-o", "--out", type=Path, default=None,
                        help="report file to write (default: DIR/report.md); plots go to plots/ beside it")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kallm.report import write_report

    path = write_report(args.dir, args.out)
    print(path)
    return 0

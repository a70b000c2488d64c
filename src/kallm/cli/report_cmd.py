"""`kallm report DIR`: write DIR/report.md and DIR/plots/*.png from DIR/results.jsonl."""

from __future__ import annotations

import argparse
from pathlib import Path

from kallm.folders import layout


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help=f"write {layout.REPORT} and plots for an experiment folder",
        description=f"Write {layout.REPORT} (tables, paired comparison, provenance) and PNG plots for an "
                    f"experiment folder, computed only from its {layout.RESULTS}.",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help=f"experiment folder holding {layout.RESULTS}")
    parser.add_argument("-o", "--out", type=Path, default=None,
                        help=f"report file to write (default: DIR/{layout.REPORT}); plots go to "
                             f"{layout.PLOTS}/ beside it")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kallm.report import write_report

    path = write_report(args.dir, args.out)
    print(path)
    return 0

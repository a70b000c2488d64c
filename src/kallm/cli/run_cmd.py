"""`kallm run CONFIG`: run or resume an experiment grid (see kallm.experiment)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run an experiment config: every variant x seed, resumable")
    p.add_argument("config", help="experiment YAML (see configs/demo.yaml)")
    p.add_argument("--shard", default=None, metavar="I/N", help="run only the I-th of N shares of the grid")
    p.add_argument("--dry-run", action="store_true", help="print the plan with parameter counts and exit")
    p.add_argument("--force", action="store_true",
                   help="add runs to an output folder that holds results of a different config")
    p.add_argument("--report", action="store_true", help="write the report when the grid is done")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder for this invocation (default: the config's output_dir)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kallm.experiment import run_experiment
    from kallm.folders.layout import ExperimentFolder

    result = run_experiment(args.config, shard=args.shard, dry_run=args.dry_run, force=args.force,
                            progress=args.progress, out=args.out)
    if args.dry_run:
        header = f"{'run':<28} {'spec':<48} {'init':<8} {'width':>6} {'trainable':>12} {'total':>13}"
        print(header)
        print("-" * len(header))
        for row in result:
            print(f"{row['run_id']:<28} {row['spec']:<48} {str(row['init'] or '-'):<8} "
                  f"{str(row['hidden_width'] or '-'):>6} {row['trainable']:>12,} {row['total']:>13,}")
        print(f"\n{len(result)} runs")
        return 0
    print(f"results: {ExperimentFolder(result).results}")
    if args.report:
        from kallm.report import write_report

        print(f"report: {write_report(result)}")
    return 0

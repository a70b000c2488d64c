"""The `kallm` command line: a thin layer over the Python API.

Each command lives in its own module exposing `register(subparsers)`, which adds a parser whose
`func` default takes the parsed args and returns an exit code. Library errors (KallmError) become
one line on stderr and exit code 2; nothing here prints tracebacks for bad input.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from kallm import __version__
from kallm.errors import KallmError

# Module names under kallm.cli, one per command (or family of commands).
_COMMAND_MODULES = ("inspect_cmd", "train_cmd", "eval_cmd", "run_cmd", "report_cmd", "plot_cmd", "export_cmd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kallm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"kallm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"kallm.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "accelerate", "datasets", "httpx", "huggingface_hub", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # Progress bars: off with -q, else on when a person watches (None: when stderr is a terminal).
    args.progress = False if args.quiet else None
    if args.quiet:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except KallmError as exc:
        print(f"kallm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"kallm {args.command}: error: file not found: {exc.filename or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kallm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

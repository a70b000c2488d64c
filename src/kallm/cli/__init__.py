"""The `kallm` command line: a thin layer over the Python API.

Each command lives in its own module exposing `register(subparsers)`, which adds a parser whose
`func` default takes the parsed args and returns an exit code. Library errors (KallmError) become
one line on stderr and exit code 2; nothing here prints tracebacks for bad input.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import NoReturn

from kallm import __version__
from kallm.errors import KallmError
from kallm.progress import progress_enabled
from kallm.runtime.allocator import bound_kernel_cache, keep_freed_memory

# Module names under kallm.cli, one per command (or family of commands).
_COMMAND_MODULES = ("inspect_cmd", "train_cmd", "eval_cmd", "run_cmd", "report_cmd", "plot_cmd", "export_cmd")


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line, like every other error (the usage itself is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _single_value_options(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions if action.nargs is None and action.option_strings
            for opt in action.option_strings}


def join_dash_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`--layers -3..-1` -> `--layers=-3..-1`: argparse takes a value that starts with '-' (and is not a plain
    negative number) for an option, so the form the docs show would fail. Only values that are no option of
    the command are joined."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    command = next((arg for arg in argv if sub is not None and arg in sub.choices), None)
    if command is None:
        return argv
    known = set(sub.choices[command]._option_string_actions)
    takes_value = _single_value_options(sub.choices[command])
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg in takes_value and nxt is not None and nxt.startswith("-") and nxt not in known and nxt != "--":
            out.append(f"{arg}={nxt}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def _disable_hub_progress_bars() -> None:
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    else:  # read when transformers and huggingface_hub are imported; importing them here would slow `--help`
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kallm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"kallm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"kallm.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(join_dash_values(parser, list(sys.argv[1:] if argv is None else argv)))
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "accelerate", "datasets"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    for network in ("httpx", "huggingface_hub", "urllib3"):  # retries offline: the error that follows says it
        logging.getLogger(network).setLevel(level if args.verbose else logging.ERROR)
    # Progress bars: off with -q, else on when a person watches (None: when stderr is a terminal).
    args.progress = False if args.quiet else None
    if not progress_enabled(args.progress):  # transformers' own bars too: a log file gets no \r-lines
        _disable_hub_progress_bars()
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    keep_freed_memory()  # a process-wide choice, so the application's, not the library's
    bound_kernel_cache()
    try:
        return int(args.func(args) or 0)
    except KallmError as exc:
        print(f"kallm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"kallm {args.command}: error: file not found: {exc.filename or exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the environment (permissions, a full disk), not a bug: one line, no traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"kallm {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kallm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

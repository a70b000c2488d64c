"""The `kallm` entry point: one-line usage errors, values that start with '-', messages that name real flags."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

from kallm.cli import build_parser, join_dash_values, main
from tests.tiny_models import make_tiny_model

SRC = Path(__file__).resolve().parents[2] / "src" / "kallm"
# Flags of other programs that kallm's messages quote (git for provenance, pip for the embedded model).
OTHER_PROGRAMS = {"--porcelain", "--untracked-files", "--no-deps", "--model_args", "--batch_size"}  # git, pip, lm_eval


def all_flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = {opt for action in parser._actions for opt in action.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= all_flags(sub)
    return flags


def test_messages_name_only_flags_that_exist():
    """An error that recommends `--overwrite` when there is no such flag sends the user nowhere."""
    named: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", node.value):
                    named.setdefault(flag, set()).add(str(path.relative_to(SRC)))
    assert "--force" in named and "--allow-other-base" in named  # the scan sees f-strings and messages
    unknown = {f: sorted(where) for f, where in named.items() if f not in all_flags(build_parser()) | OTHER_PROGRAMS}
    assert not unknown, unknown


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    make_tiny_model("llama").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("layers", [["--layers", "-3..-1"], ["--layers=-3..-1"], ["--layers", "-2"]])
def test_layer_ranges_with_negative_ends_work_as_documented(tiny_folder, capsys, layers):
    indices = [1, 2, 3] if "-3..-1" in "".join(layers) else [2]
    assert main(["-q", "inspect", str(tiny_folder), *layers]) == 0
    assert f"on layers {indices}" in capsys.readouterr().out


def test_only_values_are_joined_to_their_flag():
    parser = build_parser()
    assert join_dash_values(parser, ["train", "--layers", "-3..-1", "--resume"]) == \
        ["train", "--layers=-3..-1", "--resume"]
    assert join_dash_values(parser, ["train", "--layers", "--resume"]) == ["train", "--layers", "--resume"]
    assert join_dash_values(parser, ["eval", "m", "--resume", "-x"]) == ["eval", "m", "--resume", "-x"]
    assert join_dash_values(parser, ["--layers", "-1"]) == ["--layers", "-1"]  # no command: left to argparse


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["inspect"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["kallm inspect: error: the following arguments are required: model (see kallm inspect --help)"]


def test_an_os_error_is_one_line(tmp_path, capsys, monkeypatch):
    import kallm.cli.report_cmd

    def denied(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "report.md"))

    monkeypatch.setattr(kallm.cli.report_cmd, "run", denied)
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"kallm report: error: Permission denied: {tmp_path / 'report.md'}"

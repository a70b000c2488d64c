"""`kallm report DIR` through the real CLI entry point."""

from __future__ import annotations

from kallm.cli import main
from tests.report.test_report import make_run, table_rows


def test_report_command_writes_report_and_plots(tmp_path, capsys):
    make_run(tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    assert list(table_rows(text, "variant | spec | accuracy")) == ["baseline", "linear-restart", "kan-cheb2"]
    assert (tmp_path / "plots" / "accuracy_vs_params.png").is_file()


def test_report_command_out_option(tmp_path, capsys):
    make_run(tmp_path / "run")
    out = tmp_path / "docs" / "demo.md"
    assert main(["report", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert out.is_file() and (tmp_path / "docs" / "plots" / "per_task.png").is_file()


def test_report_command_without_results_is_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"kallm report: error: no results.jsonl in {tmp_path}: run the experiment first (kallm run CONFIG)"

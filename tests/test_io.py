"""kallm.io: files shared with the user's umask, stale temporary files removed, early output-folder checks."""

from __future__ import annotations

import os
import time

import pytest
import torch
from safetensors.torch import save_file

from kallm.errors import KallmError
from kallm.io import (
    atomic_path,
    check_output_dir,
    read_json,
    read_jsonl,
    remove_stale_temps,
    replace_dir_atomic,
    write_json_atomic,
    write_text_atomic,
    write_with_atomic,
)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_written_files_and_folders_follow_the_umask(tmp_path, umask_022):
    """safetensors writes 0600 and mkdtemp makes 0700: shared results must not be private to one user."""
    write_with_atomic(tmp_path / "w.safetensors", lambda tmp: save_file({"x": torch.zeros(3)}, str(tmp)))
    write_json_atomic(tmp_path / "m.json", {"a": 1})
    replace_dir_atomic(tmp_path / "ckpt", lambda tmp: save_file({"x": torch.zeros(3)}, str(tmp / "t.safetensors")))
    assert mode(tmp_path / "w.safetensors") == 0o644
    assert mode(tmp_path / "m.json") == 0o644
    assert mode(tmp_path / "ckpt") == 0o755
    assert mode(tmp_path / "ckpt" / "t.safetensors") == 0o644
    os.umask(0o077)
    write_json_atomic(tmp_path / "private.json", {})
    assert mode(tmp_path / "private.json") == 0o600


def test_stale_temporary_files_are_removed_but_not_live_or_foreign_ones(tmp_path):
    old = time.time() - 3600
    stale_file = tmp_path / ".manifest.json.k3j_9x2a.tmp"
    stale_dir = tmp_path / ".step-00000004.ab12cd34.tmp"
    live = tmp_path / ".results.jsonl.zz99yy88.tmp"  # written since this process started: maybe ours, in use
    foreign = [tmp_path / ".hidden.tmp", tmp_path / "notes.tmp", tmp_path / ".x.toolong123.tmp"]
    stale_file.write_bytes(b"")
    stale_dir.mkdir()
    (stale_dir / "part.safetensors").write_bytes(b"x")
    live.write_text("{}")
    for p in foreign:
        p.write_text("keep")
    for p in (stale_file, stale_dir, *foreign):
        os.utime(p, (old, old))
    assert sorted(remove_stale_temps(tmp_path)) == sorted([stale_file, stale_dir])
    assert live.exists() and all(p.exists() for p in foreign)
    assert remove_stale_temps(tmp_path / "missing") == []


def test_a_failed_writer_leaves_no_temporary_file(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_output_folder_is_checked_without_creating_it(tmp_path):
    target = tmp_path / "a" / "b"
    assert check_output_dir(target) == target and not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(KallmError, match=r"cannot use .*file/sub as output folder: .*file is a file, not a folder"):
        check_output_dir(tmp_path / "file" / "sub")
    with pytest.raises(KallmError, match=r"as report folder: .*file is a file, not a folder"):
        check_output_dir(tmp_path / "file", "report folder")


def test_jsonl_bad_lines_are_errors_or_skipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    path.write_text('{"run_id": "a"}\n[1, 2]\n{"run_id": "b"}\n{"run_id": "c", "sco', encoding="utf-8")
    with pytest.raises(KallmError, match=r"results\.jsonl:2: a JSON list, not an object"):
        read_jsonl(path)
    assert [r["run_id"] for r in read_jsonl(path, skip_bad_lines=True)] == ["a", "b"]
    assert "results.jsonl:4: skipped a line that is not valid JSON" in caplog.text
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(KallmError, match="cannot read .*results.jsonl"):
        read_jsonl(path, skip_bad_lines=True)


def test_a_full_disk_is_one_error_naming_the_file_and_keeps_the_old_one(tmp_path):
    """A real, tiny tmpfs (mounting needs root: skipped elsewhere)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        write_text_atomic(disk / "a.txt", "old")
        with pytest.raises(KallmError, match=r"^cannot write .*disk/a\.txt: No space left on device"):
            write_text_atomic(disk / "a.txt", "x" * 200_000)
        with pytest.raises(KallmError, match=r"^cannot write .*w\.safetensors: .*No space left on device"):
            write_with_atomic(disk / "w.safetensors", lambda p: save_file({"w": torch.zeros(100_000)}, str(p)))
        assert sorted(p.name for p in disk.iterdir()) == ["a.txt"] and (disk / "a.txt").read_text() == "old"
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_deeply_nested_json_is_one_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"ok": 1}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(KallmError, match=r"deep\.jsonl:2: JSON nested too deeply"):
        read_jsonl(path)
    assert read_jsonl(path, skip_bad_lines=True) == [{"ok": 1}]
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(KallmError, match=r"deep\.json is nested too deeply"):
        read_json(tmp_path / "deep.json")

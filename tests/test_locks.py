"""kallm.locks: one holder at a time, across processes, and a killed holder's lock is free again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from kallm.locks import Busy, held, lock_holder


def test_a_second_holder_is_refused_until_the_first_lets_go(tmp_path):
    lock = tmp_path / "runs" / "a" / ".lock"
    with held(lock):
        assert lock_holder(lock) == str(os.getpid())
        # another open file: flock refuses it even in one process
        with pytest.raises(Busy, match=rf"held by another process \(pid {os.getpid()}\)") as busy, \
                held(lock, wait=False):
            pass
        assert busy.value.path == lock and busy.value.holder == str(os.getpid())
    with held(lock, wait=False):
        pass


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    """flock locks die with their process: no stale lock ever blocks the next run."""
    lock = tmp_path / ".lock"
    code = f"from kallm.locks import held\nwith held({str(lock)!r}):\n    print('held', flush=True)\n    input()\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(Busy, match=f"pid {proc.pid}"), held(lock, wait=False):
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while True:
            try:
                with held(lock, wait=False):
                    break
            except Busy:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()

"""glibc malloc tuning: freed blocks are reused (page faults counted in a fresh process), the user's
own settings and the opt-out are respected, and the state is recorded in run provenance."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from kallm.provenance import run_info
from kallm.runtime import allocator

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc only")

# glibc's own behaviour, through libc itself: a freed 4 MiB block sets the default mmap threshold to
# 4 MiB and the trim threshold to 8 MiB; each round then takes three 3 MiB heap blocks, writes them and
# frees them, leaving 9 MiB free at the heap's top. Reports the minor page faults of rounds 2-10.
PROBE = """
import ctypes, json, resource, sys
from kallm.runtime.allocator import allocator_state, keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tune" else False
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
MiB = 2**20
libc.free(libc.malloc(4 * MiB))
for round in range(10):
    if round == 1:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(3 * MiB) for _ in range(3)]
    for block in blocks:
        ctypes.memset(block, 1, 3 * MiB)
    for block in blocks:
        libc.free(block)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
print(json.dumps({"tuned": tuned, "state": allocator_state(), "faults": faults}))
"""
ROUND_PAGES = 9 * 2**20 // 4096


def probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in (allocator.OPT_OUT, "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**clean, **env}, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


@glibc_only
def test_tuned_malloc_reuses_freed_blocks_instead_of_faulting_them_in_again():
    default, tuned = probe("leave"), probe("tune")
    assert default["state"] == "system default" and not default["tuned"]
    assert tuned["tuned"] and tuned["state"].startswith("glibc, freed memory kept")
    assert default["faults"] > 5 * ROUND_PAGES  # glibc trims the 9 MiB after each round: faulted in again
    assert tuned["faults"] < ROUND_PAGES // 4  # kept: every later round reuses round 1's pages


@glibc_only
@pytest.mark.parametrize("env, why", [({"KALLM_MALLOC": "system"}, "KALLM_MALLOC=system"),
                                      ({"MALLOC_TRIM_THRESHOLD_": "100000"}, "MALLOC_TRIM_THRESHOLD_ set"),
                                      ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=100000"},
                                       "GLIBC_TUNABLES glibc.malloc.* set")])
def test_the_opt_out_and_the_users_own_tunables_leave_malloc_alone(env, why):
    result = probe("tune", **env)
    assert not result["tuned"]
    assert result["state"] == f"system default ({why})"
    assert result["faults"] > 5 * ROUND_PAGES


def test_reasons_to_skip_read_the_environment(monkeypatch):
    for name in (*allocator.USER_TUNABLES, allocator.OPT_OUT):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    monkeypatch.setenv("MALLOC_TOP_PAD_", "1")
    assert allocator._reason_to_skip() in ("MALLOC_MMAP_MAX_, MALLOC_TOP_PAD_ set", "malloc is not glibc's")
    monkeypatch.setenv(allocator.OPT_OUT, "SYSTEM")
    assert allocator._reason_to_skip() == "KALLM_MALLOC=system"


def test_provenance_records_how_malloc_is_set_up():
    assert run_info()["malloc"] == allocator.allocator_state()


def test_the_kernel_cache_is_bounded_unless_the_user_sized_it(monkeypatch):
    monkeypatch.delenv(allocator.ONEDNN_CACHE_VARIABLE, raising=False)
    assert allocator.bound_kernel_cache() == str(allocator.ONEDNN_CACHE_CAPACITY)
    assert run_info()["onednn_kernel_cache"] == str(allocator.ONEDNN_CACHE_CAPACITY)
    monkeypatch.setenv(allocator.ONEDNN_CACHE_VARIABLE, "2048")
    assert allocator.bound_kernel_cache() == "2048"
    assert os.environ[allocator.ONEDNN_CACHE_VARIABLE] == "2048"

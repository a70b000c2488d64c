"""Precision resolution: `auto` is bf16 exactly where the device has native bf16 (capability mocked both ways)."""

from __future__ import annotations

import logging

import pytest
import torch

from kallm.errors import KallmError
from kallm.runtime import precision as prec
from kallm.runtime.precision import (
    Precision,
    autocast,
    native_bf16_cpu_features,
    precision_in_effect,
    proc_cpuinfo_features,
    resolve_precision,
)

# torch.cpu.get_capabilities() of two real machines (abridged): a Sapphire Rapids Xeon and the AVX2 EPYC
# this was written on. Plain AVX-512 (avx512_bw/vl/dq) is what oneDNN calls "bf16 supported" and emulates.
XEON_SPR = {"architecture": "x86_64", "avx2": True, "avx512_f": True, "avx512_bw": True, "avx512_vl": True,
            "avx512_dq": True, "avx512_bf16": True, "amx_tile": True, "amx_bf16": True, "amx_int8": True}
EPYC_ZEN3 = {"architecture": "x86_64", "avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False}
SKYLAKE_AVX512 = {"architecture": "x86_64", "avx2": True, "avx512_f": True, "avx512_bw": True, "avx512_vl": True,
                  "avx512_dq": True, "avx512_bf16": False, "amx_bf16": False}
GRAVITON3 = {"architecture": "aarch64", "neon": True, "sve": True, "bf16": True, "sve_bf16": True}


@pytest.fixture
def cpu_with(monkeypatch):
    def use(capabilities: dict) -> None:
        monkeypatch.setattr(prec, "cpu_capabilities", lambda: capabilities)

    return use


@pytest.mark.parametrize("caps, expected", [
    (XEON_SPR, ["amx_bf16", "avx512_bf16"]),
    (GRAVITON3, ["sve_bf16", "bf16"]),
    (EPYC_ZEN3, []),
    (SKYLAKE_AVX512, []),
    ({}, []),
])
def test_native_bf16_features_from_capabilities(caps, expected):
    assert native_bf16_cpu_features(caps) == expected


@pytest.mark.parametrize("caps, name", [(XEON_SPR, "bf16"), (GRAVITON3, "bf16"), (EPYC_ZEN3, "fp32"),
                                        (SKYLAKE_AVX512, "fp32")])
def test_auto_is_bf16_exactly_when_the_cpu_has_native_bf16(cpu_with, caps, name):
    cpu_with(caps)
    p = resolve_precision("auto", "cpu")
    assert p == Precision(name, "auto", p.reason)
    assert ("CPU has amx_bf16, avx512_bf16" in p.reason) == (caps is XEON_SPR)
    assert ("emulated" in p.reason) == (name == "fp32")
    assert p.storage_dtype == (torch.bfloat16 if name == "bf16" else torch.float32)


def test_explicit_precisions_ignore_the_hardware(cpu_with, caplog):
    for caps in (XEON_SPR, EPYC_ZEN3):
        cpu_with(caps)
        assert resolve_precision("fp32", "cpu").name == "fp32"
        with caplog.at_level(logging.WARNING, logger="kallm.runtime.precision"):
            caplog.clear()
            assert resolve_precision("bf16", torch.device("cpu")).name == "bf16"
        # Forcing bf16 where it is emulated is allowed (tests do it) but said out loud.
        assert ("slower than fp32" in caplog.text) == (caps is EPYC_ZEN3)


def test_this_machine_resolves_by_what_torch_reports():
    caps = torch.cpu.get_capabilities()
    native = bool(caps.get("avx512_bf16") or caps.get("amx_bf16") or caps.get("bf16") or caps.get("sve_bf16"))
    assert resolve_precision("auto", "cpu").name == ("bf16" if native else "fp32")


def test_cuda_auto_needs_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Some GPU")
    for native, name in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, n=native: n)
        p = resolve_precision("auto", "cuda")
        assert p.name == name and p.reason.startswith("Some GPU")
    assert resolve_precision("auto", "mps").name == "fp32"


def test_unknown_precision_names_the_valid_ones():
    with pytest.raises(KallmError, match=r"precision 'fp23' is not valid \(did you mean 'fp32'\?\); "
                                         r"choose one of: auto, fp32, bf16"):
        resolve_precision("fp23", "cpu")
    assert resolve_precision(Precision("bf16", "auto", "x"), "cpu") == Precision("bf16", "auto", "x")


def test_proc_cpuinfo_fallback(tmp_path, monkeypatch):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\n"
                   "processor\t: 1\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 svebf16 i8mm\n")
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu avx avx2 avx512f avx512bw\n")
    assert native_bf16_cpu_features(proc_cpuinfo_features(x86)) == ["amx_bf16", "avx512_bf16"]
    assert native_bf16_cpu_features(proc_cpuinfo_features(arm)) == ["sve_bf16", "bf16"]
    assert proc_cpuinfo_features(plain) == {} and proc_cpuinfo_features(tmp_path / "missing") == {}

    def broken():
        raise RuntimeError("cpuinfo failed to initialise")

    monkeypatch.setattr(torch.cpu, "get_capabilities", broken)
    monkeypatch.setattr(prec, "proc_cpuinfo_features", lambda: proc_cpuinfo_features(x86))
    assert resolve_precision("auto", "cpu").name == "bf16"


def test_autocast_bf16_and_fp32_switches_an_outer_autocast_off():
    lin = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with autocast("bf16", "cpu"):
        assert lin(x).dtype == torch.bfloat16 and precision_in_effect(lin) == "bf16"
        with autocast("fp32", "cpu"):
            assert lin(x).dtype == torch.float32 and precision_in_effect(lin) == "fp32"
    assert precision_in_effect(lin) == "fp32"
    assert precision_in_effect(lin.to(torch.bfloat16)) == "bf16"
    with pytest.raises(KallmError, match="'fp32' or 'bf16'"):
        autocast("auto", "cpu")

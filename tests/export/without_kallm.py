"""Shared by the export tests: retrofits with perturbed new weights, and one subprocess (in which `import kallm`
fails) that loads every export folder and records its outputs (tests/export/export_check.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

CHECK_SCRIPT = Path(__file__).with_name("export_check.py")


def perturb_new_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Weights no fresh retrofit has: a weight left out of an export would show."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".kallm_ffn." in name:
                p.add_(0.05 * torch.randn_like(p))
    return model


def outputs_without_kallm(root: Path, folders: dict[str, Path], ids: torch.Tensor, new_tokens: int,
                          resave: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """{case: {output name: tensor}} of each export folder loaded by transformers alone (`resave`: the cases
    also saved and loaded again); the check script's results.json is left in `root`."""
    cases = root / "cases.json"
    cases.write_text(json.dumps({"ids": ids.tolist(), "max_new_tokens": new_tokens, "resave": resave,
                                 "folders": {k: str(v) for k, v in folders.items()}}))
    env = {**os.environ, "HF_MODULES_CACHE": str(root / "hf-modules"), "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, str(CHECK_SCRIPT), str(cases), str(root / "results.safetensors")],
                          capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = load_file(str(root / "results.safetensors"))
    return {name: {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith(f"{name}/")}
            for name in folders}

"""kallm export of `kat` retrofits: each form loads without kallm and matches load_retrofit.

Like tests/export/test_pretrained.py: the retrofits (new weights perturbed, so a weight left out shows) are
saved, exported from their folder and rebuilt by load_retrofit; one subprocess in which `import kallm`
fails loads every export (tests/export/export_check.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kallm.retrofitting.saving import load_retrofit, save_retrofit
from kallm.retrofitting.surgery import retrofit
from tests.export.without_kallm import outputs_without_kallm, perturb_new_weights
from tests.tiny_models import make_tiny_model, make_tiny_tokenizer

IDS = torch.randint(3, 250, (2, 10), generator=torch.Generator().manual_seed(2))
NEW_TOKENS = 4

# the own-MLP form (gated, fused gate_up widened, Conv1D, split OPT) and the ungated ProjectedKAN
CASES = [
    ("kat-llama", "llama", "kat:chebyshev2:3;groups=4@budget=0.5"),
    ("kat-phi3-wider", "phi3", "kat:legendre:2@budget=1.5"),
    ("kat-gpt2", "gpt2", "kat:rational:3@hidden=40"),
    ("kat-opt", "opt", "kat:bspline:3;groups=2@hidden=40"),
    ("kat-ungated-qwen2", "qwen2", "kat:chebyshev2:2;ungated@hidden=80"),
    ("kat-ungated-opt", "opt", "kat:fourier:2;ungated@budget=match"),
]


def _export(root: Path, name: str, arch: str, variant: str) -> tuple[Path, dict[str, torch.Tensor]]:
    from kallm.export.pretrained import export_pretrained
    from kallm.retrofitting.surgery_report import retrofit_report

    base = root / f"base-{name}"
    make_tiny_model(arch).save_pretrained(base)
    make_tiny_tokenizer().save_pretrained(base)
    model = make_tiny_model(arch)
    retrofit(model, layers="last:2", variant=variant, seed=1)
    retro = save_retrofit(perturb_new_weights(model), root / f"{name}-retrofit", base_model=str(base))
    folder = export_pretrained(retro, root / name, verify=False)
    loaded = load_retrofit(retro)[0]
    with torch.no_grad():
        logits = loaded(input_ids=IDS).logits
    return folder, {"logits": logits, "new_params": torch.tensor(retrofit_report(loaded).replaced_new_params)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("kat-export")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        built = {name: _export(root, name, arch, variant) for name, arch, variant in CASES}
    finally:
        torch.set_num_threads(threads)
    got = outputs_without_kallm(root, {k: v[0] for k, v in built.items()}, IDS, NEW_TOKENS, ["kat-llama"])
    return {name: (folder, reference, got[name]) for name, (folder, reference) in built.items()}


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_kat_export_loads_without_kallm_and_matches_load_retrofit(exported, name):
    folder, expected, got = exported[name]
    torch.testing.assert_close(got["logits"], expected["logits"], rtol=0, atol=1e-5)
    assert int(got["new_params"]) == int(expected["new_params"])
    entries = json.loads((folder / "config.json").read_text())["kallm"]["replacements"]
    assert any(e["kind"] == "kat" for layer in entries.values() for e in layer)
    if name == "kat-llama":
        torch.testing.assert_close(got["resaved_logits"], got["logits"], rtol=0, atol=0)

"""Retrofit identity: the manifest records where its base model is and a fingerprint of its weights."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from kallm.errors import KallmError
from kallm.folders.layout import MANIFEST
from kallm.models.loading import load_model
from kallm.retrofitting.fingerprint import base_fingerprint, fingerprint_difference, sample_indices
from kallm.retrofitting.saving import load_retrofit, save_retrofit
from kallm.retrofitting.surgery import retrofit
from tests.tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def bases(tmp_path_factory, smol_tokenizer):
    """Two tiny Llamas of identical shapes and different weights (seed 0 and 1), as model folders."""
    root = tmp_path_factory.mktemp("bases")
    for seed in (0, 1):
        make_tiny_model("llama", vocab_size=len(smol_tokenizer), seed=seed).save_pretrained(root / f"seed{seed}")
        smol_tokenizer.save_pretrained(root / f"seed{seed}")
    return root


@pytest.fixture(scope="module")
def saved(bases, tmp_path_factory):
    model, _ = load_model(str(bases / "seed0"))
    retrofit(model, layers="last:1", variant="kan:chebyshev2:2", freeze="ffn", seed=0)
    return save_retrofit(model, tmp_path_factory.mktemp("retro") / "r")


def test_manifest_records_the_absolute_base_and_its_fingerprint(bases, tmp_path, monkeypatch):
    monkeypatch.chdir(bases)
    model, _ = load_model("seed0")  # relative: must not be recorded as 'seed0'
    retrofit(model, layers="last:1", variant="linear", freeze="ffn")
    manifest = json.loads((save_retrofit(model, tmp_path / "r") / MANIFEST).read_text())
    assert manifest["base_model"] == str(bases / "seed0")
    fp = manifest["base_fingerprint"]
    assert fp["model_type"] == "llama" and len(fp["digest"]) == 16 and 1 <= len(fp["tensors"]) <= 8
    assert not any(".kallm_ffn." in name or ".layers.3.mlp." in name for name in fp["tensors"])
    monkeypatch.chdir(tmp_path)  # elsewhere, 'seed0' would mean another folder or a hub id
    load_retrofit(tmp_path / "r")


def test_a_base_with_other_weights_of_the_same_shapes_is_refused(bases, saved, caplog):
    with pytest.raises(KallmError, match=r"manifest\.json: this retrofit was trained on base model '.*seed0' "
                                         r"\(fingerprint \w+\), but the model loaded from '.*seed1' is another one "
                                         r"\(.* holds other values\); .*--allow-other-base \(Python: allow_other_base=True\)"):
        load_retrofit(saved, base_model=str(bases / "seed1"))
    manifest = json.loads((saved / MANIFEST).read_text())
    planted = saved.parent / "planted"
    planted.mkdir()
    (planted / "retrofit.safetensors").write_bytes((saved / "retrofit.safetensors").read_bytes())
    (planted / MANIFEST).write_text(json.dumps({**manifest, "base_model": str(bases / "seed1")}))
    with pytest.raises(KallmError, match="is another one"):
        load_retrofit(planted)  # a manifest that names another base with the same shapes
    with caplog.at_level(logging.WARNING):
        model, _ = load_retrofit(saved, base_model=str(bases / "seed1"), allow_other_base=True)
    assert "loading it anyway, as asked" in caplog.text and model is not None


def test_the_same_base_in_another_dtype_is_accepted(bases, saved):
    model, _ = load_retrofit(saved, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_fingerprint_tolerates_rounding_only(bases):
    def retrofitted():
        model, _ = load_model(str(bases / "seed0"))
        retrofit(model, layers="last:1", variant="linear", freeze="ffn")
        return model

    model = retrofitted()
    fp = base_fingerprint(model)
    assert fingerprint_difference(fp, base_fingerprint(model.to(torch.bfloat16))) is None
    model = retrofitted()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(1.0 + 1e-4)  # a fine-tune-sized change, float32 on both sides
    assert "embed_tokens.weight holds other values" in fingerprint_difference(fp, base_fingerprint(model))


def test_a_manifest_without_fingerprint_loads_with_a_warning(saved, tmp_path, caplog):
    old = tmp_path / "old"
    old.mkdir()
    (old / "retrofit.safetensors").write_bytes((saved / "retrofit.safetensors").read_bytes())
    manifest = json.loads((saved / MANIFEST).read_text())
    del manifest["base_fingerprint"]
    (old / MANIFEST).write_text(json.dumps(manifest))
    load_retrofit(old)
    assert "records no base fingerprint" in caplog.text


@pytest.mark.parametrize("n", [1, 2, 7, 64, 28_311_552, 49_152 * 576 + 1, 2**31 + 3])
def test_samples_stay_inside_large_tensors(n):
    index = sample_indices(n, 64)  # float32 spacing put the last sample of SmolLM2's embedding one past the end
    assert int(index.min()) == 0 and int(index.max()) == n - 1
    assert len(index) == min(n, 64) and bool((index[1:] > index[:-1]).all())

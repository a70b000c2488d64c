"""What a retrofit file may set: its new tensors, and base tensors its freeze policy trained only when asked
(`allow_trained_base`), each declared, in its recorded dtype and shape, finite; a non-finite one is never saved."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from kallm.errors import KallmError
from kallm.folders.layout import MANIFEST
from kallm.folders.layout import RETROFIT_WEIGHTS as WEIGHTS
from kallm.retrofitting.saving import load_retrofit, save_retrofit
from kallm.retrofitting.surgery import retrofit
from tests.tiny_models import make_tiny_model

IDS = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(1))
EMBED = "model.embed_tokens.weight"


@pytest.fixture
def base(tmp_path, smol_tokenizer):
    folder = tmp_path / "base"
    make_tiny_model("llama", vocab_size=len(smol_tokenizer)).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


def _trained(base, freeze: str):
    from kallm.models.loading import load_model

    model, _ = load_model(str(base))
    retrofit(model, layers="last:1", variant="linear", freeze=freeze)
    with torch.no_grad():  # every trained tensor differs from the base's (and from a fresh retrofit)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    return model


def _rewrite(folder, change_state=None, change_manifest=None) -> None:
    state = load_file(str(folder / WEIGHTS))
    if change_state:
        change_state(state)
    save_file(state, str(folder / WEIGHTS))
    manifest = json.loads((folder / MANIFEST).read_text())
    if change_manifest:
        change_manifest(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_trained_base_tensors_load_only_when_asked(base, tmp_path):
    model = _trained(base, "blocks")
    with torch.no_grad():
        expected = model(IDS).logits
    save_retrofit(model, tmp_path / "r")
    with pytest.raises(KallmError, match=r"tensor model\.layers\.3\.\S+ replaces a base model weight \(trained "
                                         r"under freeze 'blocks'\); .*--allow-trained-base \(Python: "
                                         r"allow_trained_base=True\)"):
        load_retrofit(tmp_path / "r")
    loaded, _ = load_retrofit(tmp_path / "r", allow_trained_base=True)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, expected)


def test_base_tensors_the_policy_did_not_train_are_refused_even_when_asked(base, tmp_path):
    save_retrofit(_trained(base, "blocks"), tmp_path / "r")  # trains layer 3's attention, not the embeddings
    zeros = torch.zeros_like(load_file(str(base / "model.safetensors"))[EMBED])
    _rewrite(tmp_path / "r", lambda s: s.update({EMBED: zeros}),
             lambda m: m["tensors"].update({EMBED: list(zeros.shape)}) or m["tensor_dtypes"].update({EMBED: "float32"}))
    with pytest.raises(KallmError, match=rf"tensor {EMBED} is a base model weight that the retrofit \(variant "
                                         r"linear, layers last:1, freeze blocks\) neither replaces nor trains"):
        load_retrofit(tmp_path / "r", allow_trained_base=True)


def test_a_policy_that_trained_the_embeddings_loads_them_when_asked(base, tmp_path):
    model = _trained(base, "blocks+embeddings")
    save_retrofit(model, tmp_path / "r")
    loaded, _ = load_retrofit(tmp_path / "r", allow_trained_base=True)
    assert torch.equal(loaded.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_a_tensor_in_another_dtype_than_recorded_is_refused(base, tmp_path):
    save_retrofit(_trained(base, "ffn"), tmp_path / "r")
    _rewrite(tmp_path / "r", lambda s: s.update({k: v.bfloat16() for k, v in s.items()}))
    with pytest.raises(KallmError, match=r"is stored as bfloat16, but the manifest says float32"):
        load_retrofit(tmp_path / "r")


def test_a_tensor_of_another_shape_than_declared_is_refused(base, tmp_path):
    save_retrofit(_trained(base, "ffn"), tmp_path / "r")
    _rewrite(tmp_path / "r", change_manifest=lambda m: m["tensors"].update({k: [1] for k in m["tensors"]}))
    with pytest.raises(KallmError, match=r"has shape \(\d+, \d+\); the manifest declares \(1,\)"):
        load_retrofit(tmp_path / "r")


def test_non_finite_tensors_are_neither_saved_nor_loaded(base, tmp_path):
    model = _trained(base, "ffn")
    save_retrofit(model, tmp_path / "r")
    name = next(n for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        dict(model.named_parameters())[name][0, 0] = math.nan
    with pytest.raises(KallmError, match=rf"refusing to save the retrofit to .*: tensor {name} holds non-finite"):
        save_retrofit(model, tmp_path / "nan")
    assert not (tmp_path / "nan").exists()
    _rewrite(tmp_path / "r", lambda s: s[name].fill_(math.inf))
    with pytest.raises(KallmError, match=rf"tensor {name} holds non-finite values"):
        load_retrofit(tmp_path / "r")


def test_a_retrofit_is_not_saved_into_its_base_model_folder(base):
    model = _trained(base, "ffn")
    before = sorted(p.name for p in base.iterdir())
    with pytest.raises(KallmError, match="would overwrite the base model folder"):
        save_retrofit(model, base / "retrofit")
    assert sorted(p.name for p in base.iterdir()) == before

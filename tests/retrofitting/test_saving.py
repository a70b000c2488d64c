"""save_retrofit / load_retrofit round trips on tiny real-architecture models."""

from __future__ import annotations

import json

import pytest
import torch

from kallm.errors import KallmError
from kallm.folders.layout import MANIFEST
from kallm.folders.layout import RETROFIT_WEIGHTS as WEIGHTS
from kallm.retrofitting.saving import load_retrofit, save_retrofit
from kallm.retrofitting.surgery import retrofit
from tests.tiny_models import make_tiny_model

IDS = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def base_dir(tmp_path, smol_tokenizer):
    def make(arch: str):
        folder = tmp_path / f"base-{arch}"
        make_tiny_model(arch, vocab_size=len(smol_tokenizer)).save_pretrained(folder)
        smol_tokenizer.save_pretrained(folder)
        return folder

    return make


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
@pytest.mark.parametrize("variant", ["linear", "pruned@budget=0.5", "kan:chebyshev2:2",
                                     "kan:parallel(chebyshev2:2,legendre:3)"])
def test_save_load_reproduces_logits(base_dir, tmp_path, arch, variant):
    from kallm.models.loading import load_model

    folder = base_dir(arch)
    model, _ = load_model(str(folder))
    retrofit(model, layers="last:2", variant=variant, freeze="ffn", seed=3)
    with torch.no_grad():  # make the new weights differ from a fresh retrofit
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
        expected = model(IDS).logits
    save_retrofit(model, tmp_path / "retro")
    loaded, _ = load_retrofit(tmp_path / "retro")
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, expected)


def test_saved_file_holds_no_frozen_backbone(base_dir, tmp_path):
    from safetensors.torch import load_file

    from kallm.models.loading import load_model

    model, _ = load_model(str(base_dir("llama")))
    report = retrofit(model, layers="last:1", variant="kan:chebyshev2:2", freeze="ffn")
    save_retrofit(model, tmp_path / "retro")
    state = load_file(str(tmp_path / "retro" / WEIGHTS))
    assert all(".kallm_ffn." in k for k in state)
    assert sum(v.numel() for v in state.values()) == report.trainable_params
    backbone_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert (tmp_path / "retro" / WEIGHTS).stat().st_size < 0.5 * backbone_bytes


def test_blocks_policy_saves_the_whole_blocks(base_dir, tmp_path):
    from kallm.models.loading import load_model

    model, _ = load_model(str(base_dir("llama")))
    report = retrofit(model, layers="last:1", variant="linear", freeze="blocks")
    save_retrofit(model, tmp_path / "retro")
    manifest = json.loads((tmp_path / "retro" / MANIFEST).read_text())
    assert sum(torch.Size(s).numel() for s in manifest["tensors"].values()) == report.trainable_params
    assert any("self_attn" in k for k in manifest["tensors"])


def test_refuses_to_overwrite(base_dir, tmp_path):
    from kallm.models.loading import load_model

    model, _ = load_model(str(base_dir("llama")))
    retrofit(model, layers="last:1", variant="linear")
    save_retrofit(model, tmp_path / "retro")
    with pytest.raises(KallmError, match="overwrite"):
        save_retrofit(model, tmp_path / "retro")
    save_retrofit(model, tmp_path / "retro", overwrite=True)


def test_corrupted_or_mismatched_folders(base_dir, tmp_path):
    from kallm.models.loading import load_model

    model, _ = load_model(str(base_dir("llama")))
    retrofit(model, layers="last:1", variant="linear")
    out = save_retrofit(model, tmp_path / "retro")
    with pytest.raises(KallmError, match="does not exist"):
        load_retrofit(tmp_path / "nowhere")
    (out / WEIGHTS).write_bytes(b"not a safetensors file")
    with pytest.raises(KallmError, match="corrupted"):
        load_retrofit(out)
    save_retrofit(model, out, overwrite=True)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["format_version"] = 99
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(KallmError, match="format version 99"):
        load_retrofit(out)
    manifest["format_version"] = 1
    manifest["variant"] = "kan:chebyshev2:2"  # weights were saved for a linear restart
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(KallmError, match="does not match"):
        load_retrofit(out)
    (out / MANIFEST).write_text("{broken")
    with pytest.raises(KallmError, match="corrupted"):
        load_retrofit(out)


def test_save_clears_a_killed_save_and_shares_its_files(base_dir, tmp_path):
    """A kill between mkstemp and the write leaves a 0-byte temporary manifest: the next save removes it;
    the weights follow the umask (safetensors alone would write them 0600)."""
    import os
    import time

    from kallm.models.loading import load_model

    model, _ = load_model(str(base_dir("llama")))
    retrofit(model, layers="last:1", variant="linear")
    out = tmp_path / "retro"
    out.mkdir()
    leftover = out / ".manifest.json.q1w2e3r4.tmp"
    leftover.write_bytes(b"")
    os.utime(leftover, (time.time() - 600, time.time() - 600))
    old_umask = os.umask(0o022)
    try:
        save_retrofit(model, out)
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, WEIGHTS]
    assert {(out / n).stat().st_mode & 0o777 for n in (MANIFEST, WEIGHTS)} == {0o644}

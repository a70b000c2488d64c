"""kallm.models.loading: where a model is recorded from, devices checked before loading, damaged weights named."""

from __future__ import annotations

import pytest
import torch

from kallm.errors import KallmError
from kallm.models.loading import load_model, model_source, resolve_device
from tests.tiny_models import make_tiny_model


def test_a_local_model_is_recorded_by_its_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "tiny").mkdir()
    monkeypatch.chdir(tmp_path)
    assert model_source("tiny") == str(tmp_path / "tiny")
    assert model_source("org/model") == "org/model"  # a hub id, as written
    assert model_source("Embedded") == "smollm2-135m-instruct"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_devices_are_checked_before_anything_loads():
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(KallmError, match="device 'cuda:1' was asked for but CUDA is not available"):
        resolve_device("cuda:1")
    with pytest.raises(KallmError, match=r"device 'gpu' is not valid; expected auto, cpu, cuda, cuda:N or mps"):
        resolve_device("gpu")
    with pytest.raises(KallmError, match="CUDA is not available"):
        load_model("/no/such/model", device="cuda")  # the device fails first, not the missing folder


def test_truncated_weights_are_one_error_naming_the_model(tmp_path):
    make_tiny_model("llama").save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(KallmError, match=r"could not load model '.*m' from .*m: "):
        load_model(str(tmp_path / "m"))

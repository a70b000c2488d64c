"""The real embedded SmolLM2-135M-Instruct: the study's parameter counts, a retrofitted generation, save and load."""

from __future__ import annotations

import pytest
import torch

from kallm.models.loading import load_model_skeleton
from kallm.retrofitting.surgery import retrofit

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("variant", "trainable"),
    [("linear", 46_012_032), ("kan:chebyshev2:2", 39_376_512)],
)
def test_study_trainable_counts(embedded_dir, variant, trainable):
    model = load_model_skeleton(str(embedded_dir))
    report = retrofit(model, layers="last:5", variant=variant, freeze="blocks+embeddings")
    assert report.layer_indices == (25, 26, 27, 28, 29)
    assert report.trainable_params == trainable
    # 5 blocks x (attention 884,736 + norms 1,152 + FFN) + the tied embedding 28,311,552
    ffn = 2_654_208 if variant == "linear" else 1_327_104
    assert trainable == 5 * (884_736 + 1_152 + ffn) + 28_311_552


def test_retrofit_and_generate(embedded_model, tmp_path):
    from kallm.models.loading import load_model
    from kallm.retrofitting.saving import load_retrofit, save_retrofit

    model, tok = load_model(str(embedded_model[0].config._name_or_path))
    retrofit(model, layers="last:5", variant="kan:chebyshev2:2", freeze="ffn", seed=0)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 16
    assert torch.isfinite(model(**ids).logits).all()
    # saved with its base's fingerprint (which samples the 28M-element embedding) and loaded back exactly
    save_retrofit(model, tmp_path / "retrofit")
    loaded, _ = load_retrofit(tmp_path / "retrofit")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**ids).logits, model(**ids).logits, rtol=0, atol=0)

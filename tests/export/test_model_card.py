"""The model card of an export: the base model's hub link and the results a retrofit folder records."""

from __future__ import annotations

from kallm.export.model_card import hub_id, known_results, model_card
from kallm.retrofitting.surgery import retrofit
from tests.tiny_models import make_tiny_model


def test_hub_links_only_for_hub_ids(tmp_path):
    assert hub_id("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the embedded copy
    assert hub_id("org/name") == "org/name"
    assert hub_id(str(tmp_path)) is None and hub_id("./models/x") is None and hub_id("unknown") is None


def test_card_of_a_kallm_train_retrofit(tmp_path):
    model = make_tiny_model("opt", vocab_size=256)
    report = retrofit(model, layers="last:1", variant="kan:chebyshev2:2")
    training = {"initial_eval_loss": 5.5, "final_eval_loss": 4.25, "final_train_loss": 4.0, "steps": 7,
                "tokens": 1234}
    results = known_results(tmp_path, {"training": training})  # what `kallm train` puts in the manifest
    assert results == {"held_out": training}
    info = {"variant": "kan:chebyshev2:2", "layers": "last:1", "freeze": "ffn", "seed": 0, "kallm_version": "0.1.0"}
    card = model_card("my-kan", "org/base", info, report, results)
    assert card.startswith("---\nlibrary_name: transformers\nbase_model: org/base\n")
    assert "5.5000 right after surgery, 4.2500 after 7 training steps (1,234 tokens)" in card
    assert f"| 3 | Linear | KANLinear | {report.layers[0].old_params:,} | {report.layers[0].new_params:,} |" in card
    assert 'AutoTokenizer.from_pretrained("my-kan", trust_remote_code=True)' in card
    assert "No results were recorded" in model_card("x", "org/base", info, report, {})


def test_card_says_when_base_weights_were_trained_too():
    model = make_tiny_model("opt", vocab_size=256)
    report = retrofit(model, layers="last:1", variant="linear", freeze="blocks")
    info = {"variant": "linear", "layers": "last:1", "freeze": "blocks", "seed": 0, "kallm_version": "0.1.0"}
    card = model_card("x", "org/base", info, report, {})
    assert ("Base model weights were trained too (freeze policy `blocks`: the rest of the retrofitted decoder layers "
            "(attention, norms)); they differ from `org/base`'s.") in card
    assert "were trained too" not in model_card("x", "org/base", {**info, "freeze": "ffn"}, report, {})

"""`train.loss`: parsed once into a typed spec, checked with did-you-mean errors, normalised per term."""

from __future__ import annotations

import pytest
import torch

from kallm.config.mapping import FieldError
from kallm.data.tokenize import TokenizedExample
from kallm.errors import ConfigError, KallmError
from kallm.training.config import TrainConfig
from kallm.training.loss_terms import hidden_matching_sum, kd_row_mask
from kallm.training.objective import LossSpec, term_counts, term_means


@pytest.mark.parametrize("text,terms,canonical", [
    ("ce", (("ce", 1.0),), "ce"),
    ("kd", (("kd", 1.0),), "kd"),
    ("ce+kd", (("ce", 1.0), ("kd", 1.0)), "ce+kd"),
    (" 0.5*ce + kd ", (("ce", 0.5), ("kd", 1.0)), "0.5*ce+kd"),
    ("kd+1e-1*hidden", (("kd", 1.0), ("hidden", 0.1)), "kd+0.1*hidden"),
])
def test_loss_spec_parses_once_and_round_trips(text, terms, canonical):
    spec = LossSpec.from_text(text)
    assert spec.terms == terms and str(spec) == canonical
    assert LossSpec.from_text(str(spec)) == spec
    assert spec.needs_teacher == ("kd" in text or "hidden" in text)


@pytest.mark.parametrize("text,message", [
    ("kl", "did you mean 'kd'"),
    ("ce+ce", "names a term twice"),
    ("ce+", "cannot read ''"),
    ("ce*0.5", "cannot read 'ce\\*0.5'"),
    ("0*kd", "must be > 0"),
])
def test_bad_loss_specs_say_what_is_valid(text, message):
    with pytest.raises(KallmError, match=message):
        LossSpec.from_text(text)


def test_train_config_parses_the_loss_at_the_edge_and_writes_it_back_as_text():
    config = TrainConfig.from_dict({"loss": "ce+kd", "kd_temperature": 2, "kd_positions": "all"})
    assert isinstance(config.loss, LossSpec) and config.loss.weight("kd") == 1.0
    assert config.to_dict()["loss"] == "ce+kd" and config.kd_temperature == 2.0
    assert TrainConfig(loss="kd").loss == LossSpec.from_text("kd")  # Python callers may pass the text
    assert TrainConfig().loss == LossSpec.from_text("ce")


@pytest.mark.parametrize("changes,message", [
    ({"loss": "ce+kl"}, "loss: unknown loss term 'kl'"),
    ({"kd_temperature": 0}, "kd_temperature: must be a positive number"),
    ({"kd_positions": "every"}, "kd_positions: 'every' is not valid; choose one of: assistant, all"),
])
def test_objective_settings_are_validated(changes, message):
    with pytest.raises(FieldError, match=message):
        TrainConfig(**changes)


def test_yaml_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="train.kd_positions"):
        TrainConfig.from_dict({"kd_positions": "assistants"})


def _example(ids: tuple[int, ...], labels: tuple[int, ...]) -> TokenizedExample:
    return TokenizedExample(ids, labels, 0)


def test_each_term_is_a_mean_over_its_own_positions():
    examples = [_example((1, 2, 3, 4), (-100, -100, 3, 4)), _example((5, 6, 7), (-100, 6, -100))]
    assert term_counts(examples, "assistant") == {"ce": 3, "kd": 3, "hidden": 7}
    assert term_counts(examples, "all") == {"ce": 3, "kd": 5, "hidden": 7}
    config = TrainConfig(loss="0.5*ce+kd+hidden", kd_positions="all")
    means = term_means(torch.tensor([6.0, 10.0, 14.0], dtype=torch.float64), examples, config)
    assert means == {"ce": 2.0, "kd": 2.0, "hidden": 2.0}
    assert term_means(torch.zeros(3), examples, TrainConfig()) == {}  # plain CE: the loss is the mean


def test_kd_rows_are_labelled_positions_or_every_real_one():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    labels = torch.tensor([[-100, -100, 3, 4], [-100, 6, -100, -100]])
    assert kd_row_mask(mask, labels, "assistant").tolist() == [[False, True, True], [True, False, False]]
    assert kd_row_mask(mask, labels, "all").tolist() == [[True, True, True], [True, True, False]]


def test_hidden_matching_is_relative_per_position_and_ignores_padding():
    t = torch.tensor([[[100.0, 0.0], [1.0, 0.0], [5.0, 5.0]]])
    s = t.clone()
    s[0, 0, 0] = 110.0  # 10% off on a huge position
    s[0, 1, 0] = 1.1  # 10% off on a small one
    s[0, 2] = 0.0  # padding: anything goes
    mask = torch.tensor([[1, 1, 0]])
    assert float(hidden_matching_sum([s, s], [t, t], mask)) == pytest.approx(0.01 + 0.01)

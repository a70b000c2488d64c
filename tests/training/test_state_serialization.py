"""Optimizer and RNG states without pickle: exact round trips, and malformed records refused up front."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from kallm.errors import KallmError
from kallm.training.state_serialization import (
    join_optimizer_state,
    parse_rng_state,
    rng_state,
    set_rng_state,
    split_optimizer_state,
)


def test_optimizer_state_round_trips_through_tensors_and_json():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW([{"params": model[0].parameters(), "weight_decay": 0.1},
                             {"params": model[1].parameters(), "weight_decay": 0.0}], lr=1e-2, betas=(0.8, 0.9))
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    tensors, meta = split_optimizer_state(opt.state_dict())
    meta = json.loads(json.dumps(meta))  # what the checkpoint file holds
    again = join_optimizer_state(tensors, meta, Path("optimizer.json"))
    fresh = torch.optim.AdamW([{"params": model[0].parameters()}, {"params": model[1].parameters()}])
    fresh.load_state_dict(again)
    assert fresh.param_groups[0]["betas"] == (0.8, 0.9) and fresh.param_groups[1]["weight_decay"] == 0.0
    for p in model.parameters():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(fresh.state[p][key], opt.state[p][key])
    with pytest.raises(KallmError, match="optimizer.json is not a kallm optimizer state"):
        join_optimizer_state(tensors, {"state": {"x": {}}, "param_groups": []}, Path("optimizer.json"))


def test_rng_states_round_trip_exactly():
    state = json.loads(json.dumps(rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    set_rng_state(parse_rng_state(state, Path("rng.json")))
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


@pytest.mark.parametrize("change", [
    {"torch": "AAAA"}, {"torch": "not base64!"}, {"numpy": ["MT19937", [1, 2], 0, 0, 0.0]}, {"python": None},
])
def test_a_malformed_rng_record_changes_nothing(change):
    state = {**rng_state(), **change}
    before = torch.get_rng_state()
    with pytest.raises(KallmError, match="rng.json"):
        parse_rng_state(state, Path("rng.json"))
    assert torch.equal(torch.get_rng_state(), before)

"""`train.report_to`: tracker names checked up front, and tensorboard events that hold the run's curves."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kallm.config.mapping import FieldError
from kallm.data import load_conversations
from kallm.errors import KallmError
from kallm.io import read_jsonl
from kallm.training import train_model
from kallm.training.config import TrainConfig
from kallm.training.tracking import check_installed, tracked_values
from tests.distributed.train_worker import tiny_frozen_model
from tests.training_helpers import write_chat_sample


def read_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from the TFRecord event files under `folder` (length, crc, data, crc; crcs unchecked)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            event = Event.FromString(data[pos + 12: pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_report_to_is_read_into_checked_names():
    assert TrainConfig().report_to == ()
    assert TrainConfig(report_to="tensorboard").report_to == ("tensorboard",)
    assert TrainConfig(report_to=" tensorboard, wandb,tensorboard").report_to == ("tensorboard", "wandb")
    assert TrainConfig(report_to=("mlflow",)).report_to == ("mlflow",)
    assert TrainConfig(report_to="none").report_to == ()
    with pytest.raises(FieldError, match="report_to.*unknown tracker 'tensorbord'; did you mean 'tensorboard'"):
        TrainConfig(report_to="tensorbord")
    assert TrainConfig.from_dict({"report_to": ["tensorboard"]}).report_to == ("tensorboard",)


def test_a_tracker_that_is_not_installed_is_an_error_before_training():
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    installed = {str(t) for t in get_available_trackers()}
    missing = [n for n in LoggerType.list() if n != "all" and n not in installed]
    if not missing:
        pytest.skip("every tracker Accelerate knows is installed here")
    with pytest.raises(KallmError, match=f"{missing[0]} is not installed here \\(pip install"):
        check_installed((missing[0],))
    check_installed(tuple(installed))


def test_tracked_values_name_train_and_eval_metrics():
    assert tracked_values({"step": 3, "loss": 2.5, "lr": 1e-3, "tokens": 100}) == {
        "train/loss": 2.5, "train/lr": 1e-3, "train/tokens": 100.0}
    assert tracked_values({"step": 0, "eval_loss": 3.0}) == {"eval/loss": 3.0}


def test_tensorboard_events_hold_the_loss_and_held_out_curves(smol_tokenizer, shared_data, tmp_path):
    pytest.importorskip("tensorboardX")
    chat = load_conversations(write_chat_sample(shared_data, tmp_path / "chat.jsonl", n=24))
    config = TrainConfig(steps=4, batch_size=2, max_length=96, eval_every=2, val_size=4, save_every=0,
                         precision="fp32", report_to="tensorboard")
    out = tmp_path / "run"
    train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config, out, progress=False,
                run_meta={"run_id": "tiny"})
    metrics = read_jsonl(out / "metrics.jsonl")
    scalars = read_scalars(out / "tracking" / "tiny")
    train = {r["step"]: r["loss"] for r in metrics if "loss" in r}
    held_out = {r["step"]: r["eval_loss"] for r in metrics if "eval_loss" in r}
    assert sorted(scalars["train/loss"]) == [1, 2, 3, 4] and sorted(scalars["eval/loss"]) == [0, 2, 4]
    assert scalars["train/loss"] == pytest.approx(train, rel=1e-6)
    assert scalars["eval/loss"] == pytest.approx(held_out, rel=1e-6)
    assert set(scalars) >= {"train/lr", "train/grad_norm", "train/tokens_per_s"}

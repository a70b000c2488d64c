"""The training loop on a tiny random-weight Llama with the real tokenizer and real chat data."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from kallm.data import load_conversations
from kallm.errors import ConfigError, KallmError
from kallm.io import read_jsonl
from kallm.kan import KANLinear, SequentialKAN
from kallm.kan.mixing import INNER_LR_SCALE
from kallm.training import train_model
from kallm.training.callbacks import Callback
from kallm.training.checkpoint import latest_checkpoint
from kallm.training.config import TrainConfig
from kallm.training.optim import build_optimizer, lr_at, rebuild_optimizer, set_lr
from tests.distributed.train_worker import tiny_frozen_model
from tests.training_helpers import Interrupt, StopAt, step_losses, write_chat_sample

BASE = TrainConfig(steps=20, batch_size=4, max_length=128, lr=1e-3, warmup_steps=2, eval_every=5, val_size=8,
                   save_every=10, precision="fp32")


@pytest.fixture
def chat(shared_data, tmp_path):
    return load_conversations(write_chat_sample(shared_data, tmp_path / "chat.jsonl"))








def test_train_writes_run_folder_and_learns(smol_tokenizer, chat, tmp_path):
    out = tmp_path / "run"
    result = train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, BASE, out, progress=False)
    assert {p.name for p in out.iterdir()} >= {"config.json", "run_info.json", "metrics.jsonl", "result.json",
                                                "checkpoints"}
    rows = read_jsonl(out / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 21))
    assert set(train_rows[0]) == {"step", "loss", "lr", "grad_norm", "tokens_per_s", "tokens", "memory_bytes"}
    assert [r["step"] for r in rows if "eval_loss" in r] == [0, 5, 10, 15, 20]
    assert result.final_eval_loss < result.initial_eval_loss
    assert result.trainable_params == sum(p.numel() for p in tiny_frozen_model(len(smol_tokenizer)).parameters()
                                          if p.requires_grad)
    assert result.memory_kind == "rss" and result.peak_memory_bytes > 0 and result.tokens > 0
    info = json.loads((out / "run_info.json").read_text())
    assert info["seed"] == 0 and "torch" in info["versions"]
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 20


def test_resume_reproduces_uninterrupted_run(smol_tokenizer, chat, tmp_path):
    straight = tmp_path / "straight"
    train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, BASE, straight, progress=False)
    split = tmp_path / "split"
    with pytest.raises(Interrupt):
        train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, BASE, split, progress=False,
                    callbacks=[StopAt(10)])
    assert latest_checkpoint(split / "checkpoints").name == "step-00000010"
    result = train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, BASE, split,
                         resume=True, progress=False)
    a, b = step_losses(straight / "metrics.jsonl"), step_losses(split / "metrics.jsonl")
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert abs(a[20] - b[20]) < 1e-6 and abs(result.final_train_loss - a[20]) < 1e-6
    wa = load_file(straight / "checkpoints" / "step-00000020" / "trainable.safetensors")
    wb = load_file(split / "checkpoints" / "step-00000020" / "trainable.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


def test_resume_past_a_damaged_checkpoint_equals_the_uninterrupted_run(smol_tokenizer, chat, tmp_path, caplog):
    """The newest checkpoint is cut short: the run resumes from the one before, with a warning, and ends
    exactly where an uninterrupted run ends (metrics hold every step once)."""
    config = BASE.replace(steps=12, save_every=4, eval_every=0)
    straight = tmp_path / "straight"
    train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config, straight, progress=False)
    split = tmp_path / "split"
    with pytest.raises(Interrupt):
        train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config, split, progress=False,
                    callbacks=[StopAt(10)])
    newest = split / "checkpoints" / "step-00000008" / "trainable.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    result = train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config, split,
                         resume=True, progress=False)
    assert "skipping checkpoint step-00000008" in caplog.text
    a, b = step_losses(straight / "metrics.jsonl"), step_losses(split / "metrics.jsonl")
    assert [r["step"] for r in read_jsonl(split / "metrics.jsonl") if "loss" in r] == list(range(1, 13))
    assert abs(a[12] - b[12]) < 1e-6 and abs(result.final_train_loss - a[12]) < 1e-6
    wa = load_file(straight / "checkpoints" / "step-00000012" / "trainable.safetensors")
    wb = load_file(split / "checkpoints" / "step-00000012" / "trainable.safetensors")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


def test_prefix_cache_gives_the_same_trajectory(smol_tokenizer, chat, tmp_path):
    config = BASE.replace(steps=6, save_every=0, eval_every=3)
    plain = train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config, tmp_path / "a",
                        progress=False)
    cached = train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat,
                         config.replace(prefix_cache=True), tmp_path / "b", progress=False)
    a, b = step_losses(tmp_path / "a" / "metrics.jsonl"), step_losses(tmp_path / "b" / "metrics.jsonl")
    assert all(abs(a[s] - b[s]) < 1e-5 for s in a)
    assert abs(plain.final_eval_loss - cached.final_eval_loss) < 1e-5


def test_shared_prefix_cache_on_disk_is_reused_by_another_variant(smol_tokenizer, chat, tmp_path):
    from kallm.models.prefix import PrefixCache

    config = BASE.replace(steps=3, save_every=0, eval_every=0)
    path = tmp_path / "prefix.safetensors"
    model = tiny_frozen_model(len(smol_tokenizer))
    train_model(model, smol_tokenizer, chat, config, tmp_path / "a", progress=False,
                prefix_cache=PrefixCache.build(model, [], 2, path))
    first = PrefixCache.load(path)
    assert len(first) == 3 * 4 + 8  # the conversations of three steps and the held-out set
    mtime = path.stat().st_mtime_ns
    other = train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config.replace(lr=2e-3),
                        tmp_path / "b", progress=False, prefix_cache=first)
    assert path.stat().st_mtime_ns == mtime and other.final_eval_loss is not None  # nothing recomputed


class _Regrow(Callback):
    """Replaces layer 3's down projection at step 2 (as a KAN degree raise would), keeping its values."""

    def on_step_start(self, step: int, model) -> bool:
        if step != 2:
            return False
        old = model.model.layers[3].mlp.down_proj
        new = torch.nn.Linear(old.in_features, old.out_features, bias=False)
        with torch.no_grad():
            new.weight.copy_(old.weight)
        model.model.layers[3].mlp.down_proj = new
        return True


def test_parameter_replacing_callback_rebuilds_optimizer_and_resumes(smol_tokenizer, chat, tmp_path):
    config = BASE.replace(steps=6, save_every=4, eval_every=0)
    straight = tmp_path / "straight"
    train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config, straight, progress=False,
                callbacks=[_Regrow()])
    with pytest.raises(Interrupt):
        train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config, tmp_path / "split",
                    progress=False, callbacks=[_Regrow(), StopAt(4)])
    train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config, tmp_path / "split",
                resume=True, progress=False, callbacks=[_Regrow()])
    a, b = step_losses(straight / "metrics.jsonl"), step_losses(tmp_path / "split" / "metrics.jsonl")
    assert all(abs(a[s] - b[s]) < 1e-6 for s in range(1, 7))
    # The replaced weight kept training (the rebuilt optimizer holds it).
    w = load_file(straight / "checkpoints" / "step-00000006" / "trainable.safetensors")
    assert "model.layers.3.mlp.down_proj.weight" in w


def test_gradient_accumulation_equals_the_larger_batch(smol_tokenizer, chat, tmp_path):
    # Without length grouping, batches of 2 are the halves of the batches of 4 (same permutation).
    config = BASE.replace(steps=3, save_every=0, eval_every=0, group_by_length=False)
    big = train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config, tmp_path / "a",
                      progress=False)
    accum = train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat,
                        config.replace(batch_size=2, grad_accum=2), tmp_path / "b", progress=False)
    a, b = step_losses(tmp_path / "a" / "metrics.jsonl"), step_losses(tmp_path / "b" / "metrics.jsonl")
    assert all(abs(a[s] - b[s]) < 1e-5 for s in a) and big.tokens == accum.tokens
    assert abs(big.final_eval_loss - accum.final_eval_loss) < 1e-5


def test_bf16_autocast_on_cpu_tracks_float32(smol_tokenizer, chat, tmp_path):
    config = BASE.replace(steps=2, save_every=0, eval_every=0)
    fp32 = train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config, tmp_path / "a",
                       progress=False)
    bf16 = train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat,
                       config.replace(precision="bf16"), tmp_path / "b", progress=False)
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert bf16.final_train_loss != fp32.final_train_loss
    assert abs(bf16.final_train_loss - fp32.final_train_loss) < 0.05
    assert abs(bf16.final_eval_loss - fp32.final_eval_loss) < 0.05


def test_bf16_training_leaves_every_weight_float32_and_the_frozen_ones_untouched(smol_tokenizer, chat, tmp_path):
    """The frozen weights' bf16 copies (kallm.runtime.bf16_weights) are swapped in only while a step runs."""
    model = tiny_frozen_model(len(smol_tokenizer))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    train_model(model, smol_tokenizer, chat, BASE.replace(steps=2, save_every=0, eval_every=1, precision="bf16"),
                tmp_path / "b", progress=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name


def test_auto_on_a_bf16_cpu_trains_in_bf16_and_resumes_exactly(smol_tokenizer, chat, tmp_path, monkeypatch):
    from kallm.runtime import precision

    monkeypatch.setattr(precision, "cpu_capabilities", lambda: {"avx512_bf16": True})  # as a Xeon reports it
    config = BASE.replace(steps=4, save_every=2, eval_every=0, precision="auto", prefix_cache=True)
    straight = train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config,
                           tmp_path / "straight", progress=False)
    assert straight.precision == "bf16"
    info = json.loads((tmp_path / "straight" / "run_info.json").read_text())
    assert info["precision"] == {"name": "bf16", "requested": "auto", "reason": "CPU has avx512_bf16"}
    fp32 = train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat,
                       config.replace(precision="fp32", steps=1, save_every=0), tmp_path / "fp32", progress=False)
    a = step_losses(tmp_path / "straight" / "metrics.jsonl")
    assert fp32.final_train_loss != a[1] and abs(fp32.final_train_loss - a[1]) < 0.05  # bf16 really ran
    split = tmp_path / "split"
    with pytest.raises(Interrupt):
        train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config, split, progress=False,
                    callbacks=[StopAt(2)])
    result = train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config, split,
                         resume=True, progress=False)
    b = step_losses(split / "metrics.jsonl")
    assert sorted(b) == list(range(1, 5)) and all(abs(a[s] - b[s]) < 1e-6 for s in a)
    assert abs(result.final_eval_loss - straight.final_eval_loss) < 1e-6
    wa = load_file(tmp_path / "straight" / "checkpoints" / "step-00000004" / "trainable.safetensors")
    wb = load_file(split / "checkpoints" / "step-00000004" / "trainable.safetensors")
    assert all(wa[k].dtype == torch.float32 and torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_resuming_in_another_precision_is_said(smol_tokenizer, chat, tmp_path, monkeypatch, caplog):
    from kallm.runtime import precision

    monkeypatch.setattr(precision, "cpu_capabilities", lambda: {})
    config = BASE.replace(steps=3, save_every=1, eval_every=0, precision="auto")
    with pytest.raises(Interrupt):
        train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config, tmp_path / "run",
                    progress=False, callbacks=[StopAt(2)])
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: {"amx_bf16": True})
    with caplog.at_level("WARNING", logger="kallm.training.loop"):
        result = train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config, tmp_path / "run",
                             resume=True, progress=False)
    assert result.precision == "bf16"
    assert "started in fp32 and resumes in bf16 (CPU has amx_bf16)" in caplog.text


def test_existing_run_and_mismatched_resume_are_refused(smol_tokenizer, chat, tmp_path):
    out = tmp_path / "run"
    config = BASE.replace(steps=2, save_every=0, eval_every=0)
    train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config, out, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(KallmError, match="already holds a training run"):
        train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config, out, progress=False)
    with pytest.raises(KallmError, match=r"another configuration \(train.lr: 0.001 -> 0.002"):
        train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config.replace(lr=2e-3), out,
                    resume=True, progress=False)
    with pytest.raises(KallmError, match="holds no kallm training run"):
        train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, config, tmp_path / "none",
                    resume=True, progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_max_length_too_small_for_every_conversation(smol_tokenizer, chat, tmp_path):
    with pytest.raises(KallmError, match="raise max_length"):
        train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, chat, BASE.replace(max_length=16),
                    tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_lr_schedule_and_decay_groups():
    config = TrainConfig(steps=110, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, config) == pytest.approx(0.1)
    assert lr_at(9, config) == pytest.approx(1.0)
    assert lr_at(60, config) == pytest.approx(0.55)
    assert lr_at(110, config) == pytest.approx(0.1)
    model = tiny_frozen_model(64)
    opt = build_optimizer(model, config)
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 2 for p in decay["params"]) and decay["weight_decay"] == config.weight_decay
    assert {names[id(p)].rsplit(".", 1)[0].rsplit(".", 1)[-1] for p in no_decay["params"]} == {
        "input_layernorm", "post_attention_layernorm"}
    assert no_decay["weight_decay"] == 0.0


def test_a_module_lr_scale_gets_its_own_groups_that_follow_the_schedule():
    """A stack's inner KAN layer trains at its scale of the lr, at every step and after a rebuild."""
    config = TrainConfig(steps=10, warmup_steps=2, lr=1e-3)
    model = nn.Sequential(nn.LayerNorm(6), SequentialKAN([KANLinear(6, 5, bias=True), KANLinear(5, 6)]))
    opt = build_optimizer(model, config)
    inner = {id(p) for p in model[1].layers[0].parameters()}
    by_group = [({id(p) for p in g["params"]}, g["lr"], g["weight_decay"]) for g in opt.param_groups]
    assert by_group == [
        ({id(model[1].layers[1].weight)}, lr_at(0, config), config.weight_decay),
        ({id(model[1].layers[0].weight)}, lr_at(0, config) * INNER_LR_SCALE, config.weight_decay),
        ({id(model[0].weight), id(model[0].bias)}, lr_at(0, config), 0.0),
        ({id(model[1].layers[0].bias)}, lr_at(0, config) * INNER_LR_SCALE, 0.0),
    ]
    set_lr(opt, lr_at(5, config))
    names = {id(p): n for n, p in model.named_parameters()}
    rebuilt = rebuild_optimizer(model, opt, names, config)
    for group in rebuilt.param_groups:
        slowed = {id(p) for p in group["params"]} <= inner
        assert group["lr"] == pytest.approx(lr_at(5, config) * (INNER_LR_SCALE if slowed else 1.0))


@pytest.mark.parametrize(("changes", "message"), [
    ({"steps": 0}, "steps: must be an integer >= 1"),
    ({"max_length": 4}, "max_length: must be an integer >= 8"),
    ({"lr": -1.0}, "lr: must be a positive number"),
    ({"precision": "fp8"}, "precision: 'fp8' is not valid"),
    ({"on_bad_row": "ignore"}, "on_bad_row: 'ignore' is not valid"),
    ({"val_fraction": 1.5}, r"val_fraction: must be in \[0, 1\)"),
    ({"clip_grad_norm": 0}, "clip_grad_norm: must be > 0 or null"),
])
def test_config_validation(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


def test_config_from_dict_suggests_names():
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        TrainConfig.from_dict({"batch_sise": 4})
    assert TrainConfig.from_dict({"steps": 3}).steps == 3

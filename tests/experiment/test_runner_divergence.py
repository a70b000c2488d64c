"""A grid run whose training diverges stops with one line and is not recorded as finished."""

from __future__ import annotations

from kallm.cli import main
from kallm.io import read_jsonl
from tests.experiment.test_runner import write_config
from tests.tiny_models import make_tiny_model
from tests.training_helpers import write_chat_sample


def test_a_diverged_run_is_not_recorded(tmp_path, smol_tokenizer, shared_data, capsys):
    base = tmp_path / "tiny-base"
    make_tiny_model("llama", vocab_size=len(smol_tokenizer)).save_pretrained(base)
    smol_tokenizer.save_pretrained(base)
    chat = write_chat_sample(shared_data, tmp_path / "chat.jsonl", n=24)
    config = write_config(tmp_path, base, chat, shared_data, seeds=[0],
                          variants=[{"name": "baseline", "spec": "baseline"}, {"name": "linear", "spec": "linear"}])
    text = config.read_text().replace("steps: 4", "steps: 4\n  lr: 1.0e+30\n  warmup_steps: 0")
    config.write_text(text)
    capsys.readouterr()  # the tiny model's save_pretrained progress bar
    assert main(["-q", "run", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "training diverged at step" in err and "no retrofit was saved" in err and "\n" not in err
    recorded = [r["run_id"] for r in read_jsonl(tmp_path / "out" / "results.jsonl")]
    assert recorded == ["baseline"]
    assert not (tmp_path / "out" / "runs" / "linear.seed0" / "retrofit").exists()

"""`kallm inspect`: the table, and one clear line on stderr for bad input."""

from __future__ import annotations

import pytest

from kallm.cli import main
from tests.tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    make_tiny_model("llama").save_pretrained(folder)
    return folder


def test_inspect_prints_table_and_totals(tiny_folder, capsys):
    assert main(["-q", "inspect", str(tiny_folder), "--layers", "last:2", "--variant", "kan:chebyshev2:2",
                 "--freeze", "ffn"]) == 0
    out = capsys.readouterr().out
    assert "KANLinear" in out and "LlamaMLP" in out
    assert "trainable:  8,192" in out  # 2 layers x 4 x 32 x 32


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/model"], "does not exist"),
        (["{tiny}", "--layers", "last:9"], "has 4 layers"),
        (["{tiny}", "--variant", "kann:chebyshev2:2"], "did you mean 'kan'"),
        (["{tiny}", "--variant", "kan:sequential(chebyshev2:2"], "chebyshev2"),
        (["{tiny}", "--freeze", "everything"], "freeze policy"),
        (["{t5}"], "not a causal language model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_folder, tmp_path, capsys, args, message):
    from transformers import T5Config

    T5Config(d_model=16, num_layers=1, num_heads=2, d_kv=8, d_ff=32, vocab_size=64).save_pretrained(tmp_path)
    argv = [a.format(tiny=tiny_folder, t5=tmp_path) for a in args]
    assert main(["-q", "inspect", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("kallm inspect: error:")
    assert message in err and "Traceback" not in err


def test_unsupported_architecture_via_cli(tmp_path, capsys):
    """A causal LM whose decoder layers cannot be found gets a message naming its class."""
    from transformers import BertConfig

    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
               vocab_size=64, is_decoder=True).save_pretrained(tmp_path)
    code = main(["-q", "inspect", str(tmp_path), "--layers", "last:1", "--variant", "linear"])
    err = capsys.readouterr().err
    assert code == 2 and "BertLMHeadModel" in err and "FFN" in err

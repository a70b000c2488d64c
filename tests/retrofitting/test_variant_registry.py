"""A variant kind registered from outside kallm works end to end: grammar, surgery, counts, saving, training.

The toy kind `scaled:<factor>` replaces an FFN by a copy of itself times a learnable scalar (initialised
to the factor), so `scaled:1.0` must reproduce the untouched model exactly.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from kallm.data import load_conversations
from kallm.errors import KallmError
from kallm.export.pretrained import export_pretrained
from kallm.models.loading import load_model
from kallm.retrofitting import VariantKind, VariantSpec, parse_variant, register_variant_kind
from kallm.retrofitting.arch import FFNSite
from kallm.retrofitting.ffn import RetrofitFFN
from kallm.retrofitting.saving import load_retrofit, save_retrofit
from kallm.retrofitting.surgery import retrofit
from kallm.retrofitting.variant import VARIANT_KINDS, Replacement
from kallm.training import train_model
from kallm.training.config import TrainConfig
from tests.tiny_models import make_tiny_model
from tests.training_helpers import write_chat_sample

IDS = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(1))


class ScaledMLP(nn.Module):
    def __init__(self, mlp: nn.Module, factor: float) -> None:
        super().__init__()
        self.mlp = mlp
        self.scale = nn.Parameter(torch.tensor(factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.mlp(x)


class ScaledKind(VariantKind):
    name = "scaled"

    def parse_arg(self, body: str, text: str) -> str | None:
        try:
            return repr(float(body))
        except ValueError:
            raise KallmError(f"variant 'scaled' needs a factor, e.g. 'scaled:0.5'; got {text!r}") from None

    def build(self, model: nn.Module, site: FFNSite, spec: VariantSpec) -> tuple[Replacement, int | None]:
        inner = ScaledMLP(copy.deepcopy(site.module), float(spec.arg))
        return [(site.attr, RetrofitFFN(inner, self.name))], None


@contextlib.contextmanager
def registered(kind: VariantKind) -> Iterator[VariantKind]:
    register_variant_kind(kind)
    try:
        yield kind
    finally:
        VARIANT_KINDS.unregister(kind.name)


@pytest.fixture
def scaled():
    with registered(ScaledKind()) as kind:
        yield kind


def _mlp_params(model: nn.Module, index: int) -> int:
    return sum(p.numel() for p in model.model.layers[index].mlp.parameters())


def test_the_kind_reads_and_prints_its_own_spec(scaled):
    spec = parse_variant(" scaled : 0.50 ")
    assert spec == VariantSpec("scaled", arg="0.5") and str(spec) == "scaled:0.5"
    assert parse_variant(str(spec)) == spec and spec.trained
    with pytest.raises(KallmError, match="needs a factor"):
        parse_variant("scaled")
    with pytest.raises(KallmError, match="takes no budget= option"):
        parse_variant("scaled:2@budget=match")
    with pytest.raises(KallmError, match="not in its canonical form '0.5'"):
        VariantSpec("scaled", arg="0.50")
    with pytest.raises(KallmError, match="did you mean 'scaled'"):
        parse_variant("scaledd:1")
    with pytest.raises(KeyError, match="already registered"):
        register_variant_kind(ScaledKind())


def test_registration_is_undone_and_names_are_checked():
    with registered(ScaledKind()):
        assert "scaled" in VARIANT_KINDS.names()
    assert VARIANT_KINDS.names() == ["baseline", "linear", "pruned", "kan", "kat"]
    with pytest.raises(KallmError, match="unknown variant 'scaled'"):
        parse_variant("scaled:1")
    bad = ScaledKind()
    bad.name = "Bad:Name"
    with pytest.raises(KallmError, match="lower-case name"):
        register_variant_kind(bad)


def test_a_registered_kind_retrofits_counts_and_keeps_the_function_at_factor_one(scaled):
    reference = make_tiny_model("llama")
    with torch.no_grad():
        expected = reference(IDS).logits
    model = make_tiny_model("llama")
    report = retrofit(model, layers="last:2", variant="scaled:1.0", freeze="ffn")
    assert report.replaced_new_params == _mlp_params(reference, 2) + _mlp_params(reference, 3) + 2
    assert report.trainable_params == report.replaced_new_params
    assert [row.new_kind for row in report.layers] == ["ScaledMLP", "ScaledMLP"]
    with torch.no_grad():
        assert torch.allclose(model(IDS).logits, expected, atol=1e-6)
    halved = make_tiny_model("llama")
    retrofit(halved, layers="last:2", variant="scaled:0.5", freeze="ffn")
    with torch.no_grad():
        assert not torch.allclose(halved(IDS).logits, expected, atol=1e-3)


def test_a_registered_kind_trains_saves_and_loads_back(scaled, smol_tokenizer, shared_data, tmp_path):
    base = tmp_path / "base"
    make_tiny_model("llama", vocab_size=len(smol_tokenizer)).save_pretrained(base)
    smol_tokenizer.save_pretrained(base)
    model, tokenizer = load_model(str(base))
    retrofit(model, layers="last:2", variant="scaled:0.5", freeze="ffn")
    chat = load_conversations(write_chat_sample(shared_data, tmp_path / "chat.jsonl", n=24))
    config = TrainConfig(steps=3, batch_size=4, max_length=128, lr=1e-2, warmup_steps=0, eval_every=0, val_size=4,
                         save_every=0, precision="fp32")
    result = train_model(model, tokenizer, chat, config, tmp_path / "run", progress=False)
    assert result.steps == 3 and result.final_train_loss is not None
    scales = [layer.mlp.kallm_ffn.scale.item() for layer in model.model.layers[2:]]
    assert all(s != 0.5 for s in scales)  # the scalar trained
    model.eval()
    with torch.no_grad():
        expected = model(IDS).logits
    save_retrofit(model, tmp_path / "retro")
    loaded, _ = load_retrofit(tmp_path / "retro")
    assert [layer.mlp.kallm_ffn.scale.item() for layer in loaded.model.layers[2:]] == scales
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, expected)


def test_a_kind_without_a_rebuilder_is_refused_at_export(scaled, tmp_path):
    model = make_tiny_model("llama")
    retrofit(model, layers="last:1", variant="scaled:2.0", freeze="ffn")
    with pytest.raises(KallmError, match="variant kind 'scaled' cannot be exported without kallm"):
        export_pretrained(model, tmp_path / "export", base_model="tiny", verify=False)
    assert not (tmp_path / "export").exists()


def test_a_kind_that_builds_no_retrofit_module_is_refused(tmp_path):
    class Bare(ScaledKind):
        name = "bare"

        def build(self, model, site, spec):
            return [(site.attr, nn.Identity())], None

    with registered(Bare()), pytest.raises(KallmError, match="put no RetrofitFFN"):
        retrofit(make_tiny_model("llama"), layers="last:1", variant="bare:1.0")

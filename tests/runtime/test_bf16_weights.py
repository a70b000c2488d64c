"""Frozen weights as cached bf16 copies under bf16 autocast: same numbers as autocast, originals restored."""

from __future__ import annotations

import torch
from torch import nn

from kallm.runtime.bf16_weights import bf16_copy, float32_output_head, frozen_weights, frozen_weights_in_bf16
from kallm.runtime.precision import autocast


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 16), nn.Linear(16, 50))
    net[3].weight.requires_grad_(True)  # trainable: never swapped
    for i in (1, 4):
        net[i].weight.requires_grad_(False)
    net[0].weight.requires_grad_(False)
    return net


def test_only_frozen_float32_matmul_weights_are_swapped_and_all_come_back():
    net = _net()
    before = {n: p for n, p in net.named_parameters()}
    assert {id(w) for _, w in frozen_weights(net)} == {id(net[1].weight), id(net[4].weight)}
    with frozen_weights_in_bf16(net, net[1]) as n:  # a module reached twice is swapped once
        assert n == 2
        assert net[1].weight.dtype == net[4].weight.dtype == torch.bfloat16
        assert net[3].weight.dtype == net[0].weight.dtype == torch.float32  # trainable; embedding
    assert {n: p for n, p in net.named_parameters()} == before
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_outputs_and_gradients_equal_plain_autocast():
    net, ids = _net(), torch.randint(0, 50, (4, 7))
    outs = []
    for modules in ((), (net,)):
        net.zero_grad()
        with autocast("bf16", "cpu", *modules):
            out = net(ids).float()
        out.square().mean().backward()
        outs.append((out.detach(), net[3].weight.grad.clone()))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])


def test_the_copy_is_made_once_and_again_after_an_in_place_change():
    w = nn.Parameter(torch.randn(8, 8), requires_grad=False)
    first = bf16_copy(w)
    assert bf16_copy(w) is first
    with torch.no_grad():
        w.mul_(2)
    again = bf16_copy(w)
    assert again is not first and torch.equal(again, (w.detach()).to(torch.bfloat16))


def test_fp32_autocast_and_cuda_leave_weights_alone():
    net = _net()
    with autocast("fp32", "cpu", net):
        assert net[1].weight.dtype == torch.float32


def test_float32_output_head_computes_in_float32_under_the_swap():
    net = _net()
    x = torch.randn(3, 16)
    reference = nn.functional.linear(x, net[4].weight, net[4].bias)
    net.get_output_embeddings = lambda: net[4]
    with autocast("bf16", "cpu", net), float32_output_head(net):
        out = net[4](x)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, reference, rtol=1e-6, atol=1e-6)
        assert net[4](x.to(torch.bfloat16)).dtype == torch.float32
    assert "forward" not in net[4].__dict__
    with autocast("bf16", "cpu", net):
        assert net[4](x).dtype == torch.bfloat16


def test_while_autograd_is_off_every_float32_matmul_weight_is_swapped():
    net = _net()
    with torch.no_grad(), frozen_weights_in_bf16(net) as n:
        assert n == 3 and net[3].weight.dtype == torch.bfloat16
    assert net[3].weight.dtype == torch.float32 and net[3].weight.requires_grad


def test_a_copy_made_during_inference_serves_training_later():
    lin = nn.Linear(8, 8).requires_grad_(False)
    with torch.inference_mode(), autocast("bf16", "cpu", lin):
        lin(torch.randn(2, 8))
    x = torch.randn(2, 8, requires_grad=True)
    with autocast("bf16", "cpu", lin):
        y = lin(x)
    y.float().sum().backward()
    assert x.grad is not None and x.grad.shape == (2, 8)


def test_the_weights_and_their_copies_die_with_the_model():
    """The copy tables are weak both ways: a model whose weights were swapped once is freed with its copies
    (a strong reference from copy back to weight kept every model of an experiment grid alive)."""
    import gc
    import weakref

    from kallm.runtime import bf16_weights

    net = _net()
    with autocast("bf16", "cpu", net):
        net(torch.randint(0, 50, (2, 5)))
    weight, copy = weakref.ref(net[1].weight), weakref.ref(bf16_copy(net[1].weight))
    assert copy() is not None and bf16_weights.float32_weight(copy()) is not None
    tables = len(bf16_weights._COPIES), len(bf16_weights._ORIGINALS)
    del net
    gc.collect()
    assert weight() is None and copy() is None
    # both frozen Linears' entries are gone (and any an earlier test's model left for the collector)
    assert len(bf16_weights._COPIES) <= tables[0] - 2 and len(bf16_weights._ORIGINALS) <= tables[1] - 2

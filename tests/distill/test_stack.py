"""A stacked KAN's carry: what its inner layer is fitted to pass on."""

from __future__ import annotations

import torch

from kallm.distill.stack import carried_input


def test_a_narrower_layer_carries_the_leading_components_at_unit_variance():
    """Components of very different scales all reach the next layer's input map at unit variance."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 6, generator=gen, dtype=torch.float64) * torch.tensor([8.0, 3.0, 0.05, 0.01, 0.01, 0.01])
    carried = carried_input(x + 5.0, 2)
    torch.testing.assert_close(carried.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(carried.std(0), torch.ones(2, dtype=torch.float64))
    for i in range(2):  # the two large axes, in order of their variance (sign free)
        assert abs(torch.corrcoef(torch.stack([carried[:, i], x[:, i]]))[0, 1]) > 0.99
    assert torch.equal(carried_input(x, 6), x) and carried_input(x, 7) is None

import pytest
import torch

from jepa.losses import cosine_distance, cross_view_loss, simsiam_loss, vicreg_loss


def test_cross_view_is_zero_for_identical_and_four_for_opposite():
    x = torch.randn(16, 32)
    assert cross_view_loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert cross_view_loss(x, -x).item() == pytest.approx(4.0, abs=1e-6)


def test_cross_view_ignores_scale_and_is_two_for_orthogonal():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 5.0]])
    assert cosine_distance(a, b).item() == pytest.approx(2.0)
    assert cross_view_loss(a, 3 * a).item() == pytest.approx(0.0, abs=1e-6)


def test_simsiam_stops_gradient_on_targets():
    p = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    simsiam_loss(p, p, z, z).backward()
    assert p.grad is not None and z.grad is None


def test_vicreg_penalises_a_constant_output():
    spread = torch.randn(64, 16)
    constant = torch.ones(64, 16)
    assert vicreg_loss(constant, constant) > vicreg_loss(spread, spread)

"""Shared primitives: activation derivatives against autograd, initialisers, Dense, Feedback."""
import math

import pytest
import torch

from tncn.layers import ACTIVATIONS, Dense, Feedback, get_activation, init_weight

DIFFERENTIABLE = ["tanh", "sigmoid", "relu", "relu6", "ltanh", "identity", "softmax"]


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_vjp_matches_autograd(name):
    act = get_activation(name)
    a = (torch.randn(4, 7, dtype=torch.float64) * 4).requires_grad_()
    g = torch.randn(4, 7, dtype=torch.float64)
    h = act(a)
    (expected,) = torch.autograd.grad(h, a, g)
    torch.testing.assert_close(act.backward(a.detach(), h.detach(), g), expected)


def test_closed_forms():
    a = torch.linspace(-8, 8, 33)
    torch.testing.assert_close(get_activation("ltanh")(a), 1.7159 * torch.tanh(2 * a / 3))
    torch.testing.assert_close(get_activation("relu6")(a), a.clamp(0, 6))
    assert set(get_activation("sign")(a).tolist()) <= {-1.0, 0.0, 1.0}
    assert set(get_activation("step")(a).tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("name", ["sign", "step", "stochastic_binary"])
def test_non_differentiable_activations_refuse_a_derivative(name):
    act = get_activation(name)
    assert not act.differentiable
    with pytest.raises(ValueError, match="no derivative"):
        act.backward(torch.zeros(2), torch.zeros(2), torch.zeros(2))


def test_stochastic_binary_is_reproducible_and_has_sigmoid_mean():
    act = get_activation("stochastic_binary")
    a = torch.full((20000,), 0.7)
    s1 = act(a, torch.Generator().manual_seed(5))
    s2 = act(a, torch.Generator().manual_seed(5))
    assert torch.equal(s1, s2) and set(s1.unique().tolist()) == {0.0, 1.0}
    assert abs(s1.mean().item() - torch.sigmoid(torch.tensor(0.7)).item()) < 0.02


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="unknown activation 'swish'; known: .*tanh"):
        get_activation("swish")
    with pytest.raises(ValueError, match="unknown initialiser 'he'; known: normal, orthogonal, uniform, zeros"):
        init_weight((2, 2), "he")


def test_no_identity_comparison_of_names():
    # a name built at run time (not interned) must still be found
    name = "".join(["ta", "nh"])
    assert get_activation(name) is ACTIVATIONS["tanh"]


def test_initialisers():
    g = torch.Generator().manual_seed(0)
    w = init_weight((400, 300), "normal", std=0.05, generator=g)
    assert abs(w.std().item() - 0.05) < 0.002 and abs(w.mean().item()) < 0.002
    u = init_weight((400, 300), "uniform", std=0.05, generator=g)
    assert u.abs().max() <= 0.05 * math.sqrt(3) and abs(u.std().item() - 0.05) < 0.002
    q = init_weight((50, 30), "orthogonal", generator=g)
    torch.testing.assert_close(q.T @ q, torch.eye(30), atol=1e-5, rtol=0)
    q = init_weight((30, 50), "orthogonal", generator=g)
    torch.testing.assert_close(q @ q.T, torch.eye(30), atol=1e-5, rtol=0)
    assert torch.count_nonzero(init_weight((3, 4), "zeros")) == 0
    same = [init_weight((3, 4), generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(*same)


def test_dense_and_feedback():
    layer = Dense(5, 3, activation="sigmoid", bias=True)
    x = torch.randn(2, 5)
    torch.testing.assert_close(layer(x), torch.sigmoid(x @ layer.weight + layer.bias))
    fixed, learned = Feedback(4, 3), Feedback(4, 3, learned=True)
    assert [n for n, _ in fixed.named_parameters()] == [] and [n for n, _ in fixed.named_buffers()] == ["weight"]
    assert [n for n, _ in learned.named_parameters()] == ["weight"]
    e = torch.randn(2, 4)
    torch.testing.assert_close(learned(e), e @ learned.weight)

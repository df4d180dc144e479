"""Output losses (``tncn.losses``: classification and reconstruction) and winner-take-all units
(``tncn.layers``: LWTA, SLWTA of Srivastava et al., NeurIPS 2013), against autograd and direct
implementations written here."""
from __future__ import annotations

import math

import pytest
import torch

from tncn import learners
from tncn.layers import get_activation
from tncn.losses import LOSSES, RECONSTRUCTION_LOSSES, get_loss, get_reconstruction_loss
from tncn.mlp import MLP


def _direct_loss(name, logits, y):
    p = torch.softmax(logits, -1)
    t = torch.nn.functional.one_hot(y, logits.shape[-1]).to(logits.dtype)
    if name == "ce":
        return -(t * torch.log(p)).sum(-1).mean()
    if name == "mse":
        return (0.5 * (p - t) ** 2).sum(-1).mean()
    return (p - t).abs().sum(-1).mean()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_error_is_the_per_example_gradient(name):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (6,), generator=g)
    reference = _direct_loss(name, logits, y)
    (grad,) = torch.autograd.grad(reference * len(y), logits)  # per-example gradients: of the sum
    loss = get_loss(name)
    e, value = loss.error(logits.detach(), torch.softmax(logits.detach(), -1), y)
    torch.testing.assert_close(e, grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(value, reference.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss.value(logits, y), reference, rtol=1e-12, atol=1e-12)


def test_unknown_loss_lists_the_known():
    with pytest.raises(ValueError, match="known: ce, mae, mse"):
        MLP([3, 2], loss="hinge")
    with pytest.raises(ValueError, match="unknown reconstruction loss 'hinge'; known: ce, mae, mse"):
        get_reconstruction_loss("hinge")


def _direct_reconstruction_loss(name, logits, t):
    """Per-example losses of sigmoid outputs against target pixels, from their definitions."""
    p = 1.0 / (1.0 + torch.exp(-logits))
    if name == "ce":
        return -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).sum(-1)
    if name == "mse":
        return (0.5 * (p - t) ** 2).sum(-1)
    return (p - t).abs().sum(-1)


@pytest.mark.parametrize("name", sorted(RECONSTRUCTION_LOSSES))
def test_reconstruction_loss_error_is_the_per_example_gradient(name):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(6, 9, generator=g, dtype=torch.float64)).requires_grad_(True)
    t = torch.rand(6, 9, generator=g, dtype=torch.float64)
    per_example = _direct_reconstruction_loss(name, logits, t)
    (grad,) = torch.autograd.grad(per_example.sum(), logits)  # row i: ∂ℓ_i/∂a_i
    loss = get_reconstruction_loss(name)
    assert loss.output == "sigmoid" and not loss.classes
    e, value = loss.error(logits.detach(), torch.sigmoid(logits.detach()), t)
    torch.testing.assert_close(e, grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(value, per_example.mean().detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss.value(logits, t), per_example.mean(), rtol=1e-12, atol=1e-12)


def test_binary_cross_entropy_error_stays_exact_for_saturated_units():
    logits = torch.tensor([[-60.0, 60.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0, 0.25]], dtype=torch.float64)
    loss = get_reconstruction_loss("ce")
    e, value = loss.error(logits, torch.sigmoid(logits), t)
    torch.testing.assert_close(e, torch.sigmoid(logits) - t)
    # -log σ(-60) = -log(1 - σ(60)) = 60 + log(1 + e^-60), though 1 - σ(60) rounds to 0 (a loss
    # taken from the outputs would be infinite); at a = 0 with t = 1/4: -(1/4 + 3/4) log(1/2) = log 2
    torch.testing.assert_close(value, torch.tensor(60.0 + 60.0 + math.log(2.0), dtype=torch.float64))


@pytest.mark.parametrize("losses,output", [(LOSSES, "softmax"), (RECONSTRUCTION_LOSSES, "sigmoid")])
def test_the_loss_decides_the_output_units(losses, output):
    for loss in losses.values():
        net = MLP([4, 3, 5], loss=loss).double()
        x = torch.randn(2, 4, dtype=torch.float64)
        assert net.layers[-1].act.name == output and net.loss is loss
        expected = torch.softmax(net.logits(x), -1) if output == "softmax" else torch.sigmoid(net.logits(x))
        torch.testing.assert_close(net(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["mse", "mae"])
def test_backprop_uses_the_networks_loss(name):
    torch.manual_seed(0)
    net = MLP([5, 4, 3], loss=name).double()
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    learners.make("bp", net).step(x, y)
    params = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    logits = torch.tanh(x @ params[0] + params[1]) @ params[2] + params[3]
    grads = torch.autograd.grad(_direct_loss(name, logits, y), params)
    for p, g in zip(net.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)


def _lwta_direct(a, k):
    out = torch.zeros_like(a)
    for r in range(a.shape[0]):
        for start in range(0, a.shape[1], k):
            block = a[r, start:start + k]
            w = int(torch.argmax(block))
            out[r, start + w] = block[w]
    return out


@pytest.mark.parametrize("name,k", [("lwta", 2), ("lwta:4", 4)])
def test_lwta_matches_a_direct_loop_and_its_derivative_is_the_winner_mask(name, k):
    act = get_activation(name)
    a = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    h = act(a)
    torch.testing.assert_close(h, _lwta_direct(a.detach(), k))
    g = torch.randn(5, 8, dtype=torch.float64)
    (auto,) = torch.autograd.grad(h, a, g)
    mask = (_lwta_direct(a.detach(), k) != 0).to(g.dtype)
    torch.testing.assert_close(act.backward(a.detach(), h.detach(), g), g * mask)
    torch.testing.assert_close(auto, g * mask)
    assert act.block == k and not act.pointwise


def test_slwta_winner_frequencies_follow_the_softmax():
    act = get_activation("slwta:3")
    inputs = torch.tensor([1.0, 0.5, -1.0])
    a = inputs.repeat(40000, 1)
    h = act(a, torch.Generator().manual_seed(0))
    won = h != 0
    assert (won.sum(1) == 1).all() and torch.equal(h[won], a[won])  # one winner per block, passing a
    freq = won.double().mean(0)
    torch.testing.assert_close(freq, torch.softmax(inputs.double(), 0), atol=0.01, rtol=0)
    torch.testing.assert_close(act(a[:10], torch.Generator().manual_seed(0)), h[:10])  # reproducible
    g = torch.randn(10, 3)
    torch.testing.assert_close(act.backward(a[:10], h[:10], g), g * won[:10])


def test_block_activations_need_divisible_widths():
    with pytest.raises(ValueError, match="multiples of 4"):
        MLP([5, 6, 3], activation="lwta:4")
    with pytest.raises(ValueError, match="at least 2 units"):
        get_activation("lwta:1")
    with pytest.raises(ValueError, match="unknown activation"):
        get_activation("lwta:x")

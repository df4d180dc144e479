"""Tests of difference target propagation (Lee, Zhang, Fischer & Bengio, ECML/PKDD 2015,
arXiv 1412.7525) and its noise schedules. Expected values come from autograd or from the
equations written out by hand here."""
from __future__ import annotations

import pytest
import torch

from tncn.learners.dtp import DifferenceTargetPropagation, DTPSigma, noise_std
from tncn.mlp import MLP, fit
from tncn.options import OptionError, read


def _net(sizes, activation="tanh", seed=0, **kw):
    return MLP(sizes, activation=activation, generator=torch.Generator().manual_seed(seed), **kw)


def _batch(n=7, n_in=6, n_classes=4, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n_in, generator=g, dtype=dtype), torch.randint(0, n_classes, (n,), generator=g)


def _forward_params(dtp):
    return list(dtp.net.parameters())


def _inverse_params(dtp):
    return list(dtp.inverses.parameters())


def test_exact_inverse_targets_are_gradient_steps_and_updates_are_backprop():
    """Linear orthogonal layers with g^l = W^{lᵀ} = (W^l)⁻¹: ĥ^l - h^l = -η̂ ∂ℓ/∂h^l for every
    hidden layer, so δ^l = 2η̂ ∂ℓ/∂a^l and each hidden update is 2η̂ times backprop's."""
    net = _net([6, 6, 6, 6, 4], activation="identity", bias=False, init="orthogonal").double()
    eta = 0.3
    dtp = DifferenceTargetPropagation(net, target_step=eta)
    with torch.no_grad():
        for g, layer in zip(dtp.inverses, net.layers[1:]):
            g.weight.copy_(layer.weight.T)
            g.bias.zero_()
    x, y = _batch()
    h_s, targets, _ = dtp.targets(x, y)

    hidden = [h.clone().requires_grad_(True) for h in h_s[1:-1]]
    # ℓ summed over the examples, as a function of each hidden layer in turn
    for l, h in enumerate(hidden):
        out = h
        for layer in net.layers[l + 1:]:
            out = layer.pre(out) if layer is net.layers[-1] else layer(out)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(out, y, reduction="sum"), h)
        torch.testing.assert_close(targets[l] - h_s[l + 1], -eta * grad, atol=1e-10, rtol=0)

    dtp.step(x, y)
    params = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    out = x
    for w in params:
        out = out @ w
    bp = torch.autograd.grad(torch.nn.functional.cross_entropy(out, y), params)
    for layer, g in zip(net.layers[:-1], bp[:-1]):
        torch.testing.assert_close(layer.weight.grad, 2 * eta * g, atol=1e-10, rtol=0)
    torch.testing.assert_close(net.layers[-1].weight.grad, bp[-1], atol=1e-10, rtol=0)


def test_closed_form_local_gradients_equal_autograd():
    net = _net([6, 5, 5, 5, 4]).double()
    dtp = DifferenceTargetPropagation(net, target_step=0.4, seed=3)
    x, y = _batch()
    _, h_s = net.forward_all(x)
    h_s2, targets, _ = dtp.targets(x, y)
    for h, h2 in zip(h_s, h_s2):
        torch.testing.assert_close(h, h2)
    dtp.step(x, y)  # the forward update does not depend on the noise
    for l, layer in enumerate(net.layers[:-1]):
        w, b = (layer.weight.detach().clone().requires_grad_(True), layer.bias.detach().clone().requires_grad_(True))
        loss = ((torch.tanh(h_s[l].detach() @ w + b) - targets[l]) ** 2).sum(1).mean()
        gw, gb = torch.autograd.grad(loss, (w, b))
        torch.testing.assert_close(layer.weight.grad, gw, atol=1e-12, rtol=0)
        torch.testing.assert_close(layer.bias.grad, gb, atol=1e-12, rtol=0)

    noise = dtp.noise(h_s)
    recon = dtp.write_inverse_grads(h_s, noise)
    losses = []
    for g, layer, h, eps in zip(dtp.inverses, net.layers[1:], h_s[1:], noise):
        v, c = g.weight.detach().clone().requires_grad_(True), g.bias.detach().clone().requires_grad_(True)
        corrupt = (h + eps).detach()
        u = torch.tanh(corrupt @ layer.weight + layer.bias).detach()
        loss = ((torch.tanh(u @ v + c) - corrupt) ** 2).sum(1).mean()
        gv, gc = torch.autograd.grad(loss, (v, c))
        torch.testing.assert_close(g.weight.grad, gv, atol=1e-12, rtol=0)
        torch.testing.assert_close(g.bias.grad, gc, atol=1e-12, rtol=0)
        losses.append(loss.detach())
    torch.testing.assert_close(recon, torch.stack(losses).mean())


def test_inverses_learn_to_invert_their_layers():
    torch.manual_seed(0)
    net = _net([10, 16, 16, 16, 3])
    dtp = DifferenceTargetPropagation(net, sigma=0.1, alternate="epoch", seed=1)
    dtp.set_phase("inverse")
    opt = torch.optim.Adam(dtp.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(2)
    x_eval = torch.randn(256, 10, generator=g)

    def error():
        with torch.no_grad():
            _, h_s = net.forward_all(x_eval)
            return sum(((inv(layer(h)) - h) ** 2).sum(1).mean() for inv, layer, h in
                       zip(dtp.inverses, net.layers[1:], h_s[1:])).item()

    before = [p.detach().clone() for p in _forward_params(dtp)]
    start = error()
    for _ in range(300):
        dtp.step(torch.randn(32, 10, generator=g), torch.randint(0, 3, (32,), generator=g))
        opt.step()
    assert error() < 0.3 * start
    for p, q in zip(_forward_params(dtp), before):
        assert torch.equal(p, q)  # the forward weights were left alone


def test_noise_schedules():
    h = torch.randn(20, 7, generator=torch.Generator().manual_seed(0))
    assert noise_std("fixed", 0.36, 50.0, 9, h) == 0.36
    assert noise_std("anneal", 0.5, 50.0, 0, h) == 0.5
    assert noise_std("anneal", 0.5, 50.0, 50, h) == pytest.approx(0.25)
    torch.testing.assert_close(noise_std("adaptive", 0.5, 50.0, 3, h), 0.5 * h.std(correction=0))
    with pytest.raises(ValueError, match="unknown sigma schedule"):
        noise_std("cosine", 0.5, 50.0, 0, h)


def test_anneal_follows_the_epoch_of_fit():
    dtp = DifferenceTargetPropagation(_net([6, 5, 5, 4]), sigma=0.5, sigma_schedule="anneal", tau=50.0)
    assert dtp.phases(51) == [None]
    _, h_s = dtp.net.forward_all(torch.randn(4000, 6))
    assert dtp.noise(h_s)[0].std().item() == pytest.approx(0.25, rel=0.05)


def test_epoch_alternation_and_batch_mode_grads():
    x, y = _batch(dtype=torch.float32)
    dtp = DifferenceTargetPropagation(_net([6, 5, 5, 5, 4]), alternate="epoch")
    assert dtp.phases(1) == ["inverse", "forward"]
    dtp.set_phase("inverse")
    dtp.step(x, y)
    assert all(p.grad is None for p in _forward_params(dtp))
    assert all(p.grad is not None for p in _inverse_params(dtp))
    dtp.set_phase("forward")
    dtp.step(x, y)
    assert all(p.grad is not None for p in _forward_params(dtp))
    assert all(p.grad is None for p in _inverse_params(dtp))
    assert "forward" in dtp.angle_phases and "inverse" not in dtp.angle_phases

    batch = DifferenceTargetPropagation(_net([6, 5, 5, 5, 4]))
    assert batch.phases(1) == [None] and None in batch.angle_phases
    batch.step(x, y)
    assert all(p.grad is not None for p in batch.parameters())
    assert batch.discrepancy.ndim == 0 and batch.reconstruction.ndim == 0


def test_refuses_sign_and_bad_options():
    with pytest.raises(ValueError, match="needs the derivative"):
        DifferenceTargetPropagation(_net([6, 5, 4], activation="sign"))
    net = _net([6, 5, 4])
    for bad in ({"sigma": -0.1}, {"sigma_schedule": "cosine"}, {"alternate": "step"}, {"target_step": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DifferenceTargetPropagation(net, **bad)
    with pytest.raises(OptionError, match="sigma must be non-negative"):
        read(DifferenceTargetPropagation.OPTIONS, {"sigma": -1}, "rule dtp")
    with pytest.raises(OptionError, match="sigma_schedule must be one of fixed, anneal, adaptive"):
        read(DTPSigma.OPTIONS, {"sigma_schedule": "cosine"}, "rule dtp-sigma")


def test_registered_names_and_defaults():
    assert (DifferenceTargetPropagation.name, DTPSigma.name) == ("dtp", "dtp-sigma")
    base = {o.name: o.default for o in DifferenceTargetPropagation.OPTIONS}
    sigma = {o.name: o.default for o in DTPSigma.OPTIONS}
    assert base["sigma_schedule"] == "fixed" and base["sigma"] == 0.359830
    assert sigma["sigma_schedule"] == "adaptive"
    assert {k: v for k, v in base.items() if k not in ("sigma", "sigma_schedule")} == \
        {k: v for k, v in sigma.items() if k not in ("sigma", "sigma_schedule")}
    assert DTPSigma(_net([6, 5, 5, 4])).sigma_schedule == "adaptive"


def test_lwta_and_single_hidden_layer_nets_train():
    x, y = _batch(dtype=torch.float32)
    for sizes, act in (([6, 8, 8, 4], "lwta"), ([6, 5, 4], "tanh"), ([6, 4], "tanh")):
        dtp = DifferenceTargetPropagation(_net(sizes, activation=act))
        assert torch.isfinite(dtp.step(x, y))
        assert all(p.grad is not None for p in dtp.parameters())


@pytest.mark.parametrize("cls", [DifferenceTargetPropagation, DTPSigma])
def test_trains_a_random_teacher(cls):
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(20, 3, generator=g)
    x = torch.randn(600, 20, generator=g)
    y = (x @ teacher).argmax(1)
    net = _net([20, 32, 32, 32, 3])
    dtp = cls(net)
    opt = torch.optim.Adam(dtp.parameters(), lr=1e-3)
    curve = fit(dtp, opt, (x[:500], y[:500]), (x[500:], y[500:]), epochs=8, batch_size=25,
                generator=torch.Generator().manual_seed(1), progress=False, log=lambda s: None)
    assert curve[-1]["train_loss"] < 0.5 * curve[0]["train_loss"]
    assert curve[-1]["valid_error"] < 0.2

"""Tests of the feedforward learners (backprop, FA, DFA, LRA-E; Ororbia & Mali, AAAI 2019) and their
diagnostics. Expected values come from autograd or from the equations written out by hand here.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tncn import learners
from tncn.diagnostics import angle, filter_grid, local_discrepancy, save_filters, update_angles
from tncn.mlp import MLP, error_rate
from tncn.optim import make_optimizer
from tncn.options import OptionError



def _net(sizes, activation="tanh", seed=0, **kw):
    return MLP(sizes, activation=activation, generator=torch.Generator().manual_seed(seed), **kw)


def _batch(n=7, n_in=5, n_classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n_in, generator=g), torch.randint(0, n_classes, (n,), generator=g)


def _autograd_grads(net, x, y):
    """∂L/∂θ of the mean cross-entropy, written out with plain torch ops (independent of the MLP)."""
    params = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    h = x
    for k in range(0, len(params) - 2, 2):
        h = torch.tanh(h @ params[k] + params[k + 1])
    logits = h @ params[-2] + params[-1]
    loss = torch.nn.functional.cross_entropy(logits, y)
    return torch.autograd.grad(loss, params)


def _onehot(y, n):
    return torch.nn.functional.one_hot(y, n).to(torch.float32)


def test_registry_names_and_errors():
    assert set(learners.LEARNERS) == {"bp", "fa", "dfa", "lra-e", "lra", "dtp", "dtp-sigma", "rbm", "ep", "chl"}
    net = _net([5, 4, 3])
    with pytest.raises(ValueError, match="known: bp, chl, dfa, dtp, dtp-sigma, ep, fa, lra, lra-e, rbm"):
        learners.make("xyz", net)
    with pytest.raises(OptionError, match="rule fa has no option 'beta'; its options: feedback_std"):
        learners.make("fa", net, beta=0.1)
    with pytest.raises(OptionError, match="beta: expected a number"):
        learners.make("lra-e", net, beta="abc")


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa"])
def test_rules_needing_derivative_refuse_sign(rule):
    with pytest.raises(ValueError, match="needs the derivative"):
        learners.make(rule, _net([5, 4, 3], activation="sign"))


def test_backprop_matches_handwritten_autograd():
    net = _net([5, 6, 4, 3])
    x, y = _batch()
    learners.make("bp", net).step(x, y)
    for p, g in zip(net.parameters(), _autograd_grads(net, x, y)):
        torch.testing.assert_close(p.grad, g)


def test_fa_with_transposed_weights_equals_backprop():
    net = _net([5, 6, 4, 3])
    fa = learners.make("fa", net, seed=3)
    with torch.no_grad():
        for back, layer in zip(fa.feedback, net.layers[1:]):
            back.weight.copy_(layer.weight.T)
    x, y = _batch()
    fa.step(x, y)
    for p, g in zip(net.parameters(), _autograd_grads(net, x, y)):
        torch.testing.assert_close(p.grad, g)


def test_fa_feedback_is_a_fixed_buffer():
    net = _net([5, 6, 4, 3])
    fa = learners.make("fa", net)
    names = dict(fa.named_buffers())
    assert set(names) == {"feedback.0.weight", "feedback.1.weight"}
    assert names["feedback.0.weight"].shape == (4, 6) and names["feedback.1.weight"].shape == (3, 4)
    assert all(not n.startswith("feedback") for n, _ in fa.named_parameters())


def test_dfa_one_hidden_layer_closed_form():
    net = _net([5, 6, 3])
    dfa = learners.make("dfa", net, seed=4)
    x, y = _batch()
    dfa.step(x, y)
    W1, b1, W2, b2 = [p.detach() for p in net.parameters()]
    B = dfa.feedback[0].weight
    h = torch.tanh(x @ W1 + b1)
    e = torch.softmax(h @ W2 + b2, dim=1) - _onehot(y, 3)
    delta = (e @ B) * (1 - h**2)
    n = len(x)
    torch.testing.assert_close(net.layers[0].weight.grad, x.T @ delta / n)
    torch.testing.assert_close(net.layers[0].bias.grad, delta.sum(0) / n)
    torch.testing.assert_close(net.layers[1].weight.grad, h.T @ e / n)
    torch.testing.assert_close(net.layers[1].bias.grad, e.sum(0) / n)


def test_dfa_deep_sends_output_error_directly():
    net = _net([5, 6, 4, 3])
    dfa = learners.make("dfa", net)
    assert [b.weight.shape for b in dfa.feedback] == [(3, 6), (3, 4)]
    x, y = _batch()
    dfa.step(x, y)
    W1, b1, W2, b2, W3, b3 = [p.detach() for p in net.parameters()]
    h1 = torch.tanh(x @ W1 + b1)
    h2 = torch.tanh(h1 @ W2 + b2)
    e = torch.softmax(h2 @ W3 + b3, dim=1) - _onehot(y, 3)
    delta1 = (e @ dfa.feedback[0].weight) * (1 - h1**2)
    torch.testing.assert_close(net.layers[0].weight.grad, x.T @ delta1 / len(x))


def test_lra_e_step_on_tiny_matrices_by_hand():
    """Two inputs, two hidden layers of two tanh units, two classes, no biases; every number by hand."""
    net = MLP([2, 2, 2, 2], activation="tanh", bias=False)
    W1 = torch.tensor([[0.5, -0.3], [0.2, 0.4]])
    W2 = torch.tensor([[0.1, 0.6], [-0.7, 0.3]])
    W3 = torch.tensor([[0.8, -0.2], [0.4, 0.5]])
    E2 = torch.tensor([[1.0, -1.0], [0.5, 2.0]])   # layer 2 -> layer 1
    E3 = torch.tensor([[0.3, 0.7], [-0.6, 1.2]])   # output -> layer 2
    lra = learners.make("lra-e", net, beta=0.5, gamma=2.0)
    with torch.no_grad():
        for layer, w in zip(net.layers, (W1, W2, W3)):
            layer.weight.copy_(w)
        lra.E[0].weight.copy_(E2)
        lra.E[1].weight.copy_(E3)
    x = torch.tensor([[1.0, 2.0]])
    lra.step(x, torch.tensor([1]))

    th = math.tanh
    a1 = [1 * 0.5 + 2 * 0.2, 1 * -0.3 + 2 * 0.4]
    h1 = [th(v) for v in a1]
    a2 = [h1[0] * 0.1 + h1[1] * -0.7, h1[0] * 0.6 + h1[1] * 0.3]
    h2 = [th(v) for v in a2]
    a3 = [h2[0] * 0.8 + h2[1] * 0.4, h2[0] * -0.2 + h2[1] * 0.5]
    z = [math.exp(v) for v in a3]
    p = [v / sum(z) for v in z]
    e3 = [p[0] - 0.0, p[1] - 1.0]
    d2 = [e3[0] * 0.3 + e3[1] * -0.6, e3[0] * 0.7 + e3[1] * 1.2]
    e2 = [h2[i] - th(a2[i] - 0.5 * d2[i]) for i in range(2)]
    d1 = [e2[0] * 1.0 + e2[1] * 0.5, e2[0] * -1.0 + e2[1] * 2.0]
    e1 = [h1[i] - th(a1[i] - 0.5 * d1[i]) for i in range(2)]
    dW1 = [[x[0, i].item() * e1[j] for j in range(2)] for i in range(2)]
    dW2 = [[h1[i] * e2[j] for j in range(2)] for i in range(2)]
    dW3 = [[h2[i] * e3[j] for j in range(2)] for i in range(2)]

    for layer, expected in zip(net.layers, (dW1, dW2, dW3)):
        torch.testing.assert_close(layer.weight.grad, torch.tensor(expected))
    torch.testing.assert_close(lra.E[0].weight.grad, 2.0 * torch.tensor(dW2).T)
    torch.testing.assert_close(lra.E[1].weight.grad, 2.0 * torch.tensor(dW3).T)
    assert lra.discrepancy.item() == pytest.approx(sum(v * v for v in e1 + e2), rel=1e-5)


def test_lra_e_fixed_error_weights_are_buffers():
    net = _net([5, 6, 4, 3])
    lra = learners.make("lra-e", net, learn_e=False)
    assert {n for n, _ in lra.named_buffers()} == {"E.0.weight", "E.1.weight", "units.seed"}
    learned = learners.make("lra-e", _net([5, 6, 4, 3]))
    assert {"E.0.weight", "E.1.weight"} <= {n for n, _ in learned.named_parameters()}


def test_lra_e_needs_no_derivative_and_bias_update_is_mean_error():
    net = _net([5, 6, 3], activation="step")
    lra = learners.make("lra-e", net, beta=1.0, target_scale="absolute")
    x, y = _batch()
    lra.step(x, y)
    W1, b1, W2, b2 = [p.detach() for p in net.parameters()]
    a1 = x @ W1 + b1
    h1 = (a1 > 0).float()
    e2 = torch.softmax(h1 @ W2 + b2, 1) - _onehot(y, 3)
    e1 = h1 - ((a1 - e2 @ lra.E[0].weight) > 0).float()
    torch.testing.assert_close(net.layers[0].bias.grad, e1.mean(0))
    assert local_discrepancy(lra, x, y) == pytest.approx((e1**2).sum(1).mean().item())


def test_lra_e_relative_targets_scale_the_step_by_each_units_spread():
    net = _net([5, 6, 3], activation="sign")
    lra = learners.make("lra-e", net, beta=0.3)  # auto: relative for two-valued units
    assert lra.relative and not learners.make("lra-e", _net([5, 6, 3])).relative
    x, y = _batch()
    lra.step(x, y)
    W1, b1, W2, b2 = [p.detach() for p in net.parameters()]
    a1 = x @ W1 + b1
    h1 = torch.sign(a1)
    d = (torch.softmax(h1 @ W2 + b2, 1) - _onehot(y, 3)) @ lra.E[0].weight
    scale = torch.clamp(a1.pow(2).mean(0).sqrt() / d.pow(2).mean(0).sqrt(), min=1.0)
    e1 = h1 - torch.sign(a1 - 0.3 * scale * d)
    torch.testing.assert_close(net.layers[0].bias.grad, e1.mean(0))
    zero = learners.make("lra-e", _net([5, 6, 3], activation="sign", init="zeros"), beta=0.3)
    zero.step(x, y)  # a = 0 everywhere: the step falls back to the absolute β d, so the first layer learns
    assert zero.net.layers[0].weight.grad.abs().sum() > 0


def test_lra_e_stochastic_targets_reuse_the_units_noise():
    net = _net([5, 8, 3], activation="stochastic_binary")
    x, y = _batch(n=64)
    lra = learners.make("lra-e", net, beta=0.0)
    lra.step(x, y)  # β = 0: the target is the unit's own sample, so no local error at all
    assert lra.discrepancy.item() == 0.0
    assert net.layers[0].weight.grad.abs().sum() == 0


def test_angle_of_backprop_with_itself_is_zero_and_angle_basics():
    net = _net([5, 6, 4, 3])
    bp = learners.make("bp", net)
    x, y = _batch()
    bp.step(x, y)
    assert update_angles(bp, x, y) == pytest.approx([0.0, 0.0, 0.0], abs=1e-3)
    u = torch.tensor([1.0, 0.0])
    assert angle(u, torch.tensor([0.0, 3.0])) == pytest.approx(90.0)
    assert angle(u, -u) == pytest.approx(180.0)
    assert angle(u, torch.tensor([1.0, 1.0])) == pytest.approx(45.0)


def test_angles_for_local_rules_top_layer_is_exact():
    net = _net([5, 6, 4, 3])
    x, y = _batch()
    for rule in ("fa", "dfa", "lra-e"):
        lrn = learners.make(rule, net)
        lrn.step(x, y)
        angles = update_angles(lrn, x, y)
        assert angles[-1] == pytest.approx(0.0, abs=1e-3)
        # each angle against backprop's gradient computed here by autograd, the angle by numpy
        loss = torch.nn.functional.cross_entropy(net.logits(x), y)
        ref = torch.autograd.grad(loss, [layer.weight for layer in net.layers])
        for a, layer, g in zip(angles, net.layers, ref):
            u, v = layer.weight.grad.double().flatten().numpy(), g.double().flatten().numpy()
            assert a == pytest.approx(np.degrees(np.arccos(u @ v / np.linalg.norm(u) / np.linalg.norm(v))), abs=1e-6)


def _separable(n=400, seed=0):
    """Three Gaussian blobs in 10 dimensions, well apart."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 10, generator=g) * 3.0
    y = torch.randint(0, 3, (n,), generator=g)
    return centres[y] + torch.randn(n, 10, generator=g), y


@pytest.mark.parametrize("rule,activation", [
    ("bp", "tanh"), ("fa", "tanh"), ("dfa", "tanh"), ("lra-e", "tanh"), ("lra-e", "sign"), ("lra-e", "step"),
])
def test_each_learner_lowers_the_loss(rule, activation):
    x, y = _separable()
    net = _net([10, 32, 32, 3], activation=activation, seed=2)
    lrn = learners.make(rule, net)
    opt = make_optimizer("sgd", lrn.parameters(), 0.1)
    loss0 = torch.nn.functional.cross_entropy(net.logits(x), y).item()
    for _ in range(20):
        for i in range(0, len(x), 100):
            lrn.step(x[i:i + 100], y[i:i + 100])
            opt.step()
    loss1 = torch.nn.functional.cross_entropy(net.logits(x), y).item()
    assert loss1 < 0.5 * loss0
    assert error_rate(net, x, y) < 0.05


def _xor(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g) * 2 - 1
    return x, (x[:, 0] * x[:, 1] > 0).long()


@pytest.mark.parametrize("activation,epochs", [("sign", 40), ("step", 20)])
def test_binary_units_learn_xor_under_lra_e(activation, epochs):
    """XOR of the quadrants needs trained hidden layers: at the zero-bias initialisation every sign
    feature is odd in x while the labels are even, so a trained readout alone stays near chance
    (about 40 % error here). LRA-E, which never uses f', must bring the error far below that."""
    x, y = _xor()
    net = _net([2, 32, 32, 2], activation=activation, seed=2)
    lrn = learners.make("lra-e", net, seed=2)
    opt = make_optimizer("sgd", lrn.parameters(), 0.3)
    for _ in range(epochs):
        for i in range(0, len(x), 50):
            lrn.step(x[i:i + 50], y[i:i + 50])
            opt.step()
    assert error_rate(net, x, y) < 0.15


@pytest.mark.parametrize("rule", ["fa", "dfa", "lra-e"])
def test_local_rules_build_no_graph_and_write_all_grads(rule):
    net = _net([5, 6, 4, 3])
    lrn = learners.make(rule, net)
    x, y = _batch()
    loss = lrn.step(x, y)
    assert not loss.requires_grad
    for p in lrn.parameters():
        assert p.grad is not None and not p.grad.requires_grad and p.grad.shape == p.shape


def test_same_seed_same_feedback_and_state_dict_roundtrip():
    a = learners.make("dfa", _net([5, 6, 4, 3]), seed=7)
    b = learners.make("dfa", _net([5, 6, 4, 3]), seed=7)
    c = learners.make("dfa", _net([5, 6, 4, 3]), seed=8)
    torch.testing.assert_close(a.feedback[0].weight, b.feedback[0].weight)
    assert not torch.equal(a.feedback[0].weight, c.feedback[0].weight)
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(a.feedback[1].weight, c.feedback[1].weight)


def test_zero_init_backprop_stuck_local_rules_move_first_layer():
    x, y = _batch(n=20)
    moved = {}
    for rule in ("bp", "fa", "dfa", "lra-e"):
        net = MLP([5, 6, 4, 3], init="zeros")
        lrn = learners.make(rule, net)
        lrn.step(x, y)
        moved[rule] = net.layers[0].weight.grad.abs().max().item()
    assert moved["bp"] == 0.0
    assert min(moved["fa"], moved["dfa"], moved["lra-e"]) > 0.0


def test_filter_grid_layout_and_png(tmp_path):
    w = torch.zeros(4, 3)
    w[:, 0] = torch.tensor([1.0, -1.0, 0.5, 0.0])
    grid = filter_grid(w, count=3)                      # 2x2 images in a 2x2 grid
    assert grid.shape == (2 * 3 + 1, 2 * 3 + 1)
    assert grid[1:3, 1:3].tolist() == [[1.0, 0.0], [0.75, 0.5]]
    assert (grid[1:3, 4:6] == 0.5).all()                # an all-zero filter is mid-grey
    with pytest.raises(ValueError, match="not square"):
        filter_grid(torch.zeros(5, 2))
    path = save_filters(torch.randn(16, 9), tmp_path / "f.png", "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("opt_name,gamma,invariant_gamma", [("sgd", 0.5, 0.5), ("adam", 0.5, 1.0)])
def test_lra_e_error_weights_track_transposed_weights(opt_name, gamma, invariant_gamma):
    """∂E = γ ∂Wᵀ: under SGD E - γWᵀ is constant; Adam ignores the scale γ, so E - Wᵀ is."""
    net = _net([5, 6, 4, 3])
    lrn = learners.make("lra-e", net, gamma=gamma)
    opt = make_optimizer(opt_name, lrn.parameters(), 0.05)
    gap = lambda: (lrn.E[0].weight - invariant_gamma * net.layers[1].weight.T).detach().clone()  # noqa: E731
    before, w0 = gap(), net.layers[1].weight.detach().clone()
    for seed in range(10):
        lrn.step(*_batch(seed=seed))
        opt.step()
    assert (net.layers[1].weight - w0).abs().max() > 1e-3
    torch.testing.assert_close(gap(), before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("loss", ["ce", "mse", "mae"])
@pytest.mark.parametrize("rule", sorted(r for r, cls in learners.LEARNERS.items() if cls.cost is None))
def test_every_rule_trains_every_output_loss_with_the_true_output_gradient(rule, loss):
    net = _net([5, 6, 4, 3], activation=learners.LEARNERS[rule].activation or "tanh", loss=loss)
    x, y = _batch()
    lrn = learners.make(rule, net)
    value = lrn.step(x, y)
    assert torch.isfinite(value)
    for name, p in lrn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    top = net.layers[-1]
    with torch.enable_grad():
        h = x
        for layer in net.layers[:-1]:
            h = layer(h).detach()
        (w_grad,) = torch.autograd.grad(net.loss.value(top.pre(h), y), [top.weight])
    torch.testing.assert_close(top.weight.grad, w_grad)  # every rule trains the output layer exactly


@pytest.mark.parametrize("act", ["lwta", "slwta"])
@pytest.mark.parametrize("rule", ["bp", "fa", "dfa", "lra", "dtp"])
def test_rules_needing_f_prime_use_the_winner_mask(rule, act):
    net = _net([5, 6, 4, 3], activation=act)
    x, y = _batch()
    learners.make(rule, net).step(x, y)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    assert net.layers[0].weight.grad.abs().sum() > 0


def test_pca_embedding_recovers_the_leading_axes():
    from tncn.diagnostics import pca_2d

    g = torch.Generator().manual_seed(0)
    t = torch.randn(4000, 2, generator=g, dtype=torch.float64)
    t, _ = torch.linalg.qr(t - t.mean(0))  # centred, exactly uncorrelated columns: the sample's own axes
    t = t * torch.tensor([3.0, 1.0], dtype=torch.float64) * 4000 ** 0.5
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    h = torch.cat([t, torch.zeros(4000, 4, dtype=torch.float64)], 1) @ q.T + 5.0
    points = pca_2d(h)
    np.testing.assert_allclose(points.var(0), [9.0, 1.0], rtol=1e-9)
    np.testing.assert_allclose(np.abs(points), np.abs(t.numpy()), atol=1e-9)

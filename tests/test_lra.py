"""LRA-fdbk with the Cauchy local loss (Ororbia, Mali, Kifer & Giles, arXiv 1803.01834): one step
against the equations of ``tncn.learners.lra`` written out by hand, element by element."""
from __future__ import annotations

import math

import pytest
import torch

from tncn import learners
from tncn.mlp import MLP
from tncn.options import OptionError


def _setup(sizes=(4, 3, 3, 2), seed=0):
    net = MLP(list(sizes), activation="tanh", generator=torch.Generator().manual_seed(seed)).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(5, sizes[0], generator=g, dtype=torch.float64)
    y = torch.randint(0, sizes[-1], (5,), generator=g)
    return net, x, y


def _hand_step(net, E, x, y, beta, kind="cauchy"):
    """One K = 1 LRA step by scalar loops: returns the weight updates [∂W^1..∂W^L]."""
    rho1 = (lambda d: 2 * d / (1 + d * d)) if kind == "cauchy" else (lambda d: d)
    W = [layer.weight.detach().tolist() for layer in net.layers]
    b = [layer.bias.detach().tolist() for layer in net.layers]
    grads = [[[0.0] * len(w[0]) for _ in w] for w in W]
    B, L = len(x), len(W)
    for n in range(B):
        h, a = [x[n].tolist()], []
        for l in range(L):
            pre = [sum(h[-1][i] * W[l][i][j] for i in range(len(h[-1]))) + b[l][j] for j in range(len(b[l]))]
            a.append(pre)
            h.append([math.tanh(v) for v in pre] if l < L - 1 else pre)
        m = max(h[-1])
        z = [math.exp(v - m) for v in h[-1]]
        p = [v / sum(z) for v in z]
        err = [p[k] - (1.0 if k == int(y[n]) else 0.0) for k in range(len(p))]
        deltas = [None] * L
        deltas[L - 1] = err
        for l in range(L - 2, -1, -1):  # hidden layer l (0-based), target from the error above
            Em = E[l].tolist()  # [n_{l+2}, n_{l+1}]
            target = [math.tanh(a[l][j] - beta * sum(err[k] * Em[k][j] for k in range(len(err))))
                      for j in range(len(a[l]))]
            act = h[l + 1]
            deltas[l] = [rho1(act[j] - target[j]) * (1 - act[j] ** 2) for j in range(len(act))]
            err = deltas[l]  # with K = 1 the prediction from the layer below is the activity itself
        for l in range(L):
            for i in range(len(h[l])):
                for j in range(len(deltas[l])):
                    grads[l][i][j] += h[l][i] * deltas[l][j] / B
    return [torch.tensor(g, dtype=torch.float64) for g in grads]


@pytest.mark.parametrize("kind", ["cauchy", "gaussian"])
def test_one_step_equals_the_hand_computation(kind):
    net, x, y = _setup()
    rule = learners.make("lra", net, beta=0.7, local_loss=kind).double()
    rule.step(x, y)
    expected = _hand_step(net, [E.weight for E in rule.E], x, y, 0.7, kind)
    for layer, g in zip(net.layers, expected):
        torch.testing.assert_close(layer.weight.grad, g, rtol=1e-10, atol=1e-12)


def test_the_fdbk_matrices_are_fixed_with_unit_scale():
    net, _, _ = _setup((4, 300, 300, 2))
    rule = learners.make("lra", net)
    assert all(not E.learned for E in rule.E) and not any("E." in n for n, _ in rule.named_parameters())
    assert abs(float(rule.E[0].weight.std()) - 1.0) < 0.05


def test_more_sweeps_move_the_targets_further():
    net, x, y = _setup()
    one = learners.make("lra", net, beta=0.3, steps=1).double()
    two = learners.make("lra", net, beta=0.3, steps=2).double()
    _, h_s, z1, _, _ = one.targets(x, y)
    _, _, z2, _, _ = two.targets(x, y)
    top = h_s[-2]
    assert (z2[-1] - top).norm() > (z1[-1] - top).norm() > 0


def test_update_clipping_bounds_each_layers_norm():
    net, x, y = _setup()
    learners.make("lra", net, beta=0.5).double().step(x, y)
    free = [(l.weight.grad.clone(), l.bias.grad.clone()) for l in net.layers]
    learners.make("lra", net, beta=0.5, clip=1e-3).double().step(x, y)
    for layer, (w, b) in zip(net.layers, free):
        norm = math.sqrt(float((w * w).sum() + (b * b).sum()))
        clipped = math.sqrt(float((layer.weight.grad ** 2).sum() + (layer.bias.grad ** 2).sum()))
        assert clipped == pytest.approx(min(norm, 1e-3), rel=1e-9)
        torch.testing.assert_close(layer.weight.grad * norm / clipped, w)  # the direction is kept


def test_discrepancy_is_the_cauchy_loss_of_the_targets():
    net, x, y = _setup()
    rule = learners.make("lra", net, beta=0.4).double()
    rule.step(x, y)
    _, h_s, z, _, _ = rule.targets(x, y)
    expected = sum(torch.log1p((h - t) ** 2).sum(1).mean() for h, t in zip(h_s[1:-1], z))
    torch.testing.assert_close(rule.discrepancy, expected)


def test_lra_refuses_sign_and_bad_options():
    with pytest.raises(ValueError, match="needs the derivative"):
        learners.make("lra", MLP([4, 3, 2], activation="sign"))
    with pytest.raises(OptionError, match="local_loss must be one of cauchy, gaussian"):
        learners.make("lra", MLP([4, 3, 2]), local_loss="huber")

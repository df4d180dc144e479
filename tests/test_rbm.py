"""Restricted Boltzmann machines trained by contrastive divergence (Hinton 2002): the free energy
and the exact log-likelihood gradient of a tiny RBM (4 visible, 3 hidden units) by enumerating
all 2⁷ joint states, against ``tncn.learners.rbm``."""
from __future__ import annotations

import itertools
import json

import pytest
import torch

from test_classify_cli import classify, tiny  # noqa: F401  (tiny: the fixture of a tiny IDX folder)
from tncn import learners
from tncn.mlp import MLP


def _tiny(seed=0):
    net = MLP([4, 3, 2], activation="sigmoid", generator=torch.Generator().manual_seed(seed), std=1.0).double()
    rule = learners.make("rbm", net, k=1).double()
    with torch.no_grad():
        net.layers[0].bias.copy_(torch.tensor([0.3, -0.5, 0.1], dtype=torch.float64))
        rule.visible_bias[0].copy_(torch.tensor([-0.2, 0.4, 0.0, 0.6], dtype=torch.float64))
    return net, rule


def _states(n):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)


def _energy(v, h, W, c, b):
    return -(v @ b) - (h @ c) - ((v @ W) * h).sum(-1)


def test_free_energy_matches_the_enumeration_over_hidden_states():
    net, rule = _tiny()
    W, c, b = net.layers[0].weight.detach(), net.layers[0].bias.detach(), rule.visible_bias[0].detach()
    V, H = _states(4), _states(3)
    for v in V:
        exact = -torch.logsumexp(-_energy(v.expand(len(H), 4), H, W, c, b), 0)
        torch.testing.assert_close(rule.free_energy(v[None])[0], exact)


def _exact_gradient(net, rule, data):
    """∂(mean log p(v))/∂W by enumeration: ⟨v p(h|v)ᵀ⟩_data - Σ_v p(v) v p(h|v)ᵀ."""
    W, c = net.layers[0].weight.detach(), net.layers[0].bias.detach()
    V = _states(4)
    p_v = torch.softmax(-rule.free_energy(V), 0)
    model = (V * p_v[:, None]).T @ torch.sigmoid(V @ W + c)
    positive = data.T @ torch.sigmoid(data @ W + c) / len(data)
    return positive - model


def test_cd_with_long_chains_approaches_the_exact_log_likelihood_gradient():
    net, rule = _tiny()
    data = _states(4)[[3, 5, 12, 15]].repeat(5000, 1)  # four patterns, 20k chains
    exact = _exact_gradient(net, rule, data)
    rule.k = 200
    rule.step(data, torch.zeros(len(data), dtype=torch.long))
    estimate = -net.layers[0].weight.grad  # .grad holds the loss-gradient sign
    assert (estimate - exact).abs().max() < 0.02
    rule.k = 1
    rule.step(data, torch.zeros(len(data), dtype=torch.long))
    assert (-net.layers[0].weight.grad - exact).abs().max() > 0.02  # CD-1 is biased on this RBM


def test_the_readout_gets_the_true_gradient_and_persistent_chains_persist():
    net = MLP([6, 8, 3], activation="sigmoid", generator=torch.Generator().manual_seed(0))
    rule = learners.make("rbm", net, persistent=True, seed=3)
    x, y = torch.rand(10, 6), torch.randint(0, 3, (10,))
    rule.step(x, y)
    chain = rule.chains[0].clone()
    h = torch.sigmoid(net.layers[0].pre(x))
    with torch.enable_grad():
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(net.layers[1].pre(h), y), [net.layers[1].weight])
    torch.testing.assert_close(net.layers[1].weight.grad, g)
    rule.step(x, y)
    assert not torch.equal(rule.chains[0], chain)  # the chain went on from where it stopped
    with pytest.raises(ValueError, match="keep the batch size fixed"):
        rule.step(x[:4], y[:4])


def test_rbm_trains_sigmoid_units_only_and_classify_defaults_to_them(tiny, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="trains sigmoid hidden units"):
        learners.make("rbm", MLP([4, 3, 2], activation="tanh"))
    out = tmp_path / "r.json"
    assert classify(tiny, "--rule", "rbm", "--epochs", "30", "--lr", "0.02", "--json", str(out)) == 0
    r = json.loads(out.read_text())
    assert r["activation"] == "sigmoid" and r["test_error"] < 0.2
    assert classify(tiny, "--rule", "rbm", "--activation", "tanh", "--epochs", "1") == 2

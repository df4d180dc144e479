"""Restricted Boltzmann machines trained by contrastive divergence (Hinton 2002): the free energy
and the exact log-likelihood gradient of a tiny RBM (4 visible, 3 hidden units) by enumerating
all 2⁷ joint states, against ``tncn.learners.rbm``; and its likelihood monitors (exact log Z, AIS
of Salakhutdinov & Murray 2008, the pseudo-likelihood, ``RBM.monitor``) against the same
enumeration of joint states."""
from __future__ import annotations

import itertools
import json

import pytest
import torch

from test_classify_cli import classify, tiny  # noqa: F401  (tiny: the fixture of a tiny IDX folder)
from tncn import learners
from tncn.learners import rbm
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
    assert classify(tiny, "--rule", "rbm", "--epochs", "30", "--lr", "0.02", "--json", str(out),
                    "--out", str(tmp_path / "run")) == 0
    assert (tmp_path / "run" / "reconstructions.png").read_bytes()[:4] == b"\x89PNG"
    r = json.loads(out.read_text())
    assert r["activation"] == "sigmoid" and r["test_error"] < 0.2
    assert r["rule_measures"]["pseudo_log_likelihood"] < 0 and "free_energy" in r["rule_measures"]
    assert classify(tiny, "--rule", "rbm", "--activation", "tanh", "--epochs", "1") == 2


def test_inputs_outside_zero_one_are_refused(tiny, capsys):  # noqa: F811
    with pytest.raises(ValueError, match=r"inputs in \[0, 1\]"):
        learners.make("rbm", MLP([2, 3, 2], activation="sigmoid")).prepare(torch.tensor([[0.5, -0.2]]))
    assert classify(tiny, "--rule", "rbm", "--center", "--epochs", "1") == 2   # centred images go below 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do not centre them" in err[0]


def test_visible_biases_start_at_the_log_base_rates():
    rbm = learners.make("rbm", MLP([4, 3, 2], activation="sigmoid"))
    x = torch.tensor([[0.0, 1.0, 0.5, 1.0], [0.0, 1.0, 0.3, 0.0]])
    rbm.prepare(x)
    p = torch.tensor([0.01, 0.99, 0.4, 0.5])  # pixel means, clipped to [0.01, 0.99]
    torch.testing.assert_close(rbm.visible_bias[0].detach(), torch.log(p / (1 - p)))


def _random_rbm(n_v, n_h, seed, std=1.5):
    g = torch.Generator().manual_seed(seed)
    return (std * torch.randn(n_v, n_h, generator=g, dtype=torch.float64),
            torch.randn(n_h, generator=g, dtype=torch.float64), torch.randn(n_v, generator=g, dtype=torch.float64))


def _joint_log_p(W, c, b):
    """log p(v) for every visible state (rows of ``_states(n_v)``) and log Z, summing exp(-E(v, h))
    over all joint states."""
    V, H = _states(W.shape[0]), _states(W.shape[1])
    neg_e = -_energy(V[:, None, :].expand(-1, len(H), -1), H[None].expand(len(V), -1, -1), W, c, b)
    log_z = torch.logsumexp(neg_e.flatten(), 0)
    return torch.logsumexp(neg_e, 1) - log_z, log_z


def _index(v):
    """The row of each binary ``v`` in ``_states(n)``."""
    return (v.long() * 2 ** torch.arange(v.shape[1] - 1, -1, -1)).sum(1)


def _pseudo_ll_by_enumeration(W, c, b, data):
    """Σ_i log p(v_i | v_-i) = Σ_i log p(v) / (p(v) + p(v with v_i flipped)) per row, from the joint sums."""
    log_p, _ = _joint_log_p(W, c, b)
    terms = []
    for i in range(W.shape[0]):
        flipped = data.clone()
        flipped[:, i] = 1 - flipped[:, i]
        own, other = log_p[_index(data)], log_p[_index(flipped)]
        terms.append(own - torch.logaddexp(own, other))
    return torch.stack(terms, 1)  # [rows, n_v]


@pytest.mark.parametrize("n_v, n_h", [(6, 3), (3, 6)])  # enumerates the hidden, then the visible states
def test_log_partition_exact_is_the_sum_over_all_joint_states(n_v, n_h):
    W, c, b = _random_rbm(n_v, n_h, seed=n_v)
    torch.testing.assert_close(rbm.log_partition_exact(W, c, b), _joint_log_p(W, c, b)[1])
    with pytest.raises(ValueError, match="at most 20"):
        rbm.log_partition_exact(torch.zeros(21, 21), torch.zeros(21), torch.zeros(21))


def test_ais_estimates_the_exact_log_partition_within_its_interval():
    W, c, b = _random_rbm(8, 3, seed=1)
    exact = float(_joint_log_p(W, c, b)[1])
    data = (torch.rand(50, 8, generator=torch.Generator().manual_seed(0)) < 0.4).double()
    z = rbm.log_partition_ais(W, c, b, rbm.base_rate_bias(data), rbm.linear_betas(2000), chains=100, seed=0)
    assert abs(z.log_z - exact) < 0.03
    assert z.low < exact < z.high and z.high - z.low < 0.2
    assert rbm.log_partition_ais(W, c, b, rbm.base_rate_bias(data), rbm.linear_betas(2000), seed=0) == z  # seeded
    with pytest.raises(ValueError, match="rising from 0 to 1"):
        rbm.log_partition_ais(W, c, b, torch.zeros(8), torch.tensor([0.0, 0.5]))


def test_ais_error_shrinks_with_more_temperatures():
    W, c, b = _random_rbm(6, 6, seed=5)
    exact = float(_joint_log_p(W, c, b)[1])
    base = torch.zeros(6, dtype=torch.float64)

    def error(steps, seed):
        return abs(rbm.log_partition_ais(W, c, b, base, rbm.linear_betas(steps), chains=100, seed=seed).log_z - exact)

    errors = [sum(error(steps, seed) for seed in range(6)) / 6 for steps in (3, 30, 300)]  # measured: 0.13, 0.034, 0.008
    assert errors[0] > 2 * errors[1] > 4 * errors[2] and errors[2] < 0.02, errors


def test_pseudo_likelihood_and_log_likelihood_match_the_enumeration():
    W, c, b = _random_rbm(5, 3, seed=3)
    data = _states(5)[[0, 3, 7, 12, 21, 30, 31]]
    by_enumeration = _pseudo_ll_by_enumeration(W, c, b, data)
    torch.testing.assert_close(rbm.pseudo_likelihood(data, W, c, b), by_enumeration.sum(1).mean())
    log_p, log_z = _joint_log_p(W, c, b)
    torch.testing.assert_close(rbm.log_likelihood(data, W, c, b, float(log_z)), log_p[_index(data)].mean())
    # the stochastic estimate (one unit per row, times n_v) is unbiased: within 4 standard errors
    rows = data.repeat(3000, 1)
    estimate = float(rbm.pseudo_likelihood(rows, W, c, b, stochastic=True, seed=0))
    se = float((5 * by_enumeration).var(unbiased=False)) ** 0.5 / len(rows) ** 0.5
    exact = float(by_enumeration.sum(1).mean())
    assert abs(estimate - exact) < 4 * se and estimate != exact
    with pytest.raises(ValueError, match="binarise"):
        rbm.pseudo_likelihood(data * 0.5, W, c, b)


def test_monitor_reports_the_binarised_rows_free_energy_pseudo_and_log_likelihood():
    net, rule = _tiny()
    W, c, b = net.layers[0].weight.detach(), net.layers[0].bias.detach(), rule.visible_bias[0].detach()
    x = torch.rand(40, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    v = (x > 0.5).double()
    log_p, log_z = _joint_log_p(W, c, b)
    m = rule.monitor(x, ais=True, betas=rbm.linear_betas(2000))
    free = -torch.logsumexp(-_energy(v[:, None, :].expand(-1, 8, -1), _states(3)[None].expand(40, -1, -1), W, c, b), 1)
    assert m["free_energy"] == pytest.approx(float(free.mean()), abs=1e-12)
    pseudo = _pseudo_ll_by_enumeration(W, c, b, v).sum(1).mean()
    assert m["pseudo_log_likelihood"] == pytest.approx(float(pseudo), abs=1e-12)
    assert m["log_z"] == pytest.approx(float(log_z), abs=0.03) and m["log_z_low"] < m["log_z"] < m["log_z_high"]
    assert m["log_likelihood"] == pytest.approx(float(log_p[_index(v)].mean()), abs=0.03)
    assert m["log_likelihood"] == pytest.approx(-m["free_energy"] - m["log_z"], abs=1e-12)
    assert m["log_z"] == max(m["log_z_data_base"], m["log_z_visible_base"])
    assert rule.monitor(v) == {k: m[k] for k in ("free_energy", "pseudo_log_likelihood")}  # x was binarised at 0.5


def test_monitor_finds_the_mode_that_ais_from_the_data_base_rate_misses():
    """Hidden units that switch every pixel off (W = -3, c = 8, b_v = 0), and data of nearly blank
    rows: chains from the data's base rate stay with h on, v = 0 (log Z ≈ 24) and miss h = 0 with
    noise images, which holds e^27.7 (the mode CD's chains never visit)."""
    net = MLP([40, 3, 2], activation="sigmoid").double()
    rule = learners.make("rbm", net).double()
    with torch.no_grad():
        net.layers[0].weight.fill_(-3.0)
        net.layers[0].bias.fill_(8.0)
    W, c, b = net.layers[0].weight.detach(), net.layers[0].bias.detach(), rule.visible_bias[0].detach()
    H = _states(3)
    exact = float(torch.logsumexp(H @ c + torch.nn.functional.softplus(H @ W.T + b).sum(1), 0))  # v summed out
    x = torch.zeros(20, 40, dtype=torch.float64)
    x[:, :2] = 1
    m = rule.monitor(x, ais=True, betas=rbm.linear_betas(1000))
    assert m["log_z_data_base"] < exact - 3
    assert m["log_z"] == pytest.approx(exact, abs=0.05)

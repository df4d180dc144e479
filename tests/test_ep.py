"""Equilibrium propagation (Scellier & Bengio 2017) and contrastive Hebbian learning (Movellan
1991): the EP estimate against the implicit gradient from a Hessian solve at the free fixed point,
the energy's descent, the nudge's one-layer-per-step reach, CHL's delta rule, a NumPy port of the
official code's update, persistent particles, per-layer rates and the command line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tncn import learners
from tncn.learners.ep import ContrastiveHebbian, EquilibriumPropagation, Settler, energy, output_cost
from tncn.mlp import MLP
from test_classify_cli import classify, tiny  # noqa: F401


def _net(sizes, act="sigmoid", seed=1):
    return MLP(sizes, activation=act, generator=torch.Generator().manual_seed(seed)).double()


def _batch(n_in, classes=3, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, n_in, generator=g, dtype=torch.float64), torch.arange(batch) % classes


@torch.no_grad()
def _relaxed(net, x, eps=0.5):
    settler = Settler(net, x, eps)
    s, _ = settler.relax(settler.feedforward(), 100000, 1e-14)
    return settler, s


def _implicit_gradient(net, x, y):
    """d mean C(s*)/dθ at the free fixed point s*: −λᵀ ∂²E/∂s∂θ with H λ = ∂C/∂s (dense Hessian)."""
    _, s = _relaxed(net, x)
    widths, batch = [t.shape[1] for t in s], len(x)
    target = torch.nn.functional.one_hot(y, net.sizes[-1]).double()

    def states(v):
        return list(v.reshape(batch, -1).split(widths, 1))

    def total_energy(v):
        return energy(net, x, states(v)).sum()

    v0 = torch.cat(s, 1).reshape(-1)
    hessian = torch.autograd.functional.hessian(total_energy, v0)
    v = v0.clone().requires_grad_(True)
    assert torch.autograd.grad(total_energy(v), v)[0].abs().max() < 1e-10  # a fixed point
    dc = torch.autograd.grad(output_cost(net, states(v)[-1], target).sum(), v)[0]
    lam = torch.linalg.solve(hessian, dc)
    de = torch.autograd.grad(total_energy(v), v, create_graph=True)[0]
    grads = torch.autograd.grad((de * lam).sum(), list(net.parameters()))
    return torch.cat([-g.reshape(-1) / batch for g in grads])


@pytest.mark.parametrize("estimator, ratio", [("one-sided", 2.0), ("symmetric", 4.0)])
def test_ep_approaches_the_implicit_gradient_as_beta_shrinks(estimator, ratio):
    net = _net([5, 4, 4, 3])
    x, y = _batch(5)
    true = _implicit_gradient(net, x, y)
    errors = []
    for beta in (0.1, 0.05, 0.025):
        ep = EquilibriumPropagation(net, beta=beta, estimator=estimator, free_steps=100000,
                                    nudged_steps=100000, tolerance=1e-14)
        ep.step(x, y)
        got = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        errors.append(float((got - true).norm() / true.norm()))
    assert errors[0] < 0.1
    for a, b in zip(errors, errors[1:]):
        assert a / b == pytest.approx(ratio, rel=0.05)  # bias O(beta) one-sided, O(beta^2) symmetric


@pytest.mark.parametrize("act", ["hard_sigmoid", "sigmoid", "tanh"])
def test_energy_decreases_monotonically_and_the_fixed_point_is_one(act):
    net = _net([6, 5, 5, 3], act)
    for p in net.parameters():
        p.data.mul_(2.0)  # strong enough that the units leave the linear range and the clip binds
    x, _ = _batch(6, batch=4)
    with torch.no_grad():
        settler = Settler(net, x, 0.1)
        s = [torch.zeros_like(t) for t in settler.feedforward()]
        energies = [energy(net, x, s)]
        for _ in range(300):
            s, _ = settler.step(s)
            energies.append(energy(net, x, s))
        e = torch.stack(energies)
        assert (e[1:] <= e[:-1] + 1e-12).all()
        assert e[-1].sum() < e[0].sum() - 0.1
        s, _ = settler.relax(s, 100000, 1e-14)
        again, moved = settler.step(s)
    assert moved < 1e-12
    if act == "hard_sigmoid":  # s = clip(s − ∂E/∂s): the projected fixed point
        drive = [net.layers[0].pre(x) + s[1] @ net.layers[1].weight.T,
                 net.layers[1].pre(s[0]) + s[2] @ net.layers[2].weight.T, net.layers[2].pre(s[1])]
        for sk, d in zip(s, drive):
            torch.testing.assert_close(sk, d.clamp(0, 1), atol=1e-8, rtol=0)


@pytest.mark.parametrize("act", ["hard_sigmoid", "sigmoid"])
def test_k_nudged_steps_leave_the_layers_below_l_minus_k_unchanged(act):
    net = _net([6, 5, 5, 5, 4], act)
    for p in net.parameters():
        p.data.mul_(0.5)  # units inside the clip's linear range, where the nudge can pass
    x, y = _batch(6, classes=4, batch=5)
    target = torch.nn.functional.one_hot(y, 4).double()
    settler, s0 = _relaxed(net, x)
    depth = len(s0)
    for k in range(1, depth):
        with torch.no_grad():
            nudged, _ = settler.relax(s0, k, 1e-30, beta=1.0, target=target)
            free, _ = settler.relax(s0, k, 1e-30)  # s0 is a fixed point to 1e-14, not to the bit
        for layer in range(depth - k):
            assert torch.equal(nudged[layer], free[layer]), (k, layer)
            torch.testing.assert_close(nudged[layer], s0[layer], atol=1e-12, rtol=0)
        assert (nudged[depth - k] - s0[depth - k]).abs().max() > 1e-6, k


def test_chl_without_hidden_units_is_the_delta_rule():
    net = MLP([5, 3], generator=torch.Generator().manual_seed(0)).double()
    for p in net.parameters():
        p.data.mul_(0.1)
    net.layers[0].bias.data.fill_(0.5)
    x, y = _batch(5, batch=6)
    chl = ContrastiveHebbian(net)
    chl.step(x, y)
    out = (x @ net.layers[0].weight + net.layers[0].bias).detach().clamp(0, 1)
    assert ((out > 0) & (out < 1)).all()
    error = torch.nn.functional.one_hot(y, 3).double() - out
    torch.testing.assert_close(net.layers[0].weight.grad, -(x.T @ error) / len(x))
    torch.testing.assert_close(net.layers[0].bias.grad, -error.mean(0))


def _official_update(x, start, weights, biases, y, eps, beta, n_neg, n_pos):
    """A NumPy port of the official Theano code's minibatch update (model.py): Jacobi steps of
    s ← clip((1 − ε)s + ε·drive) (and −2εβ(s_L − y) at the output when nudged); ΔW/α."""
    def run(s, steps, b):
        for _ in range(steps):
            r = [x] + s
            new = []
            for k in range(len(s)):
                d = r[k] @ weights[k] + biases[k]
                if k + 1 < len(s):
                    d = d + s[k + 1] @ weights[k + 1].T
                nk = (1 - eps) * s[k] + eps * d
                if k == len(s) - 1:
                    nk = nk - eps * 2 * b * (s[k] - y)
                new.append(np.clip(nk, 0, 1))
            s = new
        return s
    free = run(start, n_neg, 0.0)
    nudged = run(free, n_pos, beta)
    rf, rn = [x] + free, [x] + nudged
    dw = [(rn[k].T @ rn[k + 1] - rf[k].T @ rf[k + 1]) / (beta * len(x)) for k in range(len(weights))]
    db = [(rn[k + 1] - rf[k + 1]).mean(0) / beta for k in range(len(weights))]
    return free, dw, db


def test_one_minibatch_update_matches_a_port_of_the_official_code():
    net = _net([8, 6, 4], "hard_sigmoid", seed=3)
    x, y = _batch(8, classes=4, batch=5)
    ep = EquilibriumPropagation(net, beta=0.5, estimator="one-sided", free_steps=20, nudged_steps=4,
                                tolerance=1e-30)
    index = torch.arange(5)
    g = np.random.default_rng(0)
    start = [g.uniform(0, 1, (5, 6)), g.uniform(0, 1, (5, 4))]
    ep.step(x, y, index=index)  # allocates the particles; now set them to the official start
    ep.particles[index] = torch.from_numpy(np.concatenate(start, 1))
    ep.step(x, y, index=index)
    ws = [layer.weight.detach().numpy() for layer in net.layers]
    bs = [layer.bias.detach().numpy() for layer in net.layers]
    free, dw, db = _official_update(x.numpy(), start, ws, bs, np.eye(4)[y.numpy()], 0.5, 0.5, 20, 4)
    for layer, w, b in zip(net.layers, dw, db):
        np.testing.assert_allclose(layer.weight.grad.numpy(), -w, atol=1e-12)
        np.testing.assert_allclose(layer.bias.grad.numpy(), -b, atol=1e-12)
    np.testing.assert_allclose(ep.particles[index].numpy(), np.concatenate(free, 1), atol=1e-12)


def test_particles_persist_by_example_and_the_second_visit_continues():
    net = _net([6, 5, 3], "hard_sigmoid")
    x, y = _batch(6, batch=4)
    ep = EquilibriumPropagation(net, free_steps=1, tolerance=1e-30)
    ep.step(x[:2], y[:2], index=torch.tensor([7, 2]))
    ep.step(x, y, index=torch.tensor([7, 2, 0, 1]))
    settler = Settler(net, x, 0.5)
    with torch.no_grad():
        once, _ = settler.relax(settler.feedforward(), 1, 1e-30)
        twice, _ = settler.relax(once, 1, 1e-30)
    stored = ep.particles[torch.tensor([7, 2, 0, 1])]
    torch.testing.assert_close(stored[:2], torch.cat(twice, 1)[:2])   # seen before: two steps in all
    torch.testing.assert_close(stored[2:], torch.cat(once, 1)[2:])    # first visit: one step
    assert ep.visited.tolist() == [True, True, True, False, False, False, False, True]
    assert ep.measure()["free_steps_per_batch"] == 1


def test_per_layer_rates_become_parameter_groups_and_default_nudge_is_two_per_layer():
    net = _net([6, 5, 5, 3], "hard_sigmoid")
    ep = learners.make("ep", net, lr_scale=[1, 0.25, 0.0625])
    assert ep.nudged_steps == 6
    opt = torch.optim.SGD(ep.param_groups(0.4), lr=0.4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.4, 0.1, 0.025])
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2, 2]
    with pytest.raises(ValueError, match="one factor per weight layer"):
        learners.make("ep", net, lr_scale=[1, 0.5])


@pytest.mark.parametrize("act", ["relu", "lwta", "sign", "identity"])
def test_units_that_cannot_settle_are_refused(act):
    with pytest.raises(ValueError, match="hard_sigmoid or sigmoid or tanh"):
        learners.make("ep", MLP([6, 4, 3], activation=act))


@pytest.mark.parametrize("rule", ["ep", "chl"])
def test_classify_trains_by_settling(tiny, tmp_path, rule):  # noqa: F811
    out = tmp_path / "r.json"
    assert classify(tiny, "--rule", rule, "--hidden", "24", "--epochs", "5", "--json", str(out),
                    "--embedding", str(tmp_path / "e.png")) == 0
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"   # the settled top hidden layer
    r = json.loads(out.read_text())
    assert r["activation"] == "hard_sigmoid" and r["test_error"] < 0.2  # chance is 2/3
    assert r["rule_measures"]["free_steps_per_batch"] >= 1


def test_classify_refuses_what_settling_rules_cannot_do(tiny, capsys):  # noqa: F811
    for extra, message in ((["--activation", "relu"], "hard_sigmoid or sigmoid or tanh"),
                           (["--angles", "2"], "backprop"), (["--loss", "mse"], "own cost")):
        assert classify(tiny, "--rule", "ep", "--epochs", "1", *extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_random_signs_repeat_from_the_state_dict():
    a = EquilibriumPropagation(_net([6, 5, 3], "hard_sigmoid"), estimator="random-sign", seed=3)
    b = EquilibriumPropagation(_net([6, 5, 3], "hard_sigmoid"), estimator="random-sign", seed=9)

    def draws(ep):
        return torch.rand(8, generator=ep._sign_stream())

    assert not torch.equal(draws(a), draws(b))
    b.load_state_dict(a.state_dict())
    a = EquilibriumPropagation(_net([6, 5, 3], "hard_sigmoid"), estimator="random-sign", seed=3)
    assert torch.equal(draws(a), draws(b))  # the loaded stream restarts from the saved seed

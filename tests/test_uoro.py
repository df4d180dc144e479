"""UORO (tncn.temporal.uoro) against independent computations: RTRL's exact influence as the mean
of many streams' rank-one estimates, one step against the update written out from explicit
Jacobians (autograd), the tangent against a finite difference and the vector-Jacobian product
against autograd, and learning a repeating pattern. Float64 where exactness is checked."""
from __future__ import annotations

import math

import pytest
import torch

from sequences.batching import Batch
from tncn.temporal import build_learner, uoro
from tncn.temporal.online import forward_step, recurrent_params, write
from tncn.temporal.rtrl import RTRLTrace
from tncn.temporal.uoro import EPS, UOROTrace

V = 4


def _learner(hidden, frames=False, estimator="stream", seed=0):
    learner = build_learner("uoro", {"hidden": hidden, "estimator": estimator}, V, seed=seed, frames=frames)
    learner.model.double()
    return learner


def _inputs(T, B, frames, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(T, B, V, generator=gen).double() if frames else torch.randint(0, V, (T, B), generator=gen)


def _params(model):
    return [p for _, p in recurrent_params(model)]


def _step_map(model, x, m, h):
    """s_t = F(s_{t-1}) for one row, the state flattened: what autograd differentiates."""
    def f(s):
        news, _ = forward_step(model, list(torch.split(s.unsqueeze(0), [t.shape[1] for t in h], 1)), x, m)
        return torch.cat(news, 1)[0]
    return f


def _jacobians(model, x, m, h):
    """Per row b: J_b = ∂s_t/∂s_{t-1} [S, S] and K_b = ∂s_t/∂θ [S, P] (s_{t-1} fixed), by autograd."""
    Js, Ks = [], []
    params = _params(model)
    for b in range(len(m)):
        hb = [t[b:b + 1] for t in h]
        s = torch.cat(hb, 1)[0]
        Js.append(torch.autograd.functional.jacobian(_step_map(model, x[b:b + 1], m[b:b + 1], hb), s))
        with torch.enable_grad():
            out = torch.cat(forward_step(model, hb, x[b:b + 1], m[b:b + 1])[0], 1)[0]
            rows = []
            for i in range(len(out)):
                grads = torch.autograd.grad(out[i], params, retain_graph=True, allow_unused=True)
                rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                       for g, p in zip(grads, params)]))
        Ks.append(torch.stack(rows))
    return Js, Ks


def _padded_step(model, frames, B=3, seed=1):
    """A mid-sequence state and one step on it, row 1 padded (mask 0)."""
    gen = torch.Generator().manual_seed(seed)
    h = [torch.randn(B, k, generator=gen).double().tanh() for k in model.hidden]
    x = _inputs(1, B, frames, seed)[0]
    m = torch.ones(B).double()
    m[1] = 0.0
    return h, x, m


# --------------------------------------------------------------------------- unbiased

def _influence_error(hidden, frames, N, T=6):
    """‖mean over N identical streams of s̃ θ̃ᵀ − ∂s_T/∂θ‖ / ‖∂s_T/∂θ‖, RTRL's M giving the latter."""
    learner = _learner(hidden, frames)
    model = learner.model
    xs = _inputs(T, 1, frames)
    est, exact = UOROTrace(model, N, learner), RTRLTrace(model, 1, learner)
    h = [torch.zeros(N, k).double() for k in hidden]
    h1 = [torch.zeros(1, k).double() for k in hidden]
    with torch.no_grad():
        for t in range(T):
            x = xs[t].expand(N, *xs.shape[2:])
            h, step = forward_step(model, h, x, torch.ones(N), slopes=True)
            est.advance(step)
            h1, step = forward_step(model, h1, xs[t], torch.ones(1), slopes=True)
            exact.advance(step)
    P = est.theta.shape[1]
    M = torch.cat([torch.nn.functional.pad(m, (0, P - m.shape[1])) for m in exact.influence(0)])  # [S, P]
    mean = torch.einsum("bi,bp->ip", torch.cat(est.s, 1), est.theta) / N
    return float((mean - M).norm() / M.norm())


@pytest.mark.parametrize("hidden, frames", [([4], False), ([4, 3], True)])
def test_the_mean_estimate_is_rtrls_influence_with_error_falling_as_one_over_root_n(hidden, frames):
    few, many = _influence_error(hidden, frames, 1_000), _influence_error(hidden, frames, 16_000)
    assert few < 0.25 and many < 0.5 * few and many < 0.06  # 1/√16 = 0.25 of it expected


# --------------------------------------------------------------------------- one step by hand

@pytest.mark.parametrize("estimator", ["stream", "joint"])
def test_one_step_with_fixed_signs_is_the_update_written_out(monkeypatch, estimator):
    hidden = [3, 2]
    learner = _learner(hidden, estimator=estimator)
    model, B = learner.model, 3
    h, x, m = _padded_step(model, frames=False, B=B)
    R = B if estimator == "stream" else 1
    gen = torch.Generator().manual_seed(7)
    P = sum(p.numel() for p in _params(model))
    s0, theta0 = torch.randn(B, sum(hidden), generator=gen).double(), torch.randn(R, P, generator=gen).double()
    nu = torch.randint(0, 2, (B, sum(hidden)), generator=gen).double() * 2 - 1
    trace = UOROTrace(model, B, learner)
    trace.load({"s": list(torch.split(s0.clone(), hidden, 1)), "theta": theta0.clone()})

    # the gradient from this trace: Σ_b (q_b · s̃^L_b) θ̃_b (joint: one θ̃ for all rows)
    q = torch.randn(B, hidden[-1], generator=gen).double()
    trace.gradient(q)
    c = (q * s0[:, -hidden[-1]:]).sum(1)
    expected = c @ theta0 if R == B else c.sum() * theta0[0]
    assert torch.allclose(torch.cat([p.grad.reshape(-1) for p in _params(model)]), expected, atol=1e-12)

    monkeypatch.setattr(uoro, "signs", lambda generator, shape, like: nu.clone())
    with torch.no_grad():
        _, step = forward_step(model, h, x, m, slopes=True)
        trace.advance(step)
    Js, Ks = _jacobians(model, x, m, h)
    kept = m.bool()
    if estimator == "stream":
        for b in range(B):
            if not kept[b]:  # padding keeps its estimate
                assert torch.equal(torch.cat([t[b] for t in trace.s]), s0[b]) and torch.equal(trace.theta[b], theta0[b])
                continue
            Js_b, vK = Js[b] @ s0[b], nu[b] @ Ks[b]
            rho0 = math.sqrt((theta0[b].norm() + EPS) / (Js_b.norm() + EPS))
            rho1 = math.sqrt((vK.norm() + EPS) / (nu[b].norm() + EPS))
            assert torch.allclose(torch.cat([t[b] for t in trace.s]), rho0 * Js_b + rho1 * nu[b], atol=1e-12)
            assert torch.allclose(trace.theta[b], theta0[b] / rho0 + vK / rho1, atol=1e-12)
    else:  # one state of B·S floats: a padded row's ν is zero and its J the identity
        nu = nu * kept.double().unsqueeze(1)
        Js_all = torch.stack([J @ s for J, s in zip(Js, s0)])
        vK = sum(v @ K for v, K in zip(nu, Ks))
        assert torch.allclose(Js[1], torch.eye(sum(hidden), dtype=torch.float64))
        rho0 = math.sqrt((theta0.norm() + EPS) / (Js_all.norm() + EPS))
        rho1 = math.sqrt((vK.norm() + EPS) / (nu.norm() + EPS))
        assert torch.allclose(torch.cat(trace.s, 1), rho0 * Js_all + rho1 * nu, atol=1e-12)
        assert torch.allclose(trace.theta[0], theta0[0] / rho0 + vK / rho1, atol=1e-12)


# --------------------------------------------------------------------------- the two products

@pytest.mark.parametrize("frames", [False, True])
def test_the_tangent_is_a_finite_difference_of_the_step(frames):
    hidden = [3, 2]
    model = _learner(hidden, frames).model
    h, x, m = _padded_step(model, frames)
    gen = torch.Generator().manual_seed(3)
    d = [torch.randn(len(m), k, generator=gen).double() for k in hidden]
    eps = 1e-5
    with torch.no_grad():
        _, step = forward_step(model, h, x, m, slopes=True)
        up, _ = forward_step(model, [a + eps * b for a, b in zip(h, d)], x, m)
        down, _ = forward_step(model, [a - eps * b for a, b in zip(h, d)], x, m)
        got = uoro.tangent(model, step, d)
    for g, u, w in zip(got, up, down):
        assert torch.allclose(g, (u - w) / (2 * eps), atol=1e-8)


@pytest.mark.parametrize("frames", [False, True])
def test_the_vector_jacobian_product_is_autograds(frames):
    hidden = [3, 2]
    model = _learner(hidden, frames).model
    h, x, m = _padded_step(model, frames)
    B = len(m)
    gen = torch.Generator().manual_seed(4)
    nu = [torch.randn(B, k, generator=gen).double() for k in hidden]
    with torch.no_grad():
        _, step = forward_step(model, h, x, m, slopes=True)
        per_stream, joint = uoro.vjp(model, step, nu, B), uoro.vjp(model, step, nu, 1)
    params = _params(model)
    for b in range(B):
        with torch.enable_grad():
            news, _ = forward_step(model, [t[b:b + 1] for t in h], x[b:b + 1], m[b:b + 1])
            grads = torch.autograd.grad(sum((n * v[b:b + 1]).sum() for n, v in zip(news, nu)), params)
        assert torch.allclose(per_stream[b], torch.cat([g.reshape(-1) for g in grads]), atol=1e-12)
    assert per_stream[1].abs().max() == 0  # the padded row's state does not move with θ
    assert torch.allclose(joint[0], per_stream.sum(0), atol=1e-12)


# --------------------------------------------------------------------------- the two estimators

def test_the_joint_estimator_runs_and_differs_from_the_per_stream_one():
    x = _inputs(8, 3, frames=False)
    mask = torch.ones(8, 3).double()
    score = mask.bool().clone()
    score[0] = False
    grads = {}
    for estimator in ("stream", "joint"):
        grads[estimator] = _learner([5, 4], estimator=estimator).summed_gradient([Batch(x, mask, score, True)])
        assert all(torch.isfinite(g).all() for g in grads[estimator].values())
    a, b = grads["stream"], grads["joint"]
    assert torch.equal(a["head.weight"], b["head.weight"])  # the readout's gradient is exact in both
    assert not torch.allclose(a["inputs.0.weight"], b["inputs.0.weight"])
    assert not torch.allclose(a["recurrent.1.weight"], b["recurrent.1.weight"])


# --------------------------------------------------------------------------- learning

def _train_on_abc(monkeypatch, recurrent: bool) -> float:
    """Bits per symbol of the last two of eight segments (25 steps, batch 4) of "abcabc…"."""
    if not recurrent:  # the readout alone learns: the recurrent weights stay as drawn
        monkeypatch.setattr(UOROTrace, "gradient",
                            lambda self, q: write(self.params, [torch.zeros_like(p) for _, p in self.params]))
    learner = build_learner("uoro", {"hidden": [16], "lr": 1e-2}, 3, seed=0)
    T, B = 25, 4
    ids = torch.arange(8 * T + B).remainder(3)
    bits = []
    for k in range(8):
        x = torch.stack([ids[k * T + b:k * T + b + T] for b in range(B)], 1)
        mask = torch.ones(T, B)
        score = mask.bool().clone()
        score[0] = k > 0
        tally = learner.train_segment(Batch(x, mask, score, k == 0))
        bits.append(tally.total / tally.scored)
    return sum(bits[-2:]) / 2


def test_it_learns_a_repeating_pattern_and_its_recurrent_learning_helps(monkeypatch):
    trained = _train_on_abc(monkeypatch, recurrent=True)
    readout_only = _train_on_abc(monkeypatch, recurrent=False)
    assert trained < 0.1 * math.log2(3) and trained < 0.5 * readout_only

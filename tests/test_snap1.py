"""SnAp-1 (tncn.temporal.snap1) against independent computations: dense RTRL from autograd
Jacobians of the one-step function, masked to the one-step sparsity pattern after every step; exact
BPTT where SnAp-1 drops nothing (one layer, diagonal W_rec); and learning a repeating pattern."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from sequences.batching import Batch
from tncn.temporal import build_learner
from tncn.temporal.online import forward_step, recurrent_params
from tncn.temporal.snap1 import SnAp1Trace

V, D, T, B = 5, 6, 7, 3


def _learner(hidden, frames, **options):
    learner = build_learner("snap1", {"hidden": hidden, **options}, D if frames else V, seed=0, frames=frames)
    learner.model.double()
    return learner


def _batch(frames) -> Batch:
    """T steps of B streams from a reset, stream 1 padded over the last two steps."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(T, B, D, generator=gen).round().double() if frames else torch.randint(0, V, (T, B), generator=gen)
    mask = torch.ones(T, B, dtype=torch.float64)
    mask[-2:, 1] = 0.0
    x[-2:, 1] = 0
    score = mask.bool()
    score[0] = False
    return Batch(x, mask, score, True)


def _step_loss(model, top, x, score, frames):
    """ℓ_t of the readout of h^L_{t-1}: summed over the scored rows, divided by B."""
    logits = model.head.pre(top)
    if frames:
        nats = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
    else:
        nats = nn.functional.cross_entropy(logits, x, reduction="none")
    return (nats * score).sum() / B


class _OneStep(nn.Module):
    """s_t as a function of s_{t-1} (flat, [B, S]), through ``forward_step``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, s, x, m):
        return torch.cat(forward_step(self.model, list(torch.split(s, self.model.hidden, 1)), x, m)[0], 1)


def _pattern(model) -> torch.Tensor:
    """[S, P]: 1 where state unit s is the unit that parameter p feeds (W_in^l[j, m], b^l[m] and
    W_rec^l[j, m] feed unit m of layer l), θ flattened per layer as (W_in, b, W_rec)."""
    S = sum(model.hidden)
    cols, first = [], 0
    for l, h in enumerate(model.hidden):
        for _, p in recurrent_params(model)[3 * l:3 * l + 3]:
            unit = first + torch.arange(h).expand(p.shape)  # the fed unit is the last index
            cols.append(nn.functional.one_hot(unit.reshape(-1), S).T.double())
        first += h
    return torch.cat(cols, 1)


@pytest.mark.parametrize("frames", [False, True], ids=["tokens", "frames"])
@pytest.mark.parametrize("hidden", [[5], [4, 3]], ids=["L1", "L2"])
def test_equals_dense_rtrl_masked_to_the_sparsity_pattern_after_every_step(hidden, frames):
    learner = _learner(hidden, frames)
    model, batch = learner.model, _batch(frames)
    params = recurrent_params(model)
    names = [f"model.{n}" for n, _ in params]
    step_fn = _OneStep(model)
    pattern = _pattern(model)
    S, P = pattern.shape
    M = torch.zeros(B, S, P, dtype=torch.float64)  # the masked dense influence ∂s_t/∂θ
    trace = SnAp1Trace(model, B, learner)
    h = [torch.zeros(B, w, dtype=torch.float64) for w in hidden]  # s_{t-1}, with the graph of its step
    total = torch.zeros(P, dtype=torch.float64)
    worst = 0.0
    for t in range(T):
        x, m, score = batch.tokens[t], batch.mask[t], batch.score[t].double()
        if score.any():
            with torch.enable_grad():
                loss = _step_loss(model, h[-1], x, score, frames)
                q_full = torch.autograd.grad(loss, h, allow_unused=True)  # ∂ℓ_t/∂h^l_{t-1}, through the step
            q_full = torch.cat([torch.zeros(B, w, dtype=torch.float64) if g is None else g
                                for g, w in zip(q_full, hidden)], 1)
            expected = torch.einsum("bs,bsp->p", q_full, M)
            total += expected
            with torch.no_grad():
                trace.gradient(q_full[:, -hidden[-1]:])
            got = torch.cat([p.grad.reshape(-1) for _, p in params])
            worst = max(worst, float((got - expected).abs().max()))
            assert torch.allclose(got, expected, rtol=0, atol=1e-10)
        # dense: M_t = mask ⊙ (J_t M_{t-1} + I_t), J_t = ∂s_t/∂s_{t-1}, I_t = ∂s_t/∂θ
        s = torch.cat(h, 1).detach()

        def one_step(s, *ps):
            return functional_call(step_fn, dict(zip(names, ps)), (s, x, m))
        jac = torch.autograd.functional.jacobian(one_step, (s, *[p.detach() for _, p in params]))
        J = torch.diagonal(jac[0], dim1=0, dim2=2).permute(2, 0, 1)  # per stream [B, S, S]
        I = torch.cat([j.reshape(B, S, -1) for j in jac[1:]], 2)
        M = (J @ M + I) * pattern
        # SnAp-1
        with torch.no_grad():
            _, step = forward_step(model, [hh.detach() for hh in h], x, m, slopes=True)
            trace.advance(step)
        with torch.enable_grad():
            h = forward_step(model, [hh.detach().requires_grad_() for hh in h], x, m)[0]
        kept = (M * pattern).sum(1)  # [B, P]: the one kept entry of each parameter's column
        got = torch.cat([j.reshape(B, -1) for j in trace.J], 1)
        worst = max(worst, float((got - kept).abs().max()))
        assert torch.allclose(got, kept, rtol=0, atol=1e-10)
    assert float(M.abs().max()) > 0.1 and float(total.abs().max()) > 1e-3  # the comparison is not of zeros
    summed = learner.summed_gradient([batch])
    for (name, _), g in zip(params, torch.split(total, [p.numel() for _, p in params])):
        assert torch.allclose(summed[name].reshape(-1), g, rtol=0, atol=1e-10)
    print(f"SnAp-1 vs masked dense RTRL, hidden {hidden}, {'frames' if frames else 'tokens'}: {worst:.1e}")


@pytest.mark.parametrize("frames", [False, True], ids=["tokens", "frames"])
def test_one_layer_with_a_diagonal_recurrence_is_exact_bptt(frames):
    """Unit m's state then depends on no other unit's past, so the sparsity pattern drops nothing."""
    learner = _learner([5], frames)
    model, batch = learner.model, _batch(frames)
    with torch.no_grad():
        model.recurrent[0].weight.copy_(torch.diag(model.recurrent[0].weight.diagonal()))
    got = learner.summed_gradient([batch])
    x, score = batch.tokens, batch.score.double()
    model.zero_grad()
    with torch.enable_grad():
        _, _, outs, _ = model.trajectory(x[:-1])
        loss = sum(_step_loss(model, outs[-1][t - 1], x[t], score[t], frames) for t in range(1, T))
        loss.backward()
    worst = max(float((got[n] - p.grad).abs().max()) for n, p in model.named_parameters())
    assert worst < 1e-10 and float(model.inputs[0].weight.grad.abs().max()) > 1e-3
    print(f"SnAp-1 vs BPTT, one layer, diagonal W_rec, {'frames' if frames else 'tokens'}: {worst:.1e}")


def test_learns_a_repeating_pattern_online():
    """"abcabc...": 300 online steps take the loss far below the unigram entropy, log2(3) bits, and
    below what the readout learns alone in as many steps (about 0.19 bits with θ's gradient zeroed)."""
    learner = build_learner("snap1", {"hidden": [16], "lr": 1e-2}, 3, seed=0)
    streams = (torch.arange(301).unsqueeze(1) + torch.arange(4)) % 3  # [301, 4], each stream at its own phase
    means = []
    for k in range(15):
        x = streams[20 * k:20 * k + 21] if k == 0 else streams[20 * k + 1:20 * k + 21]
        score = torch.ones(x.shape, dtype=torch.bool)
        score[0] = k > 0
        means.append(learner.train_segment(Batch(x, torch.ones(x.shape), score, k == 0)).mean)
    assert means[-1] < 0.02 * math.log2(3), means

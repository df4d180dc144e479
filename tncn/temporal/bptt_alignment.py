"""How well a local, BPTT-free update lines up with the BPTT gradient on the same Elman network.

For an ``ElmanLM`` (``tncn.temporal.bptt``, one-hot input) and one batch of sequences ids [T, B]
with its score mask, run from a zero state: step t consumes u_t = ids[t] and its output
o_t = h^L_t W_out + b_out scores y_t = ids[t+1]. L is the mean cross-entropy over the scored
positions (N of them), and e_t = (softmax(o_t) - onehot(y_t)) s_t / N = ∂L/∂o_t.

- ``bptt_gradient``: ∂L/∂θ by autograd through the whole sequence, or truncated to windows of k
  steps (``window``; the state crosses windows without gradient, as in ``bptt_learner``).
- ``local_update``: credit assigned within each time step only (no error travels back in time):
    ``fa`` (feedback alignment, Lillicrap et al. 2016):  δ^L_t = f'(a^L_t) ⊙ (e_t B^{L+1}),
        δ^l_t = f'(a^l_t) ⊙ (δ^{l+1}_t B^{l+1});
    ``dfa`` (direct feedback alignment, Nøkland 2016):  δ^l_t = f'(a^l_t) ⊙ (e_t D^l);
    ``ptncn`` (P-TNCN-style targets, Ororbia et al. 2020, ``tncn.temporal.ptncn``; no f' needed):
        d^L_t = e_t B^{L+1}, d^l_t = ε^{l+1}_t B^{l+1}, y^l_t = f(a^l_t - β d^l_t), δ^l_t = ε^l_t = h^l_t - y^l_t;
  then ΔW_in^l = Σ_t x^{lᵀ}_t δ^l_t, Δb^l = Σ_t δ^l_t, ΔW_rec^l = Σ_t h^{lᵀ}_{t-1} δ^l_t, and the
  exact output update ΔW_out = Σ_t h^{Lᵀ}_t e_t, Δb_out = Σ_t e_t.
  Feedback ``random``: fixed N(0, σ²) matrices, σ the standard deviation of the forward weight they
  stand in for (B^{L+1} [V, H_L] for W_outᵀ, B^{l+1} [H_{l+1}, H_l] for W_in^{l+1}ᵀ, D^l [V, H_l]
  with W_out's σ); ``transpose``: B^{l+1} = that forward weight transposed (fa, ptncn). ``fa`` with
  ``transpose`` is exactly truncated BPTT with k = 1, the instantaneous gradient; for small β
  ``ptncn`` points per parameter as ``fa`` does (ε ≈ β f'(a) ⊙ d), but each layer down scales its
  update by another β, which changes the joint angles.
- ``alignment``: the angle (degrees, ``tncn.diagnostics.angle``) between each update and the full
  BPTT gradient, per parameter, over the recurrent layers' parameters and over all together.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from tncn.diagnostics import angle
from tncn.temporal.bptt import ElmanLM

Tensor = torch.Tensor
RULES = ("fa", "dfa", "ptncn")
FEEDBACK = ("random", "transpose")
DEFAULT_UPDATES = (("fa", "transpose"), ("fa", "random"), ("dfa", "random"), ("ptncn", "transpose"), ("ptncn", "random"))


def _check(model, ids: Tensor, score: Tensor) -> None:
    if not isinstance(model, ElmanLM):
        raise ValueError("the alignment diagnostic needs the Dense-built ElmanLM")
    if ids.dim() != 2 or ids.shape != score.shape or ids.shape[0] < 2:
        raise ValueError(f"expected ids and score of the same shape [T >= 2, B], got {tuple(ids.shape)} and {tuple(score.shape)}")
    if not bool(score[1:].any()):
        raise ValueError("nothing is scored after the first step")


def bptt_gradient(model: ElmanLM, ids: Tensor, score: Tensor, window: Optional[int] = None) -> dict:
    """∂L/∂θ (name -> tensor) by full BPTT, or truncated BPTT with windows of ``window`` steps."""
    _check(model, ids, score)
    u, y, s = ids[:-1], ids[1:], score[1:].to(model.head.weight.dtype)
    n = s.sum()
    names, params = zip(*model.named_parameters())
    total = [torch.zeros_like(p) for p in params]
    K, state = window or len(u), None
    for w in range(0, len(u), K):
        top, state = model(u[w:w + K], state)
        nats = nn.functional.cross_entropy(model.logits(top).reshape(-1, model.vocab), y[w:w + K].reshape(-1), reduction="none")
        loss = (nats * s[w:w + K].reshape(-1)).sum() / n
        for acc, g in zip(total, torch.autograd.grad(loss, params, allow_unused=True)):
            if g is not None:
                acc += g
        state = [h.detach() for h in state]
    return dict(zip(names, total))


def feedback_matrices(model: ElmanLM, rule: str, feedback: str, generator: Optional[torch.Generator] = None) -> list:
    """The matrices that carry errors down, index l for layer l (0-based): for fa/ptncn ``B[l]`` maps
    layer l+1's error (the output's for the top layer) to layer l; for dfa ``B[l]`` maps e_t to layer l."""
    if rule not in RULES or feedback not in FEEDBACK:
        raise ValueError(f"unknown update {rule!r} with {feedback!r} feedback; rules: {', '.join(RULES)}; "
                         f"feedback: {', '.join(FEEDBACK)}")
    if rule == "dfa" and feedback == "transpose" and len(model.hidden) > 1:
        raise ValueError("dfa's direct paths to lower layers have no forward weight to transpose")
    L, W_out = len(model.hidden), model.head.weight.detach()
    if rule == "dfa":  # D^l [V, H_l], at the scale of W_out (with one layer: B^{L+1}, fa's)
        if feedback == "transpose":
            return [W_out.T]
        return [torch.randn(model.vocab, h, generator=generator).to(W_out) * W_out.std() for h in model.hidden]
    forward = [model.inputs[l + 1].weight.detach() if l + 1 < L else W_out for l in range(L)]
    if feedback == "transpose":
        return [w.T for w in forward]
    return [torch.randn(w.T.shape, generator=generator).to(w) * w.std() for w in forward]


@torch.no_grad()
def local_update(model: ElmanLM, ids: Tensor, score: Tensor, rule: str, feedback: str = "random",
                 beta: float = 0.1, generator: Optional[torch.Generator] = None) -> dict:
    """The update (name -> tensor, the sign of a gradient) of ``rule`` with ``feedback`` on one batch."""
    _check(model, ids, score)
    if model.embed is not None:
        raise ValueError("the alignment diagnostic takes the one-hot Elman (input onehot)")
    B_ = feedback_matrices(model, rule, feedback, generator)
    u, y, s = ids[:-1], ids[1:], score[1:].to(model.head.weight.dtype)
    xs, pres, outs, h0 = model.trajectory(u)
    e = torch.softmax(model.logits(outs[-1]), dim=-1)
    e.scatter_add_(-1, y.unsqueeze(-1), -torch.ones_like(e[..., :1]))
    e *= (s / s.sum()).unsqueeze(-1)
    L = len(model.hidden)
    deltas = [None] * L
    for l in reversed(range(L)):
        act = model.inputs[l].act
        g = e @ B_[l] if rule == "dfa" or l == L - 1 else deltas[l + 1] @ B_[l]
        if rule == "ptncn":
            deltas[l] = outs[l] - act(pres[l] - beta * g)
        else:
            deltas[l] = act.backward(pres[l], outs[l], g)
    flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
    upd = {"head.weight": flat(outs[-1]).T @ flat(e), "head.bias": flat(e).sum(0)}
    for l in range(L):
        d = flat(deltas[l])
        if l == 0:
            upd["inputs.0.weight"] = torch.zeros_like(model.inputs[0].weight).index_add_(0, u.reshape(-1), d)
        else:
            upd[f"inputs.{l}.weight"] = flat(xs[l]).T @ d
        upd[f"inputs.{l}.bias"] = d.sum(0)
        h_prev = torch.cat([h0[l].unsqueeze(0), outs[l][:-1]])
        upd[f"recurrent.{l}.weight"] = flat(h_prev).T @ d
    return upd


def angles(update: dict, reference: dict) -> dict:
    """The angle between two updates per parameter, over the recurrent layers' parameters together
    (``hidden``: all but the output layer, whose update every rule gets exactly) and over all (``all``)."""
    def joint(keys):
        return angle(torch.cat([update[k].flatten() for k in keys]), torch.cat([reference[k].flatten() for k in keys]))
    out = {k: angle(update[k], reference[k]) for k in reference}
    out["hidden"] = joint([k for k in reference if not k.startswith("head.")])
    out["all"] = joint(list(reference))
    return out


def alignment(model: ElmanLM, ids: Tensor, score: Tensor, updates: Sequence[tuple] = DEFAULT_UPDATES,
              windows: Sequence[int] = (1, 10), beta: float = 0.1, seed: int = 0) -> list:
    """Rows ``{"update": name, <parameter>: degrees, ..., "hidden": ..., "all": ...}`` against full BPTT:
    truncated BPTT for each window, then each (rule, feedback) local update."""
    reference = bptt_gradient(model, ids, score)
    rows = [{"update": f"truncated BPTT, k = {k}", **angles(bptt_gradient(model, ids, score, k), reference)}
            for k in windows]
    for rule, feedback in updates:
        gen = torch.Generator().manual_seed(seed)
        upd = local_update(model, ids, score, rule, feedback, beta, gen)
        rows.append({"update": f"{rule}, {feedback} feedback", **angles(upd, reference)})
    return rows

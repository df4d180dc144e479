"""Unbiased online recurrent optimization: a random rank-one estimate of RTRL's influence, unbiased
(Tallec & Ollivier, "Unbiased Online Recurrent Optimization", ICLR 2018, arXiv 1702.05043).

The network and the per-step protocol are ``tncn.temporal.online``'s. With s_t = [h^1_t, ..., h^L_t]
the whole state (S = Σ_l H_l floats), s_t = F(s_{t-1}, x_t, θ), and θ flattened as in
``tncn.temporal.rtrl`` (per layer W_in, b, W_rec, row-major; P in all), UORO keeps per stream
s̃ [S] and θ̃ [P] with E[s̃_t θ̃_tᵀ] = ∂s_t/∂θ, the influence RTRL carries exactly. Per step, with
ν ∈ {±1}^S independent random signs, J_t = ∂s_t/∂s_{t-1} and ∂F/∂θ the immediate dependence of
s_t on θ (s_{t-1} fixed):

    s̃_t = ρ0 J_t s̃_{t-1} + ρ1 ν,   θ̃_t = θ̃_{t-1} / ρ0 + (ν ∂F/∂θ) / ρ1.

As E[ν] = 0 and E[ν νᵀ] = I, E[s̃_t θ̃_tᵀ] = J_t E[s̃_{t-1} θ̃_{t-1}ᵀ] + ∂F/∂θ: RTRL's recursion, for any
ρ0, ρ1 > 0. The variance-minimising ones (ε = 1e-7):

    ρ0 = √((‖θ̃_{t-1}‖ + ε) / (‖J_t s̃_{t-1}‖ + ε)),   ρ1 = √((‖ν ∂F/∂θ‖ + ε) / (‖ν‖ + ε)).

Both products run through the layer stack within the step, from the step's D^l = f′(a^l_t), in
the row layout a^l = x^l W_in^l + b^l + h^l_{t-1} W_rec^l (any number of layers L):

- the tangent J s̃, up the stack: ds^l = D^l ⊙ (s̃^l W_rec^l + ds^{l-1} W_in^l), ds^0 = 0 (the
  input does not depend on the state);
- ν ∂F/∂θ, down the stack: g^l = D^l ⊙ (ν^l + g^{l+1} W_in^{l+1 ᵀ}) (no g^{L+1}: layer l+1 reads
  h^l_t), and layer l's part is x^{lᵀ} g^l for W_in^l (the row x of g^1 for ids), g^l for b^l and
  h^{lᵀ}_{t-1} g^l for W_rec^l.

The step's gradient is ∂ℓ_t/∂θ ≈ Σ_b (q_t[b] · s̃^L_{t-1}[b]) θ̃_{t-1}[b] (q_t = ∂ℓ_t/∂h^L_{t-1}, s̃^L
the top layer's part of s̃), unbiased for fixed weights. s̃ and θ̃ start at zero at a reset.

``estimator``: ``stream`` keeps one estimate per stream as above; rows with mask 0 keep theirs.
``joint`` is the paper's batched variant: the batch state [B, S] is one state of B·S floats, with
one ν over all of it, one θ̃ [P], ρ0 and ρ1 from the norms over the whole batch, and the gradient
(Σ_b q_t[b] · s̃^L_{t-1}[b]) θ̃_{t-1}; fewer floats, more variance. There a padded row's ν is zero
and its J the identity (its state does not move), which keeps the estimate unbiased.

Memory is B (S + P) floats (``joint``: B·S + P), flat in sequence length, against RTRL's B·S·P.
A step costs about three forward steps: the step itself, the tangent and the vector-Jacobian
product (its outer products and the update of θ̃ touch the B·P floats of θ̃).
"""
from __future__ import annotations

import torch

from tncn.options import STR, Option
from tncn.temporal.online import OnlineLearner, Step, Trace, recurrent_params, write

Tensor = torch.Tensor
EPS = 1e-7
ESTIMATORS = ("stream", "joint")


def signs(generator: torch.Generator, shape: tuple, like: Tensor) -> Tensor:
    """Independent random signs ±1, drawn on the CPU from ``generator`` (a run repeats, and its
    random state is saved), in ``like``'s dtype and device."""
    bits = torch.randint(0, 2, shape, generator=generator)
    return (2 * bits - 1).to(device=like.device, dtype=like.dtype)


def tangent(model, step: Step, s: list) -> list:
    """J s̃: the tangent of the states after ``step`` from their tangent ``s`` before (per layer
    [B, H_l]); a row with keep 0 keeps its state, so its tangent too."""
    out = []
    for l, (layer, rec) in enumerate(zip(model.inputs, model.recurrent)):
        d = s[l] @ rec.weight
        if l:
            d += out[l - 1] @ layer.weight
        out.append(torch.where(step.keep, d * step.slope[l], s[l]))
    return out


def _outer(x: Tensor, g: Tensor, groups: int) -> Tensor:
    """Σ over the rows of each group of x[b]ᵀ g[b]: [groups, n_x, n_g]."""
    return torch.bmm(x.reshape(groups, -1, x.shape[1]).transpose(1, 2), g.reshape(groups, -1, g.shape[1]))


def vjp(model, step: Step, nu: list, groups: int) -> Tensor:
    """ν ∂F/∂θ for ``nu`` per layer [B, H_l] (zero on a row with keep 0: its state does not move
    with θ), summed over each of ``groups`` equal groups of rows (B: per stream, 1: the batch):
    [groups, P]."""
    B = nu[0].shape[0]
    parts, up = [], None
    for l in reversed(range(len(nu))):
        layer = model.inputs[l]
        u = nu[l] if up is None else nu[l] + up @ model.inputs[l + 1].weight.T
        g = u * step.slope[l] * step.keep
        x = step.inputs[l]
        if x.is_floating_point():
            w_in = _outer(x.to(g.dtype), g, groups)
        else:  # one-hot ids: g[b] goes to row x[b] of its group's W_in
            n_in = layer.weight.shape[0]
            group = torch.arange(B, device=g.device) // (B // groups)
            w_in = g.new_zeros(groups * n_in, g.shape[1]).index_add_(0, group * n_in + x, g)
        parts[:0] = [w_in.reshape(groups, -1), g.reshape(groups, -1, g.shape[1]).sum(1),
                     _outer(step.prev[l], g, groups).reshape(groups, -1)]
        up = g
    return torch.cat(parts, 1)


def _norms(parts: list, groups: int) -> Tensor:
    """The norm of each group of rows over all ``parts`` ([B, n] each): [groups]."""
    squares = sum(p.square().sum(1) for p in parts)
    return squares.view(groups, -1).sum(1).sqrt()


class UOROTrace(Trace):
    """s̃ per layer [B, H_l] and θ̃ [R, P] (R = B per stream, 1 joint)."""

    def __init__(self, model, batch: int, learner):
        super().__init__(model, batch, learner)
        self.params = recurrent_params(model)
        self.groups = batch if learner.options["estimator"] == "stream" else 1
        w = model.head.weight
        self.s = [torch.zeros(batch, rec.weight.shape[0], device=w.device, dtype=w.dtype) for rec in model.recurrent]
        self.theta = torch.zeros(self.groups, sum(p.numel() for _, p in self.params), device=w.device, dtype=w.dtype)

    def gradient(self, q: Tensor) -> None:
        c = (q * self.s[-1]).sum(1).view(self.groups, -1).sum(1)  # q · s̃^L per group
        write(self.params, torch.split(c @ self.theta, [p.numel() for _, p in self.params]))

    def advance(self, step: Step) -> None:
        R, per = self.groups, self.batch // self.groups
        widths = [s.shape[1] for s in self.s]
        nu = signs(self.learner.generator, (self.batch, sum(widths)), self.theta) * step.keep
        nu = list(torch.split(nu, widths, 1))
        ds = tangent(self.model, step, self.s)
        dtheta = vjp(self.model, step, nu, R)
        rho0 = ((self.theta.norm(dim=1) + EPS) / (_norms(ds, R) + EPS)).sqrt()
        rho1 = ((dtheta.norm(dim=1) + EPS) / (_norms(nu, R) + EPS)).sqrt()
        r0, r1 = rho0.repeat_interleave(per).unsqueeze(1), rho1.repeat_interleave(per).unsqueeze(1)
        s = [torch.addcmul(r1 * n, r0, d) for d, n in zip(ds, nu)]
        dtheta.div_(rho1.unsqueeze(1))
        if step.full or R == 1:  # in place: θ̃ is B·P floats
            self.theta.div_(rho0.unsqueeze(1)).add_(dtheta)
        else:  # per stream: padded rows keep their estimate
            s = [step.kept(new, old) for new, old in zip(s, self.s)]
            self.theta = step.kept(self.theta / rho0.unsqueeze(1) + dtheta, self.theta)
        self.s = s

    def state(self) -> dict:
        return {"s": list(self.s), "theta": self.theta}

    def load(self, state: dict) -> None:
        self.s, self.theta = list(state["s"]), state["theta"]


class UORO(OnlineLearner):
    """An Elman network trained online by unbiased online recurrent optimization."""

    name = "uoro"
    label = "UORO"
    trace = UOROTrace
    # Adam moves every weight by about lr a step whatever its gradient's noise: at the readout's
    # lr the estimate's noise random-walks θ, hence θ at a tenth of it (validation BPC after 100
    # steps on the embedded corpus, H = 128: 4.52 at 1, 3.90 at 0.1; docs/online.md)
    OPTIONS = (*OnlineLearner.common_options([128], 1e-3, 1.0, "widths of the layers, any L ≥ 1", lr_recurrent=0.1),
               Option("estimator", STR, "stream", "one rank-one estimate per stream, or one for the whole batch "
                      "(see tncn.temporal.uoro)", choices=ESTIMATORS))

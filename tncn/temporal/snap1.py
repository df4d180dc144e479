"""SnAp-1: real-time recurrent learning on the influence's one-step sparsity pattern (Menick, Elsen,
Evci, Osindero, Simonyan & Graves, "Practical Real Time Recurrent Learning with a Sparse
Approximation", ICLR 2021).

The network and the per-step protocol are ``tncn.temporal.online``'s. A weight feeds exactly one
unit directly: W_in^l[j, m], b^l[m] and W_rec^l[j, m] all feed unit m of layer l. SnAp-1 keeps,
per stream b, the influence ∂h^l_t/∂θ^l only on that unit, stored in each parameter's own shape
(J_Win [B, n_in, H_l], J_b [B, H_l], J_Wrec [B, H_l, H_l]), and drops the rest after every step.
In the row layout a^l = x^l W_in^l + b^l + h^l_{t-1} W_rec^l, with D = f′(a^l_t):

    J_Win[b, j, m]  ← D[b, m] (W_rec^l[m, m] J_Win[b, j, m]  + x^l_t[b, j])
    J_b[b, m]       ← D[b, m] (W_rec^l[m, m] J_b[b, m]       + 1)
    J_Wrec[b, j, m] ← D[b, m] (W_rec^l[m, m] J_Wrec[b, j, m] + h^l_{t-1}[b, j])

(x^1 a one-hot row for ids: 1 is added at row j = id only). The step's gradient reads the trace
after the previous step (the loss reads h^L_{t-1}): g_W[j, m] = Σ_b q^l[b, m] J_W[b, j, m], and
likewise for b and W_rec, with q^L = q_t = ∂ℓ_t/∂h^L_{t-1} and, down the stack within the step,
q^{l-1} = (q^l ⊙ f′(a^l_{t-1})) W_in^{lᵀ} (h^l_{t-1} reads h^{l-1}_{t-1}), so the trace also
keeps each layer's last slope f′(a^l_{t-1}). This is SnAp-1 applied per layer, any depth L: the
path by which a lower layer's parameters reach a higher layer through earlier time steps is not
on the sparsity pattern and is dropped. For one layer with a diagonal W_rec nothing is dropped and
the gradient is exact (the oracle test). The trace starts at zero at a reset; rows with mask 0
keep theirs.

Memory is B·P floats (P the recurrent parameters) and the time per step O(B·P), the cost of the
forward step itself, flat in sequence length: SnAp-1 trains widths that RTRL's O(H^4) cannot.
"""
from __future__ import annotations

import torch

from tncn.temporal.online import OnlineLearner, Step, Trace, recurrent_params, write

Tensor = torch.Tensor


def _unitwise(v: Tensor, like: Tensor) -> Tensor:
    """v [B, H] shaped to broadcast along the fed unit (the last axis) of ``like`` [B, ..., H]."""
    return v.view(v.shape[0], *[1] * (like.dim() - 2), v.shape[1])


class SnAp1Trace(Trace):
    """The sparse influences J (one per recurrent parameter, [B, *shape], in ``recurrent_params``
    order) and each layer's last slope f′(a^l_{t-1}) [B, H_l]."""

    def __init__(self, model, batch: int, learner):
        super().__init__(model, batch, learner)
        self.params = recurrent_params(model)
        w = model.head.weight
        self.J = [torch.zeros(batch, *p.shape, device=w.device, dtype=w.dtype) for _, p in self.params]
        self.slope = [torch.zeros(batch, rec.weight.shape[0], device=w.device, dtype=w.dtype)
                      for rec in model.recurrent]

    def gradient(self, q: Tensor) -> None:
        grads = [None] * len(self.params)
        for l in reversed(range(len(self.slope))):
            for i in range(3 * l, 3 * l + 3):
                grads[i] = (self.J[i] * _unitwise(q, self.J[i])).sum(0)  # Σ_b q[b, m] J[b, ·, m]
            if l:
                q = (q * self.slope[l]) @ self.model.inputs[l].weight.T
        write(self.params, grads)

    def advance(self, step: Step) -> None:
        for l, rec in enumerate(self.model.recurrent):
            d, x = step.slope[l], step.inputs[l]
            decay = d * rec.weight.diagonal()  # D[b, m] W_rec[m, m]
            w_in, b, w_rec = self.J[3 * l:3 * l + 3]
            new_in = w_in * _unitwise(decay, w_in)
            if x.is_floating_point():  # + D[b, m] x[b, j]
                new_in.addcmul_(x.unsqueeze(2).to(d.dtype), d.unsqueeze(1))
            else:
                new_in[self.rows, x] += d
            news = (new_in, torch.addcmul(d, b, decay),
                    torch.addcmul(w_rec * _unitwise(decay, w_rec), step.prev[l].unsqueeze(2), d.unsqueeze(1)))
            for i, new in enumerate(news, start=3 * l):
                self.J[i] = step.kept(new, self.J[i])
            self.slope[l] = step.kept(d, self.slope[l])

    def state(self) -> dict:
        return {"J": list(self.J), "slope": list(self.slope)}

    def load(self, state: dict) -> None:
        self.J, self.slope = list(state["J"]), list(state["slope"])


class SnAp1(OnlineLearner):
    """An Elman network trained online by SnAp-1, RTRL on the one-step sparsity pattern."""

    name = "snap1"
    label = "SnAp-1"
    trace = SnAp1Trace
    OPTIONS = OnlineLearner.common_options([128], 1e-3, 5.0, "widths of the layers, any L ≥ 1 (SnAp-1's trace is "
                                                            "B times the recurrent weights)")

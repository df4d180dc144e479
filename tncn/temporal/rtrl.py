"""Real-time recurrent learning: the exact online gradient of an Elman network (Williams & Zipser,
"A learning algorithm for continually running fully recurrent neural networks", Neural
Computation 1(2), 1989). A baseline of the P-TNCN paper (Ororbia et al., IEEE TNNLS 2020).

The network and the per-step protocol are ``tncn.temporal.online``'s. RTRL carries, per stream b
and layer l, the influence M^l_t = ∂h^l_t/∂θ^{≤l} [H_l, P_≤l] of every parameter of layers 1..l
(P_≤l of them, flattened per layer as W_in, b, W_rec) on the layer's state. In the row layout
a^l = x^l W_in^l + b^l + h^l_{t-1} W_rec^l, with D^l_t = f′(a^l_t):

    M^l_t[i, ·] = D^l_t[i] (Σ_k W_rec^l[k, i] M^l_{t-1}[k, ·] + Σ_k W_in^l[k, i] M^{l-1}_t[k, ·] + I^l_t[i, ·])

(the middle sum only for l > 1, over the columns of the layers below), where the immediate term
I^l_t[i, (j, m)] = δ_im x^l_t[j] for W_in^l, δ_im for b^l and δ_im h^l_{t-1}[j] for W_rec^l.
The step's gradient is exact: ∂ℓ_t/∂θ = Σ_b q_t[b] M^L_{t-1}[b] (q_t = ∂ℓ_t/∂h^L_{t-1}); over a
sequence with the weights fixed it sums to the BPTT gradient of Σ_t ℓ_t (the oracle test). Any
number of layers; M starts at zero at a reset; rows with mask 0 keep theirs.

Memory is B Σ_l H_l P_≤l floats (for one layer B·H·H(H+V+1)), twice that while a step computes
the new M, and the time per step is of the same order times H: O(H^4) per stream. That is why
RTRL is a small-width baseline. ``max_memory`` (GiB) bounds the trace; a width above it is refused
before training starts, naming what it would need and the widest network that fits
(``check_fit``).
"""
from __future__ import annotations

from typing import Optional

import torch

from tncn.errors import UserError
from tncn.options import FLOAT, Option, positive
from tncn.temporal.online import OnlineLearner, Step, Trace, recurrent_params, write

Tensor = torch.Tensor
BYTES = 4  # float32


def _sizes(size: int, hidden: list) -> list[tuple[int, int]]:
    """(fan-in, width) per layer."""
    ins = [size] + list(hidden[:-1])
    return list(zip(ins, hidden))


def trace_floats(size: int, hidden: list) -> int:
    """Σ_l H_l P_≤l, the floats of one stream's influence matrices."""
    total, below = 0, 0
    for n_in, h in _sizes(size, hidden):
        below += n_in * h + h + h * h
        total += h * below
    return total


def trace_bytes(size: int, hidden: list, batch: int) -> int:
    """Bytes RTRL holds while a step runs: the old and the new trace of ``batch`` streams."""
    return 2 * BYTES * batch * trace_floats(size, hidden)


class RTRLTrace(Trace):
    """The influence matrices, unit-major: M^l [H_l, B, P_≤l] (so that each product of the
    recursion is one matrix multiply over all streams)."""

    def __init__(self, model, batch: int, learner):
        super().__init__(model, batch, learner)
        self.params = recurrent_params(model)
        w = model.head.weight
        self.M, below = [], 0
        self.offsets = []  # the first column of each layer's own parameters
        for layer, rec in zip(model.inputs, model.recurrent):
            self.offsets.append(below)
            below += layer.weight.numel() + layer.bias.numel() + rec.weight.numel()
            self.M.append(torch.zeros(rec.weight.shape[0], batch, below, device=w.device, dtype=w.dtype))

    def influence(self, b: int) -> list[Tensor]:
        """Stream b's ∂h^l/∂θ^{≤l} [H_l, P_≤l], per layer."""
        return [m[:, b] for m in self.M]

    def gradient(self, q: Tensor) -> None:
        M = self.M[-1]
        g = q.T.reshape(1, -1) @ M.view(-1, M.shape[2])  # Σ_b Σ_i q[b, i] M[i, b, ·]
        write(self.params, torch.split(g[0], [p.numel() for _, p in self.params]))

    def advance(self, step: Step) -> None:
        B = self.batch
        new_M = []
        for l, (layer, rec) in enumerate(zip(self.model.inputs, self.model.recurrent)):
            H, old = rec.weight.shape[0], self.M[l]
            new = (rec.weight.T @ old.view(H, -1)).view(old.shape)  # Σ_k W_rec[k, i] M[k, ·]
            if l:
                below = new_M[l - 1]
                new[:, :, :below.shape[2]] += (layer.weight.T @ below.view(below.shape[0], -1)).view(H, B, -1)
            # the immediate term on this layer's own columns, on the diagonal i = m
            start, n_in = self.offsets[l], layer.weight.shape[0]
            w_in = new[:, :, start:start + n_in * H].view(H, B, n_in, H).diagonal(dim1=0, dim2=3)  # [B, n_in, H]
            x = step.inputs[l]
            if x.is_floating_point():
                w_in += x.unsqueeze(2)
            else:
                w_in[self.rows, x] += 1.0
            start += n_in * H
            new[:, :, start:start + H].diagonal(dim1=0, dim2=2).add_(1.0)
            start += H
            new[:, :, start:start + H * H].view(H, B, H, H).diagonal(dim1=0, dim2=3).add_(step.prev[l].unsqueeze(2))
            new *= step.slope[l].T.unsqueeze(2)
            new_M.append(new if step.full else torch.where(step.keep.view(1, B, 1), new, old))
        self.M = new_M

    def state(self) -> dict:
        return {"M": list(self.M)}

    def load(self, state: dict) -> None:
        self.M = list(state["M"])


class RTRL(OnlineLearner):
    """An Elman network trained online by exact real-time recurrent learning."""

    name = "rtrl"
    label = "RTRL"
    trace = RTRLTrace
    OPTIONS = (*OnlineLearner.common_options([32], 1e-3, 5.0, "widths of the layers, any L ≥ 1 (RTRL's cost grows "
                                                             "as H^4: keep them small)"),
               Option("max_memory", FLOAT, 4.0, "GiB the influence matrices may take (see tncn.temporal.rtrl)",
                      check=positive, runtime=True))

    @classmethod
    def check_fit(cls, size: int, options: dict, batch: int) -> None:
        """Refuse, in one line, a network whose trace for ``batch`` streams exceeds ``max_memory``."""
        hidden, limit = list(options["hidden"]), options["max_memory"] * 2 ** 30
        need = trace_bytes(size, hidden, batch)
        if need <= limit:
            return
        widest = _widest(size, len(hidden), batch, limit)
        afford = f"the widest {len(hidden)}-layer network that fits is {','.join([str(widest)] * len(hidden))}" \
            if widest else "no width fits"
        raise UserError(f"RTRL at hidden {','.join(map(str, hidden))} with batch {batch} needs "
                        f"{need / 2 ** 30:.1f} GiB for its influence matrices, over the limit of "
                        f"{options['max_memory']:g} GiB (--max-memory); {afford}")


def _widest(size: int, layers: int, batch: int, limit: float) -> Optional[int]:
    """The largest equal width whose trace fits ``limit`` bytes (None: not even width 1)."""
    if trace_bytes(size, [1] * layers, batch) > limit:
        return None
    lo, hi = 1, 2
    while trace_bytes(size, [hi] * layers, batch) <= limit:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if trace_bytes(size, [mid] * layers, batch) <= limit else (lo, mid)
    return lo

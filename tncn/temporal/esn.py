"""Echo state network: a fixed random reservoir and a readout trained online (Jaeger 2001).

Jaeger, "The 'echo state' approach to analysing and training recurrent neural networks", GMD
Report 148, 2001; leaky-integrator units: Jaeger, Lukoševičius, Popovici & Siewert, Neural
Networks 20(3), 2007; stacked reservoirs: Gallicchio, Micheli & Pedrelli, Neurocomputing 268,
2017. A baseline of the P-TNCN paper (Ororbia et al., IEEE TNNLS 2020).

Per reservoir l = 1..L of width H_l (row vectors, batch B), with u^1_t = x_t (the one-hot of the
id, so that u W_in^1 is a row of W_in^1, or the frame) and u^l_t = h^{l-1}_t:

    h^l_t = (1 - a) h^l_{t-1} + a tanh(u^l_t W_in^l + h^l_{t-1} W^l)          (a: ``leak``)

W_in^l [n_in, H_l] has entries uniform in [-r, r], with r = s for token ids (a one-hot input) and
r = s/√n_in for dense inputs (frames, a lower reservoir's state), s the ``input_scaling``, so
that s sets the size of the drive whatever the input's width; W^l [H_l, H_l] has
each entry nonzero with probability ``density``, uniform in [-1, 1], then scaled so that its
spectral radius (largest eigenvalue modulus) is ``spectral_radius``. Both are fixed buffers,
never trained. With a radius below 1 the reservoir has the echo-state property: two runs from
different states, driven by the same input, converge. Padding (mask 0) leaves the state as it is.

The readout predicts x_t from the states before it, r_{t-1} = [h^1_{t-1}, ..., h^L_{t-1}]:
logits o_t = r_{t-1} W_out + b_out (``readout``, a ``tncn.layers.Dense``, zero at the start),
softmax over the vocabulary for tokens, a sigmoid per pixel for frames. It is the only trained
part, online: at every time step the gradient of that step's loss (the cross-entropy, or the BCE
summed over a frame's pixels, summed over the scored rows and divided by the batch size B),

    ∂W_out = r_{t-1}ᵀ δ_t,  ∂b_out = Σ_rows δ_t,  δ_t = (ŷ_t − x_t) ⊙ s_t / B

(s_t the score mask), is written into ``param.grad`` and the optimizer steps. Dividing by B, not
by the scored count, as P-TNCN's updates are: at the end of a batch of sentences, where only a
few rows are left, Adam would otherwise take full-sized steps on one or two sentences and throw
the readout off (seen on PTB). No graph is unrolled; memory is flat in sequence length. (The classic least-squares readout fitted
after the run minimises squared error, which gives no bits per symbol, and is not online.)
Under exact data parallelism (``tncn.distributed``) each rank divides by the global B and one
all-reduce sums the shards' readout gradients before the step: the one-process step.
"""
from __future__ import annotations

import torch
from torch import nn

from tncn.layers import Dense, init_weight, readout_grad
from tncn.metrics import Tally
from tncn.optim import SCHEDULE, optimizer_options
from tncn import space
from tncn.options import FLOAT, Option, in_range, positive
from tncn.temporal.base import SequenceLearner, hidden_option


def scale_to_radius(w: torch.Tensor, radius: float) -> torch.Tensor:
    """``w`` scaled so that its spectral radius is ``radius``."""
    rho = float(torch.linalg.eigvals(w.double()).abs().max())
    if rho == 0.0:
        raise ValueError(f"a {w.shape[0]}-wide reservoir matrix drawn at this density has spectral radius 0; "
                         "raise density")
    return w * (radius / rho)


class Reservoir(nn.Module):
    """Stacked fixed reservoirs (buffers ``W_in{l}``, ``W{l}``) and the trained ``readout``."""

    def __init__(self, n_in: int, n_out: int, hidden: list, leak: float, spectral_radius: float,
                 input_scaling: float, density: float, tokens: bool, generator: torch.Generator):
        super().__init__()
        self.hidden, self.leak, self.tokens = list(hidden), float(leak), bool(tokens)
        sizes = [n_in] + self.hidden
        for l in range(1, len(sizes)):
            # U(-r, r) has standard deviation r/√3; r = s for one-hot ids, s/√n_in for dense inputs
            r = input_scaling / (1.0 if l == 1 and tokens else sizes[l - 1] ** 0.5)
            self.register_buffer(f"W_in{l}", init_weight((sizes[l - 1], sizes[l]), "uniform", r / 3 ** 0.5,
                                                         generator))
            keep = torch.rand(sizes[l], sizes[l], generator=generator) < density
            w = init_weight((sizes[l], sizes[l]), "uniform", 1 / 3 ** 0.5, generator) * keep
            self.register_buffer(f"W{l}", scale_to_radius(w, spectral_radius).float())
        self.readout = Dense(sum(self.hidden), n_out, "identity", bias=True, init="zeros")

    def zero_state(self, batch: int) -> list:
        w = self.readout.weight
        return [torch.zeros(batch, h, device=w.device, dtype=w.dtype) for h in self.hidden]

    def step(self, h: list, x: torch.Tensor, m: torch.Tensor) -> list:
        """The states after consuming x_t (ids [B] or frames [B, D]); rows with mask 0 keep theirs."""
        keep = m.unsqueeze(1) > 0
        u = None
        out = []
        for l, h_l in enumerate(h, start=1):
            w_in = getattr(self, f"W_in{l}")
            if l == 1:
                drive = w_in.index_select(0, x) if self.tokens else x.to(w_in.dtype) @ w_in
            else:
                drive = u @ w_in
            new = torch.tanh(torch.addmm(drive, h_l, getattr(self, f"W{l}")))
            if self.leak != 1.0:
                new = torch.lerp(h_l, new, self.leak)
            u = torch.where(keep, new, h_l)
            out.append(u)
        return out

    @staticmethod
    def features(h: list) -> torch.Tensor:
        """r = [h^1, ..., h^L], what the readout reads."""
        return torch.cat(h, dim=1) if len(h) > 1 else h[0]

    def logits(self, h: list) -> torch.Tensor:
        """o = r W_out + b_out."""
        return self.readout.pre(self.features(h))


class ESN(SequenceLearner):
    """An echo state network over token ids or frames, its readout's optimizer and its state."""

    name = "esn"
    label = "ESN"
    depth = 1
    data_parallel = "one SUM all-reduce of the readout's step gradient (each shard's over the global B)"
    _sync = None  # the ranks whose gradients are summed (tncn.distributed.Group), set by distribute
    OPTIONS = (
        hidden_option([1000], "widths of the reservoirs (one: the classic ESN; more: stacked reservoirs)"),
        Option("leak", FLOAT, 1.0, "leak rate a of the units (1: none)", check=in_range(0.0, 1.0),
               space=space.float_range(0.1, 1.0)),
        Option("spectral_radius", FLOAT, 0.9, "spectral radius of each reservoir matrix", check=positive,
               space=space.float_range(0.5, 1.2)),
        Option("input_scaling", FLOAT, 3.0, "s, the scale of the input weights (see tncn.temporal.esn)", check=positive,
               space=space.log_range(0.3, 10.0)),
        Option("density", FLOAT, 0.1, "share of nonzero reservoir weights", check=in_range(0.0, 1.0)),
        # Adam moves each readout weight by about lr per step, so a logit by about lr times the
        # summed state: wide reservoirs want a small lr (1e-3 was unstable at 2,430 units on PTB)
        *optimizer_options("adam", 3e-4, lr_range=(3e-5, 3e-3)), *SCHEDULE,
    )

    def __init__(self, *args, **kwargs):
        self._h = None  # the carried reservoir states
        super().__init__(*args, **kwargs)

    @classmethod
    def n_params(cls, size: int, hidden: list, options: dict) -> int:
        """W_in^l and W^l (fixed, counted as stored) and the readout W_out, b_out."""
        sizes = [size] + list(hidden)
        reservoirs = sum(sizes[l - 1] * sizes[l] + sizes[l] ** 2 for l in range(1, len(sizes)))
        return reservoirs + sum(hidden) * size + size

    @classmethod
    def training_label(cls, options: dict) -> str:
        return "online readout, fixed reservoir"

    def build(self) -> Reservoir:
        o = self.options
        return Reservoir(self.size, self.size, o["hidden"], o["leak"], o["spectral_radius"], o["input_scaling"],
                         o["density"], not self.frames, self.generator)

    # ------------------------------------------------------------------ state

    def carry_state(self):
        return None if self._h is None else {"h": [t.clone() for t in self._h]}

    def load_carry_state(self, state) -> None:
        self._h = None if state is None else [t.to(self.device) for t in state["h"]]

    # ------------------------------------------------------------------ segments

    def _exact_parallel(self, group) -> None:
        self._sync = group

    def _learn(self, features: torch.Tensor, logits: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
               rows: torch.Tensor) -> None:
        """Write the readout's gradient of this step's loss into ``param.grad``; step. ``weight``
        [B, 1] is s_t / B, ``rows`` the row indices (both made once a segment)."""
        readout_grad(self.model.readout, features, logits, x, weight, rows, self.frames)
        if self._sync is not None:  # the shards' gradients, each over the global B, summed
            grads = [p.grad for p in self.model.readout.parameters()]
            flat = self._sync.all_reduce_(torch.cat([g.reshape(-1) for g in grads]))
            at = 0
            for g in grads:
                g.copy_(flat[at:at + g.numel()].view_as(g))
                at += g.numel()
        self.opt.step()

    def _segment(self, batch, learn: bool, correction: bool = True) -> Tally:
        x, mask, score = self._on_device(batch)
        if batch.reset or self._h is None:
            self._h = self.model.zero_state(x.shape[1])
        bits = torch.zeros((), device=self.device)
        hits = torch.zeros((), dtype=torch.long, device=self.device)
        counts, rows_total = batch.score.sum(dim=1).tolist(), x.shape[1]
        if learn and self._sync is not None:  # every rank learns at the steps where any row is scored
            counts, rows_total = self._sync.counts(counts), self._sync.rows
        if learn:
            weight = score.to(self.model.readout.weight.dtype).unsqueeze(2) / rows_total  # s_t / B, [T, B, 1]
            rows = torch.arange(x.shape[1], device=self.device)
        for t, n in enumerate(counts):
            if n:
                features = self.model.features(self._h)
                logits = self.model.readout.pre(features)
                b, h = self._score(logits, x[t], score[t])
                bits += b
                hits += h
                if learn:
                    self._learn(features, logits, x[t], weight[t], rows)
            self._h = self.model.step(self._h, x[t], mask[t])
        return Tally(float(bits), batch.n_scored, int(hits))

    def _next_logits(self, ids: torch.Tensor, start: bool) -> torch.Tensor:
        if start:
            self._h = self.model.zero_state(1)
        one = torch.ones(1, device=self.device)
        for x in ids:
            self._h = self.model.step(self._h, x.view(1), one)
        return self.model.logits(self._h)[0]

    def _predict_frames(self, frames: torch.Tensor, correction: bool) -> torch.Tensor:
        h = self.model.zero_state(1)
        one = torch.ones(1, device=self.device)
        out = torch.full(frames.shape, float("nan"))
        for t, x in enumerate(frames):
            if t:
                out[t] = torch.sigmoid(self.model.logits(h)[0]).float().cpu()
            h = self.model.step(h, x.view(1, -1), one)
        return out

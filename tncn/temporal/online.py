"""What the online recurrent learners (RTRL, UORO, SnAp-1) share: the Elman network, one time step
at a time, and the exact readout gradient.

The network is ``tncn.temporal.bptt.ElmanLM`` (built from the shared ``tncn.layers.Dense``
layers, the very network the BPTT learner ``elman`` trains), read one step at a time. For layers
l = 1..L (row vectors, batch B):

    a^l_t = x^l_t W_in^l + b^l + h^l_{t-1} W_rec^l,   h^l_t = f(a^l_t),   x^{l+1}_t = h^l_t,

x^1_t the one-hot of the id (a row of W_in^1) or the frame. The readout predicts x_t from the
state before it: o_t = h^L_{t-1} W_out + b_out, a softmax over the vocabulary (a sigmoid per pixel
for frames). θ = (W_in^l, b^l, W_rec^l)_l are the recurrent parameters, s_t = [h^1_t, ..., h^L_t]
the state.

Per time step t, with ℓ_t the step's loss (cross-entropy, or BCE summed over a frame's pixels,
summed over the scored rows and divided by B, as ``tncn.temporal.esn`` and P-TNCN scale theirs):

1. score o_t (before the learner sees x_t);
2. the exact readout gradient, δ_t = ∂ℓ_t/∂o_t = (ŷ_t − x_t) ⊙ s_t / B (s_t the score mask):
   ∂W_out = h^{Lᵀ}_{t-1} δ_t, ∂b_out = Σ_rows δ_t, and q_t = ∂ℓ_t/∂h^L_{t-1} = δ_t W_outᵀ;
3. the learner's estimate of ∂ℓ_t/∂θ = q_t ∂h^L_{t-1}/∂θ from its trace of the influence
   ∂s_{t-1}/∂θ (``Trace.gradient``), written into ``param.grad``; its norm clipped to
   ``clip_grad`` (the estimate only, not the exact readout gradient); the optimizer steps (every
   time step, online), θ at ``lr_recurrent`` times the readout's learning rate;
4. the network consumes x_t (with the updated weights) and the learner carries its trace forward
   from ∂s_{t-1}/∂θ to ∂s_t/∂θ (``Trace.advance``), from the step's inputs, previous states and
   slopes f′(a).

A reset starts the state and the trace at zero. Padding (mask 0) is no symbol at all: its rows keep
their state and trace, and they score and learn nothing. Nothing is unrolled: memory is the trace's
(see each learner), flat in sequence length. Evaluation runs steps 1 and 4 without the trace.

Exact data parallelism (``tncn.distributed``): each rank scales its shard's step gradient by the
global B, one all-reduce sums the shards', and the clip and the step follow as in one process
(for RTRL and SnAp-1 the one-process run, to float rounding; UORO draws its random signs per rank).

A learner's file defines its ``Trace`` (the influence it keeps) and a ``OnlineLearner`` subclass
naming it. ``summed_gradient(batches)`` runs segments with every weight fixed and returns the sum of
the step gradients: the oracle tests compare it with autograd BPTT of the summed loss.
"""
from __future__ import annotations

from typing import ClassVar, Optional

import torch
from torch import nn

from tncn import space
from tncn.layers import differentiable_activations, get_activation, grad_buffer, readout_grad
from tncn.metrics import Tally
from tncn.optim import SCHEDULE, optimizer_options
from tncn.options import FLOAT, STR, Option, non_negative, positive
from tncn.temporal import bptt
from tncn.temporal.base import SequenceLearner, hidden_option

Tensor = torch.Tensor
ACTIVATIONS = tuple(a for a in differentiable_activations() if get_activation(a).pointwise)
"""Activations an online learner takes: pointwise, with a derivative (the trace needs f′)."""


class Step:
    """One time step of the network, what a trace needs to advance: per layer l (0-based) the
    input x^l (``inputs``; ids [B] for the first layer of a token model), the state before
    (``prev``) and f′(a^l) (``slope``); ``keep`` [B, 1] (the rows that consumed a symbol) and
    ``full`` (every row did)."""

    def __init__(self, inputs: list, prev: list, slope: list, keep: Tensor, full: bool):
        self.inputs, self.prev, self.slope, self.keep, self.full = inputs, prev, slope, keep, full

    def kept(self, new: Tensor, old: Tensor) -> Tensor:
        """``new`` on the rows that consumed a symbol, ``old`` on the others (rows: the first axis)."""
        if self.full:
            return new
        return torch.where(self.keep.view(-1, *[1] * (new.dim() - 1)), new, old)


def forward_step(model: bptt.ElmanLM, h: list, x: Tensor, m: Tensor, slopes: bool = False,
                 full: bool = False) -> tuple[list, Optional[Step]]:
    """The states after consuming x (ids [B] or frames [B, D]; rows with mask 0 keep theirs;
    ``full``: the caller knows every row has mask 1) and, with ``slopes``, the ``Step`` a trace
    advances on."""
    keep = m.unsqueeze(1) > 0
    inputs, news, slope = [], [], []
    u = x
    for l, (layer, rec) in enumerate(zip(model.inputs, model.recurrent)):
        if l == 0 and not u.is_floating_point():
            drive = layer.weight.index_select(0, u) + layer.bias
        else:
            drive = layer.pre(u.to(layer.weight.dtype))
        a = torch.addmm(drive, h[l], rec.weight)
        new = layer.act(a)
        if slopes:
            inputs.append(u)
            slope.append(layer.act.backward(a, new, torch.ones_like(a)))
        if not full:
            new = torch.where(keep, new, h[l])
        news.append(new)
        u = new
    return news, (Step(inputs, list(h), slope, keep, full) if slopes else None)


def recurrent_params(model: bptt.ElmanLM) -> list[tuple[str, nn.Parameter]]:
    """θ in the order the traces flatten it: per layer W_in^l, b^l, W_rec^l."""
    out = []
    for l, (layer, rec) in enumerate(zip(model.inputs, model.recurrent)):
        out += [(f"inputs.{l}.weight", layer.weight), (f"inputs.{l}.bias", layer.bias),
                (f"recurrent.{l}.weight", rec.weight)]
    return out


class Trace:
    """What an online learner carries of ∂s_t/∂θ. A subclass implements the four methods."""

    def __init__(self, model: bptt.ElmanLM, batch: int, learner: "OnlineLearner"):
        self.model, self.batch, self.learner = model, batch, learner
        self.rows = torch.arange(batch, device=model.head.weight.device)  # row indices, made once

    def gradient(self, q: Tensor) -> None:
        """Write the estimate of q ∂h^L_{t-1}/∂θ (q [B, H_L]) into the ``param.grad`` of θ."""
        raise NotImplementedError

    def advance(self, step: Step) -> None:
        """Carry the trace over one time step (``Step``), rows with keep 0 unchanged."""
        raise NotImplementedError

    def state(self) -> dict:
        """The trace as tensors (the carried training state)."""
        raise NotImplementedError

    def load(self, state: dict) -> None:
        raise NotImplementedError


def write(params: list, grads: list) -> None:
    """Copy each gradient into its parameter's ``grad`` buffer."""
    for (_, p), g in zip(params, grads):
        grad_buffer(p).copy_(g.view_as(p))


class OnlineLearner(SequenceLearner):
    """An Elman network learning online by a ``Trace`` (the module docstring)."""

    trace: ClassVar[type[Trace]]
    depth = 1

    @staticmethod
    def common_options(hidden: list, lr: float, clip: float, help: str, lr_recurrent: float = 1.0) -> tuple:
        """The options every online learner declares, with its own defaults."""
        return (
            hidden_option(hidden, help),
            Option("activation", STR, "tanh", "state activation f (pointwise, with a derivative)", choices=ACTIVATIONS),
            Option("clip_grad", FLOAT, clip, "clip the norm of each step's gradient of θ to this (0: off)",
                   check=non_negative, space=space.log_range(0.1, 20.0)),
            *optimizer_options("adam", lr), *SCHEDULE,
            Option("lr_recurrent", FLOAT, lr_recurrent, "learning rate of θ as a fraction of lr (the readout "
                   "learns at lr)", check=positive, space=space.log_range(0.01, 1.0)),
        )

    def param_groups(self):
        """θ at lr · ``lr_recurrent``, the readout at lr."""
        return [{"params": self._theta, "lr": self.options["lr"] * self.options["lr_recurrent"]},
                {"params": list(self.model.head.parameters())}]

    def __init__(self, *args, **kwargs):
        self._h: Optional[list] = None  # the carried state s
        self._trace: Optional[Trace] = None
        self._sum: Optional[dict] = None  # summed_gradient's accumulator
        self._sync = None  # the ranks whose step gradients are summed (tncn.distributed.Group)
        super().__init__(*args, **kwargs)
        self._theta = [p for _, p in recurrent_params(self.model)]

    @classmethod
    def n_params(cls, size: int, hidden: list, options: dict) -> int:
        return bptt.n_params("elman", size, hidden)

    @classmethod
    def training_label(cls, options: dict) -> str:
        return f"online ({cls.label}, no BPTT)"

    def build(self) -> nn.Module:
        if not get_activation(self.options["activation"]).differentiable:
            raise ValueError(f"{self.label} needs the derivative of the activation")
        return bptt.build_model("elman", self.size, self.options["hidden"], activation=self.options["activation"],
                                generator=self.generator)

    # ------------------------------------------------------------------ state

    def _zero_state(self, batch: int) -> list:
        w = self.model.head.weight
        return [torch.zeros(batch, h, device=w.device, dtype=w.dtype) for h in self.options["hidden"]]

    def carry_state(self):
        if self._h is None:
            return None
        return {"h": list(self._h), "trace": None if self._trace is None else self._trace.state()}

    def load_carry_state(self, state) -> None:
        self._h, self._trace = None, None
        if state is not None:
            self._h = [t.to(self.device) for t in state["h"]]
            if state["trace"] is not None:
                self._trace = self.trace(self.model, self._h[0].shape[0], self)
                self._trace.load({k: v.to(self.device) if torch.is_tensor(v) else [t.to(self.device) for t in v]
                                  for k, v in state["trace"].items()})

    # ------------------------------------------------------------------ steps

    data_parallel = "one SUM all-reduce of the step's gradient (each shard's over the global B), then the clip"

    def _exact_parallel(self, group) -> None:
        self._sync = group

    def _apply(self) -> None:
        """The step's gradient is in ``param.grad``: clip and step (or add it to the sum). Under
        exact data parallelism the shards' gradients (each already over the global B) are summed
        by one all-reduce first, so the clip and the step are the one-process ones."""
        if self._sum is not None:
            for name, p in self.model.named_parameters():
                self._sum[name] += p.grad
            return
        if self._sync is not None:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            flat = self._sync.all_reduce_(torch.cat([g.reshape(-1) for g in grads]))
            at = 0
            for g in grads:
                g.copy_(flat[at:at + g.numel()].view_as(g))
                at += g.numel()
        if self.options["clip_grad"] > 0:  # the estimate only: the readout's gradient is exact
            nn.utils.clip_grad_norm_(self._theta, self.options["clip_grad"])
        self.opt.step()

    def _segment(self, batch, learn: bool, correction: bool = True) -> Tally:
        x, mask, score = self._on_device(batch)
        B = x.shape[1]
        if batch.reset or self._h is None:
            self._h = self._zero_state(B)
            self._trace = None
        if learn and self._trace is None:
            self._trace = self.trace(self.model, B, self)
        bits = torch.zeros((), device=self.device)
        hits = torch.zeros((), dtype=torch.long, device=self.device)
        counts, rows_total = batch.score.sum(dim=1).tolist(), B
        if learn and self._sync is not None:  # every rank learns at the steps where any row is scored
            counts, rows_total = self._sync.counts(counts), self._sync.rows
        if learn:
            weight = score.to(self.model.head.weight.dtype).unsqueeze(2) / rows_total  # s_t / B, [T, B, 1]
            rows = torch.arange(B, device=self.device)
        full = batch.mask.bool().all(dim=1).tolist()  # on the CPU: no device sync per step
        for t, n in enumerate(counts):
            if n:
                top = self._h[-1]
                logits = self.model.head.pre(top)
                b, h = self._score(logits, x[t], score[t])
                bits += b
                hits += h
                if learn:  # the readout's exact gradient, then q = ∂ℓ/∂h^L to the trace
                    delta = readout_grad(self.model.head, top, logits, x[t], weight[t], rows, self.frames)
                    self._trace.gradient(delta @ self.model.head.weight.T)
                    self._apply()
            self._h, step = forward_step(self.model, self._h, x[t], mask[t], slopes=learn, full=full[t])
            if learn:
                self._trace.advance(step)
        return Tally(float(bits), batch.n_scored, int(hits))

    @torch.no_grad()
    def summed_gradient(self, batches: list) -> dict:
        """Σ_t of the step gradients over ``batches`` (segments of one stream, from a zero state),
        every weight fixed: what the optimizer would have been given, summed by parameter name.
        Leaves the training state and the random state as they were."""
        carry, self._sum = self.carry_state(), {n: torch.zeros_like(p) for n, p in self.model.named_parameters()}
        generator = self.generator.get_state()
        try:
            self._h = None
            for batch in batches:
                self._segment(batch, learn=True)
            return self._sum
        finally:
            self._sum = None
            self.load_carry_state(carry)
            self.generator.set_state(generator)

    def _next_logits(self, ids: Tensor, start: bool) -> Tensor:
        if start:
            self._h = self._zero_state(1)
        one = torch.ones(1, device=self.device)
        for x in ids:
            self._h, _ = forward_step(self.model, self._h, x.view(1), one)
        return self.model.head.pre(self._h[-1])[0]

    def _predict_frames(self, frames: Tensor, correction: bool) -> Tensor:
        h = self._zero_state(1)
        one = torch.ones(1, device=self.device)
        out = torch.full(frames.shape, float("nan"))
        for t, x in enumerate(frames):
            if t:
                out[t] = torch.sigmoid(self.model.head.pre(h[-1])[0]).float().cpu()
            h, _ = forward_step(self.model, h, x.view(1, -1), one)
        return out

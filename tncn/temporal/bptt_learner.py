"""Elman RNN, GRU and LSTM baselines as sequence learners (the protocol: ``tncn.temporal.base``),
trained by full or truncated back-propagation through time (BPTT; Werbos 1990, truncated:
Williams & Peng 1990).

The batches, masks, scored positions and BPC are P-TNCN's (``tncn.temporal.ptncn_learner``):
every scored symbol is predicted before it is seen and before the weights learn from it. The
models are in ``tncn.temporal.bptt``: ``rnn``, ``gru``, ``lstm`` on PyTorch's kernels and
``elman`` built from ``tncn.layers.Dense`` (any differentiable activation).

Per batch [T, B]: step t consumes the symbol before position t, and its output scores position t.
After a reset nothing precedes position 0, which is never scored, so the first step consumes
tokens[0] and scores position 1; a continued batch (stream protocol) starts by consuming the last
symbol of the previous batch, carried with the recurrent state. Padding only trails the sequences
of a batch (``sequences.batching``), so the padding ids consumed after a sequence ends precede no
scored position; the loss and the scores are masked by ``score``.

- ``bptt: full``: one forward, one backward and one optimizer step per batch: under ``lines``
  one per batch of sentences (state reset between batches); under ``stream`` one per segment, the
  state carried to the next segment without gradient.
- ``bptt: K``: the steps of a batch are cut into windows of K; per window a forward from the
  carried state, a backward, clipping and an optimizer step, then the state is carried to the next
  window (and batch) without gradient (truncated BPTT with window K). K ≥ T is full BPTT.

Observations are token ids [T, B] (softmax output, loss: cross-entropy) or video frames
[T, B, D] in [0, 1] fed to the first layer as they are (a sigmoid output per pixel, loss: binary
cross-entropy summed over the pixels of a frame; scored as BCE per frame). The loss of a window
is the mean over its scored positions; ``clip_grad`` clips the total gradient norm
(``torch.nn.utils.clip_grad_norm_``; 0: off). Evaluation has no correction phase to switch off.

Under torchrun (``tncn.distributed``, ``--parallel exact``) training runs through
``DistributedDataParallel``: each rank's loss is its shard's summed loss over the window's
*global* scored count, times N (DDP averages the N ranks' gradients), so the reduced gradient,
its clipping and the step equal the one-process ones on the global batch.
"""
from __future__ import annotations

from dataclasses import replace
from typing import ClassVar, Optional

import torch
from torch import nn

from tncn.layers import differentiable_activations
from tncn.metrics import Tally
from tncn.optim import SCHEDULE, optimizer_options
from tncn import space
from tncn.options import FLOAT, INT, STR, Option, either, non_negative, optional, positive
from tncn.temporal import bptt
from tncn.temporal.base import SequenceLearner, hidden_option


LR_WIDTH_HELP = ("the fan-in lr is meant for: a weight matrix reading n > lr_width units learns at "
                 "lr * lr_width / n (none: every weight at lr)")


def _detach(state: list) -> list:
    return [tuple(t.detach() for t in s) if isinstance(s, tuple) else s.detach() for s in state]


class BPTTLearner(SequenceLearner):
    """A ``KernelLM`` or ``ElmanLM`` (``cell``), its optimizer, and the carried state."""

    cell: ClassVar[str]
    autograd = True
    OPTIONS = (
        hidden_option([256, 256]),
        Option("input", STR, "onehot", "symbol input: the one-hot vector, or a learned embedding",
               choices=bptt.INPUTS),
        Option("embed", optional(INT), None, "embedding width (none: the first hidden width)", check=positive),
        Option("bptt", either("full", INT), "full", "full: one backward per batch; K: truncated BPTT, windows of K steps",
               check=lambda v: None if v == "full" else positive(v)),
        Option("clip_grad", FLOAT, 5.0, "clip the total gradient norm to this (0: off)", check=non_negative,
               space=space.log_range(0.5, 20.0)),
        *optimizer_options("adam", 1e-3), *SCHEDULE,
        Option("lr_width", optional(INT), None, LR_WIDTH_HELP, check=positive),
    )

    @classmethod
    def n_params(cls, size: int, hidden: list, options: dict) -> int:
        return bptt.n_params(cls.cell, size, hidden, options["input"], options["embed"])

    @classmethod
    def training_label(cls, options: dict) -> str:
        return "full BPTT" if options["bptt"] == "full" else f"truncated BPTT, k = {options['bptt']}"

    def __init__(self, *args, **kwargs):
        self._carry: Optional[tuple] = None  # (state, pending id [B]) carried to the next batch
        self._ddp = None  # the model under DistributedDataParallel (exact data parallelism)
        super().__init__(*args, **kwargs)

    data_parallel = "DistributedDataParallel (gradients averaged by all-reduce in the backward)"

    def _exact_parallel(self, group) -> None:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        self._ddp = DistributedDataParallel(self.model, device_ids=ids)

    def param_groups(self):
        """With ``lr_width`` w: each weight matrix whose fan-in n exceeds w learns at lr·w/n, the
        width scaling of Adam's step that μP prescribes for hidden weights (Yang et al. 2021,
        "Tensor Programs V"). Adam moves every weight by about lr per step, so a unit's
        pre-activation moves by about lr·n: at n = 1,415 and lr 1e-3 the tanh units of an Elman
        RNN saturate within 20 steps (docs/stability.md). Matrices that read one-hot ids (one row
        per step) and biases keep lr."""
        w = self.options["lr_width"]
        if w is None:
            return self.model.parameters()
        groups: dict = {}
        for name, p in self.model.named_parameters():
            n = self.model.fan_in(name, p, ids=not self.frames)
            groups.setdefault(1.0 if n is None else min(1.0, w / n), []).append(p)
        return [{"params": ps, "lr": self.options["lr"] * scale} for scale, ps in groups.items()]

    def build(self) -> nn.Module:
        o = self.options
        if self.frames and (o["input"] != "onehot" or o["embed"] is not None):
            raise ValueError("input and embed apply to symbols; frames go into the first layer as they are")
        return bptt.build_model(self.cell, self.size, o["hidden"], o["input"], o["embed"],
                                o.get("activation", "tanh"), self.generator)

    # ------------------------------------------------------------------ state

    def carry_state(self):
        if self._carry is None:
            return None
        state, pending = self._carry
        return {"state": None if state is None else [list(s) if isinstance(s, tuple) else [s] for s in state],
                "pending": pending}

    def load_carry_state(self, carry) -> None:
        self._carry = None
        if carry is not None:
            state = carry["state"]
            if state is not None:
                state = [tuple(t.to(self.device) for t in s) if self.cell == "lstm" else s[0].to(self.device)
                         for s in state]
            self._carry = (state, carry["pending"].to(self.device))

    # ------------------------------------------------------------------ segments

    def _segment(self, batch, learn: bool, correction: bool = True) -> Tally:
        self.model.train(learn)
        tokens = batch.tokens.to(self.device)
        score_cpu = batch.score
        if batch.reset or self._carry is None:
            if bool(score_cpu[0].any()):
                raise ValueError("a batch that starts new sequences cannot score its first position")
            state, inputs, targets, score_cpu = None, tokens[:-1], tokens[1:], score_cpu[1:]
        else:
            state, pending = self._carry
            inputs, targets = torch.cat([pending.unsqueeze(0), tokens[:-1]]), tokens
        score = score_cpu.to(self.device)
        steps = inputs.shape[0]
        K = max(steps, 1) if self.options["bptt"] == "full" else self.options["bptt"]
        bits = torch.zeros((), device=self.device)
        hits = torch.zeros((), dtype=torch.long, device=self.device)
        windows = range(0, steps, K)
        counts = [int(score_cpu[s:s + K].sum()) for s in windows]
        world = 1
        if learn and self._ddp is not None:  # every rank divides by the global count (the same windows learn)
            counts, world = self.group.counts(counts), self.group.world
        forward = self._ddp if learn and self._ddp is not None else self.model
        for s, n in zip(windows, counts):
            top, state = forward(inputs[s:s + K], state)
            logits = self.model.logits(top).reshape(-1, self.size)
            y = targets[s:s + K].reshape(len(logits), -1) if self.frames else targets[s:s + K].reshape(-1)
            m = score[s:s + K].reshape(-1)
            b, h = self._score(logits.detach(), y, m)
            bits += b
            hits += h
            if learn and n:
                if self.frames:
                    nats = nn.functional.binary_cross_entropy_with_logits(
                        logits.float(), y.float(), reduction="none").sum(1)
                else:
                    nats = nn.functional.cross_entropy(logits.float(), y, reduction="none")
                loss = (nats * m).sum() * world / n
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if self.options["clip_grad"] > 0:
                    nn.utils.clip_grad_norm_(self.model.parameters(), self.options["clip_grad"])
                self.opt.step()
            state = _detach(state)
        self._carry = (state, tokens[-1])
        return Tally(float(bits), batch.n_scored, int(hits))

    def _next_logits(self, ids: torch.Tensor, start: bool) -> torch.Tensor:
        ids = ids.view(-1, 1)
        state = None if start else self._carry[0]
        if start and len(ids) > 1:
            state = self.model(ids[:-1], None)[1]
        top, state = self.model(ids[-1:], state)
        self._carry = (state, None)
        return self.model.logits(top[-1, 0])

    def _predict_frames(self, frames: torch.Tensor, correction: bool) -> torch.Tensor:
        top, _ = self.model(frames[:-1].unsqueeze(1), None)
        probs = torch.sigmoid(self.model.logits(top[:, 0]).float()).cpu()
        return torch.cat([torch.full((1, frames.shape[1]), float("nan")), probs])


LR_WIDTH = 256
"""The ``lr_width`` of the tanh RNNs (``rnn``, ``elman``), whose ungated units saturate when wide
(the gated GRU and LSTM keep every weight at lr by default)."""


class RNN(BPTTLearner):
    """Elman RNN (tanh) on PyTorch's ``nn.RNN`` kernel."""

    name, label, cell = "rnn", "Elman RNN", "rnn"
    OPTIONS = tuple(replace(o, default=LR_WIDTH) if o.name == "lr_width" else o for o in BPTTLearner.OPTIONS)


class GRU(BPTTLearner):
    """GRU (Cho et al. 2014) on PyTorch's ``nn.GRU`` kernel."""

    name, label, cell = "gru", "GRU", "gru"


class LSTM(BPTTLearner):
    """LSTM (Hochreiter & Schmidhuber 1997, with forget gate) on PyTorch's ``nn.LSTM`` kernel."""

    name, label, cell = "lstm", "LSTM", "lstm"


class Elman(BPTTLearner):
    """The Elman RNN built from the shared ``tncn.layers.Dense`` layers (any differentiable
    activation): the network the local rules of ``tncn.temporal.bptt_alignment`` apply to."""

    name, label, cell = "elman", "Elman RNN (Dense)", "elman"
    OPTIONS = (*RNN.OPTIONS,
               Option("activation", STR, "tanh", "state activation f (differentiable)",
                      choices=tuple(a for a in differentiable_activations() if a != "softmax")))

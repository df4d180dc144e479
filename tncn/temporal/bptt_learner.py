"""Elman RNN, GRU and LSTM baselines as sequence learners for ``tncn.train``, trained by full or
truncated back-propagation through time (BPTT; Werbos 1990, truncated: Williams & Peng 1990).

The learner protocol is documented in ``tncn.train``; the batches, masks, scored positions and BPC
are P-TNCN's (``tncn.temporal.ptncn_learner``): every scored symbol is predicted before it is
seen and before the weights learn from it. The models are in ``tncn.temporal.bptt``; the registry
names ``rnn``, ``gru``, ``lstm`` (PyTorch kernels) and ``elman`` (built from ``tncn.layers.Dense``)
each have a two-line module (``bptt_rnn.py`` ...) that binds the kind.

Per batch [T, B]: step t consumes the symbol before position t, and its output scores position t.
After a reset nothing precedes position 0, which is never scored, so the first step consumes
tokens[0] and scores position 1; a continued batch (stream protocol) starts by consuming the last
symbol of the previous batch, carried with the recurrent state. Padding only trails the sequences
of a batch (``sequences.batching``), so the padding ids consumed after a sequence ends precede no
scored position; the loss and the scores are masked by ``score``.

- ``bptt: "full"``: one forward, one backward and one optimizer step per batch: under ``lines``
  one per batch of sentences (state reset between batches); under ``stream`` one per segment, the
  state carried to the next segment without gradient.
- ``bptt: K``: the steps of a batch are cut into windows of K; per window a forward from the
  carried state, a backward, clipping and an optimizer step, then the state is carried to the next
  window (and batch) without gradient (truncated BPTT with window K). K ≥ T is full BPTT.

Observations are token ids [T, B] (softmax output, loss: cross-entropy) or, with ``frames=True``,
video frames [T, B, D] in [0, 1] fed to the first layer as they are (a sigmoid output per pixel,
loss: binary cross-entropy summed over the pixels of a frame; scored as BCE per frame).

Loss of a window: the mean cross-entropy (per symbol or per frame) over its scored positions.
``clip_grad``: the total gradient norm is clipped to it (``torch.nn.utils.clip_grad_norm_``; 0:
off). Any optimizer of ``tncn.train.make_optimizer`` (Adam, lr 1e-3 by default). Options
(``DEFAULTS``): ``hidden`` (widths, one per layer), ``input`` (onehot or embedding), ``embed``
(embedding width; default the first hidden width), ``bptt``, ``clip_grad``, the optimizer's, and
``activation`` (elman only: any differentiable activation of ``tncn.layers``). Evaluation has no
correction phase to switch off.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from tncn.errors import UserError
from tncn.metrics import Tally, score_frames, score_logits
from tncn.temporal.bptt import build_model
from tncn.train import LazyOptimizer

KINDS = ("rnn", "gru", "lstm", "elman")
DEFAULTS = {"hidden": [256, 256], "input": "onehot", "embed": None, "bptt": "full", "clip_grad": 5.0,
            "optimizer": "adam", "lr": 1e-3, "momentum": None, "weight_decay": 0.0}
ELMAN_DEFAULTS = {**DEFAULTS, "activation": "tanh"}


def parse_bptt(value) -> Optional[int]:
    """None for ``"full"``, else the window K (a positive integer, given as a number or as text)."""
    if value == "full":
        return None
    try:
        k = int(str(value))
    except ValueError:
        k = 0
    if k <= 0 or isinstance(value, (bool, float)):
        raise UserError(f"--bptt must be full or a positive number of steps, got {value!r}")
    return k


def learner_builder(kind: str):
    """The ``build(options, size, device, seed, frames)`` of registry name ``kind``."""
    def build(options: dict, size: int, device="cpu", seed: int = 0, frames: bool = False) -> "BPTTLearner":
        return BPTTLearner(kind, options, size, device, seed, frames)
    return build


def _detach(state: list) -> list:
    return [tuple(t.detach() for t in s) if isinstance(s, tuple) else s.detach() for s in state]


class BPTTLearner:
    """A ``KernelLM`` or ``ElmanLM`` over token ids (``size``: the vocabulary) or frames (``size``:
    pixels per frame), its optimizer, and the carried training state."""

    has_correction = False

    def __init__(self, kind: str, options: dict, size: int, device="cpu", seed: int = 0, frames: bool = False):
        if kind not in KINDS:
            raise UserError(f"unknown BPTT model {kind!r}; known: {', '.join(KINDS)}")
        if frames and (options["input"] != "onehot" or options["embed"] is not None):
            raise UserError("--input/--embed apply to symbols; frames go into the first layer as they are")
        self.kind = kind
        self.frames = bool(frames)
        self.metric = "bce" if self.frames else "bpc"
        self._score = score_frames if self.frames else score_logits
        self.options = dict(options)
        self.window = parse_bptt(options["bptt"])
        try:
            self.clip = float(options["clip_grad"])
        except (TypeError, ValueError):
            self.clip = float("nan")
        if not self.clip >= 0:
            raise UserError(f"--clip-grad must be non-negative (0: off), got {options['clip_grad']}")
        self.device = torch.device(device)
        self.vocab = int(size)
        generator = torch.Generator().manual_seed(int(seed))
        try:
            self.model = build_model(kind, size, options["hidden"], options["input"], options["embed"],
                                     options.get("activation", "tanh"), generator).to(self.device)
        except ValueError as err:  # a bad width, input or activation
            raise UserError(str(err)) from None
        self._opt = LazyOptimizer(options, self.model.parameters)
        self._train: Optional[tuple] = None  # (state, pending id [B]) carried by training
        self._eval: Optional[tuple] = None   # the same for evaluation

    @property
    def opt(self) -> torch.optim.Optimizer:
        """The optimizer, built on first use (evaluation and sampling never need it)."""
        return self._opt.get()

    # ------------------------------------------------------------------ segments

    def _run(self, batch, carried: Optional[tuple], learn: bool) -> tuple[Tally, tuple]:
        tokens = batch.tokens.to(self.device)
        score_cpu = batch.score
        if batch.reset or carried is None:
            if bool(score_cpu[0].any()):
                raise ValueError("a batch that starts new sequences cannot score its first position")
            state, inputs, targets, score_cpu = None, tokens[:-1], tokens[1:], score_cpu[1:]
        else:
            state, pending = carried
            inputs, targets = torch.cat([pending.unsqueeze(0), tokens[:-1]]), tokens
        score = score_cpu.to(self.device)
        steps = inputs.shape[0]
        K = self.window or max(steps, 1)
        bits = torch.zeros((), device=self.device)
        hits = torch.zeros((), dtype=torch.long, device=self.device)
        for s in range(0, steps, K):
            n = int(score_cpu[s:s + K].sum())
            with torch.set_grad_enabled(learn):
                top, state = self.model(inputs[s:s + K], state)
                logits = self.model.logits(top).reshape(-1, self.vocab)
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
                    loss = (nats * m).sum() / n
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if self.clip > 0:
                        nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
                    self.opt.step()
            state = _detach(state)
        return Tally(float(bits), batch.n_scored, int(hits)), (state, tokens[-1])

    def train_segment(self, batch) -> Tally:
        self.model.train()
        tally, self._train = self._run(batch, self._train, learn=True)
        return tally

    @torch.no_grad()
    def eval_segment(self, batch, correction: bool = True) -> Tally:
        if not correction:
            raise UserError(f"model {self.kind} has no state-correction phase to switch off")
        self.model.eval()
        tally, self._eval = self._run(batch, self._eval, learn=False)
        return tally

    @torch.no_grad()
    def predict_frames(self, frames: torch.Tensor, correction: bool = True) -> torch.Tensor:
        """The prediction of each frame of one sequence ``frames`` [T, D], made before seeing it
        ([T, D]; row 0, made from nothing, is NaN). Weights frozen."""
        if not correction:
            raise UserError(f"model {self.kind} has no state-correction phase to switch off")
        self.model.eval()
        top, _ = self.model(frames[:-1].to(self.device).unsqueeze(1), None)
        probs = torch.sigmoid(self.model.logits(top[:, 0]).float()).cpu()
        return torch.cat([torch.full((1, frames.shape[1]), float("nan")), probs])

    @torch.no_grad()
    def sample(self, prime: torch.Tensor, length: int, temperature: float, generator: torch.Generator) -> torch.Tensor:
        prime = prime.to(self.device).view(-1, 1)
        state = self.model(prime[:-1], None)[1] if len(prime) > 1 else None
        x = prime[-1:]
        out = torch.zeros(length, dtype=torch.long)
        for i in range(length):
            top, state = self.model(x, state)
            logits = self.model.logits(top[-1, 0]).float().cpu()
            if temperature == 0:
                out[i] = logits.argmax()
            else:
                out[i] = torch.multinomial(torch.softmax(logits / temperature, dim=0), 1, generator=generator)[0]
            x = out[i:i + 1].view(1, 1).to(self.device)
        return out

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        carry = None
        if self._train is not None:
            state, pending = self._train
            carry = {"state": None if state is None else [list(s) if isinstance(s, tuple) else [s] for s in state],
                     "pending": pending}
        opt = self._opt.state_dict()
        return {"model": self.model.state_dict(), "optimizer": opt, "carry": carry}

    def load_state_dict(self, d: dict) -> None:
        self.model.load_state_dict(d["model"])
        self._opt.load_state_dict(d["optimizer"])
        carry, self._train, self._eval = d["carry"], None, None
        if carry is not None:
            state = carry["state"]
            if state is not None:
                state = [tuple(t.to(self.device) for t in s) if self.kind == "lstm" else s[0].to(self.device)
                         for s in state]
            self._train = (state, carry["pending"].to(self.device))

"""The sequence-learner protocol: what every learner of ``tncn.temporal.LEARNERS`` declares and shares.

A sequence learner owns a model, its optimizer and the state it carries from one segment of a
stream to the next. The training loop (``tncn.train``), ``tncn compare``, ``tncn continual``, the
run folders and the conformance test (tests/test_conformance.py) talk to it only through this
class; a worked example is docs/adding_a_learner.md.

**Declared on the class** (read by the command line, sizing and tables; nothing branches on names):

- ``name``: the registry key (``tncn train --model NAME``); ``label``: its name in tables;
- ``OPTIONS``: its options, a tuple of ``tncn.options.Option`` (every learner has ``hidden``, the
  widths of its layers, and the optimizer options of ``tncn.optim.optimizer_options``);
- ``inputs``: what it reads: ``"tokens"`` (ids; a softmax output, scored in bits) and/or
  ``"frames"`` (flattened video frames in [0, 1]; a sigmoid output per pixel, scored by binary
  cross-entropy per frame);
- ``has_correction``: it has a state-correction phase that evaluation can switch off;
- ``autograd``: it learns by autograd through time (BPTT); else by a local or online rule that
  runs under ``torch.no_grad()`` with memory flat in sequence length;
- ``n_params(size, hidden, options)``: its weight count in closed form (trainable and fixed; None
  where it does not declare one), so that ``--match params`` can size it (``width_for_params``);
  ``depth``: the number of layers ``--match params`` gives it (None: the first model's depth);
  ``check_fit(size, options, batch)``: refuses, before a run starts, a model that cannot train on
  that batch (RTRL's memory).

**The protocol** (implemented here once, for every learner):

``train_segment(batch) -> Tally``
    learn from one ``sequences.batching.Batch`` (``tokens`` [T, B] ids or [T, B, D] frames,
    ``mask``/``score`` [T, B], ``reset``): start from a zero state when ``batch.reset``, else
    continue the training state carried from the previous call. Returns the summed loss (bits,
    or BCE nats for frames), count and top-1 hits (``tncn.metrics.Tally``) of the predictions of
    the scored positions, each made before the learner saw that symbol and before it learned from
    it. ``mask`` 0 (padding) is no symbol at all: nothing learns from it or is driven by it.
``eval_segment(batch, correction=True) -> Tally``
    score the same way without changing any weight. Evaluation keeps its own state and leaves
    the training state and the learner's random state untouched, so a validation pass in the
    middle of a stream does not change what training does next. ``correction=False``: score
    without the state-correction phase (only if ``has_correction``).
``sample(prime, length, temperature, generator) -> LongTensor[length]``
    observe the ids ``prime`` (1-D, at least one), then draw ``length`` ids one at a time, each
    observed before the next is drawn (``temperature`` 0: the most probable id). Tokens only.
``predict_frames(frames, correction=True) -> Tensor``
    the predictions [T, D] of one sequence of frames [T, D], each made before seeing its frame
    (row 0 NaN), weights frozen. Frames only.
``state_dict() -> dict`` / ``load_state_dict(d)``
    everything resuming needs: weights, optimizer state, the carried training state and the
    learner's random state; tensors and plain containers only (``torch.load(weights_only=True)``).

**Hooks a learner implements**: ``build()`` (its ``nn.Module``, from ``self.options``,
``self.size``, ``self.frames`` and ``self.generator``), ``_segment(batch, learn, correction)``,
``_next_logits(ids, start)``, ``_predict_frames(frames, correction)`` (frames only),
``carry_state()`` / ``load_carry_state(state)``, and ``n_params`` where it can.

**Data parallelism** (``tncn.distributed``, under torchrun): ``distribute(group)`` makes every
``train_segment`` and ``eval_segment`` run on the rank's shard of the batch and return the global
tally (under ``average``, evaluation scores rank 0's weights, the ones a checkpoint keeps). In ``exact`` mode a learner that declares ``data_parallel`` (how its ranks combine into the
one-process update) implements the hook ``_exact_parallel(group)``; under ``average`` (local SGD)
any learner trains on its shard and the parameters are averaged every k steps.
``rank_state(whole)`` / ``load_rank_state(d)`` are what differs between the ranks (the carried
state and the random state; ``whole``: everything, for average mode), saved per rank.
"""
from __future__ import annotations

import abc
from typing import ClassVar, Optional

import torch
from torch import nn

from tncn import distributed, options as opts
from tncn.errors import UserError
from tncn.metrics import Tally, score_frames, score_logits
from tncn.optim import LazyOptimizer


def hidden_option(default: list, help: str = "widths of the layers, e.g. 256,256") -> opts.Option:
    """The ``hidden`` option every sequence learner declares."""
    return opts.Option("hidden", opts.WIDTHS, list(default), help)


def draw(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> int:
    """One id from ``softmax(logits / temperature)`` (temperature 0: the most probable id)."""
    logits = logits.float().cpu()
    if not bool(torch.isfinite(logits).all()):
        raise UserError("the model's predictions are not finite numbers (its weights overflowed in training), "
                        "so nothing can be drawn from it")
    if temperature == 0:
        return int(logits.argmax())
    return int(torch.multinomial(torch.softmax(logits / temperature, dim=0), 1, generator=generator)[0])


def load_module(module: nn.Module, state: dict) -> None:
    """``module.load_state_dict(state)``, or a one-line ValueError naming the missing, unexpected
    and misshapen tensors."""
    own = module.state_dict()

    def names(keys: list) -> str:
        return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} where the model has {tuple(own[k].shape)}" for k in own
              if k in state and torch.is_tensor(state[k]) and state[k].shape != own[k].shape]
    problems = ([f"missing {names(missing)}"] if missing else []) + \
               ([f"unexpected {names(unexpected)}"] if unexpected else []) + \
               ([f"saved {names(shapes)}"] if shapes else [])
    if problems:
        raise ValueError(f"the saved weights do not fit a {type(module).__name__}: {'; '.join(problems)}")
    module.load_state_dict(state)


class SequenceLearner(abc.ABC):
    """Base of every sequence learner (see the module docstring for the protocol)."""

    name: ClassVar[str]
    label: ClassVar[str]
    OPTIONS: ClassVar[tuple] = ()
    inputs: ClassVar[tuple] = ("tokens", "frames")
    has_correction: ClassVar[bool] = False
    autograd: ClassVar[bool] = False
    depth: ClassVar[Optional[int]] = None
    data_parallel: ClassVar[Optional[str]] = None  # how exact data parallelism combines the ranks

    def __init__(self, options: dict, size: int, device="cpu", seed: int = 0, frames: bool = False):
        """A fresh learner for token ids (``size``: the vocabulary) or frames (``size``: pixels per
        frame); options not given take their declared defaults."""
        self.options = self.read_options(options)
        what = "frames" if frames else "tokens"
        if what not in self.inputs:
            raise UserError(f"model {self.name} reads {' and '.join(self.inputs)}, not {what}")
        if int(size) <= 0:
            raise UserError(f"the observation size must be positive, got {size}")
        self.size, self.frames = int(size), bool(frames)
        self.metric = "bce" if self.frames else "bpc"
        self._score = score_frames if self.frames else score_logits
        self.device = torch.device(device)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        try:
            self.model: nn.Module = self.build().to(self.device)
        except ValueError as err:  # an impossible combination of options the model refuses
            raise UserError(f"model {self.name}: {err}") from None
        self._opt = LazyOptimizer(self.options, self.param_groups)
        self._mode = "train"
        self._stash = None  # (carried training state, generator state) while evaluating or sampling
        self.group = None  # the ranks this learner trains with (tncn.distributed.Group), None: alone

    # ------------------------------------------------------------------ declarations

    @classmethod
    def read_options(cls, given: dict) -> dict:
        """The complete, checked options: ``given`` values over the declared defaults."""
        return opts.read(cls.OPTIONS, given, f"model {cls.name}")

    @classmethod
    def defaults(cls) -> dict:
        return opts.defaults(cls.OPTIONS)

    @classmethod
    def n_params(cls, size: int, hidden: list, options: dict) -> Optional[int]:
        """Weights (trainable and fixed) of the model for ``size`` and widths ``hidden``, in closed
        form; None: not declared (``--match params`` cannot size this learner)."""
        return None

    @classmethod
    def width_for_params(cls, size: int, layers: int, target: int, options: dict) -> int:
        """The width H whose model [H] * layers has the weight count closest to ``target``."""
        def count(h):
            return cls.n_params(size, [h] * layers, options)
        if count(1) is None:
            raise UserError(f"model {cls.name} declares no parameter count, so it cannot be sized to match "
                            f"another model's; give its hidden widths")
        lo, hi = 1, 1
        while count(hi) < target:
            hi *= 2
        while lo < hi:  # the smallest h with count(h) >= target
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if count(mid) < target else (lo, mid)
        return lo - 1 if lo > 1 and target - count(lo - 1) <= count(lo) - target else lo

    @classmethod
    def check_fit(cls, size: int, options: dict, batch: int) -> None:
        """Refuse, with a one-line UserError, a model too large to train on ``batch`` streams
        (RTRL's influence matrices); called before a run writes anything. Default: every size fits."""

    @classmethod
    def check_parallel(cls, options: dict, mode: str) -> None:
        """Refuse, with a one-line UserError, to train with ``options`` in the data-parallel
        ``mode`` (``tncn.distributed``); called before a run writes anything."""
        if mode == "exact" and cls.data_parallel is None:
            raise UserError(f"model {cls.name} has no exact data-parallel rule; train it with --parallel average "
                            f"(local SGD)")

    @classmethod
    def training_label(cls, options: dict) -> str:
        """How it learns, for tables."""
        return "BPTT" if cls.autograd else "local rule (no autograd)"

    def n_weights(self) -> int:
        """Weights the built model holds: parameters and fixed random buffers."""
        return sum(t.numel() for t in (*self.model.parameters(), *self.model.buffers()))

    # ------------------------------------------------------------------ hooks

    @abc.abstractmethod
    def build(self) -> nn.Module:
        """The model, from ``self.options``, ``self.size``, ``self.frames`` and ``self.generator``."""

    @abc.abstractmethod
    def _segment(self, batch, learn: bool, correction: bool = True) -> Tally:
        """Run over one batch (on ``self.device``, see ``_on_device``); ``learn``: update weights."""

    @abc.abstractmethod
    def _next_logits(self, ids: torch.Tensor, start: bool) -> torch.Tensor:
        """Observe ``ids`` (on the device; from a fresh one-row state when ``start``) and return
        the logits [V] of the symbol after them."""

    def _predict_frames(self, frames: torch.Tensor, correction: bool) -> torch.Tensor:
        raise NotImplementedError  # a learner of frames implements it

    @abc.abstractmethod
    def carry_state(self):
        """The training state carried to the next segment, as plain data (None: none)."""

    @abc.abstractmethod
    def load_carry_state(self, state) -> None:
        """Restore what ``carry_state`` returned (None: no state; the next batch starts sequences)."""

    def _exact_parallel(self, group) -> None:
        """Combine the ranks' updates into the one-process update (learners with ``data_parallel``)."""
        raise NotImplementedError

    def param_groups(self):
        """What the optimizer updates: the model's parameters (a learner may give groups with
        their own learning rates, as torch optimizers take them)."""
        return self.model.parameters()

    # ------------------------------------------------------------------ shared

    @property
    def opt(self) -> torch.optim.Optimizer:
        """The optimizer, built on first use (evaluation and sampling never need it)."""
        return self._opt.get()

    def _on_device(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's tokens (or frames), mask and score on the learner's device."""
        return batch.tokens.to(self.device), batch.mask.to(self.device), batch.score.to(self.device)

    def _enter(self, mode: str) -> None:
        """Switch between training and evaluation/sampling, keeping the training state aside."""
        if mode == self._mode:
            return
        if self._mode == "train":
            self._stash = (self.carry_state(), self.generator.get_state())
            self.load_carry_state(None)
        if mode == "train":
            carry, gen = self._stash
            self.load_carry_state(carry)
            self.generator.set_state(gen)
            self._stash = None
        self._mode = mode

    def _check_correction(self, correction: bool) -> None:
        if not correction and not self.has_correction:
            raise UserError(f"model {self.name} has no state-correction phase to switch off")

    # ------------------------------------------------------------------ the protocol

    def train_segment(self, batch) -> Tally:
        self._enter("train")
        g = self.group
        with torch.set_grad_enabled(self.autograd):
            tally = self._segment(batch if g is None else distributed.shard(batch, g), learn=True)
        self._opt.advance()
        if g is None:
            return tally
        g.steps += 1
        if g.mode == "average":
            g.average(self.model, g.steps)
        return g.tally(tally)

    @torch.no_grad()
    def eval_segment(self, batch, correction: bool = True) -> Tally:
        self._check_correction(correction)
        self._enter("eval")
        g = self.group
        if g is None:
            return self._segment(batch, learn=False, correction=correction)
        if g.mode == "average":  # the ranks' weights differ between averagings: rank 0's (the saved ones) score
            return g.share(self._segment(batch, learn=False, correction=correction) if g.main else Tally())
        return g.tally(self._segment(distributed.shard(batch, g), learn=False, correction=correction))

    def distribute(self, group) -> None:
        """Train with the ranks of ``group`` (``tncn.distributed``): rank 0's weights on every
        rank, a noise generator seeded with seed + rank on each rank > 0, and in ``exact`` mode
        the learner's own way of combining the ranks' updates."""
        self.check_parallel(self.options, group.mode)
        group.same_start(self.model)
        if group.rank:
            self.generator.manual_seed(self.seed + group.rank)
        self.group = group
        if group.mode == "exact":
            self._exact_parallel(group)

    def rank_state(self, whole: bool) -> dict:
        """What differs between the ranks: the carried state and the random state (``whole``:
        the whole ``state_dict``, as ranks that average their weights only now and then need)."""
        if whole:
            return self.state_dict()
        carry, gen = (self.carry_state(), self.generator.get_state()) if self._mode == "train" else self._stash
        return {"carry": carry, "generator": gen}

    def load_rank_state(self, d: dict) -> None:
        if "model" in d:
            self.load_state_dict(d)
            return
        self._mode, self._stash = "train", None
        self.load_carry_state(d["carry"])
        self.generator.set_state(d["generator"])

    @torch.no_grad()
    def sample(self, prime: torch.Tensor, length: int, temperature: float, generator: torch.Generator) -> torch.Tensor:
        if self.frames:
            raise UserError(f"this {self.name} model predicts frames; sampling draws symbols")
        self._enter("sample")
        out = torch.zeros(length, dtype=torch.long)
        if length:
            logits = self._next_logits(prime.to(self.device), start=True)
            for i in range(length):
                out[i] = draw(logits, temperature, generator)
                if i + 1 < length:
                    logits = self._next_logits(out[i:i + 1].to(self.device), start=False)
        return out

    @torch.no_grad()
    def predict_frames(self, frames: torch.Tensor, correction: bool = True) -> torch.Tensor:
        if not self.frames:
            raise UserError(f"this {self.name} model predicts symbols, not frames")
        self._check_correction(correction)
        self._enter("eval")
        return self._predict_frames(frames.to(self.device), correction)

    def state_dict(self) -> dict:
        carry, gen = (self.carry_state(), self.generator.get_state()) if self._mode == "train" else self._stash
        return {"model": self.model.state_dict(), "optimizer": self._opt.state_dict(), "carry": carry,
                "generator": gen}

    def load_state_dict(self, d: dict) -> None:
        load_module(self.model, d["model"])
        self._opt.load_state_dict(d["optimizer"])
        self._mode, self._stash = "train", None
        self.load_carry_state(d["carry"])
        if d.get("generator") is not None:  # checkpoints of BPTT runs made before it was saved lack it
            self.generator.set_state(d["generator"])


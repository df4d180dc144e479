"""The generic loop that trains and evaluates sequence models, whatever their learning rule.

The loop talks to a *learner*: an object that owns a model, its optimizer and its carried state,
and keeps this protocol (the P-TNCN one is ``tncn.temporal.ptncn_learner.PTNCNLearner``):

``kind: str``
    its registry name (a key of ``LEARNERS``), saved in checkpoints.
``options: dict``
    JSON-able options that, with the observation size, rebuild it: ``build_learner(kind, options,
    size, device, seed, frames)``; the keys are those of its module's ``DEFAULTS``.
``frames: bool`` / ``metric: str``
    whether it models token ids (``size`` = the vocabulary; metric ``"bpc"``, bits per symbol) or
    video frames (``size`` = pixels per frame; metric ``"bce"``, binary cross-entropy per frame).
``has_correction: bool``
    whether it has a state-correction phase that evaluation can switch off.
``train_segment(batch) -> Tally``
    learn from one ``sequences.batching.Batch`` (``tokens`` [T, B] ids or [T, B, D] frames,
    ``mask``/``score`` [T, B], ``reset``): start from a zero state when ``batch.reset``,
    otherwise continue the training state carried from the previous call. Returns the summed
    loss (bits, or BCE nats for frames), count and top-1 hits (``tncn.metrics.Tally``) of the
    predictions of the scored positions, each made before the learner saw that symbol (and
    before it learned from it). Batches live on the CPU (the learner moves them to its device);
    ``mask`` is float 1/0, and a 0 (padding) is no symbol at all: nothing learns from it or is
    driven by it.
``eval_segment(batch, correction=True) -> Tally``
    score the same way without changing any weight. Evaluation keeps its own state (started by
    ``batch.reset``) and leaves the training state and the learner's random state untouched, so
    a validation pass in the middle of a stream does not change what training does next.
    ``correction=False``: score without the state-correction phase (only if ``has_correction``).
``sample(prime, length, temperature, generator) -> LongTensor[length]``
    observe the ids ``prime`` (1-D, at least one), then draw ``length`` ids one at a time, each
    observed before the next is drawn (``temperature`` 0: the most probable id). Leaves the
    training state untouched. Symbols only.
``predict_frames(frames, correction=True) -> Tensor``
    the predictions [T, D] of one sequence of frames [T, D], each made before seeing its frame
    (row 0 NaN), weights frozen. Frames only.
``state_dict() -> dict`` / ``load_state_dict(d)``
    everything that resuming needs: model weights, optimizer state, the carried training state,
    the learner's random state; tensors and plain containers only (``torch.load(weights_only)``).

A new learner registers its module in ``LEARNERS``; the module defines ``DEFAULTS`` (option name
-> default) and ``build(options, size, device, seed, frames)``. ``make_optimizer`` (the optimizer
options ``optimizer``, ``lr``, ``momentum``, ``weight_decay``) is shared.

``fit`` runs the loop: batches from ``sequences.batching`` (``epoch(e, start)``), a budget in
steps (training batches), epochs, minutes or tokens, a validation pass every ``eval_every`` steps
and at the end, a tqdm bar with tokens/s and the running score. Its ``Progress`` is plain data that a
checkpoint stores, so a resumed run continues exactly where the saved one stopped.
"""
from __future__ import annotations

import copy
import importlib
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Optional

import torch

from tncn.errors import UserError
from tncn.metrics import METRICS, Tally

LEARNERS = {"ptncn": "tncn.temporal.ptncn_learner", "rnn": "tncn.temporal.bptt_rnn", "gru": "tncn.temporal.bptt_gru",
            "lstm": "tncn.temporal.bptt_lstm", "elman": "tncn.temporal.bptt_elman"}
OPTIMIZERS = ("sgd", "nesterov", "adam")
BUDGET_KEYS = ("steps", "epochs", "minutes", "tokens")


def learner_module(kind: str):
    if kind not in LEARNERS:
        raise UserError(f"unknown model {kind!r}; known: {', '.join(LEARNERS)}")
    return importlib.import_module(LEARNERS[kind])


def build_learner(kind: str, options: dict, size: int, device="cpu", seed: int = 0, frames: bool = False):
    """A fresh learner of registry name ``kind`` (options missing from ``options`` take defaults)
    for token ids (``size``: the vocabulary size) or frames (``size``: pixels per frame)."""
    module = learner_module(kind)
    unknown = set(options) - set(module.DEFAULTS)
    if unknown:
        raise UserError(f"options {', '.join(sorted(unknown))} do not apply to model {kind}")
    return module.build({**module.DEFAULTS, **options}, size, device, seed, frames)


def make_optimizer(name: str, lr: float, momentum: Optional[float] = None,
                   weight_decay: float = 0.0) -> Callable[[Iterable], torch.optim.Optimizer]:
    """Check the settings now and return ``params -> optimizer``: ``sgd`` (momentum optional, 0 by
    default), ``nesterov`` (SGD with Nesterov momentum, 0.95 by default) or ``adam``.

    Building a torch optimizer imports torch's compiler stack (seconds), which a learner can
    defer until it trains: evaluation and sampling never need it. The optimizers use torch's fused
    kernels (one pass over each weight; at H = 1000 the fused Nesterov step takes about half the
    time of the default one, see docs/performance.md); their numbers equal the default kernels'
    up to float rounding."""
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if not lr > 0:
        raise UserError(f"the learning rate must be positive, got {lr}")
    if weight_decay < 0:
        raise UserError(f"the weight decay must be non-negative, got {weight_decay}")
    if name == "adam":
        if momentum is not None:
            raise UserError("--momentum applies to sgd and nesterov, not adam")
        return lambda params: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    momentum = (0.95 if name == "nesterov" else 0.0) if momentum is None else momentum
    if not 0 <= momentum < 1 or (name == "nesterov" and momentum == 0):
        raise UserError(f"momentum must be in [0, 1) (and positive for nesterov), got {momentum}")
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=name == "nesterov",
                                          weight_decay=weight_decay, fused=True)


class LazyOptimizer:
    """The optimizer a learner's ``options`` name, built on first use (evaluation and sampling never
    need it); its state can be saved and loaded before it exists."""

    def __init__(self, options: dict, params: Callable[[], Iterable]):
        self._new = make_optimizer(options["optimizer"], options["lr"], options["momentum"], options["weight_decay"])
        self._params = params
        self._opt: Optional[torch.optim.Optimizer] = None
        self._pending: Optional[dict] = None  # a loaded state, applied when the optimizer is built

    def get(self) -> torch.optim.Optimizer:
        if self._opt is None:
            self._opt = self._new(self._params())
            if self._pending is not None:
                self._opt.load_state_dict(self._pending)
                self._pending = None
        return self._opt

    def state_dict(self) -> dict:
        return self._pending if self._opt is None and self._pending is not None else self.get().state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._opt, self._pending = None, copy.deepcopy(state)  # never share moment buffers


# --------------------------------------------------------------------------- evaluation

def evaluate(learner, batches, correction: bool = True) -> Tally:
    """Score every scored symbol of ``batches`` (one pass in fixed order) without learning."""
    if not correction and not learner.has_correction:
        raise UserError(f"model {learner.kind} has no state-correction phase to switch off")
    total = Tally()
    for batch in batches.epoch(None):
        total = total + learner.eval_segment(batch, correction=correction)
    return total


def generate(learner, vocab, prime: str, length: int, temperature: float = 1.0, seed: int = 0) -> tuple[str, int]:
    """``length`` symbols that continue ``prime`` as text, and how many prime symbols were unknown.

    An empty prime starts from one symbol drawn from the training unigram distribution."""
    if length < 0:
        raise UserError(f"the sample length must be non-negative, got {length}")
    if temperature < 0:
        raise UserError(f"the temperature must be non-negative, got {temperature}")
    g = torch.Generator().manual_seed(seed)
    ids, unknown = vocab.encode(prime if vocab.level == "char" else prime.split())
    drawn = []
    if len(ids) == 0:
        if length == 0:
            return "", 0
        counts = torch.tensor(vocab.counts, dtype=torch.float64)
        ids = torch.multinomial(counts, 1, generator=g)
        drawn, length = ids.tolist(), length - 1
    out = learner.sample(ids, length, temperature, g) if length else torch.zeros(0, dtype=torch.long)
    return vocab.decode(drawn + out.tolist()), unknown


# --------------------------------------------------------------------------- training

@dataclass
class Budget:
    """When training stops: after ``steps`` batches, ``epochs`` passes, ``minutes`` of wall time
    or ``tokens`` real training symbols (frames for video)."""

    steps: Optional[int] = None
    epochs: Optional[int] = None
    minutes: Optional[float] = None
    tokens: Optional[int] = None

    def __post_init__(self):
        given = [v for v in (self.steps, self.epochs, self.minutes, self.tokens) if v is not None]
        if len(given) != 1:
            raise UserError(f"give exactly one of {', '.join('--' + k for k in BUDGET_KEYS)}")
        if not given[0] > 0:
            raise UserError(f"the training budget must be positive, got {given[0]}")

    def total_steps(self, per_epoch: int) -> Optional[int]:
        return self.steps if self.steps is not None else (self.epochs * per_epoch if self.epochs else None)

    def spent(self, p: "Progress") -> bool:
        if self.steps is not None:
            return p.step >= self.steps
        if self.epochs is not None:
            return p.epoch >= self.epochs
        if self.tokens is not None:
            return p.tokens >= self.tokens
        return p.elapsed_s >= 60.0 * self.minutes


NEVER = Budget(steps=sys.maxsize)
"""A budget that is never spent: ``fit``'s ``should_stop`` ends such a run (at marks of a budget
counted in training time or tokens, as ``tncn compare`` and ``tncn continual`` do)."""


@dataclass
class Progress:
    """Where a run stands; plain data, saved with each checkpoint."""

    step: int = 0          # training batches done
    epoch: int = 0         # the current pass over the training split
    batch: int = 0         # batches done in the current pass
    tokens: int = 0        # real training symbols consumed
    elapsed_s: float = 0.0  # wall time, evaluation included
    train_s: float = 0.0   # wall time inside train_segment
    running: list = field(default_factory=lambda: Tally().to_list())  # training Tally since the last record
    mark: list = field(default_factory=lambda: [0, 0.0])  # tokens and train_s at the last record
    records: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, resume: bool = False) -> "Progress":
        """``resume``: drop the end-of-run record, which the continued run replaces."""
        p = cls(**d)
        if resume:
            p.records = [r for r in p.records if not r.get("final")]
        return p


def fit(learner, train, valid, budget: Budget, eval_every: int = 0, progress: Optional[Progress] = None,
        on_record: Optional[Callable[[dict, Progress], None]] = None,
        should_stop: Callable[[], bool] = lambda: False, bar: bool = True) -> tuple[Progress, bool]:
    """Train until ``budget`` is spent; validate every ``eval_every`` steps (0: only at the end).

    Each validation appends a record (``step``, ``epoch``, ``tokens``, ``elapsed_s``,
    ``train_bpc`` over the batches since the previous record, ``valid_bpc``,
    ``valid_accuracy``, ``tokens_per_s`` of training since the previous record; for a frame
    learner ``train_bce`` and ``valid_bce`` in place of the BPC and accuracy keys; ``final`` on the
    end-of-run record when it falls between periodic ones) and calls ``on_record(record,
    progress)``. ``should_stop`` is asked between batches (e.g. after Ctrl-C). Returns the progress
    and whether the run was stopped early (then without a final validation).
    """
    from tqdm.auto import tqdm

    p = progress or Progress()
    per_epoch = len(train)
    clock = time.perf_counter() - p.elapsed_s
    total = budget.total_steps(per_epoch)
    pbar = tqdm(total=total, initial=p.step, disable=not bar, unit="step", dynamic_ncols=True, mininterval=1.0)
    session = (p.tokens, p.train_s)
    stopped = False
    metric = learner.metric

    def record(final: bool) -> None:
        running = Tally(*p.running)
        v = evaluate(learner, valid)
        p.elapsed_s = time.perf_counter() - clock
        dt = p.train_s - p.mark[1]
        rec = dict(step=p.step, epoch=round(p.epoch + p.batch / per_epoch, 4), tokens=p.tokens,
                   elapsed_s=round(p.elapsed_s, 3), **{f"train_{metric}": running.mean, f"valid_{metric}": v.mean})
        if metric == "bpc":
            rec["valid_accuracy"] = v.accuracy
        rec["tokens_per_s"] = round((p.tokens - p.mark[0]) / dt, 1) if dt > 0 else None
        if final:
            rec["final"] = True
        else:
            p.running, p.mark = Tally().to_list(), [p.tokens, p.train_s]
        p.records.append(rec)
        if on_record is not None:
            on_record(rec, p)
        pbar.write(f"step {p.step}: train {running.mean:.4f}  valid {v.mean:.4f} {METRICS[metric].short}  "
                   f"({p.tokens:,} tokens, {p.elapsed_s:.0f} s)", file=sys.stderr)

    try:
        while not budget.spent(p):
            for batch in train.epoch(p.epoch, start=p.batch):
                t0 = time.perf_counter()
                stats = learner.train_segment(batch)
                t1 = time.perf_counter()
                p.train_s += t1 - t0
                p.elapsed_s = t1 - clock
                p.step, p.batch, p.tokens = p.step + 1, p.batch + 1, p.tokens + batch.n_tokens
                p.running = (Tally(*p.running) + stats).to_list()
                pbar.update(1)
                rate = (p.tokens - session[0]) / max(p.train_s - session[1], 1e-9)
                pbar.set_postfix_str(f"{rate:,.0f} tok/s, {metric} {Tally(*p.running).mean:.3f}", refresh=False)
                if eval_every and p.step % eval_every == 0:
                    record(final=False)
                if should_stop():
                    stopped = True
                    break
                if budget.spent(p):
                    break
            else:
                p.epoch, p.batch = p.epoch + 1, 0
            if stopped:
                break
        if not stopped and (not p.records or p.records[-1]["step"] != p.step):
            record(final=True)
    finally:
        pbar.close()
    return p, stopped

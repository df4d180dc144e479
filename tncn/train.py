"""The generic loop that trains and evaluates sequence models, whatever their learning rule.

It talks to a learner through the protocol of ``tncn.temporal.base.SequenceLearner`` (registry:
``tncn.temporal.LEARNERS``). ``fit`` runs the loop: batches from ``sequences.batching``
(``epoch(e, start)``), a ``Budget`` in steps (training batches), epochs, minutes or tokens, or a
stop rule of the caller's (``until``), a validation pass every ``eval_every`` steps and at the
end, and a tqdm bar with tokens/s and the running score. Its ``Progress`` is plain data that a
checkpoint stores, so a resumed run continues exactly where the saved one stopped. ``fit_marks``
trains for a budget of training time or tokens in equal legs, calling back after each (what
``tncn compare`` and ``tncn continual`` score along a run).
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch

from tncn.errors import UserError
from tncn.guard import Diverged, Watch, check_loss, check_weights
from tncn.metrics import METRICS, Tally

BUDGET_KEYS = ("steps", "epochs", "minutes", "tokens")


# --------------------------------------------------------------------------- evaluation

def evaluate(learner, batches, correction: bool = True) -> Tally:
    """Score every scored symbol of ``batches`` (one pass in fixed order) without learning."""
    total = Tally()
    for batch in batches.epoch(None):
        total = total + learner.eval_segment(batch, correction=correction)
    return total


def generate(learner, vocab, prime: str, length: int, temperature: float = 1.0, seed: int = 0) -> tuple[str, int]:
    """``length`` symbols that continue ``prime`` as text, and how many prime symbols were unknown.

    An empty prime starts from one symbol drawn from the training unigram distribution."""
    if length < 0:
        raise UserError(f"the sample length must be non-negative, got {length}")
    if not temperature >= 0 or temperature == float("inf"):
        raise UserError(f"the temperature must be a non-negative number, got {temperature}")
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


def fit(learner, train, valid, budget: Optional[Budget] = None, eval_every: int = 0,
        progress: Optional[Progress] = None, on_record: Optional[Callable[[dict, Progress], None]] = None,
        should_stop: Callable[[], bool] = lambda: False, until: Optional[Callable[[Progress], bool]] = None,
        bar: bool = True, baseline: Optional[float] = None, verbose: bool = True) -> tuple[Progress, bool]:
    """Train until ``budget`` is spent or ``until(progress)`` is true (at least one of the two);
    validate on ``valid`` every ``eval_every`` steps and at the end (``valid`` None: never).

    Each validation appends a record (``step``, ``epoch``, ``tokens``, ``elapsed_s``,
    ``train_bpc`` over the batches since the previous record, ``valid_bpc``,
    ``valid_accuracy``, ``tokens_per_s`` of training since the previous record; for a frame
    learner ``train_bce`` and ``valid_bce`` in place of the BPC and accuracy keys; ``final`` on the
    end-of-run record when it falls between periodic ones) and calls ``on_record(record,
    progress)``. ``should_stop`` is asked between batches (e.g. after Ctrl-C). Returns the progress
    and whether the run was stopped early (then without a final validation).

    The divergence guard (``tncn.guard``) raises ``Diverged`` when a step's training loss is not
    finite, when a weight is not finite at a validation (before ``on_record``, so nothing
    non-finite is ever recorded or saved; the exception carries the record), or when a validation
    score is not finite or is worse than ``baseline`` (the no-context score) after an earlier one
    was better. ``bar``: show the progress bar; ``verbose``: print a line per validation (under
    torchrun rank 0 alone does both).
    """
    from tqdm.auto import tqdm

    if budget is None and until is None:
        raise ValueError("fit needs a budget or an until rule")
    if eval_every and valid is None:
        raise ValueError("eval_every needs validation batches")
    p = progress or Progress()
    per_epoch = len(train)
    clock = time.perf_counter() - p.elapsed_s
    pbar = tqdm(total=budget.total_steps(per_epoch) if budget else None, initial=p.step, disable=not bar,
                unit="step", dynamic_ncols=True, mininterval=1.0)
    session = (p.tokens, p.train_s)
    stopped = False
    metric = learner.metric
    watch = Watch(baseline).replay(r[f"valid_{metric}"] for r in p.records)

    def done() -> bool:
        return (budget is not None and budget.spent(p)) or (until is not None and until(p))

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
        try:
            check_weights(learner.model, p.step)
            watch.check(v.mean, p.step)
        except Diverged as err:
            err.record = rec
            raise
        if not final:
            p.running, p.mark = Tally().to_list(), [p.tokens, p.train_s]
        p.records.append(rec)
        if on_record is not None:
            on_record(rec, p)
        if verbose:
            pbar.write(f"step {p.step}: train {running.mean:.4f}  valid {v.mean:.4f} {METRICS[metric].short}  "
                       f"({p.tokens:,} tokens, {p.elapsed_s:.0f} s)", file=sys.stderr)

    try:
        while not done():
            for batch in train.epoch(p.epoch, start=p.batch):
                t0 = time.perf_counter()
                stats = learner.train_segment(batch)
                t1 = time.perf_counter()
                p.train_s += t1 - t0
                p.elapsed_s = t1 - clock
                p.step, p.batch, p.tokens = p.step + 1, p.batch + 1, p.tokens + batch.n_tokens
                p.running = (Tally(*p.running) + stats).to_list()
                check_loss(stats.total, p.step, learner.model)
                pbar.update(1)
                rate = (p.tokens - session[0]) / max(p.train_s - session[1], 1e-9)
                pbar.set_postfix_str(f"{rate:,.0f} tok/s, {metric} {Tally(*p.running).mean:.3f}", refresh=False)
                if eval_every and p.step % eval_every == 0:
                    record(final=False)
                if should_stop():
                    stopped = True
                    break
                if done():
                    break
            else:
                p.epoch, p.batch = p.epoch + 1, 0
            if stopped:
                break
        if not stopped and valid is not None and (not p.records or p.records[-1]["step"] != p.step):
            record(final=True)
    finally:
        pbar.close()
    return p, stopped


def fit_marks(learner, train, minutes: Optional[float] = None, tokens: Optional[int] = None, points: int = 1,
              on_mark: Callable[[Progress], None] = lambda p: None, progress: Optional[Progress] = None) -> Progress:
    """Train for ``minutes`` of training time (time inside ``train_segment``; scoring at the marks
    excluded) or ``tokens`` training symbols (exactly one), stopping at ``points`` evenly spaced
    marks of that budget and calling ``on_mark(progress)`` at each (the last at its end). The
    guard of ``fit`` runs, and the weights are checked before each mark. ``progress``: a fresh
    ``Progress`` to fill (it then shows how far a run got when the guard stopped it)."""
    if (minutes is None) == (tokens is None):
        raise ValueError("give exactly one of minutes or tokens")
    total, used = ((60.0 * minutes, lambda p: p.train_s) if minutes is not None else (tokens, lambda p: p.tokens))
    p = progress if progress is not None else Progress()
    for k in range(1, points + 1):
        mark = total * k / points
        fit(learner, train, None, progress=p, until=lambda p: used(p) >= mark, bar=False)
        check_weights(learner.model, p.step)
        on_mark(p)
    return p

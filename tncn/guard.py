"""The divergence guard every training loop runs: stop a run the moment it stops being a number.

A run has diverged when

- its training loss is not a finite number (NaN or ±inf), checked after every step;
- one of its weights is not finite, checked before every checkpoint and at every scoring, so a
  checkpoint never holds non-finite weights;
- a validation score is not finite; or
- a validation score is worse than the no-context baseline (the unigram entropy for symbols, the
  mean-pixel BCE for frames, the majority class for a classifier) after an earlier one was better
  (``Watch``): the model had learned something and lost it, which on these losses means the
  updates blew up, even while the numbers stay finite.

Each check raises ``Diverged``, whose message says what went wrong and at which step (or epoch);
``tncn.cli`` prints it as one line and exits with status 3. Scores are losses here (lower is
better) except for ``Watch(higher_is_better=True)``.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch

EXIT_STATUS = 3
"""The exit status of a command whose training diverged (2: bad input, 130: interrupted)."""


class Diverged(Exception):
    """A run stopped because it diverged; ``step`` (or epoch: ``unit``) and ``what`` say where and how;
    ``record`` is the validation record that showed it, if one did."""

    def __init__(self, step: int, what: str, unit: str = "step", record: Optional[dict] = None):
        self.step, self.what, self.unit, self.record = step, what, unit, record
        super().__init__(f"training diverged at {unit} {step}: {what}")

    def to_dict(self) -> dict:
        return {self.unit: self.step, "what": self.what}


def nonfinite(tensors: Iterable[tuple[str, torch.Tensor]]) -> Optional[str]:
    """The name of the first floating-point tensor with a NaN or infinite entry, else None."""
    for name, t in tensors:
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def check_weights(module: torch.nn.Module, step: int, unit: str = "step") -> None:
    """Raise ``Diverged`` when a parameter or buffer of ``module`` is not finite."""
    bad = nonfinite(module.state_dict().items())
    if bad is not None:
        raise Diverged(step, f"the weight {bad} is no longer finite", unit)


def check_loss(value: float, step: int, module: Optional[torch.nn.Module] = None, unit: str = "step") -> None:
    """Raise ``Diverged`` when the training loss ``value`` is not finite (naming a non-finite
    weight of ``module`` when one is)."""
    if not math.isfinite(value):
        bad = nonfinite(module.state_dict().items()) if module is not None else None
        why = f" (the weight {bad} is no longer finite)" if bad is not None else ""
        raise Diverged(step, f"the training loss is {value}{why}", unit)


class Watch:
    """The validation scores of one run: ``check(score, step)`` raises ``Diverged`` on a
    non-finite score, or on one worse than ``baseline`` after an earlier one was better, and
    returns whether the score is the best so far. ``replay(scores)`` feeds the scores of the
    part of a run done before a resume."""

    def __init__(self, baseline: Optional[float] = None, higher_is_better: bool = False, unit: str = "step",
                 name: str = "the validation score"):
        self.baseline, self.sign, self.unit, self.name = baseline, (-1.0 if higher_is_better else 1.0), unit, name
        self.best: Optional[float] = None

    def _better(self, a: float, b: float) -> bool:
        return self.sign * a < self.sign * b

    def check(self, score: float, step: int, record: Optional[dict] = None) -> bool:
        if score is None or not math.isfinite(score):
            raise Diverged(step, f"{self.name} is {score}", self.unit, record)
        b = self.baseline
        if b is not None and self.best is not None and self._better(self.best, b) and self._better(b, score):
            raise Diverged(step, f"{self.name} {score:.4g} is worse than the no-context baseline {b:.4g} after "
                                 f"reaching {self.best:.4g}", self.unit, record)
        best = self.best is None or self._better(score, self.best)
        if best:
            self.best = score
        return best

    def replay(self, scores: Iterable[float]) -> "Watch":
        for s in scores:
            if s is not None and math.isfinite(s) and (self.best is None or self._better(s, self.best)):
                self.best = s
        return self

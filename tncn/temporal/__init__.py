"""Temporal models and their sequence learners, in one registry.

The P-TNCN (local learning, no BPTT; ``ptncn.py``), the RNN/GRU/LSTM/Elman baselines trained by
full or truncated BPTT (``bptt*.py``), the echo state network (``esn.py``) and the online
learners of an Elman network without BPTT (``online.py``: ``rtrl.py``, ``uoro.py``, ``snap1.py``). Every learner is a
``tncn.temporal.base.SequenceLearner``; ``LEARNERS`` maps its name to its class, and adding a
learner is one file and one line here (docs/adding_a_learner.md).
"""
from __future__ import annotations

from tncn.errors import UserError
from tncn.temporal.base import SequenceLearner
from tncn.temporal.bptt_learner import GRU, LSTM, RNN, Elman
from tncn.temporal.esn import ESN
from tncn.temporal.ptncn_learner import PTNCNLearner
from tncn.temporal.rtrl import RTRL
from tncn.temporal.snap1 import SnAp1
from tncn.temporal.uoro import UORO

LEARNERS: dict[str, type[SequenceLearner]] = {
    cls.name: cls for cls in (PTNCNLearner, LSTM, GRU, RNN, Elman, ESN, RTRL, UORO, SnAp1)
}


def learner_class(name: str) -> type[SequenceLearner]:
    """The learner registered as ``name``, or a one-line error listing the known ones."""
    if name not in LEARNERS:
        raise UserError(f"unknown model {name!r}; known: {', '.join(LEARNERS)}")
    return LEARNERS[name]


def build_learner(name: str, options: dict, size: int, device="cpu", seed: int = 0,
                  frames: bool = False) -> SequenceLearner:
    """A fresh learner ``name`` for token ids (``size``: the vocabulary) or frames (``size``:
    pixels per frame); options not given take the learner's declared defaults."""
    return learner_class(name)(options, size, device, seed, frames)


__all__ = ["LEARNERS", "SequenceLearner", "build_learner", "learner_class"]

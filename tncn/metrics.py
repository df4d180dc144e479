"""Scores for sequence models: bits per symbol (BPC), perplexity, accuracy, BCE per frame, the
unigram baseline.

All scores come from the prediction each model makes of an observation before seeing it.
Symbols: bits = -log2 p(x_t | x_<t); BPC = mean bits over scored symbols; perplexity = 2^BPC
(reported for word models); accuracy = share of scored symbols that were the most probable
prediction. Frames (pixels in [0, 1], Bernoulli outputs p = sigmoid(logits)): the binary
cross-entropy BCE = -Σ_pixels [x ln p + (1 - x) ln(1 - p)] in nats per frame, the video score of
Srivastava et al. (2015) and Ororbia et al. (2020); mean over scored frames.
The unigram baseline is what a model without context achieves: the entropy of the training
symbol distribution, and the cross-entropy of another split under it (add-one smoothed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

LN2 = math.log(2.0)


class Metric(NamedTuple):
    """How a score is named: table column, axis unit, short unit, its no-context baseline, what a token is."""

    column: str
    unit: str
    short: str
    baseline: str
    tokens: str


METRICS = {"bpc": Metric("BPC", "bits per symbol", "bits/symbol", "unigram entropy", "symbols"),
           "bce": Metric("BCE/frame", "nats BCE per frame", "nats BCE/frame", "mean-pixel baseline", "frames")}
"""The scores of a learner's ``metric``: bits per symbol (text), BCE per frame (video)."""


@dataclass
class Tally:
    """Running sums over scored observations: the summed loss (bits for symbols, BCE nats for
    frames), how many were scored, how many symbols were top-1 (0 for frames)."""

    total: float = 0.0
    scored: int = 0
    correct: int = 0

    def __add__(self, other: "Tally") -> "Tally":
        return Tally(self.total + other.total, self.scored + other.scored, self.correct + other.correct)

    @property
    def mean(self) -> float:
        """The loss per scored observation: BPC for symbols, BCE per frame for frames."""
        return self.total / self.scored if self.scored else float("nan")

    @property
    def bpc(self) -> float:
        return self.mean

    @property
    def perplexity(self) -> float:
        return perplexity(self.bpc)

    @property
    def accuracy(self) -> float:
        return self.correct / self.scored if self.scored else float("nan")

    def to_list(self) -> list:
        return [self.total, self.scored, self.correct]


def perplexity(bpc: float) -> float:
    """2^BPC; infinite past the largest float (BPC above 1024), NaN for NaN."""
    try:
        return 2.0 ** bpc
    except OverflowError:
        return math.inf


def score_logits(logits: torch.Tensor, targets: torch.Tensor, score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bits and top-1 hits summed over the scored rows of one step, as tensors (no device sync).

    logits [B, V] (before softmax), targets [B] ids, score [B] bool.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    nats = -logp.gather(1, targets.unsqueeze(1)).squeeze(1)
    bits = torch.where(score, nats, torch.zeros_like(nats)).sum() / LN2
    hits = ((logp.argmax(dim=1) == targets) & score).sum()
    return bits, hits


def score_frames(logits: torch.Tensor, frames: torch.Tensor, score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BCE nats summed over the pixels of the scored rows of one step (and zero hits), as tensors.

    logits [B, D] (before the sigmoid), frames [B, D] in [0, 1], score [B] bool.
    """
    nats = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), frames.float(), reduction="none").sum(1)
    hits = torch.zeros((), dtype=torch.long, device=logits.device)
    return torch.where(score, nats, torch.zeros_like(nats)).sum(), hits


def unigram_entropy(counts: Sequence[int]) -> float:
    """Entropy in bits of the distribution given by ``counts`` (zero counts ignored)."""
    n = float(sum(counts))
    return -sum(c / n * math.log2(c / n) for c in counts if c > 0)


def unigram_cross_entropy(counts: Sequence[int], ids: torch.Tensor) -> float:
    """Mean bits of ``ids`` under the add-one-smoothed unigram model of ``counts``."""
    p = (torch.tensor(counts, dtype=torch.float64) + 1.0)
    logp = torch.log2(p / p.sum())
    return float(-logp[ids].mean())

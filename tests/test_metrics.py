"""Sequence metrics against closed forms."""
from __future__ import annotations

import math

import torch

from tncn.metrics import Tally, score_logits, unigram_cross_entropy, unigram_entropy


def test_tally_arithmetic():
    t = Tally(6.0, 4, 1) + Tally(2.0, 4, 3)
    assert t == Tally(8.0, 8, 4)
    assert t.bpc == 1.0 and t.perplexity == 2.0 and t.accuracy == 0.5
    assert math.isnan(Tally().bpc)


def test_score_logits_closed_forms():
    V = 8
    logits = torch.zeros(3, V)  # uniform: 3 bits each
    targets = torch.tensor([1, 2, 3])
    bits, hits = score_logits(logits, targets, torch.tensor([True, False, True]))
    assert math.isclose(bits.item(), 2 * 3.0, rel_tol=1e-6)
    sure = torch.full((2, V), -1e4)
    sure[0, 5] = sure[1, 6] = 0.0  # certain and right, certain and wrong
    bits, hits = score_logits(sure, torch.tensor([5, 2]), torch.tensor([True, True]))
    assert hits.item() == 1 and bits.item() > 1e3
    two = torch.log(torch.tensor([[0.25, 0.75]]))
    bits, _ = score_logits(two, torch.tensor([0]), torch.tensor([True]))
    assert math.isclose(bits.item(), 2.0, rel_tol=1e-6)


def test_unigram_baselines():
    assert unigram_entropy([1, 1, 1, 1]) == 2.0
    assert unigram_entropy([0, 5, 5]) == 1.0
    # add-one smoothing of counts [0, 2, 1] gives p = [1, 3, 2] / 6
    ids = torch.tensor([1, 2])
    expected = -(math.log2(3 / 6) + math.log2(2 / 6)) / 2
    assert math.isclose(unigram_cross_entropy([0, 2, 1], ids), expected, rel_tol=1e-12)

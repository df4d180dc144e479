"""The P-TNCN learner keeps the learner protocol of tncn.train: scoring, frozen evaluation,
untouched training state, sampling, state round trips. Expected values come from closed forms
(a zero model predicts uniformly) or from running the per-step recipe of tncn.temporal.ptncn by hand.
"""
from __future__ import annotations

import math

import torch

from sequences.batching import Batch, StreamBatches
from tncn.metrics import Tally
from tncn.temporal.ptncn import PTNCN
from tncn.temporal import build_learner
from tncn.train import evaluate

V = 7


OPTS = {"hidden": [6, 5], "optimizer": "nesterov", "lr": 0.075}


def stream(n=120, B=3, S=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return StreamBatches(torch.randint(0, V, (n,), generator=g), B, S)


def weights(learner):
    return {k: v.clone() for k, v in learner.model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_follows_the_per_step_recipe():
    batches = stream()
    learner = build_learner("ptncn", OPTS, V, seed=3)
    # the recipe by hand on an identically initialised model
    model = PTNCN(V, [6, 5], generator=torch.Generator().manual_seed(3))
    opt = torch.optim.SGD(model.parameters(), lr=0.075, momentum=0.95, nesterov=True, fused=True)
    for batch in list(batches.epoch(0))[:3]:
        got = learner.train_segment(batch)
        if batch.reset:
            model.reset(batch.tokens.shape[1])
        bits, scored = 0.0, 0
        for t in range(batch.tokens.shape[0]):
            model.step(batch.tokens[t], batch.mask[t])
            p = torch.softmax(model.last_logits.double(), dim=1)
            for b in range(batch.tokens.shape[1]):
                if batch.score[t, b]:
                    bits -= math.log2(p[b, batch.tokens[t, b]].item())
                    scored += 1
            if model.local_updates():
                opt.step()
        assert got.scored == scored
        assert math.isclose(got.total, bits, rel_tol=1e-5)
    # the learner steps its optimizer inside the step (tncn.fused): equal up to float rounding
    mine, theirs = weights(learner), model.state_dict()
    assert mine.keys() == theirs.keys()
    for k in mine:
        torch.testing.assert_close(mine[k], theirs[k], rtol=0, atol=1e-6, msg=k)


def test_a_zero_model_scores_log2_V_per_symbol_and_eval_changes_nothing():
    learner = build_learner("ptncn", {**OPTS, "init": "zeros"}, V)
    batches = stream()
    before = weights(learner)
    tally = evaluate(learner, batches)
    assert tally.scored == 120 - 3
    assert math.isclose(tally.total, tally.scored * math.log2(V), rel_tol=1e-6)
    off = evaluate(learner, batches, correction=False)
    assert same(before, weights(learner)) and off.scored == tally.scored


def test_the_first_step_after_a_reset_does_not_learn():
    learner = build_learner("ptncn", {**OPTS, "optimizer": "adam", "lr": 0.1}, V)
    before = weights(learner)
    one_step = Batch(torch.tensor([[1, 2]]), torch.ones(1, 2), torch.zeros(1, 2, dtype=torch.bool), reset=True)
    assert learner.train_segment(one_step) == Tally(0.0, 0, 0)
    assert same(before, weights(learner))


def test_validation_between_segments_leaves_training_unchanged():
    batches, valid = stream(), stream(n=60, seed=2)
    segs = list(batches.epoch(0))
    a = build_learner("ptncn", OPTS, V)
    b = build_learner("ptncn", OPTS, V)
    ta = [a.train_segment(s) for s in segs]
    tb = []
    for s in segs:
        tb.append(b.train_segment(s))
        evaluate(b, valid)  # in the middle of the training stream
        b.sample(torch.tensor([1, 2]), 5, 1.0, torch.Generator().manual_seed(0))
    assert ta == tb and same(weights(a), weights(b))
    on, off = evaluate(a, valid), evaluate(a, valid, correction=False)
    assert on.scored == off.scored and on.total != off.total


def test_state_dict_round_trip_continues_identically():
    segs = list(stream().epoch(0))
    a = build_learner("ptncn", {**OPTS, "optimizer": "adam", "lr": 0.01}, V)
    for s in segs[:2]:
        a.train_segment(s)
    b = build_learner("ptncn", {**OPTS, "optimizer": "adam", "lr": 0.01}, V, seed=99)
    b.load_state_dict(a.state_dict())
    assert [a.train_segment(s) for s in segs[2:]] == [b.train_segment(s) for s in segs[2:]]
    assert same(weights(a), weights(b))


def test_sampling_length_and_determinism():
    learner = build_learner("ptncn", OPTS, V)
    for s in stream().epoch(0):
        learner.train_segment(s)
    prime = torch.tensor([3, 1, 4])
    x = learner.sample(prime, 25, 1.0, torch.Generator().manual_seed(5))
    y = learner.sample(prime, 25, 1.0, torch.Generator().manual_seed(5))
    assert x.shape == (25,) and torch.equal(x, y) and int(x.max()) < V
    greedy = learner.sample(prime, 10, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(greedy, learner.sample(prime, 10, 0.0, torch.Generator().manual_seed(2)))

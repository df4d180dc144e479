"""The learning-rate schedule of the sequence learners (tncn.optim.SCHEDULE): warm-up, then halving.

Expected values from the closed form lr · min(1, (t+1)/W) · 2^(−max(0, t+1−W)/h), from the same
learner without a schedule (plain SGD's first update scales with the rate), and from an
uninterrupted run against a resumed one.
"""
from __future__ import annotations

import io

import pytest
import torch

from sequences.batching import Batch
from tncn.optim import lr_factor
from tncn.temporal import LEARNERS, build_learner

V = 7


def _batches(n):
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        x = torch.randint(0, V, (5, 3), generator=gen)
        score = torch.ones(5, 3, dtype=torch.bool)
        score[0] = i != 0
        out.append(Batch(x, torch.ones(5, 3), score, reset=i == 0))
    return out


def test_lr_factor_is_the_closed_form():
    assert lr_factor(0, 4, None) == pytest.approx(0.25)
    assert lr_factor(3, 4, None) == 1.0
    assert lr_factor(10, 4, None) == 1.0
    assert lr_factor(5, 4, 2) == pytest.approx(0.5)
    assert lr_factor(7, 4, 2) == pytest.approx(0.25)
    assert lr_factor(0, 0, 3) == pytest.approx(0.5 ** (1 / 3))
    assert lr_factor(9, 0, None) == 1.0


@pytest.mark.parametrize("name", [n for n, c in LEARNERS.items() if "tokens" in c.inputs])
def test_every_learner_follows_the_schedule_per_training_step(name):
    learner = build_learner(name, {"hidden": [8], "lr": 0.01, "warmup": 2, "half_life": 3}, V)
    for step, batch in enumerate(_batches(6), start=1):
        learner.train_segment(batch)
        for group in learner.opt.param_groups:
            assert group["lr"] == pytest.approx(group["base_lr"] * lr_factor(step, 2, 3))
    assert {g["scheduled_steps"] for g in learner.opt.param_groups} == {6}


def test_warm_up_scales_the_first_sgd_update():
    def first_update(options):
        learner = build_learner("elman", {"hidden": [8], "optimizer": "sgd", "lr": 0.1, **options}, V, seed=1)
        before = {k: v.clone() for k, v in learner.model.state_dict().items()}
        learner.train_segment(_batches(1)[0])
        return {k: learner.model.state_dict()[k] - before[k] for k in before}

    plain, warm = first_update({}), first_update({"warmup": 4})
    assert any(bool(d.abs().sum() > 0) for d in plain.values())
    for k in plain:
        torch.testing.assert_close(warm[k], plain[k] / 4, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["ptncn", "gru"])
def test_a_resumed_run_continues_its_schedule(name):
    options = {"hidden": [8], "warmup": 2, "half_life": 2}
    batches = _batches(5)
    whole = build_learner(name, options, V, seed=2)
    for b in batches:
        whole.train_segment(b)
    first = build_learner(name, options, V, seed=2)
    for b in batches[:2]:
        first.train_segment(b)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    second = build_learner(name, options, V, seed=2)
    second.load_state_dict(torch.load(buf, weights_only=True))
    for b in batches[2:]:
        second.train_segment(b)
    a, b = whole.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [g["lr"] for g in whole.opt.param_groups] == [g["lr"] for g in second.opt.param_groups]

"""Frame learners (P-TNCN with a sigmoid output, BPTT baselines reading frames as they are): the BCE
per frame, the per-step recipe, frozen evaluation, learning a repeated clip. Expected values come
from the BCE formula written out in numpy, the recipe of tncn.temporal.ptncn run by hand, and autograd.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sequences.batching import Batch
from tncn.metrics import score_frames
from tncn.temporal.ptncn import PTNCN
from tncn.temporal import build_learner
from tncn.train import evaluate

D = 12  # pixels per frame


def bce_np(x: np.ndarray, p: np.ndarray) -> float:
    """-Σ [x ln p + (1 - x) ln(1 - p)], in float64."""
    x, p = x.astype(np.float64), p.astype(np.float64)
    return float(-(x * np.log(p) + (1 - x) * np.log(1 - p)).sum())


def clips(T=6, B=3, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    frames = (torch.rand(T, B, D, generator=g) > 0.6).float() * torch.rand(T, B, D, generator=g)
    mask = torch.ones(T, B)
    score = mask.bool()
    score[0] = False
    return Batch(frames, mask, score, reset=True)


class Frames:
    """A one-batch data set in the shape ``tncn.train.evaluate`` reads."""

    def __init__(self, batch):
        self.batch = batch

    def epoch(self, epoch=None, start=0):
        yield from [self.batch][start:]

    def __len__(self):
        return 1


def weights(learner):
    return {k: v.clone() for k, v in learner.model.state_dict().items()}


def test_score_frames_is_the_bce_per_frame():
    g = torch.Generator().manual_seed(1)
    logits, frames = torch.randn(4, D, generator=g), torch.rand(4, D, generator=g)
    score = torch.tensor([True, False, True, True])
    nats, hits = score_frames(logits, frames, score)
    p = torch.sigmoid(logits).double().numpy()
    want = sum(bce_np(frames[b].numpy(), p[b]) for b in (0, 2, 3))
    assert float(nats) == pytest.approx(want, rel=1e-6) and int(hits) == 0


@pytest.mark.parametrize("e_rule", ["transpose", "temporal"])
def test_ptncn_frames_follow_the_per_step_recipe(e_rule):
    batch = clips()
    opts = {"hidden": [5, 4], "optimizer": "nesterov", "lr": 0.075, "e_rule": e_rule}
    learner = build_learner("ptncn", opts, D, seed=3, frames=True)
    assert learner.metric == "bce" and learner.model.output == "sigmoid"
    model = PTNCN(D, [5, 4], tokens=False, e_rule=e_rule, generator=torch.Generator().manual_seed(3))
    opt = torch.optim.SGD(model.parameters(), lr=0.075, momentum=0.95, nesterov=True)
    got = learner.train_segment(batch)
    model.reset(batch.tokens.shape[1])
    nats = 0.0
    for t in range(batch.tokens.shape[0]):
        x_hat = model.step(batch.tokens[t]).double().numpy()
        if t:
            nats += sum(bce_np(batch.tokens[t, b].numpy(), x_hat[b]) for b in range(x_hat.shape[0]))
        if model.local_updates():
            opt.step()
    assert got.scored == 5 * 3 and got.correct == 0
    assert got.total == pytest.approx(nats, rel=1e-5)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(learner.model.state_dict()[k], v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["ptncn", "lstm", "elman"])
def test_frozen_evaluation_leaves_every_weight_bit_identical(kind):
    batch = clips()
    learner = build_learner(kind, {"hidden": [6, 6]}, D, seed=0, frames=True)
    learner.train_segment(batch)
    before = weights(learner)
    modes = [True, False] if learner.has_correction else [True]
    for correction in modes:
        evaluate(learner, Frames(batch), correction=correction)
        learner.predict_frames(batch.tokens[:, 0], correction=correction)
    after = weights(learner)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("kind", ["ptncn", "gru"])
def test_predict_frames_agrees_with_the_scored_bce(kind):
    batch = clips(B=1)
    learner = build_learner(kind, {"hidden": [6]}, D, seed=2, frames=True)
    tally = evaluate(learner, Frames(batch))
    pred = learner.predict_frames(batch.tokens[:, 0])
    assert pred.shape == (6, D) and torch.isnan(pred[0]).all()
    want = sum(bce_np(batch.tokens[t, 0].numpy(), pred[t].double().numpy()) for t in range(1, 6))
    assert tally.total == pytest.approx(want, rel=1e-5)


def test_bptt_frames_loss_is_the_mean_bce_per_frame():
    """One full-BPTT step of the LSTM on frames equals Adam on the autograd gradient of
    Σ BCE / scored frames, computed here from the model's own forward."""
    batch = clips(T=5, B=2)
    learner = build_learner("lstm", {"hidden": [4], "lr": 0.01, "clip_grad": 0.0}, D, seed=1, frames=True)
    twin = build_learner("lstm", {"hidden": [4]}, D, seed=1, frames=True).model
    twin.load_state_dict(learner.model.state_dict())
    top, _ = twin(batch.tokens[:-1], None)
    logits = twin.logits(top)
    p = torch.sigmoid(logits)
    x = batch.tokens[1:]
    loss = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum() / (4 * 2)
    loss.backward()
    opt = torch.optim.Adam(twin.parameters(), lr=0.01)
    opt.step()
    learner.train_segment(batch)
    for (k, a), b in zip(learner.model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("kind", ["ptncn", "lstm"])
def test_frame_learners_learn_a_repeated_clip(kind):
    """A clip of a dot moving one pixel per frame, over and over: the BCE per frame falls well
    below that of predicting every pixel by its mean intensity."""
    T = 8
    frames = torch.zeros(T, 1, D)
    for t in range(T):
        frames[t, 0, t] = 1.0
    mask = torch.ones(T, 1)
    score = mask.bool()
    score[0] = False
    batch = Batch(frames, mask, score, reset=True)
    mean = frames.mean((0, 1)).clamp(1e-6, 1 - 1e-6).numpy()
    baseline = np.mean([bce_np(frames[t, 0].numpy(), mean) for t in range(1, T)])
    opts = {"hidden": [32], "optimizer": "adam", "lr": 0.01}
    learner = build_learner(kind, opts, D, seed=0, frames=True)
    for _ in range(300):
        learner.train_segment(batch)
    after = evaluate(learner, Frames(batch)).mean
    assert math.isfinite(after) and after < 0.3 * baseline, (after, baseline)


def test_frames_refuse_symbol_inputs():
    from tncn.errors import UserError

    with pytest.raises(UserError, match="apply to symbols"):
        build_learner("lstm", {"input": "embedding"}, D, frames=True)

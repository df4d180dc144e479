"""Every registered learner keeps the protocol (tncn.temporal.base, tncn.learners.base).

Parametrized over the registries themselves, so a learner added to ``tncn.temporal.LEARNERS`` or
``tncn.learners.LEARNERS`` is held to the protocol with no edit here: sequence learners on tokens
and on frames (where they declare them), feedforward rules on one small network. The expected
values come from the learners themselves run another way: an uninterrupted run against a resumed
one, a run with an evaluation or a sample in the middle against one without, a built model's
weight count against the declared closed form.
"""
from __future__ import annotations

import io
import json

import pytest
import torch

from conftest import segment
from sequences.batching import Batch
from tncn import learners
from tncn.errors import UserError
from tncn.mlp import MLP
from tncn.options import OptionError
from tncn.temporal import LEARNERS, SequenceLearner, build_learner

CASES = [pytest.param(name, frames, id=f"{name}-{'frames' if frames else 'tokens'}")
         for name, cls in LEARNERS.items() for frames in (False, True)
         if ("frames" if frames else "tokens") in cls.inputs]
V, D, HIDDEN = 7, 12, [20, 16]


def _learner(name, frames, seed=3):
    return build_learner(name, {"hidden": HIDDEN}, D if frames else V, seed=seed, frames=frames)


def _x(T, B, frames, gen):
    return torch.rand(T, B, D, generator=gen).round() if frames else torch.randint(0, V, (T, B), generator=gen)


def _batches(frames) -> list[Batch]:
    """New sequences, two continued segments, new padded sequences (lines-like), new sequences."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for reset, pad in ((True, 0), (False, 0), (False, 0), (True, 2), (True, 0)):
        out.append(segment(_x(5, 3, frames, gen), reset, pad))
    return out


def _tallies(learner, batches):
    return [(t.total, t.scored, t.correct) for t in map(learner.train_segment, batches)]


def _weights(learner):
    return {k: v.clone() for k, v in learner.model.state_dict().items()}


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _eval_batch(frames):
    x = _x(6, 2, frames, torch.Generator().manual_seed(9))
    mask = torch.ones(6, 2)
    score = mask.bool()
    score[0] = False
    return Batch(x, mask, score, reset=True)


# --------------------------------------------------------------------------- declarations

@pytest.mark.parametrize("name", list(LEARNERS))
def test_declarations(name):
    cls = LEARNERS[name]
    assert issubclass(cls, SequenceLearner) and cls.name == name
    assert isinstance(cls.label, str) and cls.label
    assert set(cls.inputs) <= {"tokens", "frames"} and cls.inputs
    names = [o.name for o in cls.OPTIONS]
    assert len(names) == len(set(names))
    assert {"hidden", "optimizer", "lr", "momentum", "weight_decay"} <= set(names)
    assert isinstance(cls.training_label(cls.defaults()), str)


@pytest.mark.parametrize("name", list(LEARNERS))
def test_options_round_trip_through_config_json(name):
    cls = LEARNERS[name]
    options = cls.read_options({"hidden": HIDDEN})
    again = cls.read_options(json.loads(json.dumps(options)))
    assert again == options
    for o in cls.OPTIONS:  # every default reads back as itself, from JSON and from its shown text
        assert o.read(json.loads(json.dumps(o.default))) == o.default
        if o.default is not None:
            assert o.read(o.kind.show(o.default)) == o.default
    a, b = build_learner(name, options, V, seed=1), build_learner(name, again, V, seed=1)
    assert _same_weights(_weights(a), _weights(b))


@pytest.mark.parametrize("name", list(LEARNERS))
def test_an_unknown_or_bad_option_is_one_clear_error(name):
    with pytest.raises(OptionError, match=f"model {name} has no option 'no_such_option'; its options: hidden"):
        build_learner(name, {"no_such_option": 1}, V)
    with pytest.raises(OptionError, match="lr must be positive"):
        build_learner(name, {"lr": -1.0}, V)


@pytest.mark.parametrize("name, frames", CASES)
def test_match_params_reproduces_the_built_models_weight_count(name, frames):
    cls = LEARNERS[name]
    size = D if frames else V
    options = cls.read_options({"hidden": HIDDEN})
    declared = cls.n_params(size, HIDDEN, options)
    if declared is None:
        with pytest.raises(UserError, match="declares no parameter count"):
            cls.width_for_params(size, 2, 10_000, options)
        return
    assert declared == _learner(name, frames).n_weights()
    target = 3 * declared
    w = cls.width_for_params(size, len(HIDDEN), target, options)
    gap = abs(cls.n_params(size, [w] * len(HIDDEN), options) - target)
    for other in (w - 1, w + 1):
        assert gap <= abs(cls.n_params(size, [other] * len(HIDDEN), options) - target)


# --------------------------------------------------------------------------- behaviour

def _pause_changes_nothing(name, frames, pause):
    """Training with ``pause(learner) -> learner`` between the second and third batch ends exactly
    as the uninterrupted run: the same scores, then the same weights."""
    batches = _batches(frames)
    whole = _learner(name, frames)
    expected = _tallies(whole, batches)
    paused = _learner(name, frames)
    got = _tallies(paused, batches[:2])
    paused = pause(paused)
    got += _tallies(paused, batches[2:])
    assert got == expected
    assert _same_weights(_weights(paused), _weights(whole))


@pytest.mark.parametrize("name, frames", CASES)
def test_resumed_run_equals_an_uninterrupted_one(name, frames):
    def resume(first):
        buf = io.BytesIO()
        torch.save(first.state_dict(), buf)
        buf.seek(0)
        second = _learner(name, frames, seed=99)  # the state, not the seed, must carry the run
        second.load_state_dict(torch.load(buf, weights_only=True))
        return second
    _pause_changes_nothing(name, frames, resume)


@pytest.mark.parametrize("name, frames", CASES)
def test_validation_in_the_middle_changes_nothing_that_training_does(name, frames):
    def validate(learner):
        before = _weights(learner)
        scores = [learner.eval_segment(_eval_batch(frames)) for _ in range(2)]
        assert _same_weights(before, _weights(learner))  # evaluation never learns
        assert scores[0] == scores[1] and scores[0].scored == 10
        if learner.has_correction:
            learner.eval_segment(_eval_batch(frames), correction=False)
        else:
            with pytest.raises(UserError, match="no state-correction phase"):
                learner.eval_segment(_eval_batch(frames), correction=False)
        return learner
    _pause_changes_nothing(name, frames, validate)


@pytest.mark.parametrize("name, frames", CASES)
def test_sample_or_predict_frames_is_deterministic_and_leaves_training_alone(name, frames):
    def generate(learner):
        if frames:
            clip = _x(6, 1, True, torch.Generator().manual_seed(4))[:, 0]
            a, b = learner.predict_frames(clip), learner.predict_frames(clip)
            assert a.shape == (6, D) and torch.isnan(a[0]).all() and torch.equal(a[1:], b[1:])
            assert ((a[1:] > 0) & (a[1:] < 1)).all()
            with pytest.raises(UserError, match="sampling draws symbols"):
                learner.sample(torch.tensor([1]), 3, 1.0, torch.Generator())
        else:
            prime = torch.tensor([1, 2, 3])
            a, b = (learner.sample(prime, 8, 1.0, torch.Generator().manual_seed(5)) for _ in range(2))
            assert torch.equal(a, b) and a.shape == (8,) and a.dtype == torch.long
            assert 0 <= int(a.min()) <= int(a.max()) < V
            greedy = learner.sample(prime, 5, 0.0, torch.Generator())
            assert torch.equal(greedy, learner.sample(prime, 5, 0.0, torch.Generator().manual_seed(1)))
            with pytest.raises(UserError, match="predicts symbols, not frames"):
                learner.predict_frames(torch.zeros(3, V))
        return learner
    _pause_changes_nothing(name, frames, generate)


@pytest.mark.parametrize("name, frames", CASES)
def test_updates_live_in_param_grad_in_the_parameters_layout(name, frames):
    """What a learner hands the optimizer is ``param.grad``, shaped and strided as its parameter
    (torch's fused optimizer kernels read a gradient in its parameter's memory layout)."""
    learner = _learner(name, frames)
    before = _weights(learner)
    learner.train_segment(_batches(frames)[0])
    assert not _same_weights(before, _weights(learner))  # it learned something
    for p in learner.model.parameters():
        if p.grad is not None:
            assert p.grad.shape == p.shape and p.grad.stride() == p.stride()
            assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", list(LEARNERS))
def test_the_other_observation_kind_is_refused_or_served(name):
    cls = LEARNERS[name]
    for frames, what in ((False, "tokens"), (True, "frames")):
        if what not in cls.inputs:
            with pytest.raises(UserError, match=f"reads .* not {what}"):
                build_learner(name, {"hidden": HIDDEN}, V, frames=frames)


# --------------------------------------------------------------------------- feedforward rules

def _net(seed=0, rule=None):
    act = (learners.LEARNERS[rule].activation if rule else None) or "tanh"
    return MLP([6, 8, 7, 3], activation=act, generator=torch.Generator().manual_seed(seed))


def _xy(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(10, 6, generator=gen), torch.randint(0, 3, (10,), generator=gen)


@pytest.mark.parametrize("rule", list(learners.LEARNERS))
def test_rule_declarations_and_options_round_trip(rule):
    cls = learners.LEARNERS[rule]
    assert cls.name == rule
    defaults = {o.name: o.default for o in cls.OPTIONS}
    for o in cls.OPTIONS:
        assert o.read(json.loads(json.dumps(o.default))) == o.default
    with pytest.raises(OptionError, match=f"rule {rule} has no option 'no_such_option'"):
        learners.make(rule, _net(rule=rule), no_such_option=1)
    a, b = (learners.make(rule, _net(rule=rule), **defaults),
            learners.make(rule, _net(rule=rule), **json.loads(json.dumps(defaults))))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("rule", list(learners.LEARNERS))
def test_rule_writes_every_update_into_param_grad(rule):
    learner = learners.make(rule, _net(rule=rule), seed=1)
    loss = learner.step(*_xy())
    assert torch.isfinite(loss)
    for p in learner.parameters():
        assert p.grad is not None and p.grad.shape == p.shape and p.grad.stride() == p.stride()
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize("rule", list(learners.LEARNERS))
def test_rule_state_round_trips_and_repeats_for_a_seed(rule):
    a = learners.make(rule, _net(rule=rule), seed=4)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = learners.make(rule, _net(seed=7, rule=rule), seed=8)
    b.load_state_dict(torch.load(buf, weights_only=True))
    c = learners.make(rule, _net(rule=rule), seed=4)
    x, y = _xy(2)
    for lrn in (a, b, c):
        lrn.step(x, y)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa.grad, pb.grad) and torch.equal(pa.grad, pc.grad)

"""RTRL (tncn.temporal.rtrl) and what the online learners share (tncn.temporal.online).

The oracle: with the weights fixed, RTRL's summed step gradients over a stream with a continued
segment, a reset and padding equal autograd BPTT of the summed loss through the same network
(``ElmanLM.trajectory``), within 1e-10 in float64, for one and two layers, tokens and frames.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import segment
from sequences.batching import Batch
from tncn import bench
from tncn.errors import UserError
from tncn.temporal import build_learner, learner_class
from tncn.temporal.rtrl import trace_bytes, trace_floats

V = 5
ONLINE = bench.ONLINE


def _stream(frames: bool, gen: torch.Generator) -> list[Batch]:
    """A reset segment, its continuation, then a reset segment with a padded row."""
    out = []
    for reset, pad in ((True, 0), (False, 0), (True, 2)):
        x = torch.rand(6, 3, V, generator=gen).round().double() if frames else torch.randint(0, V, (6, 3), generator=gen)
        out.append(segment(x, reset, pad))
    return out


def _bptt_gradient(model, batches, frames) -> dict:
    """Autograd of Σ_t ℓ_t (scored rows, divided by the batch size) through whole sequences."""
    model.zero_grad()
    sequences, current = [], []
    for b in batches:
        if b.reset and current:
            sequences.append(current)
            current = []
        current.append(b)
    sequences.append(current)
    loss = 0.0
    with torch.enable_grad():
        for seq in sequences:
            x = torch.cat([b.tokens for b in seq])
            score = torch.cat([b.score for b in seq])
            _, _, outs, _ = model.trajectory(x[:-1])
            logits = model.head.pre(outs[-1])  # step t's output predicts x[t + 1]
            if frames:
                nats = nn.functional.binary_cross_entropy_with_logits(logits, x[1:], reduction="none").sum(2)
            else:
                nats = nn.functional.cross_entropy(logits.reshape(-1, V), x[1:].reshape(-1),
                                                   reduction="none").view(x.shape[0] - 1, -1)
            loss = loss + (nats * score[1:]).sum() / x.shape[1]
        loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("hidden", [[6], [5, 4]], ids=["L1", "L2"])
@pytest.mark.parametrize("frames", [False, True], ids=["tokens", "frames"])
def test_rtrl_summed_gradient_equals_bptt(hidden, frames):
    learner = build_learner("rtrl", {"hidden": hidden}, V, seed=1, frames=frames)
    learner.model.double()
    batches = _stream(frames, torch.Generator().manual_seed(2))
    got = learner.summed_gradient(batches)
    expected = _bptt_gradient(learner.model, batches, frames)
    assert got.keys() == expected.keys()
    for name in expected:
        assert float(expected[name].abs().max()) > 1e-3, name  # every parameter gets a gradient
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-10)


def test_summed_gradient_leaves_the_training_state_alone():
    learner = build_learner("rtrl", {"hidden": [4]}, V, seed=0)
    batches = _stream(False, torch.Generator().manual_seed(3))
    learner.train_segment(batches[0])
    carried = learner.carry_state()
    learner.summed_gradient(batches)
    after = learner.carry_state()
    assert all(torch.equal(a, b) for a, b in zip(carried["h"], after["h"]))
    assert all(torch.equal(a, b) for a, b in zip(carried["trace"]["M"], after["trace"]["M"]))


def test_trace_size_is_the_closed_form():
    # one layer: H·P with P = H(V + 1 + H); two: H1·P1 + H2·(P1 + P2)
    assert trace_floats(50, [8]) == 8 * 8 * (50 + 1 + 8)
    p1, p2 = 8 * (50 + 1 + 8), 4 * (8 + 1 + 4)
    assert trace_floats(50, [8, 4]) == 8 * p1 + 4 * (p1 + p2)
    assert trace_bytes(50, [8], 32) == 2 * 4 * 32 * trace_floats(50, [8])
    learner = build_learner("rtrl", {"hidden": [8, 4]}, 50)
    learner.train_segment(bench.random_batch(50, 4, 32, torch.Generator().manual_seed(0), reset=True))
    assert sum(m.numel() for m in learner.carry_state()["trace"]["M"]) == 32 * trace_floats(50, [8, 4])


def test_a_width_over_the_memory_limit_is_refused_with_the_widest_that_fits():
    def gib(h):  # old and new trace, float32, 32 streams, one layer over V = 100
        return 2 * 4 * 32 * h * h * (100 + 1 + h) / 2**30
    widest = max(h for h in range(1, 600) if gib(h) <= 4.0)
    cls = learner_class("rtrl")
    with pytest.raises(UserError) as err:
        cls.check_fit(100, cls.read_options({"hidden": [512]}), 32)
    assert f"needs {gib(512):.1f} GiB" in str(err.value) and "limit of 4 GiB" in str(err.value)
    assert str(err.value).endswith(f"the widest 1-layer network that fits is {widest}")
    cls.check_fit(100, cls.read_options({"hidden": [512], "max_memory": 64.0}), 32)  # a raised limit fits


def test_train_refuses_a_width_that_does_not_fit_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "tncn", "train", "--model", "rtrl", "--hidden", "600", "--steps", "1",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and not out.exists()
    assert r.stderr.count("\n") == 1 and "GiB" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("kind", ONLINE)
def test_an_activation_without_a_derivative_is_refused(kind):
    with pytest.raises(UserError, match="activation"):
        build_learner(kind, {"hidden": [4], "activation": "sign"}, V)


@pytest.mark.parametrize("kind", ONLINE)
def test_online_learner_memory_does_not_grow_with_sequence_length(kind):
    options = {"hidden": [16]}
    short = bench.peak_memory_mb(kind, options, 20, batch=8)
    long = bench.peak_memory_mb(kind, options, 400, batch=8)
    assert long["growth_mb"] < 5 and long["peak_mb"] < short["peak_mb"] * 1.05 + 5


def test_rtrl_learns_a_pattern_that_needs_memory():
    # 0 1 0 2 0 1 0 2 ...: what follows a 0 depends on the symbol before it
    learner = build_learner("rtrl", {"hidden": [8], "lr": 0.01}, 3, seed=0)
    x = torch.tensor([0, 1, 0, 2]).repeat(40)[torch.arange(40).view(40, 1) + torch.arange(4).view(1, 4)]
    score = torch.ones(40, 4, dtype=torch.bool)
    score[0] = False
    tallies = [learner.train_segment(Batch(x, torch.ones(40, 4), score, True)) for _ in range(10)]
    last = tallies[-1].total / tallies[-1].scored
    assert last < 0.1  # knowing only the current symbol: 0.5 bits (1 bit after each 0)

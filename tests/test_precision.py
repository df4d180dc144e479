"""The ``precision`` option of the ptncn learner: bf16 storage trains with finite scores and
starts out as fp32 does (bf16 tolerance); tf32 is refused off CUDA with one line, and its switch
is set only within the learner's own calls (the previous settings come back after)."""
import math

import pytest
import torch

from sequences.batching import Batch, StreamBatches
from tncn.errors import UserError
from tncn.temporal import build_learner
from tncn.fused import fused_sgd_steps
from tncn.temporal.ptncn_learner import _tf32
from tncn.train import evaluate

V = 7
OPTS = {"hidden": [16, 12], "init_std": 0.3}


def stream(n=200, B=4, S=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return StreamBatches(torch.randint(0, V, (n,), generator=g), B, S)


def test_bf16_keeps_weights_states_and_optimizer_state_in_bfloat16_and_trains():
    learner = build_learner("ptncn", {**OPTS, "precision": "bf16"}, V, seed=0)
    batches = list(stream().epoch(0))
    tallies = [learner.train_segment(b) for b in batches]
    assert all(math.isfinite(t.total) and t.scored for t in tallies)
    bpc = sum(t.total for t in tallies) / sum(t.scored for t in tallies)
    assert 0 < bpc < 2 * math.log2(V)
    model = learner.model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert all(t.dtype == torch.bfloat16 for t in (*model._state["y"][1:], *model._state["eps"][1:]))
    assert {v.dtype for s in learner.opt.state.values() for v in s.values()} == {torch.bfloat16}
    assert math.isfinite(evaluate(learner, stream(seed=2)).total)


@pytest.mark.parametrize("optimizer", ["nesterov", "momentum", "adam"])
def test_bf16_training_tracks_fp32(optimizer):
    """Over three segments the bf16 weights move as the fp32 ones do (bf16 rounding apart); torch
    2.13's fused CPU SGD would leave them in place (pytorch/pytorch#191763). Plain SGD's steps
    here are near bf16's limit (2^-8 of a weight), so it is not among the cases."""
    batches = list(stream().epoch(0))[:3]
    start, end = [], []
    for precision in ("fp32", "bf16"):
        options = {**OPTS, "precision": precision, "optimizer": optimizer, "lr": 0.01 if optimizer == "adam" else 0.075}
        learner = build_learner("ptncn", options, V, seed=0)
        start.append([p.detach().float().clone() for p in learner.model.parameters()])
        for b in batches:
            learner.train_segment(b)
        end.append([p.detach().float() for p in learner.model.parameters()])
    moved = max((b - a).abs().max().item() for a, b in zip(start[0], end[0]))
    assert moved > 0.2
    for a, b, w0 in zip(end[0], end[1], start[1]):
        assert (b - a).abs().max().item() < (0.6 if optimizer == "adam" else 0.15) * moved
        assert (b - w0).abs().max().item() > 0.5 * (a - w0).abs().max().item() - 1e-2  # each weight learned


def test_fused_sgd_probe_agrees_with_torchs_unfused_step():
    for dtype in (torch.float32, torch.bfloat16):
        p, q = (torch.nn.Parameter(torch.linspace(-1, 1, 100, dtype=dtype)) for _ in range(2))
        opts = [torch.optim.SGD([w], lr=0.1, momentum=0.9, nesterov=True, fused=f) for w, f in ((p, True), (q, False))]
        for _ in range(2):
            for w, opt in zip((p, q), opts):
                w.grad = torch.linspace(0.5, 1.5, 100, dtype=dtype)
                opt.step()
        agree = torch.allclose(p.detach().float(), q.detach().float(), atol=1e-2)
        assert fused_sgd_steps(dtype) == agree


def test_bf16_first_steps_are_close_to_fp32():
    batch = next(iter(stream().epoch(0)))
    short = Batch(batch.tokens[:4], batch.mask[:4], batch.score[:4], reset=True)
    logits, totals = [], []
    for precision in ("fp32", "bf16"):
        learner = build_learner("ptncn", {**OPTS, "precision": precision}, V, seed=0)
        totals.append(learner.train_segment(short).total)
        logits.append(learner.model.last_logits.float())
    assert totals[1] == pytest.approx(totals[0], rel=2e-2)
    torch.testing.assert_close(logits[1], logits[0], atol=5e-2, rtol=2e-2)
    assert not torch.equal(logits[1], logits[0])  # it did round


def test_bf16_frames_are_read_as_bfloat16():
    g = torch.Generator().manual_seed(0)
    frames = (torch.rand(6, 2, 9, generator=g) > 0.5).float()
    mask = torch.ones(6, 2)
    learner = build_learner("ptncn", {**OPTS, "precision": "bf16"}, 9, frames=True, seed=0)
    tally = learner.train_segment(Batch(frames, mask, mask.bool(), reset=True))
    assert math.isfinite(tally.total) and tally.scored == 12
    assert learner.model._state["x"].dtype == torch.bfloat16


def test_tf32_off_cuda_is_one_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="tf32.*CUDA tensor-core format") as err:
        build_learner("ptncn", {**OPTS, "precision": "tf32"}, V)
    assert "\n" not in str(err.value)


def test_unknown_precision_is_refused():
    with pytest.raises(UserError, match="precision must be one of fp32, tf32, bf16"):
        build_learner("ptncn", {**OPTS, "precision": "fp16"}, V)


def test_tf32_switch_is_restored_after_the_block():
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    try:
        matmul.allow_tf32 = cudnn.allow_tf32 = False
        with pytest.raises(RuntimeError):
            with _tf32():
                assert matmul.allow_tf32 and cudnn.allow_tf32
                raise RuntimeError("inside")
        assert not matmul.allow_tf32 and not cudnn.allow_tf32
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tf32_learner_on_cuda_trains_and_leaves_the_process_setting_alone():
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_tf32
    try:
        matmul.allow_tf32 = False
        learner = build_learner("ptncn", {**OPTS, "precision": "tf32"}, V, device="cuda", seed=0)
        tallies = [learner.train_segment(b) for b in stream().epoch(0)]
        assert all(math.isfinite(t.total) for t in tallies)
        assert matmul.allow_tf32 is False
    finally:
        matmul.allow_tf32 = saved

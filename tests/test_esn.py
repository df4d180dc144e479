"""The echo state network (tncn.temporal.esn): the reservoir's spectral radius, the echo-state
property, and the online readout update against autograd's gradient of the readout loss."""
from __future__ import annotations

import math

import pytest
import torch

from sequences.batching import Batch
from tncn.temporal import build_learner
from tncn.temporal.esn import scale_to_radius


def _esn(size=7, frames=False, **options):
    return build_learner("esn", {"hidden": [30], "density": 0.3, **options}, size, seed=1, frames=frames)


@pytest.mark.parametrize("radius", [0.5, 0.9, 1.3])
def test_spectral_radius_after_scaling_equals_the_target(radius):
    learner = _esn(hidden=[40, 25], spectral_radius=radius)
    for name in ("W1", "W2"):
        w = getattr(learner.model, name).double()
        assert float(torch.linalg.eigvals(w).abs().max()) == pytest.approx(radius, rel=1e-5)
    assert float(torch.linalg.eigvals(scale_to_radius(torch.eye(3) * 2.0, 0.7)).abs().max()) == pytest.approx(0.7)


def test_a_matrix_without_eigenvalues_off_zero_cannot_be_scaled():
    with pytest.raises(ValueError, match="spectral radius 0; raise density"):
        scale_to_radius(torch.triu(torch.ones(4, 4), diagonal=1), 0.9)  # nilpotent


@pytest.mark.parametrize("leak", [1.0, 0.4])
def test_echo_state_property_two_starting_states_converge(leak):
    """Driven by the same inputs, states started apart forget where they started (radius < 1)."""
    model = _esn(hidden=[50, 20], spectral_radius=0.9, leak=leak).model
    gen = torch.Generator().manual_seed(0)
    a = [torch.rand(3, h, generator=gen) * 2 - 1 for h in (50, 20)]
    b = [torch.rand(3, h, generator=gen) * 2 - 1 for h in (50, 20)]
    start = sum(float((x - y).norm()) for x, y in zip(a, b))
    ones = torch.ones(3)
    for _ in range(300):
        x = torch.randint(0, 7, (3,), generator=gen)
        a, b = model.step(a, x, ones), model.step(b, x, ones)
    assert start > 1.0 and sum(float((x - y).norm()) for x, y in zip(a, b)) < 1e-6 * start


def test_padding_leaves_the_state_as_it_is():
    model = _esn().model
    h = [torch.rand(2, 30)]
    out = model.step(h, torch.tensor([3, 4]), torch.tensor([1.0, 0.0]))
    assert torch.equal(out[0][1], h[0][1]) and not torch.equal(out[0][0], h[0][0])


@pytest.mark.parametrize("frames", [False, True])
def test_readout_update_equals_autograd_gradient_of_the_readout_loss(frames):
    """One scored step after a reset: the readout moves by -lr times autograd's gradient of the
    step's loss (summed over its scored rows, divided by the batch size), the reservoir not at all."""
    size, B = 7, 5
    learner = _esn(size, frames, hidden=[30, 12], optimizer="sgd", lr=0.5)
    model = learner.model
    with torch.no_grad():  # a readout away from zero, so that the gradient is not trivial
        model.readout.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
        model.readout.bias.normal_(0, 0.3, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(2, B, size, generator=gen).round() if frames else torch.randint(0, size, (2, B), generator=gen)
    mask = torch.ones(2, B)
    score = torch.tensor([[False] * B, [True, True, False, True, True]])
    w0, b0 = model.readout.weight.detach().clone(), model.readout.bias.detach().clone()
    fixed = {k: v.clone() for k, v in model.named_buffers()}

    h = model.step(model.zero_state(B), x[0], mask[0])
    features = torch.cat(h, dim=1)
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    logits = (features @ w + b)[score[1]]
    if frames:
        nats = torch.nn.functional.binary_cross_entropy_with_logits(logits, x[1][score[1]], reduction="none").sum(1)
    else:
        nats = torch.nn.functional.cross_entropy(logits, x[1][score[1]], reduction="none")
    loss = nats.sum() / B  # summed over the scored rows, divided by the batch size
    gw, gb = torch.autograd.grad(loss, (w, b))

    learner.train_segment(Batch(x, mask, score, reset=True))
    torch.testing.assert_close(model.readout.weight.grad, gw, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.readout.bias.grad, gb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.readout.weight.detach(), w0 - 0.5 * gw, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(v, fixed[k]) for k, v in model.named_buffers())


def test_the_readout_learns_a_repeated_sequence():
    ids = torch.tensor([0, 1, 2, 3, 4, 5, 6] * 6).view(-1, 1).repeat(1, 2)
    learner = _esn(hidden=[60], lr=0.05)
    mask = torch.ones_like(ids, dtype=torch.float32)
    score = mask.bool()
    score[0] = False
    batch = Batch(ids, mask, score, reset=True)
    before = learner.eval_segment(batch).bpc
    for _ in range(30):
        learner.train_segment(batch)
    assert before == pytest.approx(math.log2(7))  # a zero readout: the uniform prediction
    assert learner.eval_segment(batch).bpc < 0.05

"""The fused training step (PTNCN.train_step) and its torch.compile path.

Eager ``train_step`` must equal ``step`` + ``local_updates`` bit for bit (the oracle-tested path);
the compiled step must give the eager numbers up to float rounding, over steps that include a
reset, padding and the optimizer, for every kind of model the compiled graph covers."""
import pytest
import torch

import tncn
from tncn.temporal import build_learner

OPTIONS = [
    dict(tokens=True),
    dict(tokens=True, hidden=[6, 5, 4], K=2, e_rule="temporal", w_error="e", sparsity=0.01),
    dict(tokens=False),
]


def _model(tokens=True, hidden=(6, 5), **options):
    gen = torch.Generator().manual_seed(1)
    return tncn.PTNCN(7, list(hidden), tokens=tokens, init_std=0.3, e_init_std=0.3, generator=gen, **options)


def _inputs(tokens, T=7, B=3, V=7):
    g = torch.Generator().manual_seed(2)
    xs = torch.randint(0, V, (T, B), generator=g) if tokens else torch.rand(T, B, V, generator=g)
    mask = torch.ones(T, B)
    mask[4:, 1] = 0  # row 1 is padded from t = 4 on
    return xs, mask


def _train(model, xs, mask, fused: bool):
    """Train over xs with a reset at t = 3; return every state, logit and weight along the way."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    trace = []
    for t in range(len(xs)):
        if t in (0, 3):
            model.reset(xs.shape[1])
        if fused:
            learned = model.train_step(xs[t], mask[t])
        else:
            model.step(xs[t], mask[t])
            learned = model.local_updates()
        assert learned == (t not in (0, 3))
        trace += [model.last_logits.clone(), *(y.clone() for y in model._state["y"][1:])]
        if learned:
            trace += [p.grad.clone() for p in model.parameters()]
            opt.step()
        else:
            assert all(p.grad is None for p in model.parameters())
        trace += [p.detach().clone() for p in model.parameters()]
    return trace


@pytest.mark.parametrize("options", OPTIONS)
def test_eager_train_step_is_step_then_local_updates(options):
    xs, mask = _inputs(options.get("tokens", True))
    split = _train(_model(**options), xs, mask, fused=False)
    fused = _train(_model(**options), xs, mask, fused=True)
    assert len(split) == len(fused)
    for a, b in zip(split, fused):
        assert torch.equal(a, b)


@pytest.mark.parametrize("options", OPTIONS)
def test_compiled_step_gives_the_eager_numbers(options):
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    xs, mask = _inputs(options.get("tokens", True))
    eager = _train(_model(**options), xs, mask, fused=True)
    model = _model(**options)
    model.compile_step()
    compiled = _train(model, xs, mask, fused=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # it did compile
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, atol=2e-6, rtol=1e-5)


def test_learner_option_compiles_the_training_step():
    torch._dynamo.reset()
    from sequences.batching import Batch

    opts = {"hidden": [6, 5], "init_std": 0.3}
    xs, mask = _inputs(True, T=6, B=3)
    batch = Batch(xs, mask, mask.bool(), reset=True)
    tallies = []
    for compile_ in (False, True):
        learner = build_learner("ptncn", {**opts, "compile": compile_}, 7, seed=0)
        assert (learner.model._compiled is not None) == compile_
        tallies.append([learner.train_segment(batch).total for _ in range(3)])
    assert tallies[1] == pytest.approx(tallies[0], rel=1e-5)


def test_stochastic_activations_refuse_to_compile():
    with pytest.raises(ValueError, match="stochastic_binary.*eagerly"):
        _model(activation="stochastic_binary").compile_step()

"""The CUDA-graph training step (tncn.temporal.cuda_graph.GraphStep) and the learner's
``cuda_graph`` option.

On any device, ``GraphStep(capture=False)`` runs the body the graph would hold on the static
buffers; over steps with resets, padding, a step without a mask, an eager interlude (an
evaluation-like state swap) and a learning-rate change it must give plain ``train_step``'s
weights, optimizer state, carried states, ``_last`` and logits. On CUDA the captured graph is
compared with eager ``train_step`` the same way, and must have been captured again after the
learning rate changed."""
import pytest
import torch

import tncn
from sequences.batching import Batch
from tncn.errors import UserError
from tncn.temporal import build_learner
from tncn.temporal.cuda_graph import WARMUP, GraphStep
from tncn.temporal.ptncn_learner import PTNCNLearner

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

T, B, V = 20, 3, 7
RESETS = (0, 8)  # the first step after each does not learn
INTERLUDE, LR_CHANGE, NO_MASK = 5, 13, 15

MODELS = [
    dict(tokens=True),
    dict(tokens=True, hidden=[6, 5, 4], K=2, e_rule="temporal", w_error="e"),
    dict(tokens=False),
]
OPTIMIZERS = {
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),  # E held as γW + D
    "momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
}


def _model(device, dtype, tokens=True, hidden=(6, 5), **options):
    gen = torch.Generator().manual_seed(1)
    model = tncn.PTNCN(V, list(hidden), tokens=tokens, init_std=0.3, e_init_std=0.3, generator=gen, **options)
    return model.to(device=device, dtype=dtype)


def _inputs(tokens, device):
    g = torch.Generator().manual_seed(2)
    xs = torch.randint(0, V, (T, B), generator=g) if tokens else torch.rand(T, B, V, generator=g)
    mask = torch.ones(T, B)
    mask[3:8, 1] = 0  # row 1 is padding until the second reset
    mask[16:, 2] = 0
    return xs.to(device), mask.to(device)


def _trace(model, opt) -> list:
    """Everything a step leaves: logits, carried state, _last's inputs, weights, optimizer state."""
    st, last = model._state, model._last
    out = [model.last_logits, *st["y"][1:], *st["eps"][1:], st["x"], st["m"],
           *last["y_prev"][1:], *last["eps_prev"][1:], last["x_prev"], last["m_prev"], *last["z"][1:]]
    out += [p.detach() for p in model.parameters()]
    out += [v for p in model.parameters() for v in opt.state[p].values()]
    return [t.clone() for t in out] + [st["t"]]


def _run(step, model, opt, xs, mask) -> list:
    trace = []
    for t in range(T):
        if t in RESETS:
            model.reset(B)
        if t == INTERLUDE:  # an eager use of the model in between, as an evaluation does
            saved = model.carry_state()
            model.reset(B)
            model.step(xs[0])
            model.load_carry_state(saved)
        if t == LR_CHANGE:
            for g in opt.param_groups:
                g["lr"] *= 0.5
        learned = step(xs[t], None if t == NO_MASK else mask[t])
        assert learned == (t not in RESETS)
        trace.append(_trace(model, opt))
    return trace


def _compare(device, dtype, options, optimizer, capture, atol, rtol):
    xs, mask = _inputs(options.get("tokens", True), device)
    runs = []
    for graph in (False, True):
        model = _model(device, dtype, **options)
        opt = OPTIMIZERS[optimizer](model.parameters())
        model.use_optimizer(opt)
        stepper = GraphStep(model, capture=capture) if graph else None
        runs.append(_run(stepper.step if graph else model.train_step, model, opt, xs, mask))
    eager, graphed = runs
    for t, (a, b) in enumerate(zip(eager, graphed)):
        assert len(a) == len(b)
        assert a[-1] == b[-1]  # the step count
        for x, y in zip(a[:-1], b[:-1]):
            torch.testing.assert_close(y, x, atol=atol, rtol=rtol, msg=lambda m: f"step {t}: {m}")
    return stepper


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("options", MODELS)
def test_static_buffer_path_gives_the_eager_step(options, optimizer):
    stepper = _compare("cpu", torch.float64, options, optimizer, capture=False, atol=1e-12, rtol=1e-10)
    assert stepper.captures == 0 and stepper.graph is None


def test_static_buffers_refresh_from_an_eager_step():
    """After an eager train_step the static state is stale; the next step must start from the model's."""
    xs, mask = _inputs(True, "cpu")
    model = _model("cpu", torch.float64)
    model.use_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    graph = GraphStep(model, capture=False)
    model.reset(B)
    for t in range(4):
        graph.step(xs[t], mask[t])
    model.train_step(xs[4], mask[4])
    carried = model.carry_state()
    graph.step(xs[5], mask[5])
    torch.testing.assert_close(model._last["y_prev"][1], carried["y"][0], atol=0, rtol=0)
    assert model._state["t"] == 6


def test_a_model_that_does_not_step_its_optimizer_is_refused():
    model = _model("cpu", torch.float32)
    with pytest.raises(ValueError, match="fused"):
        GraphStep(model, capture=False)
    model.use_optimizer(torch.optim.RMSprop(model.parameters()))
    with pytest.raises(ValueError, match=".grad"):
        GraphStep(model, capture=False)


def test_capture_needs_a_cuda_device():
    model = _model("cpu", torch.float32)
    model.use_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="CUDA device"):
        GraphStep(model)


# --------------------------------------------------------------------------- the learner option

def _one_line_user_error(fn, match):
    with pytest.raises(UserError, match=match) as err:
        fn()
    assert "\n" not in str(err.value)


def test_learner_refuses_cuda_graph_off_cuda_with_compile_and_under_exact_parallelism():
    _one_line_user_error(lambda: build_learner("ptncn", {"hidden": [6, 5], "cuda_graph": True}, V), "CUDA device")
    _one_line_user_error(lambda: build_learner("ptncn", {"hidden": [6, 5], "cuda_graph": True, "compile": True}, V),
                         "compile")
    options = PTNCNLearner.read_options({"cuda_graph": True})
    _one_line_user_error(lambda: PTNCNLearner.check_parallel(options, "exact"), "parallel exact")
    PTNCNLearner.check_parallel(options, "average")  # local SGD trains each rank alone: allowed


def test_learner_refuses_cuda_graph_with_an_optimizer_it_cannot_fuse():
    learner = build_learner("ptncn", {"hidden": [6, 5], "optimizer": "rmsprop", "lr": 0.01}, V)
    learner.options["cuda_graph"] = True  # as on a CUDA device, where build accepts it
    xs, mask = _inputs(True, "cpu")
    _one_line_user_error(lambda: learner.train_segment(Batch(xs[:4], mask[:4], mask[:4].bool(), reset=True)),
                         r"cuda-graph.*\.grad.*RMSprop")


# --------------------------------------------------------------------------- CUDA only

@needs_cuda
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("options", MODELS)
def test_captured_graph_gives_the_eager_step_on_cuda(options, optimizer):
    stepper = _compare("cuda", torch.float32, options, optimizer, capture=True, atol=1e-6, rtol=1e-5)
    # WARMUP eager steps after the first reset, one capture, and one more after LR_CHANGE
    assert WARMUP + 1 < INTERLUDE and stepper.captures == 2


@needs_cuda
def test_learner_cuda_graph_trains_as_the_eager_learner():
    opts = {"hidden": [6, 5], "init_std": 0.3, "half_life": 2}  # the schedule changes lr every segment
    xs, mask = _inputs(True, "cpu")
    batches = [Batch(xs[:10], mask[:10], mask[:10].bool(), reset=True),
               Batch(xs[10:], mask[10:], mask[10:].bool(), reset=False)]
    tallies, weights = [], []
    for graph in (False, True):
        learner = build_learner("ptncn", {**opts, "cuda_graph": graph}, V, device="cuda", seed=0)
        tallies.append([learner.train_segment(b).total for b in batches * 2])
        weights.append([p.detach().cpu() for p in learner.model.parameters()])
        if graph:
            assert learner._graph.captures >= 2
    assert tallies[1] == pytest.approx(tallies[0], rel=1e-5)
    for a, b in zip(*weights):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)

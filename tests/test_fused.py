"""The optimizer fused into the P-TNCN step (tncn.fused, PTNCN.use_optimizer) against the
``.grad`` contract followed by the stock ``torch.optim`` step: the same weights and optimizer
state, on every path (direct addmm, heavy-ball buffer, scratch tiles, Adam), with E held as
γWᵀ + D where that is exact and updated where it is not."""
import pytest
import torch

import tncn
import tncn.fused
import tncn.temporal.ptncn
from tncn.fused import Collect, Fused, product
from tncn.temporal import build_learner

OPTIMIZERS = {
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.075, momentum=0.95, nesterov=True, fused=True),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd-decay": lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.01),
    "momentum-decay": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, fused=True),
    "adam-decay": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.01),
}
HOLDS = {"nesterov", "momentum", "sgd"}


def observations(steps, B, V, tokens, seed=1):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randint(0, V, (steps, B), generator=g) if tokens else torch.rand(steps, B, V, generator=g).round()
    masks = torch.ones(steps, B)
    masks[5:9, 1] = 0.0  # a padded row
    return xs, masks


def train(make_opt, fused, steps=24, dtype=torch.float64, tokens=True, reset_at=12, **options):
    torch.manual_seed(0)
    V, B = 11, 4
    model = tncn.PTNCN(V, [7, 5], tokens=tokens, **options).to(dtype)
    opt = make_opt(model.parameters())
    path = model.use_optimizer(opt) if fused else None
    model.reset(B)
    xs, masks = observations(steps, B, V, tokens)
    for t in range(steps):
        if t == reset_at:
            model.reset(B)
        x = xs[t] if tokens else xs[t].to(dtype)
        if model.train_step(x, masks[t]) and not model.steps_optimizer:
            opt.step()
        model.project_()
    return model, opt, path


def optimizer_state(model, opt):
    packed = model.complete_optimizer_state(opt.state_dict())["state"]
    return {name: packed.get(i, {}) for i, (name, p) in enumerate(model.named_parameters())}


@pytest.fixture(params=[8, 2**19], ids=["tiles of one row", "one tile"])
def tile(request, monkeypatch):
    monkeypatch.setattr(tncn.fused, "TILE", request.param)


@pytest.mark.parametrize("kind", OPTIMIZERS)
@pytest.mark.parametrize("options", [{}, {"clip": 0.05}, {"e_rule": "temporal"}, {"tokens": False}],
                         ids=["reference", "clipping", "temporal E", "frames"])
def test_fused_step_equals_grad_then_torch_optim(kind, options, tile):
    reference, ref_opt, _ = train(OPTIMIZERS[kind], False, **options)
    model, opt, path = train(OPTIMIZERS[kind], True, **options)
    assert path.startswith("fused")
    held = kind in HOLDS and options.get("e_rule") != "temporal"
    assert ("E held" in path) == held
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12, msg=name)
        assert p.grad is None, f"{name}: the fused path materialised .grad"
    ours, theirs = optimizer_state(model, opt), optimizer_state(reference, ref_opt)
    for name in ours:
        assert ours[name].keys() == theirs[name].keys(), name
        for key in ours[name]:
            torch.testing.assert_close(ours[name][key], theirs[name][key], rtol=0, atol=1e-12, msg=f"{name} {key}")


@pytest.mark.parametrize("kind", ["nesterov", "momentum", "adam", "sgd"])
def test_lazy_rows_of_M1_equal_the_dense_step(kind, monkeypatch):
    """M^1 stepped lazily (only the rows a step reads or updates; the rest caught up in closed
    form), through repeated ids, padding, a reset, evaluation steps and learning-rate changes."""
    torch.manual_seed(0)
    V, B, steps = 11, 4, 40
    monkeypatch.setattr(tncn.temporal.ptncn, "LAZY_ROWS", V)  # so small a vocabulary is stepped lazily
    models, opts = [], []
    for lazy in (False, True):
        torch.manual_seed(0)
        model = tncn.PTNCN(V, [7, 5]).double()
        opt = OPTIMIZERS[kind](model.parameters())
        path = model.use_optimizer(opt, lazy_rows=lazy)
        assert ("lazily" in path) == (lazy and kind in ("nesterov", "momentum"))
        model.reset(B)
        models.append(model)
        opts.append(opt)
    xs, masks = observations(steps, B, V, True)
    for t in range(steps):
        for model, opt in zip(models, opts):
            if t == 20:
                model.reset(B)
            if t in (10, 30):  # the schedule changes the rate
                opt.param_groups[0]["lr"] *= 0.5
            if t == 25:  # an evaluation step reads rows, learns nothing
                model.step(xs[t], masks[t])
                continue
            model.train_step(xs[t], masks[t])
    dense, lazy = models
    torch.testing.assert_close(lazy.last_logits, dense.last_logits, rtol=0, atol=1e-12)
    lazy.flush_rows()
    for (name, p), q in zip(lazy.named_parameters(), dense.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12, msg=name)
    if kind in ("nesterov", "momentum"):
        torch.testing.assert_close(opts[1].state[lazy.M1]["momentum_buffer"],
                                   opts[0].state[dense.M1]["momentum_buffer"], rtol=0, atol=1e-12)


def test_held_E_follows_the_full_path_over_many_steps_in_float32_with_clipping():
    """E = γW + D, held through 300 Nesterov steps with the clip acting on most of them."""
    reference, _, _ = train(OPTIMIZERS["nesterov"], False, steps=300, dtype=torch.float32, reset_at=150, clip=0.2)
    model, _, path = train(OPTIMIZERS["nesterov"], True, steps=300, dtype=torch.float32, reset_at=150, clip=0.2)
    assert "E held" in path
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    d0 = model.E2 - model.gamma * model.W2
    torch.testing.assert_close(model._held[2], d0, rtol=0, atol=1e-6)


def test_a_held_E_keeps_no_momentum_while_training_and_saves_the_grad_paths_state():
    model, opt, _ = train(OPTIMIZERS["nesterov"], True)
    assert "momentum_buffer" not in opt.state[model.E2]
    packed = model.complete_optimizer_state(opt.state_dict())["state"]
    names = [n for n, _ in model.named_parameters()]
    torch.testing.assert_close(packed[names.index("E2")]["momentum_buffer"],
                               model.gamma * opt.state[model.W2]["momentum_buffer"])
    assert "momentum_buffer" not in opt.state[model.E2]


def attach(opt_fn=OPTIMIZERS["nesterov"], groups=None, **options):
    model = tncn.PTNCN(11, [7, 5], **options)
    opt = opt_fn(groups(model) if groups else model.parameters())
    return model, model.use_optimizer(opt)


@pytest.mark.parametrize("opt_fn, options, groups, reason", [
    (OPTIMIZERS["adam"], {}, None, "Adam is not linear"),
    (OPTIMIZERS["sgd-decay"], {}, None, "SGD with weight decay is not linear"),
    (OPTIMIZERS["nesterov"], {"e_rule": "temporal"}, None, "temporal E rule"),
    (OPTIMIZERS["nesterov"], {"gamma": 2.0}, None, "second clip"),
    (OPTIMIZERS["nesterov"], {"max_norm": 2.0}, None, "max_norm"),
    (OPTIMIZERS["nesterov"], {}, lambda m: [{"params": [p for n, p in m.named_parameters() if n[0] != "E"]},
                                            {"params": [p for n, p in m.named_parameters() if n[0] == "E"]}],
     "different parameter groups"),
])
def test_E_is_updated_and_the_path_says_why_when_holding_it_would_not_be_exact(opt_fn, options, groups, reason):
    _, path = attach(opt_fn, groups, **options)
    assert path.startswith("fused") and "not held" in path and reason in path


def test_gamma_above_one_is_held_without_clipping():
    _, path = attach(gamma=2.0, clip=None)
    assert "E held" in path


def test_other_optimizers_keep_the_grad_contract():
    model, path = attach(lambda p: torch.optim.RMSprop(p, lr=1e-3))
    assert path.startswith(".grad") and "RMSprop" in path and not model.steps_optimizer
    model, path = attach(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1))
    assert path.startswith(".grad") and "dampening" in path


def test_an_optimizer_with_inconsistent_E_momentum_is_not_held():
    model = tncn.PTNCN(11, [7, 5])
    opt = OPTIMIZERS["nesterov"](model.parameters())
    for p in model.parameters():
        opt.state[p]["momentum_buffer"] = torch.randn_like(p)
    assert "E1's momentum is not γ times W1's" in model.use_optimizer(opt)


def test_local_updates_refuses_a_model_that_steps_its_optimizer():
    model, _ = attach()
    model.reset(2)
    model.step(torch.tensor([1, 2]))
    with pytest.raises(RuntimeError, match="steps its optimizer itself"):
        model.local_updates()


@torch.no_grad()
def test_a_tensor_scale_gives_the_float_scales_numbers():
    """On a GPU the clip factors stay device tensors: the products and steps must not differ."""
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(product(A, B, torch.tensor(0.3, dtype=torch.float64)), 0.3 * A.T @ B)
    torch.testing.assert_close(product(A, B, 0.3), 0.3 * A.T @ B)
    for kind in ("sgd", "momentum", "nesterov", "adam"):
        results = []
        for scale in (0.3, torch.tensor(0.3, dtype=torch.float64)):
            torch.manual_seed(0)
            model = tncn.PTNCN(3, [6]).double()
            opt = OPTIMIZERS[kind](model.parameters())
            sink = Fused(model, opt)
            for _ in range(3):
                sink.outer("V1", A, torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64),
                           scale)
            results.append(model.V1.detach().clone())
        assert (results[0] - results[1]).abs().max() < 1e-12, kind


def test_collect_returns_the_update_and_its_tie():
    model = tncn.PTNCN(3, [6]).double()
    sink = Collect(model)
    A, B = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    sink.outer("W1", A, B, 0.5, ("E1", 2.0))
    sink.rows("M1", torch.tensor([0, 0, 2]), torch.ones(3, 6, dtype=torch.float64), 0.5)
    torch.testing.assert_close(sink.grads["E1"], 2.0 * sink.grads["W1"])
    torch.testing.assert_close(sink.grads["M1"][:, 0], torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64))


def test_the_learner_fuses_its_default_optimizer_and_resumes_on_either_path(tmp_path):
    """The ``ptncn`` learner steps its reference optimizer inside the step; a state it saves
    resumes as the uninterrupted run continues."""
    from tncn.bench import random_batch
    learner = build_learner("ptncn", {"hidden": [8, 8]}, 11)
    assert "E held" in learner.update_path
    gen = torch.Generator().manual_seed(0)
    batches = [random_batch(11, 6, 3, gen, reset=(i == 0)) for i in range(5)]
    for b in batches[:3]:
        learner.train_segment(b)
    torch.save(learner.state_dict(), tmp_path / "s.pt")
    for b in batches[3:]:
        learner.train_segment(b)
    resumed = build_learner("ptncn", {"hidden": [8, 8]}, 11)
    resumed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=False))
    for b in batches[3:]:
        resumed.train_segment(b)
    for p, q in zip(learner.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    names = [n for n, _ in learner.model.named_parameters()]
    packed = torch.load(tmp_path / "s.pt", weights_only=False)["optimizer"]["state"]
    torch.testing.assert_close(packed[names.index("E2")]["momentum_buffer"],
                               packed[names.index("W2")]["momentum_buffer"] * learner.model.gamma)

    rms = build_learner("ptncn", {"hidden": [8, 8], "optimizer": "adam", "e_rule": "temporal"}, 11)
    assert "not held: the temporal E rule" in rms.update_path


def test_bf16_sgd_on_a_cpu_with_torchs_broken_fused_kernel_keeps_the_grad_contract():
    model = tncn.PTNCN(11, [70, 5]).to(torch.bfloat16)
    path = model.use_optimizer(OPTIMIZERS["nesterov"](model.parameters()))
    assert ("pytorch/pytorch#191763" in path) == (not tncn.fused.fused_sgd_steps(torch.bfloat16))
    assert tncn.fused.fused_sgd_steps(torch.float32) and tncn.fused.fused_sgd_steps(torch.float64)

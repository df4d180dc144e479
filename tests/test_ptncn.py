"""Behaviour of tncn.PTNCN: against an independent naive implementation, hand computations and
closed forms (any depth, every option), masks, resets, carried state, and the no-autograd contract."""
import numpy as np
import pytest
import torch

import tncn
from tncn.temporal.naive import naive_step, naive_zero_state

OPTION_SETS = [
    dict(),
    dict(e_rule="temporal"),
    dict(K=3),
    dict(w_error="e", hidden_prediction="tanh"),
    dict(top_down=False, sparsity=0.01, alpha=0.05),
    dict(clip=None, gamma=0.5, activation="ltanh"),
    dict(clip=0.05, gamma=2.0, e_rule="transpose"),
]


def _copy_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("tokens", [True, False])
@pytest.mark.parametrize("options", OPTION_SETS)
def test_matches_naive_implementation_at_depth_3(options, tokens):
    torch.manual_seed(0)
    V, hidden, B, T = 7, [6, 5, 4], 3, 6
    gen = torch.Generator().manual_seed(1)
    model = tncn.PTNCN(V, hidden, tokens=tokens, init_std=0.3, e_init_std=0.3, generator=gen, **options)
    naive_opts = {k: v for k, v in model.options().items() if k not in ("input_size", "hidden", "tokens", "max_norm")}
    weights = _copy_weights(model)
    ids = torch.randint(0, V, (T, B))
    mask = torch.ones(T, B)
    mask[4:, 1] = 0  # row 1 is padded from t = 4 on
    frames = torch.rand(T, B, V)
    state = naive_zero_state(weights, len(hidden), B)
    model.reset(B)
    for t in range(T):
        x_dense = torch.nn.functional.one_hot(ids[t], V).float() if tokens else frames[t]
        x_hat_ref, state, deltas = naive_step(weights, state, x_dense, mask[t], L=len(hidden), **naive_opts)
        x_hat = model.step(ids[t] if tokens else frames[t], mask[t])
        torch.testing.assert_close(x_hat, x_hat_ref, atol=1e-6, rtol=1e-5)
        for l in range(len(hidden)):
            torch.testing.assert_close(model._state["y"][l + 1], state["y"][l], atol=1e-6, rtol=1e-5)
        assert model.local_updates() == (t >= 1)
        if t >= 1:
            assert set(deltas) == {n for n, _ in model.named_parameters()}
            for n, p in model.named_parameters():
                torch.testing.assert_close(p.grad, deltas[n], atol=1e-6, rtol=1e-5, msg=f"{n} at t={t}")


def test_one_layer_step_by_hand():
    """L = 1, V = 3, H = 2: the second step of a sequence computed with numpy by hand."""
    M = np.array([[0.1, -0.2], [0.3, 0.4], [-0.5, 0.6]])
    V = np.array([[0.2, 0.1], [-0.1, 0.3]])
    W = np.array([[0.5, -0.4, 0.2], [0.1, 0.3, -0.6]])
    E = np.array([[0.2, 0.0], [-0.3, 0.1], [0.4, -0.2]])
    beta, alpha = 0.1, 0.001
    model = tncn.PTNCN(3, [2], beta=beta, alpha=alpha, clip=None)
    model.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in dict(M1=M, V1=V, W1=W, E1=E.T).items()})  # E stored transposed
    model.reset(1)
    seq = [2, 0]

    def softmax(v):
        v = np.exp(v - v.max())
        return v / v.sum()

    # t = 0: zero state, uniform prediction, correction with token 2
    onehot = np.eye(3)
    z0 = np.zeros(2)
    e0 = softmax(z0 @ W) - onehot[2]
    y0 = np.tanh(0 - beta * (e0 @ E))          # top layer: no own-error term
    # t = 1
    a1 = onehot[2] @ M + y0 @ V
    z1 = np.tanh(a1)
    x_hat1 = softmax(z1 @ W)
    e1 = x_hat1 - onehot[0]
    y1 = np.tanh(a1 - beta * (e1 @ E))
    eps1 = z1 - y1
    expected = {"W1": np.outer(z1, e1), "E1": np.outer(z1, e1), "M1": np.outer(onehot[2], eps1), "V1": np.outer(y0, eps1)}

    # tncn stores E transposed, so its update (ΔE)ᵀ = ΔW^1 has W's shape
    model.step(torch.tensor([seq[0]]))
    assert not model.local_updates()
    x_hat = model.step(torch.tensor([seq[1]]))
    np.testing.assert_allclose(x_hat.numpy()[0], x_hat1, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model._state["y"][1].numpy()[0], y1, rtol=1e-5, atol=1e-7)
    assert model.local_updates()
    for name, value in expected.items():
        np.testing.assert_allclose(getattr(model, name).grad.numpy(), value, rtol=1e-5, atol=1e-7, err_msg=name)


def test_masked_rows_give_no_update_and_no_error():
    torch.manual_seed(0)
    model = tncn.PTNCN(5, [4, 3], clip=None, init_std=0.3)
    model.reset(2)
    model.step(torch.tensor([1, 2]))
    model.step(torch.tensor([3, 4]), torch.tensor([1.0, 0.0]))
    assert torch.all(model._last["e"][0][1] == 0) and torch.all(model._last["eps"][1][1] == 0)
    model.local_updates()
    grads_two = {n: p.grad.clone() for n, p in model.named_parameters()}
    # the same sequence with row 1 removed: updates equal up to the 1/B scaling (B = 2 vs 1)
    solo = tncn.PTNCN(5, [4, 3], clip=None, init_std=0.3)
    solo.load_state_dict(model.state_dict())
    solo.reset(1)
    solo.step(torch.tensor([1]))
    solo.step(torch.tensor([3]))
    solo.local_updates()
    for n, p in solo.named_parameters():
        torch.testing.assert_close(grads_two[n] * 2, p.grad, msg=n)


def test_all_masked_step_updates_nothing():
    model = tncn.PTNCN(5, [4, 3], init_std=0.3)
    model.reset(3)
    model.step(torch.tensor([1, 2, 3]))
    model.step(torch.tensor([0, 0, 0]), torch.zeros(3))
    assert model.local_updates()
    for n, p in model.named_parameters():
        assert torch.count_nonzero(p.grad) == 0, n


def test_reset_gives_a_uniform_first_prediction_and_fresh_state():
    model = tncn.PTNCN(6, [5, 5], init_std=0.3)
    model.reset(2)
    for tok in [1, 2, 3]:
        model.step(torch.tensor([tok, tok]))
    model.reset(2)
    torch.testing.assert_close(model.hypothesize(), torch.full((2, 6), 1 / 6))
    assert all(torch.count_nonzero(y) == 0 for y in model._state["y"][1:])


def test_carried_state_equals_one_long_sequence():
    torch.manual_seed(3)
    ids = torch.randint(0, 6, (8, 2))
    a = tncn.PTNCN(6, [5, 4], e_rule="temporal", init_std=0.3)
    b = tncn.PTNCN(6, [5, 4], e_rule="temporal", init_std=0.3)
    b.load_state_dict(a.state_dict())
    a.reset(2)
    outs_a = [a.step(ids[t]) for t in range(8)]
    b.reset(2)
    outs_b = [b.step(ids[t]) for t in range(4)]
    saved = b.carry_state()
    b.reset(2)
    b.load_carry_state(saved)
    outs_b += [b.step(ids[t]) for t in range(4, 8)]
    for x, y in zip(outs_a, outs_b):
        torch.testing.assert_close(x, y)


def test_default_E_rule_keeps_E_minus_W_transpose_under_sgd():
    """With ΔE = γ ΔWᵀ (γ = 1) and SGD with momentum, E - Wᵀ never changes (tncn.temporal.ptncn).

    tncn stores E^l transposed, so the invariant reads E{l} - W{l} = const."""
    torch.manual_seed(0)
    model = tncn.PTNCN(6, [5, 4], init_std=0.3)
    diff0 = [(getattr(model, f"E{l}") - getattr(model, f"W{l}")).detach().clone() for l in (1, 2)]
    w0 = model.W1.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, nesterov=True)
    model.reset(3)
    for t in range(10):
        model.step(torch.randint(0, 6, (3,)))
        if model.local_updates():
            opt.step()
    for l, d0 in zip((1, 2), diff0):
        torch.testing.assert_close(getattr(model, f"E{l}") - getattr(model, f"W{l}"), d0, atol=1e-6, rtol=0)
    assert (model.W1.detach() - w0).abs().max() > 1e-2  # the weights did move


def test_three_layers_stay_finite_on_random_data():
    torch.manual_seed(0)
    model = tncn.PTNCN(20, [32, 24, 16])
    opt = torch.optim.SGD(model.parameters(), lr=0.075, momentum=0.95, nesterov=True)
    for seq in range(5):
        model.reset(8)
        for t in range(30):
            model.step(torch.randint(0, 20, (8,)))
            if model.local_updates():
                opt.step()
                for p in model.parameters():
                    assert torch.isfinite(p.grad).all()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _nll_on_repeated_sequence(model, seq, sweeps, opt=None):
    nll = 0.0
    for _ in range(sweeps):
        model.reset(1)
        nll = 0.0
        for t, tok in enumerate(seq):
            model.step(torch.tensor([tok]))
            if t >= 1:
                nll -= torch.log_softmax(model.last_logits, -1)[0, tok].item()
            if opt is not None and model.local_updates():
                opt.step()
    return nll / (len(seq) - 1)


@pytest.mark.parametrize("act", ["sign", "tanh"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learns_a_repeated_sequence(act, seed):
    seq = [0, 1, 2, 3, 4, 5, 0, 2, 4, 1, 3, 5]
    model = tncn.PTNCN(6, [64, 64], activation=act, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.95, nesterov=True)
    before = _nll_on_repeated_sequence(model, seq, 1)
    _nll_on_repeated_sequence(model, seq, 100, opt)
    after = _nll_on_repeated_sequence(model, seq, 1)
    assert after < 0.6 * before, (before, after)


def test_builds_no_autograd_graph():
    model = tncn.PTNCN(6, [5, 4])
    assert all(p.requires_grad for p in model.parameters())
    with torch.enable_grad():
        model.reset(2)
        outs = [model.step(torch.tensor([1, 2])) for _ in range(3)]
        model.local_updates()
    produced = outs + model._state["y"][1:] + [p.grad for p in model.parameters()]
    assert all(t.grad_fn is None and not t.requires_grad for t in produced)


def test_max_norm_bounds_every_row():
    model = tncn.PTNCN(6, [5, 4], init_std=2.0, max_norm=0.5)
    model.project_()
    for n, p in model.named_parameters():
        assert torch.all(p.norm(dim=1) <= 0.5 + 1e-6), n


def test_dense_observations_with_sigmoid_output():
    model = tncn.PTNCN(10, [8], tokens=False)
    model.reset(4)
    x_hat = model.step(torch.rand(4, 10).round())
    assert model.output == "sigmoid" and torch.allclose(x_hat, torch.full((4, 10), 0.5))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_size=5, hidden=[0]), "positive"),
        (dict(input_size=5, hidden=[]), "at least one"),
        (dict(input_size=5, hidden=[3], activation="swish"), "known: "),
        (dict(input_size=5, hidden=[3], e_rule="hebb"), "temporal"),
        (dict(input_size=5, hidden=[3], K=0), "K"),
        (dict(input_size=5, hidden=[3], output="sigmoid"), "softmax"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tncn.PTNCN(**kwargs)


def test_bad_observations_are_clear_errors():
    model = tncn.PTNCN(5, [3])
    with pytest.raises(RuntimeError, match="reset"):
        model.step(torch.tensor([1]))
    model.reset(2)
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        model.step(torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="integer ids"):
        model.step(torch.tensor([1.0, 2.0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_runs_on_cuda_like_on_cpu():
    cpu = tncn.PTNCN(7, [6, 5], init_std=0.3)
    gpu = tncn.PTNCN(7, [6, 5], init_std=0.3).cuda()
    gpu.load_state_dict(cpu.state_dict())
    ids = torch.randint(0, 7, (5, 3))
    for m in (cpu, gpu):
        m.reset(3)
        for t in range(5):
            m.step(ids[t].to(m.W1.device))
            m.local_updates()
    torch.testing.assert_close(cpu.hypothesize(), gpu.hypothesize().cpu(), atol=1e-5, rtol=1e-4)
    for (n, p), (_, q) in zip(cpu.named_parameters(), gpu.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad.cpu(), atol=1e-5, rtol=1e-4)

"""Tests of the BPTT baselines (tncn.temporal.bptt, bptt_learner, bptt_alignment).

Expected values come from independent computations: PyTorch's own nn.RNN / nn.LSTM with autograd,
the classic truncated-BPTT loop written out here, closed-form parameter counts checked against
numel, the fused-kernel and the Dense-built Elman networks against each other, and the
linearisation of the P-TNCN-style target rule.
"""
from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from sequences.batching import Batch, LineBatches, StreamBatches
from tncn.errors import UserError
from tncn.options import OptionError, find
from tncn.temporal import build_learner, learner_class
from tncn.temporal.bptt import ElmanLM, n_params
from tncn.temporal.bptt_alignment import alignment, bptt_gradient, local_update

KINDS = ["rnn", "gru", "lstm", "elman"]


def _ids(T, B, V, seed=0):
    return torch.randint(0, V, (T, B), generator=torch.Generator().manual_seed(seed))


def _lines(V=9, n=12, B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, V, (int(torch.randint(2, 11, (1,), generator=g)),), generator=g) for _ in range(n)]
    return LineBatches(seqs, B, seed)


def _stream(V=9, N=230, B=3, S=20, seed=0):
    return StreamBatches(_ids(N, 1, V, seed)[:, 0], B, S)


def _params(learner):
    return [p.detach().clone() for p in learner.model.parameters()]


def _train(learner, batches, epochs=1):
    out = []
    for e in range(epochs):
        for b in batches.epoch(e):
            t = learner.train_segment(b)
            out.append((t.total, t.scored, t.correct))
    return out


SGD = {"optimizer": "sgd", "lr": 0.3, "clip_grad": 0.0}


# --------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("input,embed", [("onehot", None), ("embedding", None), ("embedding", 7)])
def test_parameter_count_closed_form_equals_numel(kind, input, embed):
    learner = build_learner(kind, {"hidden": [5, 8], "input": input, "embed": embed}, 13)
    assert n_params(kind, 13, [5, 8], input, embed) == sum(p.numel() for p in learner.model.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_width_for_params_is_the_closest_width(kind):
    cls = learner_class(kind)
    for target in (5_000, 61_234, 400_000):
        h = cls.width_for_params(49, 2, target, cls.defaults())
        best = min(abs(n_params(kind, 49, [w, w]) - target) for w in range(1, 600))
        assert abs(n_params(kind, 49, [h, h]) - target) == best


# --------------------------------------------------------------------------- against PyTorch's kernels

def _copy_rnn_into_elman(rnn: nn.RNN, head: nn.Linear, elman: ElmanLM) -> None:
    with torch.no_grad():
        for l in range(rnn.num_layers):
            elman.inputs[l].weight.copy_(getattr(rnn, f"weight_ih_l{l}").T)
            elman.inputs[l].bias.copy_(getattr(rnn, f"bias_ih_l{l}") + getattr(rnn, f"bias_hh_l{l}"))
            elman.recurrent[l].weight.copy_(getattr(rnn, f"weight_hh_l{l}").T)
        elman.head.weight.copy_(head.weight.T)
        elman.head.bias.copy_(head.bias)


def test_dense_elman_bptt_gradient_equals_nn_rnn_on_copied_weights():
    V, H, T, B = 7, 6, 10, 3
    torch.manual_seed(0)
    rnn, head = nn.RNN(V, H, num_layers=2).double(), nn.Linear(H, V).double()
    elman = ElmanLM(V, [H, H]).double()
    _copy_rnn_into_elman(rnn, head, elman)
    ids = _ids(T, B, V)
    score = torch.ones(T, B, dtype=torch.bool)
    score[0] = False
    score[7:, 1] = False  # a shorter sequence in row 1

    out, _ = rnn(nn.functional.one_hot(ids[:-1], V).double())
    nats = nn.functional.cross_entropy(head(out).reshape(-1, V), ids[1:].reshape(-1), reduction="none")
    s = score[1:].reshape(-1).double()
    ((nats * s).sum() / s.sum()).backward()

    g = bptt_gradient(elman, ids, score)
    for l in range(2):
        torch.testing.assert_close(g[f"inputs.{l}.weight"], getattr(rnn, f"weight_ih_l{l}").grad.T)
        torch.testing.assert_close(g[f"inputs.{l}.bias"], getattr(rnn, f"bias_ih_l{l}").grad)
        torch.testing.assert_close(g[f"inputs.{l}.bias"], getattr(rnn, f"bias_hh_l{l}").grad)
        torch.testing.assert_close(g[f"recurrent.{l}.weight"], getattr(rnn, f"weight_hh_l{l}").grad.T)
    torch.testing.assert_close(g["head.weight"], head.weight.grad.T)
    torch.testing.assert_close(g["head.bias"], head.bias.grad)

    h0 = torch.randn(2, B, H, dtype=torch.float64)  # a carried state, too
    ref, ref_state = rnn(nn.functional.one_hot(ids, V).double(), h0)
    top, state = elman(ids, list(h0))
    torch.testing.assert_close(top, ref)
    torch.testing.assert_close(torch.stack(state), ref_state)


def test_kernel_rnn_and_dense_elman_learners_agree():
    """The same Elman network on nn.RNN and on Dense layers: the same scores over carried streams and
    sentence batches, and the same first BPTT step (nn.RNN's two biases each move as the Dense bias)."""
    V, opts = 9, {**SGD, "hidden": [6, 5]}
    kern = build_learner("rnn", opts, V, seed=1)
    elman = build_learner("elman", opts, V, seed=2)
    k, e = kern.model, elman.model
    with torch.no_grad():
        for l, layer in enumerate(k.layers):
            e.inputs[l].weight.copy_(layer.weight_ih_l0.T)
            e.inputs[l].bias.copy_(layer.bias_ih_l0 + layer.bias_hh_l0)
            e.recurrent[l].weight.copy_(layer.weight_hh_l0.T)
        e.head.weight.copy_(k.head.weight.T)
        e.head.bias.copy_(k.head.bias)
    for batches in (_stream(V), _lines(V)):
        for a, b in zip(batches.epoch(None), batches.epoch(None)):
            ta, tb = kern.eval_segment(a), elman.eval_segment(b)
            assert (ta.scored, ta.correct) == (tb.scored, tb.correct) and ta.total == pytest.approx(tb.total, rel=1e-5)
    before_k, before_e = _params(kern), _params(elman)
    batch = next(_lines(V).epoch(0))
    ta, tb = kern.train_segment(batch), elman.train_segment(batch)
    assert ta.total == pytest.approx(tb.total, rel=1e-5)
    dk = {n: p.detach() - q for (n, p), q in zip(k.named_parameters(), before_k)}
    de = {n: p.detach() - q for (n, p), q in zip(e.named_parameters(), before_e)}
    for l in range(2):
        torch.testing.assert_close(de[f"inputs.{l}.weight"], dk[f"layers.{l}.weight_ih_l0"].T, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(de[f"recurrent.{l}.weight"], dk[f"layers.{l}.weight_hh_l0"].T, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(de[f"inputs.{l}.bias"], dk[f"layers.{l}.bias_ih_l0"], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(de[f"inputs.{l}.bias"], dk[f"layers.{l}.bias_hh_l0"], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(de["head.weight"], dk["head.weight"].T, rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- truncation

@pytest.mark.parametrize("kind", ["lstm", "elman"])
@pytest.mark.parametrize("protocol", ["lines", "stream"])
def test_truncated_bptt_with_window_at_least_T_equals_full_bptt(kind, protocol):
    batches = _lines() if protocol == "lines" else _stream()
    T = max(b.tokens.shape[0] for b in batches.epoch(0))
    runs = {}
    for bptt in ("full", T, T + 3):
        learner = build_learner(kind, {**SGD, "hidden": [5, 4], "bptt": bptt}, 9, seed=3)
        runs[bptt] = (_train(learner, batches, epochs=2), _params(learner))
    for bptt in (T, T + 3):
        assert runs[bptt][0] == runs["full"][0]
        for p, q in zip(runs[bptt][1], runs["full"][1]):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
    short = build_learner(kind, {**SGD, "hidden": [5, 4], "bptt": 2}, 9, seed=3)
    _train(short, batches, epochs=2)
    assert any(not torch.equal(p, q) for p, q in zip(_params(short), runs["full"][1]))


def test_truncated_windows_equal_the_classic_loop_across_batches():
    """bptt=k over a reset batch and a continued one = the classic loop (input data[i:i+k], target
    data[i+1:i+k+1], state carried without gradient) over the joined sequence, on nn.LSTM."""
    V, H, B, k = 8, 5, 3, 3
    learner = build_learner("lstm", {**SGD, "hidden": [H, H], "bptt": k}, V, seed=4)
    lstm, head = nn.LSTM(V, H, num_layers=2), nn.Linear(H, V)
    with torch.no_grad():
        for l, layer in enumerate(learner.model.layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(lstm, f"{name}_l{l}").copy_(getattr(layer, f"{name}_l0"))
        head.load_state_dict(learner.model.head.state_dict())
    ids = _ids(13, B, V, seed=5)  # 7 + 6 steps: windows line up with the batch boundary
    score = torch.ones(13, B, dtype=torch.bool)
    score[0] = False
    mask = torch.ones(13, B)
    got = [learner.train_segment(Batch(ids[:7], mask[:7], score[:7], reset=True)),
           learner.train_segment(Batch(ids[7:], mask[7:], score[7:], reset=False))]

    opt = torch.optim.SGD([*lstm.parameters(), *head.parameters()], lr=SGD["lr"])
    state, bits = None, 0.0
    for i in range(0, 12, k):
        out, state = lstm(nn.functional.one_hot(ids[i:i + k], V).float(), state)
        nats = nn.functional.cross_entropy(head(out).reshape(-1, V), ids[i + 1:i + k + 1].reshape(-1), reduction="none")
        bits += float(nats.detach().sum()) / math.log(2)
        opt.zero_grad()
        nats.mean().backward()
        opt.step()
        state = tuple(s.detach() for s in state)
    assert got[0].total + got[1].total == pytest.approx(bits, rel=1e-5)
    assert got[0].scored + got[1].scored == 12 * B
    for l, layer in enumerate(learner.model.layers):
        torch.testing.assert_close(layer.weight_hh_l0, getattr(lstm, f"weight_hh_l{l}"), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(layer.weight_ih_l0, getattr(lstm, f"weight_ih_l{l}"), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(learner.model.head.weight, head.weight, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- the learner protocol

@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_numbers_and_seed_matters(kind):
    runs = [_train(build_learner(kind, {"hidden": [6]}, 9, seed=s), _stream(), epochs=2) for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.parametrize("kind", ["lstm", "gru", "elman"])
def test_resume_from_state_dict_equals_uninterrupted_and_eval_changes_nothing(kind):
    batches = list(_stream().epoch(0))
    straight = build_learner(kind, {"hidden": [6, 4], "lr": 0.01}, 9, seed=1)
    expected = [straight.train_segment(b) for b in batches]

    first = build_learner(kind, {"hidden": [6, 4], "lr": 0.01}, 9, seed=1)
    got = [first.train_segment(b) for b in batches[:5]]
    for b in _stream(seed=9).epoch(None):  # a validation pass in the middle of the stream
        first.eval_segment(b)
    first.sample(torch.tensor([1, 2]), 5, 1.0, torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    second = build_learner(kind, {"hidden": [6, 4], "lr": 0.01}, 9, seed=99)
    second.load_state_dict(torch.load(buf, weights_only=True))
    got += [second.train_segment(b) for b in batches[5:]]
    assert [(t.total, t.scored, t.correct) for t in got] == [(t.total, t.scored, t.correct) for t in expected]
    for p, q in zip(_params(second), _params(straight)):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_eval_scores_every_scored_symbol_without_learning():
    learner = build_learner("gru", {"hidden": [6]}, 9)
    before = _params(learner)
    batches = _lines()
    total = sum((learner.eval_segment(b).scored for b in batches.epoch(None)))
    assert total == batches.n_scored
    assert all(torch.equal(p, q) for p, q in zip(before, _params(learner)))
    with pytest.raises(UserError, match="no state-correction phase"):
        learner.eval_segment(next(batches.epoch(None)), correction=False)


@pytest.mark.parametrize("kind", ["lstm", "elman"])
def test_greedy_sample_follows_the_argmax_of_one_forward_pass(kind):
    learner = build_learner(kind, {"hidden": [8]}, 9, seed=2)
    _train(learner, _stream(), epochs=1)
    prime = torch.tensor([3, 1, 4, 1])
    out = learner.sample(prime, 12, 0.0, torch.Generator())
    seq = torch.cat([prime, out])
    top, _ = learner.model(seq[:-1].view(-1, 1))
    argmax = learner.model.logits(top)[:, 0].argmax(-1)
    assert torch.equal(argmax[len(prime) - 1:], out)
    draws = [learner.sample(prime, 20, 1.0, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1]) and draws[0].shape == (20,)


@pytest.mark.parametrize("value", ["0", "-2", "x", "2.5", 2.5, True, ""])
def test_bad_bptt_is_an_option_error(value):
    bptt = find(learner_class("lstm").OPTIONS, "bptt", "lstm")
    with pytest.raises(OptionError, match="bptt") as err:
        bptt.read(value)
    assert err.value.key == "bptt"
    assert bptt.read("full") == "full" and bptt.read("25") == 25 and bptt.read(25) == 25


@pytest.mark.parametrize("kind,options,message", [
    ("lstm", {"clip_grad": -1.0}, "clip_grad must be non-negative"),
    ("lstm", {"input": "bogus"}, "input must be one of onehot, embedding"),
    ("gru", {"embed": 16}, "embedding input only"),
    ("rnn", {"hidden": [4, 0]}, "hidden: expected positive whole numbers"),
    ("elman", {"activation": "sign"}, "activation must be one of tanh"),
    ("lstm", {"activation": "relu"}, "model lstm has no option 'activation'"),
    ("rnn", {"optimizer": "lbfgs"}, "optimizer must be one of sgd"),
])
def test_bad_options_are_user_errors(kind, options, message):
    with pytest.raises(UserError, match=message):
        build_learner(kind, options, 9)


# --------------------------------------------------------------------------- update alignment

def _elman_batch(layers=2, seed=0):
    torch.manual_seed(seed)
    model = ElmanLM(11, [9, 7][:layers], generator=torch.Generator().manual_seed(seed)).double()
    ids = _ids(12, 3, 11, seed)
    score = torch.ones(12, 3, dtype=torch.bool)
    score[0] = False
    score[9:, 2] = False
    return model, ids, score


@pytest.mark.parametrize("layers", [1, 2])
def test_fa_with_transposed_feedback_is_truncated_bptt_with_k_1(layers):
    model, ids, score = _elman_batch(layers)
    ref = bptt_gradient(model, ids, score, window=1)
    for rule in ("fa",) + (("dfa",) if layers == 1 else ()):
        upd = local_update(model, ids, score, rule, "transpose")
        for name in ref:
            torch.testing.assert_close(upd[name], ref[name])
    full = bptt_gradient(model, ids, score)
    for name, g in bptt_gradient(model, ids, score, window=11).items():
        torch.testing.assert_close(g, full[name])


def test_ptncn_targets_linearise_to_the_instantaneous_gradient():
    """ε = h - f(a - β d) = β f'(a) ⊙ d + O(β²): with W_outᵀ as feedback and a small β, the hidden
    updates point along the k = 1 gradient (one layer: d = e W_outᵀ)."""
    from tncn.diagnostics import angle

    model, ids, score = _elman_batch(layers=1)
    ref = bptt_gradient(model, ids, score, window=1)
    upd = local_update(model, ids, score, "ptncn", "transpose", beta=1e-5)
    for name in ("inputs.0.weight", "inputs.0.bias", "recurrent.0.weight"):
        assert angle(upd[name], ref[name]) < 0.01
        assert upd[name].norm() / ref[name].norm() == pytest.approx(1e-5, rel=1e-3)


def test_alignment_table_rows():
    model, ids, score = _elman_batch()
    rows = {r["update"]: r for r in alignment(model, ids, score)}
    assert set(rows) == {"truncated BPTT, k = 1", "truncated BPTT, k = 10", "fa, transpose feedback",
                         "fa, random feedback", "dfa, random feedback", "ptncn, transpose feedback",
                         "ptncn, random feedback"}
    ref = bptt_gradient(model, ids, score)
    for r in rows.values():
        assert r["head.weight"] == pytest.approx(0.0, abs=1e-3)  # the output layer's update is exact
    for rule, feedback in (("fa", "random"), ("dfa", "random"), ("ptncn", "transpose")):
        upd = local_update(model, ids, score, rule, feedback, 0.1, torch.Generator().manual_seed(0))
        row = rows[f"{rule}, {feedback} feedback"]
        for name in ref:  # the table's angle is the angle of these two updates, by the dot product
            u, v = upd[name].flatten().double(), ref[name].flatten().double()
            expected = math.degrees(math.acos(float(u @ v / u.norm() / v.norm())))
            assert row[name] == pytest.approx(expected, abs=1e-6)
    for k, v in rows["truncated BPTT, k = 1"].items():
        if k != "update":
            assert rows["fa, transpose feedback"][k] == pytest.approx(v, abs=1e-4)
    with pytest.raises(ValueError, match="no forward weight"):
        local_update(model, ids, score, "dfa", "transpose")


@pytest.mark.parametrize("kind", ["rnn", "elman"])
def test_lr_width_scales_the_step_of_wide_matrices_by_fan_in(kind):
    """lr_width w: a matrix summing n > w inputs learns at lr·w/n; the one-hot input weights and
    the biases at lr (the tanh RNNs default to w = 256, the gated cells to none)."""
    from tncn.temporal import build_learner

    learner = build_learner(kind, {"hidden": [512, 1024], "lr": 0.004}, 50, "cpu", 0)
    assert learner.options["lr_width"] == 256
    by_lr = {}
    for group in learner.param_groups():
        for p in group["params"]:
            by_lr.setdefault(group["lr"], []).append(p)
    names = {id(p): n for n, p in learner.model.named_parameters()}
    layer0_in = "layers.0.weight_ih_l0" if kind == "rnn" else "inputs.0.weight"
    for lr, params in by_lr.items():
        for p in params:
            n = learner.model.fan_in(names[id(p)], p, ids=True)
            assert lr == pytest.approx(0.004 * (min(1.0, 256 / n) if n else 1.0))
            assert (n is None) == (p.dim() < 2 or names[id(p)] == layer0_in)
    assert sorted(by_lr) == pytest.approx([0.004 / 4, 0.004 / 2, 0.004])  # fan-in 1024, 512, and the rest
    assert build_learner("gru", {"hidden": [512]}, 50, "cpu", 0).options["lr_width"] is None
    plain = build_learner(kind, {"hidden": [512], "lr_width": None}, 50, "cpu", 0)
    assert all(torch.is_tensor(p) for p in plain.param_groups())  # none: every weight at lr, no groups
    learner.opt.zero_grad()  # the optimizer is built over the groups
    assert sorted(g["lr"] for g in learner.opt.param_groups) == pytest.approx([0.001, 0.002, 0.004])

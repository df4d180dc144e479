"""Autoencoders trained by the feedforward rules (``tncn.learners`` on ``tncn.mlp.MLP`` with a
reconstruction loss of ``tncn.losses``), the reconstruction scores of ``tncn.mlp``, the picture of
``tncn.diagnostics.save_reconstructions`` and ``tncn autoencode`` end to end on tiny IDX folders
written here. Expected values come from autograd, closed forms and numpy forward passes.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import drawn_png
from sequences import images
from test_classify_cli import tiny  # noqa: F401  (the fixture of a tiny IDX folder)
from tncn import learners
from tncn.cli import main
from tncn.diagnostics import reconstruction_grid, save_reconstructions
from tncn.losses import RECONSTRUCTION_LOSSES
from tncn.mlp import MLP, MeanImage, fit, reconstruction_error, reconstruction_scores

RULES = ["bp", "fa", "dfa", "lra-e", "lra", "dtp", "dtp-sigma"]


def _direct_loss(name, logits, t):
    """The batch-mean reconstruction loss of sigmoid outputs, from its definition."""
    p = 1.0 / (1.0 + torch.exp(-logits))
    if name == "ce":
        per = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).sum(-1)
    elif name == "mse":
        per = (0.5 * (p - t) ** 2).sum(-1)
    else:
        per = (p - t).abs().sum(-1)
    return per.mean()


def _autoencoder(loss, sizes=(6, 5, 3, 5, 6), seed=0):
    return MLP(list(sizes), loss=RECONSTRUCTION_LOSSES[loss], generator=torch.Generator().manual_seed(seed)).double()


def _handwritten_grads(net, x, loss):
    """∂L/∂θ of the autoencoder's loss on x (target x), the forward pass written out with plain ops."""
    params = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    h = x
    for k in range(0, len(params) - 2, 2):
        h = torch.tanh(h @ params[k] + params[k + 1])
    return torch.autograd.grad(_direct_loss(loss, h @ params[-2] + params[-1], x), params)


@pytest.mark.parametrize("loss", ["mse", "mae", "ce"])
def test_backprop_autoencoder_step_equals_autograd(loss):
    net = _autoencoder(loss)
    x = torch.rand(8, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    value = learners.make("bp", net).step(x, x)
    assert net.layers[-1].act.name == "sigmoid"
    for p, g in zip(net.parameters(), _handwritten_grads(net, x, loss)):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(value, _direct_loss(loss, net.logits(x), x).detach(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("loss", ["mse", "mae", "ce"])
def test_fa_with_transposed_feedback_autoencoder_equals_autograd(loss):
    """FA's explicit backward pass with B = Wᵀ is backprop: the output error ∂ℓ/∂a^L it starts from
    is exact for every reconstruction loss."""
    net = _autoencoder(loss)
    fa = learners.make("fa", net, seed=3).double()
    with torch.no_grad():
        for back, layer in zip(fa.feedback, net.layers[1:]):
            back.weight.copy_(layer.weight.T)
    x = torch.rand(8, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fa.step(x, x)
    for p, g in zip(net.parameters(), _handwritten_grads(net, x, loss)):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)


def test_reconstruction_error_and_the_mean_image_in_closed_form():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 4, generator=g, dtype=torch.float64)
    mean = torch.tensor([0.2, 0.5, 0.0, 1.0], dtype=torch.float64)
    out = mean.clamp(1e-4, 1 - 1e-4)  # MeanImage keeps every loss finite
    for name in ("mse", "mae", "ce"):
        r = reconstruction_error(MeanImage(mean), x, x, RECONSTRUCTION_LOSSES[name], batch_size=2)
        if name == "ce":
            per = -(x * torch.log(out) + (1 - x) * torch.log(1 - out)).sum(1)
        elif name == "mse":
            per = 0.5 * ((out - x) ** 2).sum(1)
        else:
            per = (out - x).abs().sum(1)
        assert r["loss"] == pytest.approx(float(per.mean()), rel=1e-9)
        assert r["pixel_mse"] == pytest.approx(float(((out - x) ** 2).mean()), rel=1e-9)


def _factors(n=200, seed=0):
    """6x6 images of two latent factors, the brightness of the top half and of the left half, plus
    a little noise: a 36-pixel problem of low dimension."""
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, 2, generator=g)
    top = (torch.arange(6) < 3).float()
    x = z[:, 0, None, None] * top[None, :, None] + z[:, 1, None, None] * top[None, None, :]
    return (x / 2 + 0.1 * torch.rand(n, 6, 6, generator=g)).clamp(0, 1).reshape(n, 36)


def _train(rule, only_readout=False):
    x = _factors()
    loss = RECONSTRUCTION_LOSSES["ce"]
    net = MLP([36, 16, 16, 36], loss=loss, generator=torch.Generator().manual_seed(0))
    learner = learners.make(rule, net, seed=0)
    params = net.layers[-1].parameters() if only_readout else learner.parameters()
    curve = fit(learner, torch.optim.Adam(params, lr=3e-3), (x, x), (x, x), epochs=40, batch_size=20,
                generator=torch.Generator().manual_seed(1), progress=False, log=lambda line: None,
                scores=reconstruction_scores(loss))
    return net, x, loss, curve


@pytest.fixture(scope="module")
def readout_only():
    """The control: the same 400 steps training only the output layer on the initial hidden layers."""
    net, x, loss, _ = _train("bp", only_readout=True)
    return reconstruction_error(net, x, x, loss)["pixel_mse"]


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_lowers_the_reconstruction_error(rule, readout_only):
    net, x, loss, curve = _train(rule)
    final = reconstruction_error(net, x, x, loss)
    mean = reconstruction_error(MeanImage(x.mean(0)), x, x, loss)
    assert readout_only < 0.75 * mean["pixel_mse"]  # even random hidden layers carry something
    assert final["pixel_mse"] < 0.3 * readout_only, (final, readout_only)  # the hidden layers learned
    assert final["loss"] < mean["loss"]
    assert curve[-1]["valid_loss"] == pytest.approx(final["loss"]) and curve[-1]["valid_pixel_mse"] == pytest.approx(
        final["pixel_mse"])
    assert curve[-1]["valid_loss"] < curve[0]["valid_loss"]


# --------------------------------------------------------------------------- the picture

def test_reconstruction_grid_puts_each_image_under_its_original():
    originals = torch.arange(3 * 4, dtype=torch.float32).reshape(3, 4) / 12  # 3 images of 2x2
    recon = 1 - originals
    grid = reconstruction_grid([originals, recon], shape=(2, 2), columns=2)
    # blocks of 2 columns: block 0 holds images 0, 1; block 1 image 2; each block two rows of tiles
    block_h = 2 * 3
    assert grid.shape == (2 * block_h + 2 + 1, 2 * 3 + 1)
    for k in range(3):
        b, c = divmod(k, 2)
        for r, row in enumerate((originals, recon)):
            top, left = 1 + b * (block_h + 2) + r * 3, 1 + c * 3
            np.testing.assert_array_equal(grid[top:top + 2, left:left + 2], row[k].reshape(2, 2).numpy())
    assert grid[0, 0] == 0.5 and grid[-1, -1] == 0.5  # the frame
    np.testing.assert_array_equal(reconstruction_grid([torch.full((1, 4), 2.0)], (2, 2))[1:3, 1:3], np.ones((2, 2)))
    with pytest.raises(ValueError, match="the same 3 images of 4 pixels"):
        reconstruction_grid([originals, recon[:2]], (2, 2))
    with pytest.raises(ValueError, match="not square"):
        reconstruction_grid([torch.zeros(2, 6)])


def test_save_reconstructions_draws_labelled_rows(tmp_path):
    g = torch.Generator().manual_seed(0)
    originals = torch.rand(12, 36, generator=g)
    path = save_reconstructions(originals, [originals.flip(1), 1 - originals], tmp_path / "r.png", "title",
                                labels=["data", "a", "b"], columns=6)
    width, height = drawn_png(path)
    assert height > 0.4 * width  # two blocks of three rows of 6 tiles each
    with pytest.raises(ValueError, match="2 labels for 3 rows"):
        save_reconstructions(originals, [originals, originals], tmp_path / "x.png", labels=["a", "b"])


# --------------------------------------------------------------------------- the command

def autoencode(tiny, *extra):  # noqa: F811
    return main(["autoencode", "--data", str(tiny), "--valid", "40", "--hidden", "16,8,16", "--batch-size", "20",
                 "--no-progress", *extra])


def _numpy_reconstruction(state, x):
    h = x
    for layer in range(4):
        h = h @ state[f"net.layers.{layer}.weight"].double().numpy() + state[f"net.layers.{layer}.bias"].double().numpy()
        h = np.tanh(h) if layer < 3 else h
    return h  # logits


@pytest.mark.parametrize("rule,loss", [("bp", "ce"), ("dfa", "mse"), ("dtp", "mae")])
def test_end_to_end_json_and_out(tiny, tmp_path, rule, loss):  # noqa: F811
    out = tmp_path / "r.json"
    assert autoencode(tiny, "--rule", rule, "--loss", loss, "--epochs", "10", "--lr", "0.01", "--angles", "2",
                      "--json", str(out), "--out", str(tmp_path / "run")) == 0
    r = json.loads(out.read_text())
    assert r == json.loads((tmp_path / "run" / "result.json").read_text())
    assert r["rule"] == rule and r["loss"] == loss and r["hidden"] == [16, 8, 16] and r["epochs"] == 10
    assert r["sizes"] == {"train": 200, "valid": 40, "test": 60}
    assert [p["epoch"] for p in r["curve"]] == list(range(1, 11))
    assert r["valid_loss"] == r["curve"][-1]["valid_loss"] and r["valid_pixel_mse"] == r["curve"][-1]["valid_pixel_mse"]
    assert all(len(p["angles"]) == 4 and p["angles"][-1] == pytest.approx(0.0, abs=1e-2) for p in r["curve"])
    # the test scores of the saved weights, by a numpy forward pass on the t10k file
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert state["kind"] == "autoencoder" and state["result"]["test_loss"] == r["test_loss"]
    x = np.frombuffer((tiny / "t10k-images-idx3-ubyte").read_bytes()[16:], np.uint8).reshape(60, 36) / 255.0
    p = 1 / (1 + np.exp(-_numpy_reconstruction(state["state_dict"], x)))
    per = {"ce": -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(1), "mse": 0.5 * ((p - x) ** 2).sum(1),
           "mae": np.abs(p - x).sum(1)}[loss]
    assert r["test_loss"] == pytest.approx(float(per.mean()), rel=1e-5)
    assert r["test_pixel_mse"] == pytest.approx(float(((p - x) ** 2).mean()), rel=1e-5)
    assert r["test_pixel_mse"] < 0.5 * r["mean_image"]["pixel_mse"] and r["test_loss"] < r["mean_image"]["loss"]
    assert {f.name for f in (tmp_path / "run").iterdir()} == {"result.json", "reconstructions.png", "model.pt"}
    drawn_png(tmp_path / "run" / "reconstructions.png")


def test_centred_inputs_still_reconstruct_the_raw_image(tiny, tmp_path):  # noqa: F811
    out = tmp_path / "r.json"
    assert autoencode(tiny, "--rule", "lra-e", "--activation", "sign", "--epochs", "2", "--json", str(out),
                      "--out", str(tmp_path / "run")) == 0
    r = json.loads(out.read_text())
    assert r["center"] is True and r["lr"] == 2e-3  # tncn classify's defaults for two-valued units
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    train = images.load(str(tiny), valid=40, seed=0).train[0].double().numpy()  # the 200 training images
    assert train.shape == (200, 36)
    x = np.frombuffer((tiny / "t10k-images-idx3-ubyte").read_bytes()[16:], np.uint8).reshape(60, 36) / 255.0
    h = x - train.mean(0)
    for layer in range(4):
        h = h @ state[f"net.layers.{layer}.weight"].double().numpy() + state[f"net.layers.{layer}.bias"].double().numpy()
        h = np.sign(h) if layer < 3 else h
    p = 1 / (1 + np.exp(-h))
    assert r["test_pixel_mse"] == pytest.approx(float(((p - x) ** 2).mean()), rel=1e-6)


def test_same_seed_same_result(tiny, tmp_path):  # noqa: F811
    runs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.json"
        assert autoencode(tiny, "--rule", "lra", "--epochs", "2", "--seed", "4", "--json", str(out)) == 0
        runs.append(json.loads(out.read_text()))
    assert runs[0]["test_loss"] == runs[1]["test_loss"]
    assert [p["train_loss"] for p in runs[0]["curve"]] == [p["train_loss"] for p in runs[1]["curve"]]


@pytest.mark.parametrize("args,message", [
    (["--rule", "rbm"], "rule 'rbm' does not train autoencoders (it does not carry the reconstruction error to its "
                        "hidden layers); the rules that do: bp, fa, dfa, lra-e, lra, dtp, dtp-sigma"),
    (["--rule", "bp", "--loss", "hinge"], "--loss: invalid choice: 'hinge'"),
    (["--rule", "nope"], "--rule: invalid choice: 'nope'"),
    (["--rule", "bp", "--activation", "sign"], "needs the derivative f'"),
    (["--rule", "bp", "--hidden", "12,0"], "--hidden"),
    (["--rule", "bp", "--batch-size", "500"], "--batch-size 500 is larger than the 200 training examples"),
])
def test_bad_input_one_line_exit_2(tiny, capsys, args, message):  # noqa: F811
    assert autoencode(tiny, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("tncn autoencode: error:"), err


def test_a_loss_the_rule_does_not_know_is_refused(tiny, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setattr(learners.LEARNERS["dfa"], "reconstruction_losses", ("mse", "mae"))
    assert autoencode(tiny, "--rule", "dfa", "--loss", "ce") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tncn autoencode: error: rule 'dfa' trains autoencoders on the reconstruction loss mse or mae, "
                   "not 'ce'"]
    assert autoencode(tiny, "--rule", "dfa", "--loss", "mse", "--epochs", "1") == 0

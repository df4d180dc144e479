"""End-to-end tests of ``tncn classify`` (the learners of Ororbia & Mali, AAAI 2019, and their
baselines on one MLP) on tiny IDX folders written here, and its one-line errors for bad input.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import shared_path
from tncn.cli import main
from test_images import write_rows_problem


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 3-class problem of 6x6 images: the class sets one row of pixels bright."""
    folder = tmp_path_factory.mktemp("tiny")
    write_rows_problem(folder)
    return folder


def classify(tiny, *extra):
    return main(["classify", "--data", str(tiny), "--valid", "40", "--hidden", "12,12",
                 "--batch-size", "20", "--no-progress", *extra])


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa", "lra-e", "lra", "dtp", "dtp-sigma"])
def test_one_epoch_end_to_end_json(tiny, tmp_path, rule):
    out = tmp_path / "r.json"
    assert classify(tiny, "--rule", rule, "--epochs", "1", "--angles", "3", "--json", str(out),
                    "--filters", str(tmp_path / "f.png"), "--out", str(tmp_path / "run")) == 0
    r = json.loads(out.read_text())
    for key in ("rule", "hidden", "activation", "epochs", "test_error", "valid_error", "train_seconds", "curve"):
        assert key in r
    assert r["rule"] == rule and r["hidden"] == [12, 12] and r["activation"] == "tanh" and r["epochs"] == 1
    assert r["sizes"] == {"train": 200, "valid": 40, "test": 60}
    assert r["train_seconds"] == pytest.approx(sum(p["seconds"] for p in r["curve"]))
    # the test error of the saved weights, by a forward pass written here on the t10k file
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    images = np.frombuffer((tiny / "t10k-images-idx3-ubyte").read_bytes()[16:], np.uint8).reshape(60, 36) / 255.0
    labels = np.frombuffer((tiny / "t10k-labels-idx1-ubyte").read_bytes()[8:], np.uint8)
    h = images
    for layer in range(3):
        h = h @ state[f"net.layers.{layer}.weight"].double().numpy() + state[f"net.layers.{layer}.bias"].double().numpy()
        h = np.tanh(h) if layer < 2 else h
    assert r["test_error"] == pytest.approx(float(np.mean(h.argmax(1) != labels)))
    (point,) = r["curve"]
    assert point["epoch"] == 1 and len(point["angles"]) == 3
    assert point["angles"][-1] == pytest.approx(0.0, abs=1e-2)   # every rule's output update is exact
    assert ("discrepancy" in point) == (rule in ("lra-e", "lra", "dtp", "dtp-sigma"))
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_learns_and_same_seed_same_result(tiny, tmp_path):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.json"
        assert classify(tiny, "--rule", "lra-e", "--activation", "sign", "--epochs", "3", "--seed", "5",
                        "--lr", "0.01", "--out", str(tmp_path / name), "--json", str(out)) == 0
        runs.append(json.loads(out.read_text()))
    a, b = runs
    assert a["test_error"] == b["test_error"] and a["test_error"] < 0.2
    assert [p["train_loss"] for p in a["curve"]] == [p["train_loss"] for p in b["curve"]]
    assert {p.name for p in (tmp_path / "a").iterdir()} == {"result.json", "filters.png", "embedding.png", "model.pt"}
    state = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    assert "E.0.weight" in state and "net.layers.0.weight" in state


@pytest.mark.parametrize("args,message", [
    (["--rule", "nope"], "--rule: invalid choice: 'nope'"),
    (["--rule", "bp", "--activation", "sign"], "needs the derivative f'"),
    (["--rule", "lra-e", "--activation", "sign", "--angles", "5"], "needs a differentiable activation"),
    (["--rule", "fa", "--beta", "0.2"], "unrecognized arguments: --beta 0.2"),
    (["--rule", "bp", "--optimizer", "lbfgs"], "--optimizer must be one of sgd, momentum, nesterov, adam, rmsprop, got 'lbfgs'"),
    (["--rule", "bp", "--activation", "swish"], "unknown activation 'swish'"),
    (["--rule", "bp", "--epochs", "0"], "--epochs must be positive"),
    (["--rule", "bp", "--init-std", "-1"], "--init-std must be positive, got -1"),
    (["--rule", "bp", "--valid", "-5"], "--valid must be non-negative"),
    (["--rule", "bp", "--limit", "0"], "--limit must be positive"),
    (["--rule", "bp", "--hidden", "12,x"], "--hidden: expected positive whole numbers"),
    (["--rule", "bp", "--device", "tpu"], "--device tpu: not a device name"),
])
def test_bad_options_one_line_exit_2(tiny, capsys, args, message):
    assert classify(tiny, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("tncn classify: error:")


def test_bad_data_one_line_exit_2(tmp_path, capsys):
    assert main(["classify", "--rule", "bp", "--data", str(tmp_path / "absent")]) == 2
    assert "unknown data" in capsys.readouterr().err
    assert main(["classify", "--rule", "bp", "--data", "mnist", "--data-root", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"PK\x03\x04junk")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"PK\x03\x04junk")
    assert main(["classify", "--rule", "bp", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an IDX file" in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error(tiny, capsys):
    assert classify(tiny, "--rule", "bp", "--device", "cuda") == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_named_mnist_subset_one_epoch(tmp_path):
    root = shared_path("data")
    out = tmp_path / "m.json"
    assert main(["classify", "--rule", "bp", "--data", "mnist", "--data-root", str(root), "--limit", "500",
                 "--valid", "500", "--hidden", "32", "--epochs", "1", "--batch-size", "20", "--lr", "0.003", "--no-progress", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["data"] == "mnist" and r["sizes"] == {"train": 500, "valid": 500, "test": 10000}
    assert r["test_error"] < 0.6


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa", "lra-e"])
def test_rule_help_lists_the_rules_declared_options(rule, capsys):
    from tncn import learners

    assert main(["classify", "--rule", rule, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    mine = {o.flag for o in learners.LEARNERS[rule].OPTIONS}
    for o in learners.LEARNERS[rule].OPTIONS:
        assert o.flag in out and " ".join(o.describe().split()) in out
    others = {o.flag for cls in learners.LEARNERS.values() for o in cls.OPTIONS} - mine
    assert not any(f"{flag} " in out for flag in others)


def test_an_existing_out_folder_is_refused_and_left_alone(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.pt").write_bytes(b"mine")
    assert classify(tiny, "--rule", "bp", "--epochs", "1", "--out", str(out)) == 2
    assert "already exists; overwrite it with --force" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["model.pt"] and (out / "model.pt").read_bytes() == b"mine"


@pytest.mark.parametrize("loss", ["mse", "mae"])
def test_output_loss_flag_reaches_the_network(tiny, tmp_path, loss):
    out = tmp_path / "r.json"
    assert classify(tiny, "--rule", "dfa", "--loss", loss, "--epochs", "2", "--lr", "0.01", "--json", str(out),
                    "--embedding", str(tmp_path / "e.png")) == 0
    r = json.loads(out.read_text())
    assert r["loss"] == loss and r["test_error"] < 0.5
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"


def test_two_valued_units_default_to_centred_inputs_and_their_rate(tiny, tmp_path):
    out = tmp_path / "r.json"
    assert classify(tiny, "--rule", "lra-e", "--activation", "step", "--epochs", "1", "--json", str(out)) == 0
    r = json.loads(out.read_text())
    assert r["center"] is True and r["lr"] == 2e-3
    assert classify(tiny, "--rule", "lra-e", "--activation", "step", "--epochs", "1", "--no-center",
                    "--lr", "0.01", "--json", str(out)) == 0
    r = json.loads(out.read_text())
    assert r["center"] is False and r["lr"] == 0.01
    assert classify(tiny, "--rule", "lra-e", "--epochs", "1", "--json", str(out)) == 0
    r = json.loads(out.read_text())
    assert r["center"] is False and r["lr"] == 1e-3


def test_no_validation_split_trains_and_says_so(tiny, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert classify(tiny, "--rule", "bp", "--valid", "0", "--epochs", "2", "--json", str(out)) == 0
    r = json.loads(out.read_text())
    assert r["sizes"]["valid"] == 0 and r["sizes"]["train"] == 240
    assert r["valid_error"] is None and all(p["valid_error"] is None for p in r["curve"])
    assert "no validation split" in capsys.readouterr().out

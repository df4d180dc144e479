"""``tncn train / eval / sample`` with the BPTT baselines (``--model rnn|gru|lstm|elman --bptt full|K``),
end to end on a tiny corpus written here; bad input gives one line on stderr and exit status 2."""
from __future__ import annotations

import json

import pytest

from tncn.cli import main


def _train(tiny, out, *extra):
    return main(["train", "--data", str(tiny), "--hidden", "16", "--batch-size", "8", "--seq-len", "20",
                 "--eval-every", "2", "--out", str(out), *extra])


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_lstm_then_eval_and_sample(tiny, tmp_path, capsys):
    out = tmp_path / "lstm"
    assert _train(tiny, out, "--model", "lstm", "--bptt", "7", "--clip-grad", "1", "--steps", "4") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "lstm" and config["bptt"] == 7 and config["clip_grad"] == 1.0
    assert config["hidden"] == [16] and "beta" not in config
    records = _metrics(out)
    assert [r["step"] for r in records] == [2, 4] and all(r["valid_bpc"] > 0 for r in records)
    assert "sample (temperature" in capsys.readouterr().out

    report = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(out), "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["model"] == "lstm" and r["split"] == "test" and r["scored"] > 0 and r["bpc"] > 0
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(out), "--prime", "the ", "--length", "25", "--seed", "1"]) == 0
    first = capsys.readouterr().out.rstrip("\n")
    assert first.startswith("the ") and len(first) == 4 + 25
    assert main(["sample", "--checkpoint", str(out), "--prime", "the ", "--length", "25", "--seed", "1"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == first
    assert main(["eval", "--checkpoint", str(out), "--frozen-correction", "off"]) == 2
    assert "no state-correction phase" in capsys.readouterr().err


def test_same_seed_twice_same_numbers_and_resume_continues_exactly(tiny, tmp_path):
    keys = ("step", "tokens", "train_bpc", "valid_bpc", "valid_accuracy")
    runs = []
    for name in ("a", "b"):
        assert _train(tiny, tmp_path / name, "--model", "gru", "--steps", "4", "--seed", "5") == 0
        runs.append([{k: r[k] for k in keys} for r in _metrics(tmp_path / name)])
    assert runs[0] == runs[1]
    part = tmp_path / "part"
    assert _train(tiny, part, "--model", "gru", "--steps", "2", "--seed", "5") == 0
    assert main(["train", "--out", str(part), "--resume", "--steps", "4"]) == 0
    assert [{k: r[k] for k in keys} for r in _metrics(part)] == runs[0]


@pytest.mark.parametrize("args,message", [
    (["--model", "transformer"], "--model: invalid choice: 'transformer'"),
    (["--model", "lstm", "--bptt", "x"], "--bptt: expected full or a whole number, got 'x'"),
    (["--model", "rnn", "--bptt", "0"], "--bptt must be positive, got 0"),
    (["--model", "ptncn", "--bptt", "5"], "unrecognized arguments: --bptt 5"),
    (["--model", "gru", "--beta", "0.2"], "unrecognized arguments: --beta 0.2"),
    (["--model", "lstm", "--clip-grad", "-1"], "--clip-grad must be non-negative, got -1.0"),
    (["--model", "gru", "--embed", "8"], "embedding input only"),
    (["--model", "elman", "--activation", "sign"], "--activation must be one of tanh, sigmoid, relu"),
])
def test_bad_input_one_line_exit_2(tiny, tmp_path, capsys, args, message):
    assert _train(tiny, tmp_path / "bad", "--steps", "1", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tncn train: error:") and message in err[0]


def test_reference_preset_keeps_the_baselines_optimizer():
    from tncn.commands.train import resolve
    from tncn.temporal import learner_class

    ptncn = resolve({}, "reference")
    assert (ptncn["optimizer"], ptncn["lr"], ptncn["hidden"]) == ("nesterov", 0.075, [1000, 1000])
    lstm = resolve({"model": "lstm"}, "reference")
    defaults = learner_class("lstm").defaults()
    assert (lstm["optimizer"], lstm["lr"]) == (defaults["optimizer"], defaults["lr"])
    assert (lstm["hidden"], lstm["protocol"], lstm["batch_size"]) == ([1000, 1000], "lines", 50)
    assert resolve({"model": "lstm", "lr": 0.5}, "reference")["lr"] == 0.5


def test_quick_preset_recipes_follow_the_budget(tmp_path):
    """The quick preset's measured P-TNCN recipes (README, "Tuning"): on text Adam 2e-3 halving
    every 150 of its 400 steps, the half-life scaled to another --steps, and P-TNCN's own
    Nesterov recipe under a budget that does not fix the step count or another optimizer; on
    video Adam 2e-3 (no schedule, so under any budget)."""
    from tncn import presets
    from tncn.commands.train import resolve

    text = resolve({}, "quick")
    assert (text["optimizer"], text["lr"], text["half_life"], text["hidden"], text["steps"]) == \
        ("adam", 2e-3, 150, [128, 128], 400)
    assert resolve({"steps": 800}, "quick")["half_life"] == 300
    for budget in ({"minutes": 3.0}, {"tokens": 10**6}, {"epochs": 1.0}):
        own = resolve(budget, "quick")
        assert (own["optimizer"], own["lr"], own["half_life"]) == ("nesterov", 0.075, None)
    other = resolve({"optimizer": "nesterov"}, "quick")
    assert (other["lr"], other["half_life"]) == (0.075, None)
    assert resolve({"lr": 3e-3}, "quick")["lr"] == 3e-3  # the command line wins, the recipe stays
    frames = resolve({"data": "bouncing-glyphs"}, "quick")
    assert (frames["optimizer"], frames["lr"], frames["level"]) == ("adam", 2e-3, "frames")
    assert resolve({"data": "bouncing-glyphs", "minutes": 2.0}, "quick")["optimizer"] == "adam"
    assert resolve({"data": "bouncing-glyphs", "lr": 0.01}, "quick")["lr"] == 0.01  # the command line wins
    lstm = resolve({"model": "lstm", "data": "bouncing-glyphs"}, "quick")
    assert (lstm["optimizer"], lstm["lr"]) == ("adam", 1e-3)  # other learners keep their own
    path = presets.save(tmp_path / "p.json", "ptncn", {"beta": 0.2, "lr": 0.05})
    tuned = resolve({}, str(path))
    assert (tuned["beta"], tuned["lr"], tuned["optimizer"], tuned["steps"]) == (0.2, 0.05, "nesterov", 400)

"""``tncn tune`` (Optuna over declared search spaces), the spaces themselves and preset files.

The command runs with each trial in this process (the ``in_process`` fixture) on a tiny corpus;
the spaces are checked against every learner's declarations.
"""
from __future__ import annotations

import json
import math

import optuna
import pytest

from tncn import presets, space
from tncn.cli import main
from tncn.errors import UserError
from tncn.temporal import LEARNERS

from test_reliability import one_line, strict_json


def tune(corpus, out, *extra):
    return main(["tune", "--data", str(corpus), "--hidden", "8,8", "--batch-size", "4", "--seq-len", "20",
                 "--tokens-per-trial", "800", "--points", "2", "--out", str(out), *extra])


# --------------------------------------------------------------------------- spaces

@pytest.mark.parametrize("name", list(LEARNERS))
def test_every_declared_space_is_valid(name):
    cls = LEARNERS[name]
    declared = space.of(cls.OPTIONS)
    assert declared and "lr" in json.dumps(declared)  # every learner tunes its learning rate
    assert space.check(declared, cls.OPTIONS, name) == declared


def test_a_dependent_range_is_suggested_under_its_own_name():
    declared = space.of(LEARNERS["ptncn"].OPTIONS)
    fixed = {"beta": 0.1, "alpha": 0.001, "K": 2, "e_rule": "temporal", "hidden_prediction": "identity",
             "w_error": "e", "clip": 1.0, "init_std": 0.05, "optimizer": "adam", "adam.lr": 0.003}
    setting = space.suggest(optuna.trial.FixedTrial(fixed), declared)
    assert setting["optimizer"] == "adam" and setting["lr"] == 0.003 and setting["K"] == 2
    assert "adam.lr" not in setting and set(setting) == set(declared) | {"lr"}


def test_defaults_are_enqueued_only_where_the_space_holds_them():
    search = {"lr": space.log_range(1e-4, 1e-2), "clip_grad": space.log_range(0.5, 2.0),
              "optimizer": space.choice("adam", "sgd", then={"sgd": {"lr": space.log_range(0.01, 1)}})}
    assert space.as_params(search, {"lr": 1e-3, "clip_grad": 5.0, "optimizer": "adam"}) == {"lr": 1e-3,
                                                                                           "optimizer": "adam"}
    assert space.as_params(search, {"lr": 0.1, "optimizer": "sgd"}) == {"optimizer": "sgd", "sgd.lr": 0.1}


@pytest.mark.parametrize("bad, message", [
    ({"nonsense": {"low": 0, "high": 1}}, "has no option 'nonsense'"),
    ({"lr": {"low": 1, "high": 0.1}}, "needs low < high"),
    ({"lr": {"low": 0, "high": 0.1, "log": True}}, "low > 0 on a log scale"),
    ({"lr": {"low": "a", "high": 1}}, "needs numbers low and high"),
    ({"optimizer": {"choices": ["adam", "lbfgs"]}}, "optimizer must be one of"),
    ({"optimizer": {"choices": ["adam"], "then": {"sgd": {"lr": {"low": 0.1, "high": 1}}}}}, "not one of its choices"),
    ([], "non-empty JSON object"),
])
def test_bad_spaces_are_refused(bad, message):
    with pytest.raises(UserError, match=message):
        space.check(bad, LEARNERS["lstm"].OPTIONS, "model lstm")


# --------------------------------------------------------------------------- preset files

def test_a_preset_file_round_trips(tmp_path):
    options = {"hidden": [8, 8], "lr": 0.003, "optimizer": "adam", "beta": 0.2}
    path = presets.save(tmp_path / "p.json", "ptncn", options, {"study": "x"})
    assert presets.load(path) == ("ptncn", options, {"study": "x"})
    (tmp_path / "bad.json").write_text(json.dumps({"format": "tncn-preset", "model": "ptncn", "options": {"beta": "x"}}))
    with pytest.raises(UserError, match="preset .*bad.json: beta: expected a number"):
        presets.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(UserError, match="not a tncn preset file"):
        presets.load(tmp_path / "other.json")
    with pytest.raises(UserError, match="No such file"):
        presets.load(tmp_path / "missing.json")


# --------------------------------------------------------------------------- the command

def test_tune_writes_the_study_plots_and_a_preset_train_and_compare_accept(tiny, tmp_path, in_process, capsys):
    out = tmp_path / "study"
    assert tune(tiny, out, "--trials", "3") == 0
    for name in ("study.db", "history.png", "importances.png", "best_preset.json", "trials.md", "tune.json"):
        assert (out / name).is_file(), name
    study = optuna.load_study(study_name="ptncn", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 3 and all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    defaults = LEARNERS["ptncn"].read_options({"hidden": [8, 8]})
    assert study.trials[0].user_attrs["defaults"] and study.trials[0].params == space.as_params(
        space.of(LEARNERS["ptncn"].OPTIONS), defaults)  # the untuned setting is scored first
    assert study.trials[0].params["nesterov.lr"] == 0.075 and "(defaults)" in (out / "trials.md").read_text()
    assert all(len(t.intermediate_values) >= 1 for t in study.trials)  # each reported at its marks
    model, options, source = presets.load(out / "best_preset.json")
    best = min((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert model == "ptncn" and source["trial"] == best.number and math.isclose(source["value"], best.value)
    assert options["lr"] == best.params[f"{best.params['optimizer']}.lr"] and options["hidden"] == [8, 8]
    assert "best: trial" in capsys.readouterr().out

    run = tmp_path / "run"
    assert main(["train", "--preset", str(out / "best_preset.json"), "--data", str(tiny), "--batch-size", "4",
                 "--steps", "2", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert {k: config[k] for k in options} == options and config["steps"] == 2

    cmp = tmp_path / "cmp"
    assert main(["compare", "--data", str(tiny), "--models", "ptncn,lstm", "--hidden", "8,8", "--batch-size", "4",
                 "--seq-len", "20", "--tokens", "200", "--points", "1", "--out", str(cmp),
                 "--preset", f"ptncn={out / 'best_preset.json'}", "--set", "ptncn:beta=0.3"]) == 0
    used = json.loads((cmp / "results.json").read_text())["models"]["ptncn"]["options"]
    assert used["lr"] == options["lr"] and used["beta"] == 0.3  # --set wins over the preset

    # more trials on the same study; an existing folder needs --resume
    assert tune(tiny, out, "--trials", "4") == 2
    one_line(capsys, "already exists")
    assert tune(tiny, out, "--trials", "4", "--resume") == 0
    assert len(optuna.load_study(study_name="ptncn", storage=f"sqlite:///{out / 'study.db'}").trials) == 4
    assert tune(tiny, out, "--trials", "5", "--resume", "--hidden", "9,9") == 2
    one_line(capsys, "the options differ from the study's")


def test_a_diverged_trial_is_marked_and_told_the_baseline(tiny, tmp_path, in_process, capsys):
    search = tmp_path / "space.json"
    search.write_text(json.dumps({"beta": {"low": 0.05, "high": 0.2}}))
    out = tmp_path / "study"
    assert tune(tiny, out, "--model", "ptncn", "--trials", "1", "--space", str(search), "--set", "optimizer=adam",
                "--set", "lr=1e38") == 0
    assert "no trial finished without diverging" in capsys.readouterr().err
    settings = strict_json((out / "tune.json").read_text())
    study = optuna.load_study(study_name="ptncn", storage=settings["storage"])
    (trial,) = study.trials
    assert trial.user_attrs["diverged"]["step"] >= 1 and trial.value == pytest.approx(settings["baseline"])
    assert "| 0 (defaults) | diverged | - |" in (out / "trials.md").read_text()
    assert not (out / "best_preset.json").exists()


@pytest.mark.parametrize("extra, message", [
    ([], "give the budget of each trial"),
    (["--tokens-per-trial", "10", "--minutes-per-trial", "1"], "give the budget of each trial"),
    (["--tokens-per-trial", "10", "--space", "missing.json"], "--space missing.json: No such file"),
    (["--tokens-per-trial", "10", "--set", "lr=0.1"], "--set lr fixes an option the search space tunes"),
    (["--tokens-per-trial", "10", "--set", "beta=x"], "ptncn:beta: expected a number"),
    (["--tokens-per-trial", "10", "--trials", "0"], "--trials must be positive"),
])
def test_bad_tune_input_is_one_line(tiny, tmp_path, capsys, extra, message):
    assert main(["tune", "--data", str(tiny), "--model", "lstm" if "lr=0.1" in extra else "ptncn",
                 "--out", str(tmp_path / "s"), *extra]) == 2
    one_line(capsys, message)
    assert not (tmp_path / "s").exists()

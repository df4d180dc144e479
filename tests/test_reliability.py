"""Reliability: a diverging run never poisons its files, no command ends in a traceback, nothing is
overwritten unasked, and the files written are valid JSON.

The divergence guard (``tncn.guard``) is checked by closed-form cases of its rules, then through
every training command: runs made to diverge at a known step (a weight set to NaN, a validation
score replaced) and real runs with a learning rate of 1e38.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from tncn import checkpoint, files, runs, train
from tncn.cli import main
from tncn.errors import UserError
from tncn.guard import Diverged, Watch, check_loss, check_weights
from tncn.metrics import Tally, perplexity
from tncn.temporal.base import SequenceLearner, draw, load_module

from test_classify_cli import tiny as images  # noqa: F401  (a module-scoped fixture of 6x6 images)


def strict_json(text: str):
    """Parse ``text`` as JSON proper: bare NaN or Infinity (which Python's json accepts) fails."""
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def lines_of(path: Path) -> list:
    return [strict_json(line) for line in path.read_text().splitlines()]


def one_line(capsys, pattern: str) -> str:
    """The one message line of the command on stderr (besides its progress lines), matching ``pattern``."""
    err = capsys.readouterr().err
    lines = [x for x in re.split(r"[\r\n]", err) if x.startswith("tncn ")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def train_args(corpus, out, *extra):
    return ["train", "--data", str(corpus), "--hidden", "8,8", "--batch-size", "4", "--seq-len", "10",
            "--eval-every", "2", "--out", str(out), *extra]


def poison_at(monkeypatch, step: int, with_=float("nan")):
    """Set the first weight of every learner to ``with_`` just before its training step ``step``."""
    original = SequenceLearner.train_segment
    calls = {"n": 0}

    def train_segment(self, batch):
        calls["n"] += 1
        if calls["n"] == step:
            with torch.no_grad():
                next(self.model.parameters()).fill_(with_)
        return original(self, batch)
    monkeypatch.setattr(SequenceLearner, "train_segment", train_segment)


def scores_in_turn(monkeypatch, means: list):
    """Make the validations of ``tncn.train.fit`` report ``means`` in turn (then the real scores)."""
    real = train.evaluate
    queue = list(means)

    def evaluate(learner, batches, correction=True):
        if queue:
            return Tally(queue.pop(0) * 10, 10, 0)
        return real(learner, batches, correction)
    monkeypatch.setattr(train, "evaluate", evaluate)


# --------------------------------------------------------------------------- the guard's rules

def test_watch_rules():
    w = Watch(baseline=2.0)
    assert w.check(3.0, 1) and w.best == 3.0  # worse than the baseline, but never better yet: fine
    assert w.check(1.5, 2) and not w.check(1.9, 3) and w.best == 1.5
    with pytest.raises(Diverged, match="step 4: the validation score 2.5 is worse than the no-context baseline 2 "
                                       "after reaching 1.5"):
        w.check(2.5, 4)
    for bad in (float("nan"), float("inf"), None):
        with pytest.raises(Diverged, match="the validation score is"):
            Watch().check(bad, 7)
    assert Watch(2.0).replay([3.0, 1.0, float("nan"), None]).best == 1.0
    acc = Watch(baseline=0.5, higher_is_better=True, unit="epoch")
    assert acc.check(0.7, 1) and not acc.check(0.6, 2)
    with pytest.raises(Diverged, match="epoch 3"):
        acc.check(0.4, 3)


def test_loss_and_weight_checks_name_what_went_wrong():
    net = torch.nn.Linear(2, 2)
    check_loss(1.0, 3, net)
    check_weights(net, 3)
    with torch.no_grad():
        net.bias[1] = float("inf")
    with pytest.raises(Diverged, match=r"step 3: the training loss is nan \(the weight bias is no longer finite\)"):
        check_loss(float("nan"), 3, net)
    with pytest.raises(Diverged, match="epoch 2: the weight bias is no longer finite"):
        check_weights(net, 2, unit="epoch")


def test_perplexity_never_overflows():
    assert perplexity(3.0) == 8.0 and Tally(3000.0, 2, 0).perplexity == math.inf
    assert math.isnan(perplexity(float("nan")))


def test_json_files_hold_null_for_non_finite_numbers(tmp_path):
    files.write_json(tmp_path / "a.json", {"x": float("nan"), "y": [1.0, float("-inf")], "z": (2, "s")})
    assert strict_json((tmp_path / "a.json").read_text()) == {"x": None, "y": [1.0, None], "z": [2, "s"]}


def test_drawing_from_non_finite_predictions_is_a_user_error():
    g = torch.Generator().manual_seed(0)
    assert draw(torch.tensor([0.0, 5.0]), 0.0, g) == 1
    with pytest.raises(UserError, match="not finite numbers"):
        draw(torch.tensor([float("nan"), 1.0]), 1.0, g)


def test_a_state_dict_mismatch_names_the_keys():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    state = net.state_dict()
    state["extra.weight"] = state.pop("1.bias")
    state["0.weight"] = torch.zeros(5, 2)
    with pytest.raises(ValueError) as err:
        load_module(net, state)
    assert str(err.value) == ("the saved weights do not fit a Sequential: missing 1.bias; unexpected extra.weight; "
                              "saved 0.weight (5, 2) where the model has (3, 2)")


# --------------------------------------------------------------------------- tncn train

def test_a_run_that_diverges_midway_keeps_its_last_finite_checkpoint(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    poison_at(monkeypatch, 5)
    assert main(train_args(tiny, out, "--steps", "8")) == 3
    line = one_line(capsys, r"^tncn train: training diverged at step 5: the training loss is nan \(the weight \S+ is "
                            r"no longer finite\); \S+checkpoint.pt keeps step 4, \S+best.pt the best validation")
    assert "smaller --lr" in line
    records = lines_of(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4]
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["progress"]["step"] == 4
    assert all(torch.isfinite(t).all() for t in saved["learner"]["model"].values())
    best = min(records, key=lambda r: r["valid_bpc"])["step"]
    assert torch.load(out / "best.pt", weights_only=True)["progress"]["step"] == best
    # the run goes on from its last finite checkpoint
    monkeypatch.undo()
    assert main(["train", "--out", str(out), "--resume", "--steps", "6"]) == 0
    assert [r["step"] for r in lines_of(out / "metrics.jsonl")] == [2, 4, 6]


def test_a_non_finite_validation_is_recorded_as_null_and_never_saved(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    scores_in_turn(monkeypatch, [3.0, float("nan")])
    assert main(train_args(tiny, out, "--steps", "8")) == 3
    one_line(capsys, "training diverged at step 4: the validation score is nan; .*keeps step 2")
    records = lines_of(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4]
    assert records[1]["valid_bpc"] is None and records[1]["diverged"] == "the validation score is nan"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["progress"]["step"] == 2


def test_a_validation_back_above_the_baseline_stops_the_run(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    scores_in_turn(monkeypatch, [1.0, 0.5, 40.0])
    assert main(train_args(tiny, out, "--steps", "8")) == 3
    one_line(capsys, r"training diverged at step 6: the validation score 40 is worse than the no-context baseline "
                     r"[\d.]+ after reaching 0.5; .*keeps step 4, .*best.pt the best validation \(0.5000 at step 4\)")
    assert torch.load(out / "best.pt", weights_only=True)["progress"]["step"] == 4


@pytest.mark.parametrize("model", ["ptncn", "lstm"])
def test_a_huge_learning_rate_stops_at_once_and_the_folder_can_start_again(tiny, tmp_path, capsys, model):
    out = tmp_path / "run"
    assert main(train_args(tiny, out, "--model", model, "--steps", "20", "--lr", "1e38")) == 3
    one_line(capsys, rf"training diverged at step \d+: the training loss is nan .*; {re.escape(str(out))} holds no "
                     "checkpoint yet")
    assert not (out / "checkpoint.pt").exists()
    assert main(train_args(tiny, out, "--model", model, "--steps", "2")) == 0  # no --force needed


def test_a_second_ctrl_c_says_what_the_folder_keeps(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    original = SequenceLearner.train_segment
    calls = {"n": 0}

    def train_segment(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # what the second Ctrl-C raises inside the loop
        return original(self, batch)
    monkeypatch.setattr(SequenceLearner, "train_segment", train_segment)
    assert main(train_args(tiny, out, "--steps", "8")) == 130
    one_line(capsys, r"interrupted twice: stopped at once without saving; \S+checkpoint.pt keeps step 2")


def test_stale_temporary_files_are_removed_on_restart(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny, out, "--steps", "2")) == 0
    stale = [out / "checkpoint.pt.k1ll3d.tmp", out / "metrics.jsonl.x9.tmp", out / "best.pt.link.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--steps", "4"]) == 0
    assert not any(p.exists() for p in stale)
    assert "removed the temporary files" in capsys.readouterr().err


def test_a_folder_whose_first_save_was_killed_starts_again(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text("")
    (out / "checkpoint.pt.a1b2c3.tmp").write_bytes(b"PK\3\4 half")
    assert main(["train", "--out", str(out), "--resume"]) == 2
    one_line(capsys, "stopped before its first checkpoint; start it again without --resume")
    assert main(train_args(tiny, out, "--steps", "2")) == 0
    assert not (out / "checkpoint.pt.a1b2c3.tmp").exists() and (out / "checkpoint.pt").is_file()
    capsys.readouterr()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("not a run")
    assert main(train_args(tiny, other, "--steps", "2")) == 2  # a folder of someone else's files
    one_line(capsys, "already exists")


def test_resume_with_a_spent_budget_is_refused_and_changes_nothing(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny, out, "--steps", "4")) == 0
    capsys.readouterr()
    before = snapshot(out)
    assert main(["train", "--out", str(out), "--resume", "--steps", "2"]) == 2
    one_line(capsys, r"--steps 2 is no more than the run in \S+ has done \(4 steps\); give a larger budget")
    assert main(["train", "--out", str(out), "--resume"]) == 2
    one_line(capsys, r"has finished its budget \(--steps 4, 4 steps done\)")
    assert snapshot(out) == before


# --------------------------------------------------------------------------- eval and sample

@pytest.fixture
def run(tiny, tmp_path):
    out = tmp_path / "trained"
    assert main(train_args(tiny, out, "--steps", "2")) == 0
    return out


def _edit_checkpoint(run: Path, out: Path, edit) -> Path:
    shutil.copytree(run, out)
    data = checkpoint.load(out, runs.KIND)
    edit(data["learner"]["model"])
    checkpoint.save(out, {k: v for k, v in data.items() if k not in ("format", "version", "kind")}, runs.KIND)
    return out


def test_sampling_an_overflowed_model_is_one_line(run, tmp_path, capsys):
    bad = _edit_checkpoint(run, tmp_path / "bad", lambda m: next(iter(m.values())).fill_(float("inf")))
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(bad), "--length", "5"]) == 2
    one_line(capsys, "not finite numbers")


def test_a_checkpoint_that_does_not_fit_names_its_keys(run, tmp_path, capsys):
    def rename(model):
        key = next(iter(model))
        model["renamed"] = model.pop(key)
    bad = _edit_checkpoint(run, tmp_path / "bad", rename)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    one_line(capsys, r"does not fit its saved weights \(.*missing \S+; unexpected renamed\)")


def test_eval_json_goes_into_a_new_folder_and_warns_on_unknown_text(run, tmp_path, capsys):
    path = tmp_path / "new" / "deeper" / "result.json"
    assert main(["eval", "--checkpoint", str(run), "--json", str(path)]) == 0
    result = strict_json(path.read_text())
    assert result["unknown_share"] == 0.0 and result["unknown"] == 0
    assert "warning" not in capsys.readouterr().err
    greek = tmp_path / "greek.txt"
    greek.write_text("".join("καλημέρα κόσμε πώς είσαι σήμερα\n" for _ in range(100)))
    assert main(["eval", "--checkpoint", str(run), "--data", str(greek), "--json", str(path)]) == 0
    result = strict_json(path.read_text())
    assert result["unknown_share"] > 0.5
    err = capsys.readouterr().err
    assert re.search(r"warning: \d+\.\d % of the symbols of \S+greek.txt are unknown to the model", err), err
    # a --json that cannot be written is refused before any evaluation
    assert main(["eval", "--checkpoint", str(run), "--json", str(tmp_path / "new")]) == 2
    one_line(capsys, "--json .* is a folder")


# --------------------------------------------------------------------------- compare, continual, classify

def test_compare_marks_a_diverged_model_and_writes_valid_json(tiny, tmp_path, in_process, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--data", str(tiny), "--models", "ptncn,lstm", "--hidden", "8,8", "--batch-size", "4",
                 "--seq-len", "20", "--tokens", "400", "--points", "2", "--set", "lstm:lr=1e38",
                 "--out", str(out)]) == 0
    result = strict_json((out / "results.json").read_text())
    lstm, ptncn = result["models"]["lstm"], result["models"]["ptncn"]
    assert lstm["diverged"]["step"] >= 1 and "nan" in lstm["diverged"]["what"] and lstm["test_bpc"] is None
    assert ptncn["diverged"] is None and math.isfinite(ptncn["test_bpc"])
    table = (out / "table.md").read_text()
    assert re.search(r"\| lstm \|.*\| diverged at step \d+ \| diverged \|", table), table
    assert "nan" not in table.lower()


def test_continual_marks_a_diverged_model_and_writes_its_results(tiny, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text("".join(f"zq {i % 7} xy{i % 3}\n" for i in range(200)))
    out = tmp_path / "cl"
    assert main(["continual", "--stream", f"{tiny},{other}", "--models", "ptncn,lstm", "--tokens", "200",
                 "--points", "1", "--hidden", "8", "--batch-size", "4", "--seq-len", "20",
                 "--set", "lstm:lr=1e38", "--out", str(out)]) == 0
    result = strict_json((out / "results.json").read_text())
    lstm = result["models"]["lstm"]
    assert lstm["diverged"]["experience"] == "tiny.txt" and lstm["summary"] is None and lstm["R"] == []
    assert result["models"]["ptncn"]["diverged"] is None and len(result["models"]["ptncn"]["R"]) == 2
    assert re.search(r"### lstm\n\ndiverged during tiny.txt at step \d+", (out / "table.md").read_text())
    assert (out / "matrix.png").is_file() and (out / "curves.png").is_file()


def classify(folder, *extra):
    return main(["classify", "--data", str(folder), "--valid", "40", "--hidden", "12,12", "--no-progress", *extra])


def test_classify_guard_and_batch_size(images, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "cls"
    assert classify(images, "--rule", "bp", "--batch-size", "100000", "--out", str(out)) == 2
    one_line(capsys, "--batch-size 100,000 is larger than the 200 training examples")
    assert classify(images, "--rule", "bp", "--batch-size", "20", "--lr", "1e38", "--epochs", "3",
                    "--out", str(out)) == 3
    assert re.search(r"tncn classify: training diverged at epoch 1: the training loss is nan.*; nothing was saved",
                     capsys.readouterr().err)
    assert not out.exists()


def test_a_final_score_worse_than_the_baseline_is_said(tiny, tmp_path, capsys, monkeypatch):
    scores_in_turn(monkeypatch, [50.0])
    assert main(train_args(tiny, tmp_path / "run", "--steps", "2")) == 0
    one_line(capsys, r"warning: the validation score 50.0000 is worse than the no-context baseline [\d.]+: the model "
                     "has not learned yet")

"""``tncn train | eval | sample`` on a tiny corpus: end to end, resume equality, every bad input.

The end-to-end test trains through the real entry point (``python -m tncn``) in a subprocess; the
others call ``tncn.cli.main`` in-process to stay fast.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tncn import checkpoint
from tncn.cli import main
from tncn.temporal import LEARNERS

WORDS = "the cat sat on a mat while one dog ran far away from its home and back again".split()
TIMING = {"elapsed_s", "tokens_per_s"}


def tiny_lines(n=80):
    return [" ".join(WORDS[(7 * i + 3 * j) % len(WORDS)] for j in range(3 + i % 5)) for i in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text("\n".join(tiny_lines()) + "\n")
    return path


def tiny_args(corpus, out, *extra):
    return ["train", "--data", str(corpus), "--hidden", "8,8", "--batch-size", "4", "--eval-every", "2",
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    """One tiny run, trained once for the tests that read a checkpoint."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(tiny_args(corpus, out, "--steps", "2", "--seq-len", "8")) == 0
    return out


def records(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def final_weights(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", weights_only=True)["learner"]["model"]


# --------------------------------------------------------------------------- end to end

def test_train_eval_sample_end_to_end(corpus, tmp_path, capsys, monkeypatch):
    """``python -m tncn train`` in a subprocess, then eval and sample on its run folder."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg", "PYTHONIOENCODING": "utf-8"}
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "tncn", *tiny_args(corpus, out, "--steps", "4", "--seq-len", "10")],
                       capture_output=True, text=True, encoding="utf-8", env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("validation: ") and "bits/char" in lines[0] and "unigram entropy" in lines[0]
    assert lines[1].startswith("sample (") and lines[-1] == f"run saved in {out}"
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "checkpoint.pt", "config.json", "curves.png",
                                                     "metrics.jsonl"]
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [2, 4]
    best = min(recs, key=lambda r: r["valid_bpc"])
    assert torch.load(out / "best.pt", weights_only=True)["progress"]["step"] == best["step"]
    for rec in recs:
        assert {"step", "tokens", "elapsed_s", "train_bpc", "valid_bpc", "tokens_per_s"} <= set(rec)
    # 4 parallel streams of 10 steps per batch: 40 symbols per batch, all real in the first batches
    assert recs[-1]["tokens"] == 4 * 4 * 10
    config = json.loads((out / "config.json").read_text())
    assert config["hidden"] == [8, 8] and config["protocol"] == "stream" and config["steps"] == 4
    assert config["data"] == str(corpus.resolve())

    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--checkpoint", str(out), "--json", "e.json", "--split", "valid"]) == 0
    stdout = capsys.readouterr().out
    result = json.loads((tmp_path / "e.json").read_text())
    assert {"bpc", "perplexity", "accuracy", "scored", "tokens", "unknown", "correction", "split"} <= set(result)
    assert result["split"] == "valid" and result["correction"] is True and result["unknown"] == 0
    # the valid part (lines 72..75 of 80) as one stream, 4 rows: all symbols but one per row scored
    valid_text = "".join(line + "\n" for line in tiny_lines()[72:76])
    assert result["tokens"] == len(valid_text) and result["scored"] == len(valid_text) - 4
    assert result["bpc"] == pytest.approx(recs[-1]["valid_bpc"], rel=1e-6)  # same split, same model
    assert f"{result['bpc']:.4f} bits/char" in stdout

    assert main(["sample", "--checkpoint", str(out), "--prime", "the cat", "--length", "25", "--seed", "3"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("the cat") and len(stdout) == len("the cat") + 25 + 1  # and the newline
    assert main(["sample", "--checkpoint", str(out), "--length", "7", "--temperature", "0"]) == 0
    assert len(capsys.readouterr().out) == 7 + 1  # an empty prime: 7 symbols in all


# --------------------------------------------------------------------------- resume

@pytest.mark.parametrize("protocol, stop", [("stream", 3), ("lines", 4)])
def test_resume_equals_an_uninterrupted_run(corpus, tmp_path, protocol, stop):
    # a schedule scaled to the budget (the quick preset's, under --steps) differs between a 6-step
    # run and a 3-step one by design: keep it out of this comparison
    extra = ["--protocol", protocol, "--half-life", "none"] + (["--seq-len", "6"] if protocol == "stream" else [])
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(tiny_args(corpus, whole, "--steps", "6", *extra)) == 0
    assert main(tiny_args(corpus, parts, "--steps", str(stop), *extra)) == 0
    # a kill after a metrics line was written but before its checkpoint: the line must not survive
    with open(parts / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 999}\n')
    assert main(["train", "--out", str(parts), "--resume", "--steps", "6"]) == 0
    assert records(parts) == records(whole)
    a, b = final_weights(whole), final_weights(parts)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- bad input

def one_error_line(capsys, rc, pattern):
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc != 0 and len(lines) == 1, err
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), lines[0]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_bad_data_inputs(corpus, tmp_path, capsys):
    out = tmp_path / "never"
    cases = []
    cases.append((str(tmp_path / "missing.txt"), "no such file or folder"))
    (tmp_path / "empty.txt").write_text("")
    cases.append((str(tmp_path / "empty.txt"), "empty.txt is empty"))
    (tmp_path / "nosplits").mkdir()
    (tmp_path / "nosplits" / "a.txt").write_text("abc\n")
    cases.append((str(tmp_path / "nosplits"), "has no train file"))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("\n".join(tiny_lines()).encode() + b"\ncaf\xe9\n")
    cases.append((str(bad), rf"latin1.txt: undecodable bytes at offset {len(chr(10).join(tiny_lines())) + 4}"))
    for data, pattern in cases:
        one_error_line(capsys, main(["train", "--data", data, "--out", str(out)]), pattern)
    assert not out.exists()


@pytest.mark.parametrize("extra, pattern", [
    (["--hidden", "0"], "--hidden: expected positive whole numbers, comma-separated .*, got '0'"),
    (["--hidden", "8,-1"], "--hidden: expected positive whole numbers, comma-separated .*, got '8,-1'"),
    (["--batch-size", "1000"], "batch size 1000 is larger than the data"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--protocol", "lines", "--seq-len", "5"], "--seq-len applies to the stream protocol"),
    (["--optimizer", "adam", "--momentum", "0.9"], "--momentum applies to sgd, momentum and nesterov, not adam"),
    (["--K", "0"], "K .* at least 1"),
])
def test_bad_options(corpus, tmp_path, capsys, extra, pattern):
    out = tmp_path / "never"
    one_error_line(capsys, main(tiny_args(corpus, out, "--steps", "1", *extra)), pattern)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda(corpus, tmp_path, capsys):
    one_error_line(capsys, main(tiny_args(corpus, tmp_path / "x", "--steps", "1", "--device", "cuda")),
                   "--device cuda: CUDA is not available")


def test_existing_out_is_never_overwritten(corpus, trained, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = snapshot(out)
    one_error_line(capsys, main(tiny_args(corpus, out, "--steps", "1")), "already exists; continue it with --resume")
    assert snapshot(out) == before
    empty = tmp_path / "empty"
    one_error_line(capsys, main(["train", "--out", str(empty), "--resume"]), "no checkpoint in")
    (out / "notes.txt").write_text("mine")
    assert main(tiny_args(corpus, out, "--steps", "1", "--seq-len", "8", "--force")) == 0
    assert len(records(out)) == 1 and (out / "notes.txt").read_text() == "mine"  # only the run's files replaced


def test_bad_checkpoints(corpus, trained, tmp_path, capsys):
    # a truncated checkpoint: resume and eval refuse it, nothing is written
    cut = tmp_path / "cut"
    shutil.copytree(trained, cut)
    data = (cut / "checkpoint.pt").read_bytes()
    (cut / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    before = snapshot(cut)
    one_error_line(capsys, main(["train", "--out", str(cut), "--resume", "--steps", "4"]), "truncated, corrupt or not a checkpoint")
    one_error_line(capsys, main(["eval", "--checkpoint", str(cut)]), "truncated, corrupt or not a checkpoint")
    assert snapshot(cut) == before

    # resuming with another model or other data
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = snapshot(run)
    one_error_line(capsys, main(["train", "--out", str(run), "--resume", "--hidden", "16,16"]),
                   r"--hidden 16,16 differs from the run .*\(8,8\)")
    other = tmp_path / "other.txt"
    other.write_text("\n".join(line.upper() for line in tiny_lines()) + "\n")
    one_error_line(capsys, main(["train", "--out", str(run), "--resume", "--data", str(other)]), "--data .* differs from the run")
    assert snapshot(run) == before

    # a checkpoint whose vocabulary does not fit its weights, and a checkpoint of another kind
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    payload["vocab"]["symbols"].append("\u2603")
    payload["vocab"]["counts"].append(1)
    checkpoint.save(tmp_path / "tampered.pt", {k: v for k, v in payload.items() if k not in ("format", "version", "kind")}, "sequence")
    one_error_line(capsys, main(["eval", "--checkpoint", str(tmp_path / "tampered.pt")]), "does not fit its saved weights")
    checkpoint.save(tmp_path / "classifier.pt", {"model": {}}, "classifier")
    one_error_line(capsys, main(["sample", "--checkpoint", str(tmp_path / "classifier.pt")]),
                   "holds a tncn classifier checkpoint, not a sequence checkpoint")


def test_resume_after_the_data_changed(corpus, tmp_path, capsys):
    data = tmp_path / "data.txt"
    shutil.copy(corpus, data)
    out = tmp_path / "run"
    assert main(tiny_args(data, out, "--steps", "2", "--seq-len", "8")) == 0
    capsys.readouterr()
    data.write_text("\n".join(line.upper() for line in tiny_lines()) + "\n")
    before = snapshot(out)
    one_error_line(capsys, main(["train", "--out", str(out), "--resume", "--steps", "4"]),
                   "vocabulary of .* differs from the checkpoint's")
    assert snapshot(out) == before


@pytest.mark.slow
def test_ctrl_c_then_resume_equals_an_uninterrupted_run(corpus, tmp_path):
    """Stop a real run with SIGINT at an arbitrary batch, resume it, compare with a run never stopped."""
    args = tiny_args(corpus, tmp_path / "stopped", "--steps", "600", "--seq-len", "6", "--eval-every", "40")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.Popen([sys.executable, "-m", "tncn", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    metrics = tmp_path / "stopped" / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.is_file() and metrics.read_text().strip()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert "continue with: tncn train --out" in err
    stopped_at = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)["progress"]["step"]
    assert 40 <= stopped_at < 600
    assert main(["train", "--out", str(tmp_path / "stopped"), "--resume"]) == 0
    whole = tmp_path / "whole"
    assert main(tiny_args(corpus, whole, "--steps", "600", "--seq-len", "6", "--eval-every", "40")) == 0
    assert records(tmp_path / "stopped") == records(whole)
    a, b = final_weights(whole), final_weights(tmp_path / "stopped")
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- flags from declarations

@pytest.mark.parametrize("name", list(LEARNERS))
def test_model_help_lists_the_learners_declared_options(name, capsys):
    assert main(["train", "--model", name, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    for o in LEARNERS[name].OPTIONS:
        assert o.flag in out and " ".join(o.describe().split()) in out
    others = {o.flag for cls in LEARNERS.values() for o in cls.OPTIONS} - {o.flag for o in LEARNERS[name].OPTIONS}
    assert not any(f"{flag} " in out for flag in others)  # another learner's options are not offered


def test_resume_applies_a_runtime_option(trained, tmp_path):
    from tncn import runs
    from tncn.commands.train import _resume_config
    from tncn.temporal import learner_class

    saved = runs.load(trained, runtime={"compile": True})
    assert saved.learner.model._compiled is not None and saved.config["compile"] is False
    config = _resume_config(saved.config, {"compile": True, "steps": 4}, trained, learner_class("ptncn"))
    assert config["compile"] is True and config["steps"] == 4


def test_the_data_package_stands_alone():
    code = ("import sys, sequences.text, sequences.video, sequences.images, sequences.streams, sequences.batching; "
            "print(sorted(m for m in sys.modules if m == 'tncn' or m.startswith('tncn.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("name", list(LEARNERS))
def test_every_learner_trains_evaluates_and_samples_from_the_command_line(name, corpus, tmp_path, capsys):
    out = tmp_path / name
    assert main(["train", "--data", str(corpus), "--model", name, "--hidden", "16,16", "--batch-size", "4",
                 "--seq-len", "8", "--steps", "3", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == name and config["hidden"] == [16, 16]
    assert set(LEARNERS[name].defaults()) <= set(config)
    last = records(out)[-1]
    assert main(["eval", "--checkpoint", str(out), "--split", "valid", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["bpc"] == pytest.approx(last["valid_bpc"], rel=1e-6)
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(out), "--prime", "the", "--length", "9", "--seed", "2"]) == 0
    assert len(capsys.readouterr().out) == len("the") + 9 + 1

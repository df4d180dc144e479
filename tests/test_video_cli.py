"""Video end to end: ``tncn train | eval | compare | continual`` on tiny bouncing-glyph data.

Small frames (32 x 32, 4 or 5 frames) and small models keep it fast. The second data set is a
folder of 28 x 28 IDX glyphs written here (``bouncing:DIR``), so nothing needs ../shared.
The stream matrix is checked against a replay: training the same learner on the first experience
alone, by hand, gives R[0][0], and the JSON summaries follow from R by the formulas.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import drawn_png
from sequences import video
from test_images import write_idx
from tncn import continual, runs
from tncn.cli import main
from tncn.temporal import build_learner
from tncn.train import Budget, Progress, evaluate, fit

def refused(argv, pattern, capsys):
    """The command exits with status 2 and one line on stderr matching ``pattern``."""
    import re

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err


SHAPE = ["--frames", "4", "--frame-size", "32", "--glyphs", "1"]


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """A folder of 300 random 28 x 28 blob glyphs in IDX files (t10k only, split 80/10/10)."""
    folder = tmp_path_factory.mktemp("blobs")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:28, :28]
    imgs = np.stack([(255 * np.exp(-((yy - rng.uniform(8, 20)) ** 2 + (xx - rng.uniform(8, 20)) ** 2)
                                   / rng.uniform(6, 30))).astype(np.uint8) for _ in range(300)])
    write_idx(folder / "t10k-images-idx3-ubyte", imgs)
    write_idx(folder / "t10k-labels-idx1-ubyte", (np.arange(300) % 10).astype(np.uint8))
    return folder


def small(data):
    """The test data with few sequences per split (train 64, valid 16, test 16)."""
    import dataclasses

    return dataclasses.replace(data, sizes={"train": 64, "valid": 16, "test": 16})


@pytest.fixture(autouse=True)
def few_sequences(monkeypatch):
    monkeypatch.setattr(video, "SPLIT_SIZES", {"train": 64, "valid": 16, "test": 16})
    load = video.load
    monkeypatch.setattr(video, "load", lambda *a, **k: small(load(*a, **k)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "video"
    with pytest.MonkeyPatch.context() as mp:
        load = video.load
        mp.setattr(video, "load", lambda *a, **k: small(load(*a, **k)))
        assert main(["train", "--data", "bouncing-glyphs", *SHAPE, "--hidden", "16,16", "--batch-size", "8",
                     "--steps", "6", "--eval-every", "3", "--out", str(out)]) == 0
    return out


def test_train_writes_a_video_run(trained, capsys):
    config = json.loads((trained / "config.json").read_text())
    assert config["level"] == "frames" and config["protocol"] == "sequences"
    assert (config["frames"], config["frame_size"], config["glyphs"]) == (4, 32, 1)
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]
    assert all("valid_bce" in r and "train_bce" in r and "valid_bpc" not in r for r in records)
    drawn_png(trained / "frames.png")
    assert drawn_png(trained / "curves.png") == (1000, 400)
    saved = torch.load(trained / "checkpoint.pt", weights_only=True)
    assert saved["progress"]["step"] == 6 and saved["config"] == config


def test_video_resume_equals_an_uninterrupted_run(tmp_path):
    """Video batches resume inside an epoch (``start``) like text: 3 + 7 steps equal 10 steps, across
    the epoch boundary at 8 batches (64 training sequences, batch 8)."""
    args = ["train", "--data", "bouncing-glyphs", *SHAPE, "--hidden", "8", "--batch-size", "8", "--eval-every", "2"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main([*args, "--steps", "10", "--out", str(whole)]) == 0
    assert main([*args, "--steps", "3", "--out", str(parts)]) == 0
    assert main(["train", "--out", str(parts), "--resume", "--steps", "10"]) == 0
    timing = {"elapsed_s", "tokens_per_s"}

    def records(out):
        return [{k: v for k, v in json.loads(line).items() if k not in timing}
                for line in (out / "metrics.jsonl").read_text().splitlines()]

    assert records(parts) == records(whole)
    a, b = (runs.load(out).learner.model.state_dict() for out in (whole, parts))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_zero_shot_with_and_without_correction(trained, blobs, tmp_path):
    before = {k: v.clone() for k, v in runs.load(trained).learner.model.state_dict().items()}
    out = {}
    for mode in ("on", "off"):
        path = tmp_path / f"{mode}.json"
        assert main(["eval", "--checkpoint", str(trained), "--data", f"bouncing:{blobs}", "--frozen-correction", mode,
                     "--json", str(path), "--frames-png", str(tmp_path / f"{mode}.png")]) == 0
        out[mode] = json.loads(path.read_text())
        drawn_png(tmp_path / f"{mode}.png")
    on, off = out["on"], out["off"]
    assert on["weights_unchanged"] and off["weights_unchanged"]
    assert on["correction"] is True and off["correction"] is False
    assert on["scored"] == off["scored"] == 16 * 3
    assert on["bce_per_sequence"] == pytest.approx(3 * on["bce_per_frame"])
    assert on["bce_per_frame"] != off["bce_per_frame"]
    after = runs.load(trained).learner.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the checkpoint was not rewritten


def test_eval_score_equals_an_independent_pass(trained):
    saved = runs.load(trained)
    data = runs.open_data("bouncing-glyphs", saved.config)
    batches = data.batches("test", saved.vocab, batch_size=5, clamp=True)
    direct = evaluate(saved.learner, batches)
    # frame by frame with predict_frames and the BCE formula
    total = 0.0
    for i in range(16):
        clip = torch.from_numpy(data.sequence("test", i).reshape(4, -1))
        p = saved.learner.predict_frames(clip)[1:].double().clamp(1e-12, 1 - 1e-12)
        x = clip[1:].double()
        total += float(-(x * p.log() + (1 - x) * (1 - p).log()).sum())
    assert direct.scored == 48 and direct.total == pytest.approx(total, rel=1e-4)


def test_video_options_and_data_kinds_are_checked(trained, tiny, capsys):
    refused(["train", "--data", str(tiny), "--frames", "5", "--out", "x"], "--frames applies to video", capsys)
    refused(["train", "--data", "bouncing-glyphs", "--seq-len", "5", "--out", "x"], "--seq-len applies to text", capsys)
    refused(["eval", "--checkpoint", str(trained), "--data", str(tiny)], "trained on video frames", capsys)
    refused(["sample", "--checkpoint", str(trained)], "frames-png", capsys)
    refused(["train", "--data", "bouncing-glyphs", "--frame-size", "20", "--out", "x"], "frame size must be at least",
            capsys)


def test_lstm_video_run_refuses_a_correction_switch(tmp_path, blobs, capsys):
    out = tmp_path / "lstm"
    assert main(["train", "--data", "bouncing-glyphs", *SHAPE, "--model", "lstm", "--hidden", "8", "--batch-size", "8",
                 "--steps", "2", "--out", str(out)]) == 0
    js = tmp_path / "e.json"
    assert main(["eval", "--checkpoint", str(out), "--data", f"bouncing:{blobs}", "--json", str(js)]) == 0
    assert json.loads(js.read_text())["weights_unchanged"]
    refused(["eval", "--checkpoint", str(out), "--frozen-correction", "off"], "no state-correction phase", capsys)


def test_compare_on_video(tmp_path, capsys, in_process):
    out = tmp_path / "cmp"
    assert main(["compare", "--data", "bouncing-glyphs", *SHAPE, "--models", "ptncn,gru", "--hidden", "8",
                 "--batch-size", "8", "--tokens", "64", "--points", "1", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["metric"] == "bce" and result["baseline"] > 0
    for m in result["models"].values():
        assert len(m["valid_bce"]["bce"]) == 2 and m["test_bce"] > 0 and m["tokens"] >= 64
    assert "test BCE/frame" in (out / "table.md").read_text()
    assert (out / "bce_vs_time.png").exists()


def test_continual_stream_matrix(tmp_path, blobs, capsys):
    out = tmp_path / "cl"
    stream = f"bouncing-glyphs,bouncing:{blobs}"
    assert main(["continual", "--stream", stream, "--models", "ptncn,lstm", "--tokens", "96", "--points", "2",
                 "--hidden", "8,8", "--batch-size", "8", *SHAPE, "--seed", "1", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    names = [e["name"] for e in result["stream"]]
    assert names == ["bouncing-glyphs", f"bouncing:{blobs.name}"]
    for kind, m in result["models"].items():
        R = m["R"]
        assert np.array(R).shape == (2, 2) and len(m["initial"]) == 2
        assert m["summary"] == continual.summarize(R, initial=m["initial"])
        curve = m["curve"]
        assert len(curve["tokens"]) == 1 + 2 * 2 and curve["boundaries"] == [curve["tokens"][2], curve["tokens"][4]]
        assert [curve["scores"][n][2] for n in names] == R[0] and [curve["scores"][n][4] for n in names] == R[1]
        assert all(e["tokens"] >= 96 for e in m["experiences"])
    drawn_png(out / "matrix.png")
    drawn_png(out / "curves.png")
    assert "### ptncn" in (out / "table.md").read_text()

    # replay the first experience of P-TNCN by hand: the same learner, batches and stop rule
    opts = result["models"]["ptncn"]["options"]
    data = [runs.open_data(d, result) for d in ("bouncing-glyphs", f"bouncing:{blobs}")]
    space = data[0].vocabulary()
    torch.manual_seed(1)
    learner = build_learner("ptncn", opts, len(space), seed=1, frames=True)
    tests = [d.batches("test", space, batch_size=8, clamp=True) for d in data]
    assert [evaluate(learner, t).mean for t in tests] == result["models"]["ptncn"]["initial"]
    p = Progress()
    train, valid = data[0].batches("train", space, batch_size=8, seed=1), data[0].batches("valid", space, batch_size=8)
    fit(learner, train, valid, Budget(tokens=96), progress=p, bar=False)
    assert p.tokens == result["models"]["ptncn"]["experiences"][0]["tokens"]
    assert [evaluate(learner, t).mean for t in tests] == pytest.approx(result["models"]["ptncn"]["R"][0], rel=1e-6)


def test_continual_text_stream_shares_one_vocabulary(tmp_path, tiny, capsys):
    other = tmp_path / "other.txt"
    other.write_text("".join(f"zq {i % 7} xy{i % 3}\n" for i in range(200)))
    out = tmp_path / "text"
    assert main(["continual", "--stream", f"{tiny},{other}", "--models", "ptncn", "--tokens", "300", "--points", "1",
                 "--hidden", "8", "--batch-size", "4", "--seq-len", "20", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["metric"] == "bpc" and result["level"] == "char"
    chars = set((tiny.read_text() + other.read_text()).replace("\n", ""))
    assert result["size"] == len(chars) + 2  # + the end-of-line symbol and the unknown token
    assert "average final" in capsys.readouterr().out


def test_continual_refuses_mixed_and_bad_streams(tmp_path, tiny, capsys):
    refused(["continual", "--stream", f"bouncing-glyphs,{tiny}", "--tokens", "10", "--out", str(tmp_path / "a")],
            "mixes video and text", capsys)
    refused(["continual", "--stream", "bouncing-glyphs", "--out", str(tmp_path / "b")], "minutes|tokens", capsys)
    refused(["continual", "--stream", "bouncing-glyphs", "--tokens", "5", "--points", "0",
             "--out", str(tmp_path / "c")],
            "--points must be positive", capsys)


def test_continual_json_stream_with_its_own_budgets(tmp_path, tiny, capsys):
    stream = tmp_path / "stream.json"
    stream.write_text(json.dumps({"experiences": [
        {"data": str(tiny), "name": "first", "tokens": 200},
        {"data": str(tiny), "name": "again", "minutes": 0.002}]}))
    out = tmp_path / "json"
    assert main(["continual", "--stream", str(stream), "--models", "gru", "--points", "2", "--hidden", "8",
                 "--batch-size", "4", "--seq-len", "20", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["stream"] == [{"name": "first", "data": str(tiny), "tokens": 200},
                                {"name": "again", "data": str(tiny), "minutes": 0.002}]
    legs = result["models"]["gru"]["experiences"]
    assert legs[0]["tokens"] >= 200 and legs[1]["train_s"] >= 0.12
    assert "first: 200 tokens; again: 0.002 min" in (out / "table.md").read_text()

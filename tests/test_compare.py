"""End-to-end tests of ``tncn compare`` (P-TNCN against BPTT baselines) on a tiny corpus written here.

Most runs go through the command line with each model's run made in this process (the
``in_process`` fixture: starting a fresh interpreter per model costs seconds on busy cores); the
slow tests run tasks and whole comparisons in real child processes.
Parameter counts are checked against closed forms; bad input gives one line and exit status 2.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tncn.errors import UserError
from tncn import bench, isolate
from tncn.cli import main
from tncn.temporal.bptt import n_params

MODELS = ["ptncn", "lstm", "gru", "rnn"]


def _compare(tiny, out, *extra):
    return main(["compare", "--data", str(tiny), "--hidden", "12,12", "--batch-size", "4", "--seq-len", "25",
                 "--out", str(out), *extra])


def _ptncn_params(V, h1, h2):
    """M1, W1, E1: V×h1 each; V1: h1²; U1: h2×h1; M2, W2, E2: h1×h2 each; V2: h2²."""
    return 3 * V * h1 + h1 * h1 + h2 * h1 + 3 * h1 * h2 + h2 * h2


def test_compare_end_to_end_writes_every_file(tiny, tmp_path, in_process, capsys):
    out = tmp_path / "cmp"
    assert _compare(tiny, out, "--models", ",".join(MODELS), "--tokens", "600", "--points", "2") == 0
    for name in ("results.json", "table.md", "bpc_vs_time.png", "bpc_vs_tokens.png"):
        assert (out / name).is_file()
    for name in ("bpc_vs_time.png", "bpc_vs_tokens.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = json.loads((out / "results.json").read_text())
    V = r["vocab_size"]
    assert list(r["models"]) == MODELS and r["budget"] == {"tokens": 600}
    assert r["first_model"] == "ptncn" and r["first_params"] == _ptncn_params(V, 12, 12)
    tokens = {m["tokens"] for m in r["models"].values()}
    assert len(tokens) == 1 and 600 <= tokens.pop() < 600 + 4 * 25  # the same batches, at most one more
    for kind, m in r["models"].items():
        curve = m["valid_bpc"]
        assert len(curve["bpc"]) == len(curve["tokens"]) == len(curve["seconds"]) == 3  # before, 2 points
        assert curve["tokens"][0] == 0 and curve["tokens"] == sorted(curve["tokens"])
        assert all(math.isfinite(b) for b in curve["bpc"]) and math.isfinite(m["test_bpc"])
        # train_s is kept to the millisecond, so the quotient is known to within that rounding
        assert m["tokens_per_s"] == pytest.approx(m["tokens"] / m["train_s"], rel=0.0006 / m["train_s"] + 1e-3)
        assert m["peak_rss_mb"] >= m["peak_memory_mb"] >= 0 and m["peak_rss_mb"] > 50  # torch alone takes more
        h = m["hidden"]
        if kind == "ptncn":
            assert h == [12, 12] and m["params"] == r["first_params"]
        else:  # the closest width: no neighbour is nearer P-TNCN's count
            assert len(h) == 2 and h[0] == h[1] and m["params"] == n_params(kind, V, h)
            gap = abs(m["params"] - r["first_params"])
            for w in (h[0] - 1, h[0] + 1):
                assert gap <= abs(n_params(kind, V, [w, w]) - r["first_params"])
    printed = capsys.readouterr().out
    table = (out / "table.md").read_text()
    assert table.strip() in printed
    assert sum(line.startswith(f"| {k} |") for k in MODELS for line in table.splitlines()) == 4


def test_same_data_and_seed_give_the_same_numbers_twice(tiny, tmp_path, in_process):
    results = []
    for name in ("a", "b"):
        assert _compare(tiny, tmp_path / name, "--models", "ptncn,gru", "--tokens", "300", "--points", "1",
                        "--set", "gru:bptt=10", "--seed", "3") == 0
        results.append(json.loads((tmp_path / name / "results.json").read_text()))
    for kind in ("ptncn", "gru"):
        a, b = results[0]["models"][kind], results[1]["models"][kind]
        assert a["valid_bpc"]["bpc"] == b["valid_bpc"]["bpc"] and a["test_bpc"] == b["test_bpc"]
    assert results[0]["models"]["gru"]["options"]["bptt"] == 10


def test_lines_protocol_minutes_budget_and_matched_widths(tiny, tmp_path, in_process):
    out = tmp_path / "lines"
    assert _compare(tiny, out, "--models", "ptncn,elman", "--protocol", "lines", "--minutes", "0.004",
                    "--points", "2", "--match", "hidden", "--valid-lines", "5", "--set", "elman:activation=\"relu\"") == 0
    r = json.loads((out / "results.json").read_text())
    assert r["budget"] == {"minutes": 0.004} and r["seq_len"] is None
    for m in r["models"].values():
        assert m["hidden"] == [12, 12]
        assert m["valid_bpc"]["seconds"][-1] >= 0.24 and m["train_s"] >= 0.24
    assert r["models"]["elman"]["options"]["activation"] == "relu"


def test_memory_mode_writes_table_and_plot(tiny, tmp_path, in_process, capsys):
    out = tmp_path / "mem"
    assert _compare(tiny, out, "--memory", "--models", "ptncn,lstm", "--lengths", "5,40", "--hidden", "8",
                    "--match", "hidden") == 0
    r = json.loads((out / "memory.json").read_text())
    assert r["lengths"] == [5, 40] and set(r["models"]) == {"ptncn", "lstm"}
    assert r["models"]["lstm"]["training"] == "full BPTT"
    assert r["models"]["ptncn"]["training"] == "local rule (no autograd)"
    for m in r["models"].values():
        assert set(m["rows"]) == {"5", "40"} and all("growth_mb" in v for v in m["rows"].values())
    assert (out / "memory_vs_length.png").read_bytes()[:4] == b"\x89PNG"
    assert "| lstm | 8 | full BPTT |" in capsys.readouterr().out


def test_a_memory_pass_runs_in_a_child_process():
    result = bench.peak_memory_mb("gru", {"hidden": [4]}, 6, batch=2, size=5)
    assert set(result) == {"peak_mb", "growth_mb"}
    assert result["peak_mb"] >= result["growth_mb"] >= 0 and result["peak_mb"] > 50  # torch alone takes more


def test_a_failed_child_is_one_user_error():
    with pytest.raises(UserError, match="the gru memory run stopped with exit status 1"):
        isolate.run("tncn.bench:memory_pass", {"kind": "gru"}, 1, "gru memory")


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from Linux's /proc")
def test_terminating_compare_ends_its_child_run(tiny, tmp_path):
    """A SIGTERM (kill) to ``tncn compare`` must not leave the model's run going on its own."""
    parent = subprocess.Popen([sys.executable, "-m", "tncn", "compare", "--data", str(tiny), "--models", "lstm",
                               "--hidden", "12,12", "--batch-size", "4", "--minutes", "5", "--out", str(tmp_path / "x")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
    deadline = time.monotonic() + 120
    while not children.read_text().split() and time.monotonic() < deadline:
        assert parent.poll() is None, "compare ended before starting its run"
        time.sleep(0.2)
    child = int(children.read_text().split()[0])
    parent.terminate()
    assert parent.wait(timeout=30) != 0
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(child)


@pytest.mark.parametrize("args,message", [
    (["--models", "ptncn,nope", "--tokens", "10"], "unknown model 'nope'"),
    (["--models", "ptncn,ptncn", "--tokens", "10"], "distinct"),
    (["--models", "lstm"], "give the budget"),
    (["--models", "lstm", "--tokens", "0"], "--tokens must be positive, got 0"),
    (["--models", "lstm", "--tokens", "10", "--bptt", "0"], "--bptt must be positive, got 0"),
    (["--models", "lstm", "--tokens", "10", "--set", "lstm:foo=1"], "lstm has no option 'foo'"),
    (["--models", "lstm", "--tokens", "10", "--set", "lstm:lr=abc"], "lstm:lr: expected a number, got 'abc'"),
    (["--models", "lstm", "--tokens", "10", "--set", "lstm:hidden=abc"], "lstm:hidden: expected positive whole numbers"),
    (["--models", "lstm", "--tokens", "10", "--set", "lstm:input=x"], "lstm:input must be one of onehot, embedding"),
    (["--models", "lstm", "--tokens", "10", "--set", "gru:lr=1"], "'gru' is not one of --models"),
    (["--models", "lstm", "--tokens", "10", "--set", "lstm"], "--set takes MODEL:KEY=VALUE"),
    (["--models", "lstm", "--tokens", "10", "--hidden", "8,x"], "--hidden: expected positive whole numbers, comma-separated"),
    (["--models", "lstm", "--memory", "--tokens", "10"], "drop --minutes/--tokens"),
    (["--models", "lstm", "--memory", "--lengths", "1,10"], "--lengths must be at least 2"),
    (["--models", "lstm", "--tokens", "10", "--batch-size", "100000"], "larger than the data"),
    (["--models", "rtrl", "--tokens", "10", "--set", "rtrl:max_memory=1e-6"], "RTRL at hidden"),
    (["--models", "uoro", "--tokens", "10", "--set", "uoro:activation=sign"], "uoro:activation must be one of"),
])
def test_bad_input_one_line_exit_2(tiny, tmp_path, capsys, args, message):
    assert _compare(tiny, tmp_path / "x", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tncn compare: error:") and message in err[0]
    assert not (tmp_path / "x" / "results.json").exists()


def test_refuses_to_overwrite_without_force(tiny, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "results.json").write_text("{}")
    assert _compare(tiny, out, "--models", "lstm", "--tokens", "10") == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_full_comparison_in_child_processes(tiny, tmp_path):
    out = tmp_path / "real"
    assert _compare(tiny, out, "--models", ",".join(MODELS), "--tokens", "2000", "--points", "3") == 0
    r = json.loads((out / "results.json").read_text())
    assert list(r["models"]) == MODELS
    assert all(m["peak_memory_mb"] >= 0 for m in r["models"].values())


@pytest.mark.slow
def test_ptncn_memory_stays_flat_while_full_bptt_grows(tiny, tmp_path):
    out = tmp_path / "mem"
    assert _compare(tiny, out, "--memory", "--models", "ptncn,lstm", "--lengths", "100,3000", "--hidden", "64,64",
                    "--batch-size", "16", "--match", "hidden") == 0
    rows = {k: m["rows"] for k, m in json.loads((out / "memory.json").read_text())["models"].items()}
    assert rows["ptncn"]["3000"]["growth_mb"] < 10
    assert rows["lstm"]["3000"]["growth_mb"] > 50
    assert rows["lstm"]["3000"]["growth_mb"] > 5 * max(rows["lstm"]["100"]["growth_mb"], 1.0)


@pytest.mark.parametrize("kind", ["gru", "ptncn"])
def test_compare_trains_exactly_as_tncn_train_does(tiny, tmp_path, in_process, kind):
    """Stopping at marks and scoring between them changes nothing: the model compare trains ends
    with the same test score as one run of fit for the same tokens (which ``tncn train`` runs)."""
    from tncn import runs
    from tncn.temporal import build_learner
    from tncn.train import Budget, evaluate, fit

    out = tmp_path / "cmp"
    assert _compare(tiny, out, "--models", kind, "--tokens", "1500", "--points", "3") == 0
    m = json.loads((out / "results.json").read_text())["models"][kind]
    corpus = runs.open_data(str(tiny), {"level": None})
    vocab = corpus.vocabulary("stream")
    import torch
    torch.manual_seed(0)
    learner = build_learner(kind, m["options"], len(vocab), seed=0)
    train = corpus.batches("train", vocab, "stream", 4, 25, 0)
    p, _ = fit(learner, train, None, Budget(tokens=1500), bar=False)
    assert p.tokens == m["tokens"]
    assert evaluate(learner, corpus.batches("test", vocab, "stream", 4, 25, clamp=True)).mean == m["test_bpc"]

"""Data-parallel training (tncn.distributed): 2 processes on the CPU (gloo) against 1 process.

Each test spawns two ranks that meet through a ``file://`` store (or, for the command line,
torchrun's environment on a free local port); the expected values come from the same learner run
in one process on the global batch.
"""
import contextlib
import datetime
import io
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sequences.batching import Batch
from tncn import distributed
from tncn.temporal import build_learner

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

V = 11
PTNCN = {"hidden": [16, 12]}
LSTM = {"hidden": [10], "bptt": 3}
TIMEOUT = datetime.timedelta(seconds=60)


def _batches() -> list:
    """Five padded batches of the lines protocol; in the first, rank 0's rows (the first half)
    are far shorter than the batch; the last has 3 rows, which 2 ranks cannot split evenly."""
    g = torch.Generator().manual_seed(3)
    out = []
    for lengths in ([2, 3, 3, 7, 8, 8], [5, 6, 6, 6, 7, 9], [3, 4, 4, 5, 5, 5], [2, 2, 6, 6, 6, 6], [4, 5, 6]):
        T, B = max(lengths), len(lengths)
        mask = torch.zeros(T, B)
        for b, n in enumerate(lengths):
            mask[:n, b] = 1.0
        tokens = torch.randint(0, V, (T, B), generator=g) * mask.long()
        score = mask.bool()
        score[0] = False
        out.append(Batch(tokens, mask, score, reset=True))
    return out


TEMPORAL = {"hidden": [16, 12], "e_rule": "temporal"}  # E's own updates travel too
RTRL = {"hidden": [8]}
ESN = {"hidden": [20], "lr": 0.01}
SCENARIOS = {"ptncn": ("ptncn", PTNCN, "exact", 1), "lstm": ("lstm", LSTM, "exact", 1),
             "rtrl": ("rtrl", RTRL, "exact", 1), "snap1": ("snap1", RTRL, "exact", 1), "esn": ("esn", ESN, "exact", 1),
             "uoro": ("uoro", RTRL, "exact", 1), "temporal": ("ptncn", TEMPORAL, "exact", 1),
             "average": ("ptncn", PTNCN, "average", 5)}
"""Learner runs on 2 ranks: (model, options, mode, averaging period)."""


def _learn(rank, world, store, name, options, mode, every) -> dict:
    group = distributed.start(f"file://{store}", rank, world, timeout=TIMEOUT)
    try:
        group.mode, group.every = mode, every
        learner = build_learner(name, options, V, "cpu", seed=0)
        learner.distribute(group)
        tallies, steps = [], []
        for batch in _batches():
            tallies.append(learner.train_segment(batch).to_list())
            steps.append(learner.model._state["t"] if name == "ptncn" else None)
        scores = [learner.eval_segment(batch).to_list() for batch in _batches()]
        return {"params": learner.model.state_dict(), "tallies": tallies, "steps": steps, "scores": scores,
                "carry": learner.carry_state() if name == "lstm" else None}
    finally:
        distributed.stop(group)


def _worker(rank, world, outdir, ports, argvs):
    """Every 2-rank run of this file in one pair of processes (each start costs seconds of imports):
    the learner scenarios, then each command line in ``argvs`` (a list per rank) as torchrun starts
    it, with its exit status and stderr."""
    from tncn.cli import main

    torch.set_num_threads(1)
    learned = {key: _learn(rank, world, os.path.join(outdir, f"store-{key}"), *args) for key, args in SCENARIOS.items()}
    torch.save(learned, os.path.join(outdir, f"r{rank}.pt"))
    results = []
    for port, argv in zip(ports, argvs[rank]):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                          WORLD_SIZE=str(world))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main(argv)
        results.append([status, err.getvalue()])
    with open(os.path.join(outdir, f"cli{rank}.json"), "w") as fh:
        json.dump(results, fh)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_corpus(path) -> str:
    g = torch.Generator().manual_seed(0)
    words = "the quick brown fox jumps over a lazy dog and runs far away".split()
    lines = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (int(n),), generator=g))
             for n in torch.randint(2, 9, (300,), generator=g)]
    path.write_text("\n".join(lines))
    return str(path)


def _train(corpus, out, *extra) -> list:
    return ["train", "--data", corpus, "--hidden", "16,16", "--batch-size", "8", "--seq-len", "12", "--optimizer",
            "nesterov", "--eval-every", "2", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 2-rank runs: ``learned`` (per rank: the scenarios' weights, tallies and step counts),
    ``cli`` (per rank: [status, stderr] of each command line) and the folders they wrote."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("distributed")
    corpus = _write_corpus(tmp / "tiny.txt")
    d = {name: tmp / name for name in ("whole", "split", "whole-avg", "split-avg", "odd", "cuda", "differ")}
    avg = ("--parallel", "average", "--average-every", "3")
    same = [_train(corpus, d["whole"], "--steps", "4"), _train(corpus, d["split"], "--steps", "2"),
            _train(corpus, d["split"], "--steps", "4", "--resume"),
            _train(corpus, d["whole-avg"], "--steps", "4", *avg), _train(corpus, d["split-avg"], "--steps", "2", *avg),
            _train(corpus, d["split-avg"], "--steps", "4", "--resume"),
            _train(corpus, d["odd"], "--steps", "2", "--batch-size", "7"),
            _train(corpus, d["cuda"], "--steps", "2", "--device", "cuda")]
    argvs = [same + [_train(corpus, d["differ"], "--steps", "2")],
             same + [_train(corpus, d["differ"], "--steps", "2", "--seed", "1")]]
    mp.spawn(_worker, args=(2, str(tmp), [_free_port() for _ in argvs[0]], argvs), nprocs=2, join=True)
    return {"learned": [torch.load(tmp / f"r{r}.pt", weights_only=True) for r in range(2)],
            "cli": [json.loads((tmp / f"cli{r}.json").read_text()) for r in range(2)], "dirs": d, "corpus": corpus}


def _alone(name, options, batches) -> dict:
    learner = build_learner(name, options, V, "cpu", seed=0)
    tallies = [learner.train_segment(b).to_list() for b in batches]
    return {"params": learner.model.state_dict(), "tallies": tallies}


def _alone_scores(name, options, params) -> list:
    learner = build_learner(name, options, V, "cpu", seed=0)
    learner.model.load_state_dict(params)
    return [learner.eval_segment(b).to_list() for b in _batches()]


def _bit_identical(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_ptncn_two_ranks_equal_one_rank_on_the_global_batch(runs):
    ranks = [r["ptncn"] for r in runs["learned"]]
    ref = _alone("ptncn", PTNCN, _batches())
    assert _bit_identical(ranks[0]["params"], ranks[1]["params"])
    assert _max_diff(ranks[0]["params"], ref["params"]) < 1e-6
    assert _max_diff(ranks[0]["params"], build_learner("ptncn", PTNCN, V).model.state_dict()) > 1e-3  # it learned
    for got, want in zip(ranks[0]["tallies"], ref["tallies"]):  # the global scores, on every rank
        assert got[1:] == want[1:] and got[0] == pytest.approx(want[0], rel=1e-6)
    assert ranks[1]["tallies"] == ranks[0]["tallies"]
    scores = _alone_scores("ptncn", PTNCN, ranks[0]["params"])  # validation: the shards' scores summed
    assert ranks[0]["scores"] == ranks[1]["scores"]
    assert [s[1:] for s in ranks[0]["scores"]] == [w[1:] for w in scores]
    assert [s[0] for s in ranks[0]["scores"]] == pytest.approx([w[0] for w in scores], rel=1e-6)
    # rank 0's rows of the first batch end by step 3; it still runs the batch's 8 steps
    assert ranks[0]["steps"] == ranks[1]["steps"] == [b.tokens.shape[0] for b in _batches()]


@pytest.mark.parametrize("key", ["temporal", "lstm", "rtrl", "snap1", "esn"])
def test_other_exact_rules_equal_one_rank(runs, key):
    """P-TNCN's temporal E rule (E's updates all-reduced too), the LSTM under DDP, RTRL, SnAp-1, the ESN."""
    name, options, _, _ = SCENARIOS[key]
    ranks = [r[key] for r in runs["learned"]]
    ref = _alone(name, options, _batches())
    assert _bit_identical(ranks[0]["params"], ranks[1]["params"])
    assert _max_diff(ranks[0]["params"], ref["params"]) < 1e-6
    assert _max_diff(ranks[0]["params"], build_learner(name, options, V).model.state_dict()) > 1e-3
    assert ranks[1]["tallies"] == ranks[0]["tallies"]


def test_ddp_leaves_each_rank_its_own_recurrent_state(runs):
    """DDP broadcasts module buffers at every forward; the LSTM's carried state is none of them."""
    h0, h1 = (r["lstm"]["carry"]["state"][0][0] for r in runs["learned"])
    assert h0.shape == h1.shape == (1, 2, 10)  # its rows of the last batch (3 rows: 2 per rank, one padded)
    assert not torch.equal(h0, h1)


def test_uoro_ranks_stay_identical(runs):
    """UORO draws its random signs per rank (not the one-process draws), but the summed step is shared."""
    ranks = [r["uoro"] for r in runs["learned"]]
    assert _bit_identical(ranks[0]["params"], ranks[1]["params"])
    assert _max_diff(ranks[0]["params"], build_learner("uoro", RTRL, V).model.state_dict()) > 1e-3


def test_average_mode_is_the_mean_of_the_ranks_alone(runs):
    """Local SGD with k = 5: each rank learns its shard alone for 5 steps, then the weights are averaged."""
    ranks = [r["average"] for r in runs["learned"]]
    halves = [[distributed.shard(b, distributed.Group(r, 2)) for b in _batches()] for r in range(2)]
    alone = [_alone("ptncn", PTNCN, h)["params"] for h in halves]
    mean = {k: (alone[0][k] + alone[1][k]) / 2 for k in alone[0]}
    assert _max_diff(alone[0], alone[1]) > 1e-3  # the ranks did learn different weights
    assert _bit_identical(ranks[0]["params"], ranks[1]["params"])
    assert _max_diff(ranks[0]["params"], mean) < 1e-6
    learner = build_learner("ptncn", PTNCN, V)  # validation scores rank 0's weights, on every rank
    learner.model.load_state_dict(ranks[0]["params"])
    want = [learner.eval_segment(b).to_list() for b in _batches()]
    assert ranks[0]["scores"] == ranks[1]["scores"]
    assert [s[1:] for s in ranks[0]["scores"]] == [w[1:] for w in want]
    assert [s[0] for s in ranks[0]["scores"]] == pytest.approx([w[0] for w in want], rel=1e-9)


def test_shard_pads_to_the_global_steps():
    batch = _batches()[-1]  # 3 rows over 2 ranks: rank 1 gets one real row and one padded
    parts = [distributed.shard(batch, distributed.Group(r, 2)) for r in range(2)]
    assert [p.tokens.shape for p in parts] == [(6, 2), (6, 2)]
    assert torch.equal(torch.cat([parts[0].tokens, parts[1].tokens[:, :1]], 1), batch.tokens)
    assert parts[1].mask[:, 1].sum() == 0 and not parts[1].score[:, 1].any()


# --------------------------------------------------------------------------- the command line

def test_resume_under_torchrun_equals_an_uninterrupted_run(runs):
    """Stream protocol: each rank carries its own streams' state across segments and a resume."""
    whole, split = runs["dirs"]["whole"], runs["dirs"]["split"]
    assert [s for s, _ in runs["cli"][0][:3]] == [s for s, _ in runs["cli"][1][:3]] == [0, 0, 0]
    a, b = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (whole, split))
    assert _bit_identical(a["learner"]["model"], b["learner"]["model"])
    for ra, rb in zip(a["ranks"], b["ranks"]):  # each rank's carried state
        assert all(torch.equal(x, y) for x, y in zip(ra["learner"]["carry"]["y"], rb["learner"]["carry"]["y"]))
    assert not torch.equal(a["ranks"][0]["learner"]["carry"]["y"][0], a["ranks"][1]["learner"]["carry"]["y"][0])
    lines = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in (split / "metrics.jsonl").read_text().splitlines()]
    assert [r["valid_bpc"] for r in lines] == [r["valid_bpc"] for r in resumed]
    assert json.loads((whole / "config.json").read_text())["world_size"] == 2


def test_resume_of_local_sgd_restores_every_rank(runs):
    """--parallel average, k = 3, saved at step 2: the ranks' weights differ there and each rank resumes its own."""
    whole, split = runs["dirs"]["whole-avg"], runs["dirs"]["split-avg"]
    assert [s for s, _ in runs["cli"][0][3:6]] == [s for s, _ in runs["cli"][1][3:6]] == [0, 0, 0]
    a, b = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (whole, split))
    for ra, rb in zip(a["ranks"], b["ranks"]):
        assert _bit_identical(ra["learner"]["model"], rb["learner"]["model"])
    assert _max_diff(a["ranks"][0]["learner"]["model"], a["ranks"][1]["learner"]["model"]) > 1e-4  # 1 step since 3
    assert json.loads((whole / "config.json").read_text())["parallel"] == "average"


def test_bad_input_is_one_line_on_rank_zero_and_every_rank_fails(runs):
    """A batch that 2 ranks cannot split, NCCL (--device cuda) without CUDA, ranks with other options."""
    zero, one = (r[6:] for r in runs["cli"])
    assert [s for s, _ in zero] == [s for s, _ in one] == [2, 2, 2]
    assert all(err == "" for _, err in one)
    said = [err.strip().splitlines() for _, err in zero]
    assert all(len(lines) == 1 for lines in said), said
    assert "does not split over 2 processes" in said[0][0]
    assert "CUDA is not available" in said[1][0]
    assert "rank 1 was started with other options than rank 0" in said[2][0]
    assert not any(runs["dirs"][k].exists() for k in ("odd", "cuda", "differ"))


@pytest.mark.slow
def test_torchrun_trains_one_run_folder(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tncn",
           *_train(_write_corpus(tmp_path / "tiny.txt"), out, "--steps", "2")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("run saved in") == 1
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1

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


# --------------------------------------------------------------------------- feedforward classifiers

CLASSIFIERS = {"fa": {}, "dfa": {}, "lra-e": {}, "ep": {"estimator": "random-sign", "tolerance": 1e-30},
               "dtp": {}}
"""Rules fitted on 2 ranks (ep: no early stop, so its phases run fixed step counts; its random
sign and persistent particles must match one process; dtp draws its noise per rank)."""
N_TRAIN, BATCH = 25, 8  # batches of 8, 8, 8 and 1 row: on the last, rank 1 has none


def _classification_data():
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(N_TRAIN + 10, 6, generator=g), torch.randint(0, 3, (N_TRAIN + 10,), generator=g)
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def _fit_classifier(rule, options, group=None) -> dict:
    from tncn import learners
    from tncn.mlp import MLP, fit

    gen = torch.Generator().manual_seed(0)
    net = MLP([6, 10, 8, 3], activation=learners.LEARNERS[rule].activation or "tanh", generator=gen)
    learner = learners.make(rule, net, seed=0, **options)
    if group is not None:
        distributed.classify_start(learner, group)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.2)
    train, valid = _classification_data()
    curve = fit(learner, optimizer, train, valid, 2, BATCH, gen, progress=False, log=lambda line: None, group=group)
    seeds = {k for k, _ in learner.named_buffers() if k.endswith("seed")}  # UnitNoise: each rank its own
    return {"params": {k: v.clone() for k, v in learner.state_dict().items() if k not in seeds}, "curve": curve,
            "seeds": {k: int(learner.state_dict()[k]) for k in seeds}}


def _fit_classifiers(rank, world, store) -> dict:
    group = distributed.start(f"file://{store}", rank, world, timeout=TIMEOUT)
    try:
        return {rule: _fit_classifier(rule, options, group) for rule, options in CLASSIFIERS.items()}
    finally:
        distributed.stop(group)


def _worker(rank, world, outdir, ports, argvs):
    """Every 2-rank run of this file in one pair of processes (each start costs seconds of imports):
    the learner scenarios, then each command line in ``argvs`` (a list per rank) as torchrun starts
    it, with its exit status and stderr."""
    from tncn.cli import main

    torch.set_num_threads(1)
    learned = {key: _learn(rank, world, os.path.join(outdir, f"store-{key}"), *args) for key, args in SCENARIOS.items()}
    learned["classifiers"] = _fit_classifiers(rank, world, os.path.join(outdir, "store-classifiers"))
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
    images = _write_images(tmp / "images")
    for argv in argvs:
        argv += [_classify(images, "--json", str(tmp / "classify.json"), "--out", str(tmp / "classify-run")),
                 _classify(images, "--batch-size", "15", "--json", str(tmp / "odd.json"))]
    mp.spawn(_worker, args=(2, str(tmp), [_free_port() for _ in argvs[0]], argvs), nprocs=2, join=True)
    return {"learned": [torch.load(tmp / f"r{r}.pt", weights_only=True) for r in range(2)],
            "cli": [json.loads((tmp / f"cli{r}.json").read_text()) for r in range(2)], "dirs": d, "corpus": corpus,
            "tmp": tmp, "images": images}


def _write_images(folder) -> str:
    """A 3-class problem of 6x6 images in IDX files (tests/test_classify_cli.py's, smaller)."""
    from test_images import write_rows_problem

    folder.mkdir()
    write_rows_problem(folder, 90, 30)
    return str(folder)


def _classify(images, *extra) -> list:
    """70 training examples in batches of 20: the last batch of 10 rows splits 5 and 5."""
    return ["classify", "--rule", "fa", "--data", images, "--valid", "20", "--hidden", "12,12", "--batch-size", "20",
            "--epochs", "2", "--no-progress", *extra]


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
    zero, one = (r[6:9] for r in runs["cli"])
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


# --------------------------------------------------------------------------- tncn classify

@pytest.mark.parametrize("rule", [r for r in CLASSIFIERS if r != "dtp"])
def test_classifier_two_ranks_equal_one_rank(runs, rule):
    """FA, DFA, LRA-E and EP (random sign, persistent particles): 2 ranks x B/2 = 1 rank x B, over two
    epochs of four batches whose last has one row (rank 1 none)."""
    ranks = [r["classifiers"][rule] for r in runs["learned"]]
    ref = _fit_classifier(rule, CLASSIFIERS[rule])
    assert _bit_identical(ranks[0]["params"], ranks[1]["params"])
    assert _max_diff(ranks[0]["params"], ref["params"]) < 1e-5
    for got, want in zip(ranks[0]["curve"], ref["curve"]):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
        assert got["valid_error"] == want["valid_error"]
        assert ("discrepancy" in got) == ("discrepancy" in want)
        if "discrepancy" in got:
            assert got["discrepancy"] == pytest.approx(want["discrepancy"], rel=1e-5)
    timeless = [[{k: v for k, v in c.items() if k != "seconds"} for c in r["curve"]] for r in ranks]
    assert timeless[0] == timeless[1]


def test_classifier_with_noise_per_rank_stays_identical(runs):
    """DTP's corruption is drawn per rank (the one-process run's only in distribution); the ranks agree."""
    ranks = [r["classifiers"]["dtp"] for r in runs["learned"]]
    assert _bit_identical(ranks[0]["params"], ranks[1]["params"])
    assert ranks[0]["seeds"] == {"units.seed": 1, "noise_stream.seed": 2}
    assert ranks[1]["seeds"] == {"units.seed": 1 + distributed.STRIDE, "noise_stream.seed": 2 + distributed.STRIDE}


def test_classify_under_torchrun_writes_once_and_equals_one_process(runs, tmp_path):
    from tncn.cli import main

    zero, one = (r[-2] for r in runs["cli"])
    assert zero[0] == one[0] == 0 and one[1] == ""
    got = json.loads((runs["tmp"] / "classify.json").read_text())
    assert got["world_size"] == 2 and (runs["tmp"] / "classify-run" / "model.pt").is_file()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(_classify(runs["images"], "--json", str(tmp_path / "one.json"))) == 0
    want = json.loads((tmp_path / "one.json").read_text())
    assert want["world_size"] == 1
    assert got["test_error"] == want["test_error"]
    assert [p["train_loss"] for p in got["curve"]] == pytest.approx([p["train_loss"] for p in want["curve"]], rel=1e-5)


def test_classify_bad_batch_is_one_line_on_rank_zero(runs):
    (s0, err0), (s1, err1) = (r[-1] for r in runs["cli"])
    assert s0 == s1 == 2 and err1 == ""
    (line,) = err0.strip().splitlines()
    assert "--batch-size 15 does not split over 2 processes" in line
    assert not (runs["tmp"] / "odd.json").exists()


@pytest.mark.slow
def test_torchrun_classifies_once(tmp_path):
    from pathlib import Path

    images = _write_images(Path(tmp_path) / "images")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tncn",
           *_classify(images, "--json", str(tmp_path / "r.json"))]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("test error") == 1
    assert json.loads((tmp_path / "r.json").read_text())["world_size"] == 2


def test_rows_of_a_short_batch():
    """Contiguous rows, ceil(b/N) per rank: the last ranks of a short batch get fewer, or none."""
    assert [distributed.rows_of(8, distributed.Group(r, 2)) for r in range(2)] == [(0, 4), (4, 8)]
    assert [distributed.rows_of(5, distributed.Group(r, 4)) for r in range(4)] == [(0, 2), (2, 4), (4, 5), (5, 5)]

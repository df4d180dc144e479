"""Tokens per second of data-parallel P-TNCN training (``tncn.distributed``) on 1 and 2 processes.

For each width H (2 layers, vocabulary V, global batch B, sequences of T steps of random ids, the
reference Nesterov SGD) it trains a few batches in one process, then in 2 processes of one thread
each (gloo over the loopback, a ``file://`` store) in the two ``--parallel`` modes:

- ``exact``: the one-process update on the global batch; one SUM all-reduce of the summed local
  updates (every weight but E) at every time step;
- ``average``: local SGD, each rank learns its B/2 rows alone and the weights are averaged every
  ``--every`` training steps (batches): a different algorithm.

It prints a table: global tokens per second (the first batch, warm-up, not timed; the median of
``--repeats`` passes over the other batches), the share of
the training time spent in the all-reduce (rank 0's wall time inside it), and the milliseconds per
all-reduce call. Below the table, an *on-paper* estimate for a GPU node, which this script does
not run: a ring all-reduce of n float32 moves 2(N-1)/N · 4n bytes over each link, so it takes
about that over the NCCL bus bandwidth (``--bus-gbps``, an assumption) plus a latency
(``--latency-us``, an assumption), to set against the compute of a step c: N devices take
c/N + t_allreduce per step, so they beat one only when c > t_allreduce · N/(N-1); the last column
takes c = this CPU's measured one-process step (a GPU's step is shorter, its speed-up smaller).

    python scripts/bench_distributed.py                    # H = 256 and 1000, B = 50, T = 20
    python scripts/bench_distributed.py --hidden 256 --batches 2
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sequences.batching import Batch  # noqa: E402
from tncn import distributed  # noqa: E402
from tncn.temporal import build_learner  # noqa: E402


def batches(n: int, T: int, B: int, V: int) -> list:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(T, B)
    score = mask.bool()
    score[0] = False
    return [Batch(torch.randint(0, V, (T, B), generator=g), mask, score, reset=True) for _ in range(n)]


def _timed(fn, spent: list, calls=lambda *args: True):
    """``fn``, adding its wall time to spent[0] and the calls that communicate to spent[1]."""
    def wrapper(*args):
        t0 = time.perf_counter()
        out = fn(*args)
        spent[0] += time.perf_counter() - t0
        spent[1] += bool(calls(*args))
        return out
    return wrapper


def train(H: int, args, group=None) -> dict:
    """Train ``args.batches`` batches (the first untimed) alone or as a rank of ``group``."""
    torch.set_num_threads(1)
    learner = build_learner("ptncn", {"hidden": [H, H]}, args.vocab, "cpu", seed=0)
    spent = [0.0, 0]  # seconds in the all-reduce, calls
    if group is not None:
        group.all_reduce_ = _timed(group.all_reduce_, spent)
        group.average = _timed(group.average, spent, lambda module, step: step % group.every == 0)
        learner.distribute(group)
    data = batches(args.batches, args.steps, args.batch, args.vocab)
    learner.train_segment(data[0])
    runs = []
    for _ in range(args.repeats):
        spent[:] = [0.0, 0]
        if group is not None:
            torch.distributed.barrier()
        t0 = time.perf_counter()
        for b in data[1:]:
            learner.train_segment(b)
        wall = time.perf_counter() - t0
        tokens = (len(data) - 1) * args.steps * args.batch
        runs.append({"tokens_per_s": tokens / wall, "share": spent[0] / wall,
                     "ms_per_call": 1e3 * spent[0] / max(spent[1], 1), "step_ms": 1e3 * wall / ((len(data) - 1) * args.steps)})
    comm = sum(p.numel() for n, p in learner.model.named_parameters() if not n.startswith("E"))
    return {**sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2], "floats": comm}  # the median repeat


def _worker(rank, world, store, H, mode, args, outfile):
    group = distributed.start(f"file://{store}", rank, world)
    try:
        group.mode, group.every = mode, args.every
        result = train(H, args, group)
        if rank == 0:
            torch.save(result, outfile)
    finally:
        distributed.stop(group)


def on_two(H: int, mode: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.pt")
        mp.spawn(_worker, args=(2, os.path.join(tmp, "store"), H, mode, args, out), nprocs=2, join=True)
        return torch.load(out, weights_only=True)


def ring_ms(floats: int, ranks: int, gbps: float, latency_us: float) -> float:
    """On paper: a ring all-reduce of ``floats`` float32 over ``ranks`` GPUs at bus bandwidth ``gbps``."""
    return 1e3 * (2 * (ranks - 1) / ranks * 4 * floats / (gbps * 1e9)) + latency_us / 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 1000])
    p.add_argument("--batch", type=int, default=50, help="global batch B (the reference: 50)")
    p.add_argument("--steps", type=int, default=20, help="time steps T per batch")
    p.add_argument("--batches", type=int, default=4, help="batches per run, the first untimed")
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the batches; the median is shown")
    p.add_argument("--vocab", type=int, default=49, help="V (PTB characters: 49)")
    p.add_argument("--every", type=int, default=4, help="average mode: average every K batches")
    p.add_argument("--bus-gbps", type=float, default=200.0, help="assumed NCCL bus bandwidth of a GPU node, GB/s")
    p.add_argument("--latency-us", type=float, default=20.0, help="assumed NCCL all-reduce latency, µs")
    p.add_argument("--gpus", type=int, default=8, help="GPUs of the node in the estimate")
    args = p.parse_args(argv)
    if args.batch % 2:
        p.error("--batch must be even (2 processes)")
    torch.set_num_threads(1)
    print(f"P-TNCN, 2 layers, V = {args.vocab}, global batch {args.batch}, T = {args.steps}, {args.batches - 1} "
          f"timed batches, median of {args.repeats} passes; 1 thread per process; torch {torch.__version__}, {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    print()
    print("| H | run | tokens/s | vs 1 process | all-reduce share | ms per all-reduce | ms per time step |")
    print("|---|---|---|---|---|---|---|")
    rows = {}
    for H in args.hidden:
        one = train(H, args)
        rows[H] = one
        print(f"| {H} | 1 process | {one['tokens_per_s']:,.0f} | 1.00 | – | – | {one['step_ms']:.1f} |", flush=True)
        for mode, label in (("exact", "2 processes, exact"), ("average", f"2 processes, average every {args.every}")):
            r = on_two(H, mode, args)
            print(f"| {H} | {label} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / one['tokens_per_s']:.2f} | "
                  f"{100 * r['share']:.0f} % | {r['ms_per_call']:.2f} | {r['step_ms']:.1f} |", flush=True)
    print()
    print(f"On paper, not run (no GPU here): exact mode on a {args.gpus}-GPU node with NCCL, assuming "
          f"{args.bus_gbps:g} GB/s bus bandwidth and {args.latency_us:g} µs latency per all-reduce")
    print()
    n = args.gpus
    print(f"| H | floats per all-reduce | all-reduce, ms (estimate) | {n} devices beat 1 only if 1 device's time "
          f"step exceeds, ms | this CPU's time step (1 process), ms | speed-up of {n} devices whose step took as long |")
    print("|---|---|---|---|---|---|")
    for H, one in rows.items():
        t = ring_ms(one["floats"], n, args.bus_gbps, args.latency_us)  # c/N + t < c  <=>  c > t N / (N - 1)
        c = one["step_ms"]
        print(f"| {H} | {one['floats']:,} | {t:.3f} | {t * n / (n - 1):.3f} | {c:.1f} | {c / (c / n + t):.1f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

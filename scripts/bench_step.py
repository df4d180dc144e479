"""Tokens per second of one P-TNCN training step: tncn.PTNCN against the naive step and against the
``ptncn`` learner that ``tncn train`` and ``tncn compare`` run, side by side.

A training step is: hypothesize, correct, local updates, and the reference optimizer (SGD, Nesterov,
lr 0.075, momentum 0.95), stepped inside the step (``PTNCN.use_optimizer``); the naive step writes
its updates into param.grad for ``optimizer.step()``. Random token ids (every token real, no
padding), vocabulary 49, batch 50. The naive step (tncn.temporal.naive) forms one-hot inputs and
every outer-product update in full before clipping it; the learner (``train_segment``) adds what
a training run does around the step: moving a segment to the device and scoring every prediction
(bits and hits). Prints a markdown table; the median of ``--repeats`` timings of ``--steps``
steps each, measured alternately in one run.

    python scripts/bench_step.py                       # L = 2, H = 1000 and 256
    python scripts/bench_step.py --hidden 1000 --layers 3
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import tncn
from tncn.bench import random_batch
from tncn.temporal import build_learner
from tncn.temporal.naive import naive_step, naive_zero_state


def fast_runner(V, hidden, B):
    model = tncn.PTNCN(V, hidden)
    opt = torch.optim.SGD(model.parameters(), lr=0.075, momentum=0.95, nesterov=True, fused=True)
    model.use_optimizer(opt)  # stepped inside train_step, as the learner does (tncn.fused)
    model.reset(B)
    gen = torch.Generator().manual_seed(0)

    def run(steps):
        for _ in range(steps):
            model.train_step(torch.randint(0, V, (B,), generator=gen))
    return run


def learner_runner(V, hidden, B):
    learner = build_learner("ptncn", {"hidden": hidden}, V)
    gen = torch.Generator().manual_seed(0)

    def run(steps):
        learner.train_segment(random_batch(V, steps, B, gen))
    return run


def naive_runner(V, hidden, B):
    model = tncn.PTNCN(V, hidden)
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(params.values(), lr=0.075, momentum=0.95, nesterov=True, fused=True)
    state = naive_zero_state({k: p.detach() for k, p in params.items()}, len(hidden), B)
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(B)

    @torch.no_grad()
    def run(steps):
        nonlocal state
        for _ in range(steps):
            x = torch.nn.functional.one_hot(torch.randint(0, V, (B,), generator=gen), V).float()
            _, state, deltas = naive_step(params, state, x, mask, L=len(hidden))
            for k, p in params.items():
                p.grad = deltas[k]
            opt.step()
    return run


def measure(run, steps, B):
    run(2)  # warm-up
    t0 = time.perf_counter()
    run(steps)
    return steps * B / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", default="1000,256", help="comma-separated widths to measure (each used for every layer)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--vocab", type=int, default=49)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; L = {args.layers}, batch {args.batch}, vocab {args.vocab}")
    print("| H | tncn.PTNCN tokens/s | ptncn learner tokens/s | naive step tokens/s | step / naive | learner / step |")
    print("|---|---|---|---|---|---|")
    for H in [int(h) for h in args.hidden.split(",")]:
        hidden = [H] * args.layers
        steps = max(args.steps, int(args.steps * (1000 / H) ** 2 / 4))
        runs = {"fast": fast_runner(args.vocab, hidden, args.batch), "learner": learner_runner(args.vocab, hidden, args.batch),
                "naive": naive_runner(args.vocab, hidden, args.batch)}
        rates = {k: [] for k in runs}
        for _ in range(args.repeats):
            for k, run in runs.items():
                rates[k].append(measure(run, steps, args.batch))
        fast, learner, naive = (statistics.median(rates[k]) for k in ("fast", "learner", "naive"))
        print(f"| {H} | {fast:,.0f} | {learner:,.0f} | {naive:,.0f} | {fast / naive:.2f}x | {learner / fast:.2f} |")


if __name__ == "__main__":
    main()

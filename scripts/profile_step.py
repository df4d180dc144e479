"""Where the time of one P-TNCN training step goes: torch profiler table of the top operators.

L = 2, batch 50, vocabulary 49, random ids, the reference optimizer (SGD, Nesterov), fused into the
step (``PTNCN.use_optimizer``; ``--grad``: written into ``.grad`` and stepped by torch's fused kernel).
Prints milliseconds per step (process CPU time) and the operators sorted by their own time.

    python scripts/profile_step.py --hidden 1000 --threads 1
    python scripts/profile_step.py --hidden 256 --threads 1 --compile   # the torch.compile'd step
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import tncn


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=1000)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--vocab", type=int, default=49)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--compile", action="store_true", help="profile the step compiled by PTNCN.compile_step")
    ap.add_argument("--grad", action="store_true", help="keep the .grad contract (default: the optimizer fused "
                                                        "into the step, PTNCN.use_optimizer)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = tncn.PTNCN(args.vocab, [args.hidden] * args.layers)
    if args.compile:
        model.compile_step()
    opt = torch.optim.SGD(model.parameters(), lr=0.075, momentum=0.95, nesterov=True, fused=True)
    path = ".grad, then optimizer.step() (--grad)" if args.grad else model.use_optimizer(opt)
    model.reset(args.batch)
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, args.vocab, (args.steps + 3, args.batch), generator=gen)

    def run(steps, offset=0):
        for t in range(steps):
            if model.train_step(data[offset + t]) and not model.steps_optimizer:
                opt.step()
    run(3)
    t0 = time.process_time()
    run(args.steps, 3)
    per_step = (time.process_time() - t0) / args.steps
    model.reset(args.batch)
    run(1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(args.steps, 1)
    print(f"L = {args.layers}, H = {args.hidden}, batch {args.batch}, vocab {args.vocab}, "
          f"{'compiled' if args.compile else 'eager'}, "
          f"{torch.get_num_threads()} threads: {per_step * 1e3:.2f} ms CPU per step, "
          f"{args.batch / per_step:,.0f} tokens per CPU-second; updates: {path}")
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
    print("\n".join(line for line in table.splitlines() if "USDT" not in line))


if __name__ == "__main__":
    main()

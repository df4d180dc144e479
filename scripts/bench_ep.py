"""EP's cost per example (Scellier & Bengio 2017; ``tncn.learners.ep``): relaxation steps × the
cost of one step, next to a measured EP training step and a backprop step on the same network.

For each network: the time of one Jacobi relaxation step (eager, and through ``torch.compile``),
the steps an EP training step runs (the free phase's cap and the nudged phase's 2L), the
predicted cost per example, steps × step time / B, the measured one (a whole ``ep.step``, with
its update), and a backprop step (forward and backward by autograd) for the ratio. Timings are
medians of repeats on random inputs; ``--threads`` sets torch's intra-op threads.

    python scripts/bench_ep.py --threads 1
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from tncn.learners import make
from tncn.learners.backprop import backprop_grads
from tncn.learners.ep import Settler, jacobi_step
from tncn.mlp import MLP

NETWORKS = [("784-500-10", [784, 500, 10], 20), ("784-3x256-10", [784, 256, 256, 256, 10], 50),
            ("784-8x256-10", [784] + [256] * 8 + [10], 50)]


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm up (and compile)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


@torch.no_grad()
def row(label: str, sizes: list[int], batch: int, repeats: int, compiled) -> dict:
    gen = torch.Generator().manual_seed(0)
    net = MLP(sizes, activation="hard_sigmoid", generator=gen)
    x = torch.rand(batch, sizes[0], generator=gen)
    y = torch.randint(0, sizes[-1], (batch,), generator=gen)
    ep = make("ep", net, tolerance=1e-30)  # run every step
    out = {"network": label, "batch": batch}
    for name, fn in (("eager", None), ("compiled", compiled)):
        settler = Settler(net, x, ep.epsilon, fn)
        s = settler.feedforward()
        out[f"step_ms_{name}"] = _median_ms(lambda: settler.relax(s, 10, -1.0), repeats) / 10
    steps = ep.free_steps + 2 * ep.nudged_steps  # the symmetric estimator's two nudged phases
    out["steps"] = steps
    out["predicted_ms_per_example"] = steps * out["step_ms_eager"] / batch
    out["ep_ms_per_example"] = _median_ms(lambda: ep.step(x, y), repeats) / batch
    with torch.enable_grad():
        out["bp_ms_per_example"] = _median_ms(lambda: backprop_grads(net, x, y), repeats) / batch
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    compiled = torch.compile(jacobi_step, dynamic=False)
    print(f"EP cost per example: {platform.machine()}, torch {torch.__version__}, {a.threads} thread(s), "
          f"the defaults (free phase capped at 20 steps per hidden layer, two nudged phases of 2L steps), "
          f"every step run\n")
    print("| network | B | step ms (eager) | step ms (compiled) | steps | predicted ms/example "
          "| EP step ms/example | bp step ms/example | EP / bp |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, sizes, batch in NETWORKS:
        r = row(label, sizes, batch, a.repeats, compiled)
        print(f"| {r['network']} | {r['batch']} | {r['step_ms_eager']:.3f} | {r['step_ms_compiled']:.3f} "
              f"| {r['steps']} | {r['predicted_ms_per_example']:.3f} | {r['ep_ms_per_example']:.3f} "
              f"| {r['bp_ms_per_example']:.3f} | {r['ep_ms_per_example'] / r['bp_ms_per_example']:.1f} |")


if __name__ == "__main__":
    main()

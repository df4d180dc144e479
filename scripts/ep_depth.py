"""Equilibrium propagation at depth (Scellier & Bengio 2017; ``tncn.learners.ep``): 3 and 8
hidden layers of 256 hard-sigmoid units on MNIST and Fashion-MNIST, with the nudged phase shorter
than the depth and twice it, next to backprop on the same networks.

The nudge moves one layer per relaxation step (Jacobi updates), so with T2 nudged steps on a
network of L weight layers the layers below L − T2 receive no EP signal at all. Two parts:

- ``--part reach``: on one batch of 50 MNIST training images and the untrained network, in
  float64, the free phase run to its fixed point, then the symmetric EP update for T2 steps and
  its cosine, per weight layer, with the update of a nudged phase run to its own fixed point
  (the EP gradient that T2 → ∞ gives). Cosine 0 at a layer means it got no signal.
- ``--part train``: one ``tncn classify`` run per cell (EP with its defaults: symmetric ±β = 0.5,
  20 free steps per hidden layer, persistent particles; bp with tanh), batch 50, Adam 1e-3 with
  cosine decay, seed 0; 3 hidden layers on the first 20,000 training examples for 3 epochs,
  8 hidden layers on the first 5,000 for 2 (EP at 8×256 costs tens of ms per example here).
  Runs are stored as JSON under ``--runs`` (a rerun skips the stored cells).

The tables go to stdout and, with ``--docs DIR``, to DIR/learners_ep_depth.md.

    python scripts/ep_depth.py --data-root DIR --docs docs
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from tncn.cli import main as tncn

DATASETS = ("mnist", "fashion-mnist")
PROTOCOL = {3: ["--limit", "20000", "--epochs", "3"], 8: ["--limit", "5000", "--epochs", "2"]}
COMMON = ["--batch-size", "50", "--seed", "0", "--no-progress"]


def cells(depths):
    """(name, dataset, depth, extra flags, T2) of every training run; T2 None for bp."""
    for depth in depths:
        layers = depth + 1
        for data in DATASETS:
            yield f"bp-{data}-{depth}", data, depth, ["--rule", "bp"], None
            yield f"ep-{data}-{depth}-t{2 * layers}", data, depth, ["--rule", "ep"], 2 * layers
        short = math.ceil(layers / 2)
        yield f"ep-mnist-{depth}-t{short}", "mnist", depth, ["--rule", "ep", "--nudged-steps", str(short)], short
        if depth == 3:  # longer phases: does more settling rescue the 3-layer network?
            yield (f"ep-mnist-{depth}-t{4 * layers}-free200", "mnist", depth,
                   ["--rule", "ep", "--nudged-steps", str(4 * layers), "--free-steps", "200"], 4 * layers)


def train(runs: Path, data_root: str, depths) -> str:
    lines = ["| data | hidden layers | rule | nudged steps T2 | T2 / L | free-phase cap | examples × epochs "
             "| test error % | free steps per batch | ms per example |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, data, depth, extra, t2 in cells(depths):
        path = runs / f"{name}.json"
        if not path.exists():
            code = tncn(["classify", "--data", data, "--data-root", data_root, "--hidden", ",".join(["256"] * depth),
                         *PROTOCOL[depth], *COMMON, *extra, "--json", str(path)])
            if code:
                raise SystemExit(f"{name}: tncn classify exited with {code}")
        r = json.loads(path.read_text())
        m = r.get("rule_measures") or {}
        seen = r["sizes"]["train"] * r["epochs"]
        ms = m["ms_per_example"] if m else 1000 * r["train_seconds"] / seen
        free = f"{m['free_steps_per_batch']:.0f}" if m else "–"
        ratio = f"{t2 / (depth + 1):.2f}" if t2 else "–"
        cap = r["options"].get("free_steps", 20 * depth) if r["rule"] == "ep" else "–"
        lines.append(f"| {data} | {depth} | {r['rule']} | {t2 or '–'} | {ratio} | {cap} | {r['sizes']['train']:,} × "
                     f"{r['epochs']} | {100 * r['test_error']:.2f} | {free} | {ms:.2f} |")
    return "\n".join(lines)


@torch.no_grad()
def reach(data_root: str, depths) -> str:
    from sequences import images
    from tncn.learners.ep import EquilibriumPropagation
    from tncn.mlp import MLP

    d = images.load("mnist", root=data_root, valid=100, limit=50)
    x, y = d.train[0].double(), d.train[1]
    lines = ["| hidden layers | L | T2 | cosine to the converged EP update, per weight layer (input side first) |",
             "|---|---|---|---|"]
    for depth in depths:
        layers = depth + 1
        net = MLP([784] + [256] * depth + [10], activation="hard_sigmoid",
                  generator=torch.Generator().manual_seed(0)).double()

        def update(t2: int, tolerance: float) -> list[torch.Tensor]:
            ep = EquilibriumPropagation(net, free_steps=20000, nudged_steps=t2, tolerance=tolerance)
            ep.step(x, y)
            return [layer.weight.grad.clone() for layer in net.layers]

        reference = update(20000, 1e-12)
        for t2 in sorted({math.ceil(layers / 2), layers - 1, layers, 2 * layers}):
            got = update(t2, 1e-12)
            cos = [float((a * b).sum() / (a.norm() * b.norm() + 1e-300)) for a, b in zip(got, reference)]
            lines.append(f"| {depth} | {layers} | {t2} | {' '.join(f'{c:.2f}' for c in cos)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="folder holding mnist/ and fashion_mnist/")
    p.add_argument("--part", choices=["reach", "train", "all"], default="all")
    p.add_argument("--runs", type=Path, default=Path("runs/ep_depth"), help="where the runs' JSON is kept")
    p.add_argument("--depth", type=int, choices=list(PROTOCOL), action="append",
                   help="only this number of hidden layers (repeatable; default all)")
    p.add_argument("--docs", type=Path, help="write learners_ep_depth.md here")
    a = p.parse_args()
    depths = a.depth or list(PROTOCOL)
    a.runs.mkdir(parents=True, exist_ok=True)
    parts = []
    if a.part in ("reach", "all"):
        parts.append("Where the nudge reaches (untrained network, one batch, float64):\n\n" + reach(a.data_root, depths))
    if a.part in ("train", "all"):
        parts.append("Training (2-core CPU, one thread, other jobs running):\n\n" + train(a.runs, a.data_root, depths))
    text = "\n\n".join(parts)
    print(text)
    if a.docs:
        header = ("EP at depth, from `python scripts/ep_depth.py --data-root DIR --docs docs`. "
                  "L = weight layers = hidden layers + 1.\n\n")
        (a.docs / "learners_ep_depth.md").write_text(header + text + "\n")


if __name__ == "__main__":
    main()

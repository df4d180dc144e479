"""Equilibrium propagation at depth (Scellier & Bengio 2017; ``tncn.learners.ep``): 3 and 8
hidden layers on MNIST and Fashion-MNIST, with the nudged phase shorter than the depth and twice
it, next to backprop on the same networks and protocol.

The nudge moves one layer per relaxation step, so with T2 nudged steps on a network of L weight
layers the layers below L − T2 receive no EP signal at all. The table shows the test error, the
ratio T2 / L, and how far the second phase moved the bottom hidden layer compared with the top one
(``second_phase_reach``, rms of s^β − s⁰ per layer, averaged over training).

Every cell is one ``tncn classify`` run (hard-sigmoid units for EP, tanh for bp, 256 units per
layer, the first 20,000 training examples, 5 epochs, batch 50, Adam 1e-3 with cosine decay, seed
0), stored as JSON under ``--runs`` (a rerun skips the stored cells); the table goes to stdout
and, with ``--docs DIR``, to DIR/learners_ep_depth.md.

    python scripts/ep_depth.py --data-root DIR --docs docs
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from tncn.cli import main as tncn

DATASETS = ("mnist", "fashion-mnist")
DEPTHS = (3, 8)
PROTOCOL = ["--limit", "20000", "--epochs", "5", "--batch-size", "50", "--seed", "0", "--no-progress"]


def cells():
    """(name, dataset, depth, extra flags, T2) of every run; T2 None for bp."""
    for data in DATASETS:
        for depth in DEPTHS:
            layers = depth + 1
            yield f"bp-{data}-{depth}", data, depth, ["--rule", "bp"], None
            for t2 in (math.ceil(layers / 2), 2 * layers):
                yield f"ep-{data}-{depth}-t{t2}", data, depth, ["--rule", "ep", "--nudged-steps", str(t2)], t2
            if depth == 3:
                yield (f"ep-{data}-{depth}-t{2 * layers}-random-sign", data, depth,
                       ["--rule", "ep", "--nudged-steps", str(2 * layers), "--estimator", "random-sign"], 2 * layers)


def run(runs: Path, data_root: str) -> list[dict]:
    out = []
    for name, data, depth, extra, t2 in cells():
        path = runs / f"{name}.json"
        if not path.exists():
            hidden = ",".join(["256"] * depth)
            code = tncn(["classify", "--data", data, "--data-root", data_root, "--hidden", hidden, *PROTOCOL,
                         *extra, "--json", str(path)])
            if code:
                raise SystemExit(f"{name}: tncn classify exited with {code}")
        r = json.loads(path.read_text())
        r.update(name=name, depth=depth, t2=t2)
        out.append(r)
    return out


def table(results: list[dict]) -> str:
    lines = ["| data | hidden layers | rule | estimator | nudged steps T2 | T2 / L | test error % "
             "| bottom / top reach | free steps per batch | ms per example |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m = r.get("rule_measures") or {}
        reach = m.get("second_phase_reach")
        ratio = f"{reach[0] / reach[-2]:.2g}" if reach and reach[-2] > 0 else "–"
        layers = r["depth"] + 1
        estimator = r["options"].get("estimator", "symmetric") if r["rule"] == "ep" else "–"
        t2 = str(r["t2"]) if r["t2"] else "–"
        per_layer = f"{r['t2'] / layers:.2f}" if r["t2"] else "–"
        free = f"{m['free_steps_per_batch']:.1f}" if m else "–"
        ms = m["ms_per_example"] if m else 1000 * r["train_seconds"] / (5 * 20000)
        lines.append(f"| {r['data']} | {r['depth']} | {r['rule']} | {estimator} | {t2} | {per_layer} "
                     f"| {100 * r['test_error']:.2f} | {ratio} | {free} | {ms:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="folder holding mnist/ and fashion_mnist/")
    p.add_argument("--runs", type=Path, default=Path("runs/ep_depth"), help="where the runs' JSON is kept")
    p.add_argument("--docs", type=Path, help="write learners_ep_depth.md here")
    a = p.parse_args()
    a.runs.mkdir(parents=True, exist_ok=True)
    text = table(run(a.runs, a.data_root))
    print(text)
    if a.docs:
        header = ("EP at depth: `python scripts/ep_depth.py --data-root DIR --docs docs` "
                  "(20,000 training examples, 5 epochs, batch 50, Adam 1e-3 cosine, seed 0; 2-core CPU, "
                  "one thread). L = weight layers = hidden layers + 1; bottom / top reach = rms move of the "
                  "first hidden layer over that of the last hidden layer in the second phase.\n\n")
        (a.docs / "learners_ep_depth.md").write_text(header + text + "\n")


if __name__ == "__main__":
    main()

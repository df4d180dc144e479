"""Compare backprop, FA, DFA and LRA-E (Ororbia & Mali, AAAI 2019, arXiv 1805.11703: its comparison
table and update-angle figure, in spirit) on identical MLPs: a markdown table and an angle plot.

Grid: rules {bp, fa, dfa, lra-e} × networks {3 hidden layers of 256, 8 hidden layers of 256
("deep and thin")} × hidden activation {tanh, sign} × data {MNIST, Fashion-MNIST} × seeds.
Every run is ``tncn classify`` (called in-process) with the settings of ``SETTINGS`` below, its JSON
kept in ``--out`` (a run whose JSON exists is not repeated, so an interrupted comparison resumes).
Rules that need f′ (bp, fa, dfa) refuse sign units: their cells say so. A control row,
"readout only", trains just the softmax layer on the frozen random hidden layers of the same
initial network (Adam, same epochs and batches), the floor any rule must beat to show that its
hidden layers learn.

Protocol (``PROTOCOL``): the 60k training images split 55k/5k into train/validation (split seed 0),
the 10k test images, pixels in [0, 1], batch 50 (the LRA-E authors' minibatch size), ``--epochs``
epochs with a cosine learning-rate schedule, weights N(0, 1/fan-in), zero biases; test error of
the final weights. The sign columns subtract the mean training image (``--center``): on raw
non-negative pixels LRA-E's sign networks stall (MNIST, 10k examples, 3 epochs: 61 % validation
error raw against 29 % centred); on tanh networks centring made every rule's test error slightly
worse in single-seed trials, so those columns use raw pixels. Angles to the backprop gradient are measured every 50 steps in
the tanh runs and averaged per epoch; the plot shows seed 0 on MNIST.

Measured for docs/learners.md on a shared 2-core CPU machine (x86_64, torch 2.13 CPU), one
single-thread process per seed side by side (on busy shared cores two OpenMP threads per process
ran 10-20x slower than one), then the table from the stored runs::

    OMP_NUM_THREADS=1 python scripts/compare_rules.py --epochs 10 --seeds 0 --out runs/compare &
    OMP_NUM_THREADS=1 python scripts/compare_rules.py --epochs 10 --seeds 1 --out runs/compare &
    wait; python scripts/compare_rules.py --epochs 10 --seeds 0 1 --out runs/compare \\
        --table docs/learners_table.md --plot docs/learners_angles.png
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sequences import images  # noqa: E402
from tncn.cli import main as tncn_main  # noqa: E402
from tncn.mlp import MLP, error_rate  # noqa: E402

RULES = ["bp", "fa", "dfa", "lra-e"]
NEEDS_DERIVATIVE = {"bp", "fa", "dfa"}
DATA = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
NETWORKS = {"3x256": [256] * 3, "8x256": [256] * 8}
ACTIVATIONS = ["tanh", "sign"]
PROTOCOL = ["--batch-size", "50", "--schedule", "cosine", "--valid", "5000", "--split-seed", "0"]
CENTER = {"tanh": False, "sign": True}

SETTINGS = {
    # (rule, activation) -> optimizer and rule options, chosen on the MNIST validation error
    ("bp", "tanh"): ["--optimizer", "adam", "--lr", "1e-3"],
    ("fa", "tanh"): ["--optimizer", "adam", "--lr", "1e-3"],
    ("dfa", "tanh"): ["--optimizer", "adam", "--lr", "1e-3"],
    # E ~ N(0, 1/256), on the scale of the Wᵀ it stands in for. In tanh networks each layer's local
    # error is about β times the one above, so with the paper's β = 0.1 the first layer of the
    # 8-layer net gets updates near 1e-12, below Adam's eps: β = 0.3 keeps them alive (chosen on
    # MNIST validation error). Sign units need the small β (larger ones set off cascades of flips).
    ("lra-e", "tanh"): ["--optimizer", "adam", "--lr", "1e-3", "--beta", "0.3"],
    ("lra-e", "sign"): ["--optimizer", "adam", "--lr", "1e-3", "--beta", "0.1"],
}
READOUT_LR = 1e-3


def run_name(data, net, act, rule, seed):
    return f"{data}_{net}_{act}_{rule}_s{seed}"


def classify(data, net, act, rule, seed, epochs, out: Path, root) -> dict:
    """One ``tncn classify`` run (or its stored JSON)."""
    path = out / (run_name(data, net, act, rule, seed) + ".json")
    if not path.exists():
        argv = ["classify", "--rule", rule, "--data", data, "--hidden", ",".join(map(str, NETWORKS[net])),
                "--activation", act, "--epochs", str(epochs), "--seed", str(seed), "--no-progress",
                "--json", str(path), *PROTOCOL, *SETTINGS[(rule, act)]]
        if CENTER[act]:
            argv.append("--center")
        if root:
            argv += ["--data-root", str(root)]
        if act == "tanh":
            argv += ["--angles", "50"]
        print("tncn " + " ".join(argv), flush=True)
        if tncn_main(argv) != 0:
            raise SystemExit(f"run failed: {' '.join(argv)}")
    return json.loads(path.read_text())


def readout_only(data, net, act, seed, epochs, out: Path, root) -> dict:
    """The control: only the softmax layer trains (Adam), on the frozen initial hidden layers."""
    path = out / (run_name(data, net, act, "readout", seed) + ".json")
    if path.exists():
        return json.loads(path.read_text())
    d = images.load(data, root=root, valid=5000, seed=0)
    if CENTER[act]:
        d = d.centered()
    gen = torch.Generator().manual_seed(seed)
    mlp = MLP([d.train[0].shape[1], *NETWORKS[net], d.n_classes], activation=act, generator=gen)
    with torch.no_grad():
        feats = d.train[0]
        for layer in mlp.layers[:-1]:
            feats = layer(feats)
    top = mlp.layers[-1]
    opt = torch.optim.Adam(top.parameters(), lr=READOUT_LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(feats), generator=gen)
        for i in range(0, len(feats), 50):
            idx = order[i:i + 50]
            loss = torch.nn.functional.cross_entropy(top.pre(feats[idx]), d.train[1][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    result = dict(rule="readout", data=data, hidden=NETWORKS[net], activation=act, epochs=epochs, seed=seed,
                  test_error=error_rate(mlp, *d.test), valid_error=error_rate(mlp, *d.valid),
                  train_seconds=time.perf_counter() - start, curve=[])
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def cell(results) -> str:
    errs = [100 * r["test_error"] for r in results]
    if len(errs) == 1:
        return f"{errs[0]:.2f}"
    return f"{statistics.mean(errs):.2f} ± {statistics.stdev(errs):.2f}"


def table(results: dict, datasets, seeds) -> str:
    cols = [(d, n, a) for d in datasets for n in NETWORKS for a in ACTIVATIONS]
    head = "| rule | " + " | ".join(f"{DATA[d]} {n.replace('x', '×')} {a}" for d, n, a in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for rule in RULES + ["readout"]:
        row = []
        for d, n, a in cols:
            if a != "tanh" and rule in NEEDS_DERIVATIVE:
                row.append("needs f′")
            else:
                row.append(cell([results[(d, n, a, rule, s)] for s in seeds]))
        name = "readout only (control)" if rule == "readout" else rule
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def seconds_table(results: dict, datasets, seeds) -> str:
    cols = [(d, n) for d in datasets for n in NETWORKS]
    lines = ["| rule | " + " | ".join(f"{DATA[d]} {n.replace('x', '×')} tanh" for d, n in cols) + " |",
             "|" + "---|" * (len(cols) + 1)]
    for rule in RULES:
        row = []
        for d, n in cols:
            runs = [results[(d, n, "tanh", rule, s)] for s in seeds]
            row.append(f"{statistics.mean(r['train_seconds'] / r['epochs'] for r in runs):.1f}")
        lines.append(f"| {rule} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def angle_plot(results: dict, seed, path: Path) -> None:
    from matplotlib.figure import Figure

    rules = ["fa", "dfa", "lra-e"]
    fig = Figure(figsize=(12, 7))
    axes = fig.subplots(len(NETWORKS), len(rules), sharey=True)
    for r, net in enumerate(NETWORKS):
        for c, rule in enumerate(rules):
            ax = axes[r][c]
            curve = results[("mnist", net, "tanh", rule, seed)]["curve"]
            epochs = [p["epoch"] for p in curve]
            n_layers = len(curve[0]["angles"]) - 1  # the output layer's update is backprop's for every rule
            for layer in range(n_layers):
                ax.plot(epochs, [p["angles"][layer] for p in curve], marker="o", ms=3,
                        color=_shade(layer, n_layers), label=f"W{layer + 1}")
            ax.axhline(90, color="grey", lw=0.8, ls="--")
            ax.set_ylim(0, 100)
            ax.set_title(f"{rule}, MNIST {net.replace('x', '×')} tanh")
            ax.set_xlabel("epoch")
            if c == 0:
                ax.set_ylabel("angle to backprop gradient (°)")
        axes[r][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("Angle between each hidden layer's update and the backprop gradient on the same batch\n"
                 f"(mean per epoch, seed {seed}; the output layer's update equals backprop's for every rule)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def _shade(layer, n):
    from matplotlib import colormaps

    return colormaps["viridis"](layer / max(n - 1, 1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--data", nargs="+", default=list(DATA), choices=list(DATA))
    p.add_argument("--data-root", type=Path, help="folder holding mnist/ and fashion_mnist/ (default $TNCN_DATA, else ~/.cache/tncn)")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "compare")
    p.add_argument("--table", type=Path, help="also write the tables (markdown) here")
    p.add_argument("--plot", type=Path, help="write the angle plot (PNG) here")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for seed in args.seeds:
        for data in args.data:
            for net in NETWORKS:
                for act in ACTIVATIONS:
                    for rule in RULES:
                        if act == "tanh" or rule not in NEEDS_DERIVATIVE:
                            results[(data, net, act, rule, seed)] = classify(
                                data, net, act, rule, seed, args.epochs, args.out, args.data_root)
                    results[(data, net, act, "readout", seed)] = readout_only(
                        data, net, act, seed, args.epochs, args.out, args.data_root)
    seeds = args.seeds
    text = (f"Test error (%) after {args.epochs} epochs, mean ± sd over seeds {', '.join(map(str, seeds))} "
            f"(`scripts/compare_rules.py`):\n\n" + table(results, args.data, seeds)
            + "\n\nTraining seconds per epoch (tanh runs; shared 2-core CPU, noisy):\n\n"
            + seconds_table(results, args.data, seeds) + "\n")
    print(text)
    settings = "\n".join(f"- {rule} ({act}): `{' '.join(opts)}`" for (rule, act), opts in SETTINGS.items())
    text += (f"\nCommon protocol: `{' '.join(PROTOCOL)}` (sign columns also `--center`); "
             f"per-rule settings:\n\n{settings}\n")
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text)
    if args.plot and "mnist" in args.data:
        angle_plot(results, seeds[0], args.plot)
        print(f"angle plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which rules still learn from a null (all-zero) initialisation of the network weights?

LRA (Ororbia, Mali, Kifer & Giles, arXiv 1803.01834) and LRA-E (Ororbia & Mali, AAAI 2019,
arXiv 1805.11703) report training from zero weights. With W = 0 every hidden activity is f(0) = 0
(tanh and sign alike), so backprop's gradients of all weights vanish (each is h^{l-1ᵀ} δ^l with
h^{l-1} = 0, or δ^l = δ^{l+1} W^{l+1ᵀ} ⊙ f′ = 0) and only the output bias learns: the network
predicts one class. FA and DFA send the error through their fixed random B, LRA-E through its
random E, so the first layer gets a nonzero update and the others follow.

Each run is ``tncn classify --init zeros`` on MNIST with 3 hidden layers of 256, with the per-rule
settings and protocol of ``scripts/compare_rules.py`` (centred inputs for sign units); the table gives the test error and the
Frobenius norm of each weight matrix after training (0.00 = never moved).

Measured for docs/learners.md on a 2-core shared CPU machine (x86_64, torch 2.13 CPU), with::

    OMP_NUM_THREADS=1 python scripts/null_init.py --epochs 5 --out runs/null_init --table docs/learners_null_init.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from compare_rules import CENTER, PROTOCOL, SETTINGS  # noqa: E402
from tncn.cli import main as tncn_main  # noqa: E402

RUNS = [("bp", "tanh"), ("fa", "tanh"), ("dfa", "tanh"), ("lra-e", "tanh"), ("lra-e", "sign")]


def run(rule, act, epochs, seed, out: Path, root) -> dict:
    folder = out / f"{rule}_{act}_s{seed}"
    if not (folder / "model.pt").exists():
        argv = ["classify", "--rule", rule, "--data", "mnist", "--hidden", "256,256,256", "--activation", act,
                "--init", "zeros", "--epochs", str(epochs), "--seed", str(seed), "--no-progress",
                "--out", str(folder), "--force", *PROTOCOL, *SETTINGS[(rule, act)]]  # an unfinished run is redone
        if CENTER[act]:
            argv.append("--center")
        if root:
            argv += ["--data-root", str(root)]
        print("tncn " + " ".join(argv), flush=True)
        if tncn_main(argv) != 0:
            raise SystemExit(f"run failed: {' '.join(argv)}")
    saved = torch.load(folder / "model.pt", weights_only=True)
    norms = [saved["state_dict"][f"net.layers.{i}.weight"].norm().item() for i in range(4)]
    return dict(saved["result"], norms=norms)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", type=Path, help="folder holding mnist/ (default $TNCN_DATA, else ~/.cache/tncn)")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "null_init")
    p.add_argument("--table", type=Path, help="also write the table (markdown) here")
    args = p.parse_args(argv)
    lines = ["| rule | activation | test error (%) | ‖W1‖ | ‖W2‖ | ‖W3‖ | ‖W4‖ |", "|---|---|---|---|---|---|---|"]
    for rule, act in RUNS:
        r = run(rule, act, args.epochs, args.seed, args.out, args.data_root)
        lines.append(f"| {rule} | {act} | {100 * r['test_error']:.2f} | " + " | ".join(f"{n:.2f}" for n in r["norms"]) + " |")
    text = (f"MNIST, 3 hidden layers of 256, all weights initialised to zero, {args.epochs} epochs, seed {args.seed} "
            f"(`scripts/null_init.py`):\n\n" + "\n".join(lines) + "\n")
    print(text)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Bouncing MNIST: P-TNCN against an LSTM trained by BPTT and an echo state network after equal
wall-clock, and zero-shot adaptation to bouncing notMNIST with frozen weights (Ororbia et al.,
IEEE TNNLS 2020, §V).

Trains each model of ``--models`` with ``tncn train`` for ``--minutes`` (all at once, one thread
each, so they share the machine's load alike; ``--one-at-a-time`` runs them in turn), the others
with the width whose weight count is closest to P-TNCN's at ``--hidden`` (``tncn compare --match
params``; ``--set MODEL:hidden=W`` fixes one, e.g. RTRL's, which cannot afford P-TNCN's count); then scores each checkpoint with ``tncn eval`` on the test split of bouncing MNIST and,
zero-shot, of bouncing notMNIST (with and without the state-correction phase for the models that
have one; weights checked unchanged), and prints one table:

    python scripts/bouncing.py --data-root DIR --minutes 10 --out runs/bouncing

Frames are 64 x 64, 20 per sequence, 2 glyphs (``sequences.video``); BCE in nats per frame, the
first frame of each sequence not scored; the no-context baseline predicts every pixel by its mean
training intensity. Batches of 32 sequences; P-TNCN and the LSTM use Adam with lr 2e-3 (``--set``),
the ESN its own defaults.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from tncn.commands import sizing
from tncn.options import WIDTHS
from tncn.temporal import learner_class


SETTINGS = ("ptncn:optimizer=adam", "ptncn:lr=0.002", "lstm:lr=0.002")
"""The measured protocol: P-TNCN and the LSTM with Adam 2e-3; the ESN with its own defaults."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="training wall time per model (10)")
    ap.add_argument("--models", default="ptncn,lstm,esn", help="the models to train (ptncn,lstm,esn)")
    ap.add_argument("--hidden", type=WIDTHS.read, default=[256, 256],
                    help="P-TNCN's widths, to which the others are sized (256,256)")
    ap.add_argument("--set", action="append", metavar="MODEL:KEY=VALUE", default=[],
                    help=f"an option of one model's tncn train, over {' '.join(SETTINGS)} (repeatable)")
    ap.add_argument("--data-root", help="folder holding mnist/ and notmnist/ (default $TNCN_DATA, else ~/.cache/tncn)")
    ap.add_argument("--data", default="bouncing-mnist", help="training data (bouncing-mnist)")
    ap.add_argument("--zero-shot", default="bouncing-notmnist", help="data never seen in training (bouncing-notmnist)")
    ap.add_argument("--one-at-a-time", action="store_true", help="train the models in turn instead of at once")
    ap.add_argument("--out", default="runs/bouncing", help="folder of the two runs and results.json")
    args = ap.parse_args()

    hidden = args.hidden
    models = sizing.model_list(args.models)
    args.set = [s for s in SETTINGS if s.partition(":")[0] in models] + args.set
    sets = sizing.parse_sets(args.set, models)
    options, _ = sizing.plan(["ptncn", *(m for m in models if m != "ptncn")], 64 * 64, hidden, "params", None, sets,
                             frames=True, batch=32)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = ["--data-root", args.data_root] if args.data_root else []
    common = ["--data", args.data, *root, "--minutes", str(args.minutes), "--eval-every", "0", "--threads", "1",
              "--force"]
    procs = []
    for kind in models:
        own = [x for key, value in sets[kind].items() if key != "hidden"
               for x in ("--" + key.replace("_", "-"), str(value))]
        cmd = [sys.executable, "-m", "tncn", "train", "--model", kind,
               "--hidden", ",".join(map(str, options[kind]["hidden"])), *own, *common, "--out", str(out / kind)]
        print(" ".join(cmd[2:]), flush=True)
        with open(out / f"{kind}.log", "w") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
        if args.one_at_a_time:
            procs[-1].wait()
    if any(p.wait() for p in procs):
        sys.exit(f"a training run failed; see {out}/*.log")

    rows = []
    for kind in models:
        run = out / kind
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        row = dict(model=kind, hidden=options[kind]["hidden"], frames=metrics[-1]["tokens"],
                   elapsed_s=metrics[-1]["elapsed_s"], valid=metrics[-1]["valid_bce"])
        for data, name in ((args.data, "test"), (args.zero_shot, "zero_shot")):
            for mode in ("on", "off") if learner_class(kind).has_correction else ("on",):
                js = out / f"{kind}-{name}-{mode}.json"
                subprocess.run([sys.executable, "-m", "tncn", "eval", "--checkpoint", str(run), "--data", data, *root,
                                "--frozen-correction", mode, "--json", str(js),
                                "--frames-png", str(out / f"{kind}-{name}-{mode}.png")], check=True, env=env)
                result = json.loads(js.read_text())
                assert result["weights_unchanged"]
                row[f"{name}_{mode}"] = result["bce_per_frame"]
        rows.append(row)
    from sequences import video

    baselines = {d: video.load(d, root=args.data_root).mean_frame_bce() for d in (args.data, args.zero_shot)}
    (out / "results.json").write_text(json.dumps(dict(rows=rows, baselines=baselines, minutes=args.minutes,
                                                      sets=args.set), indent=2) + "\n")
    print(f"\nBCE per frame (nats; test splits, 500 sequences of 20 frames 64x64), {args.minutes:g} min of training "
          f"each; no-context baselines: {args.data} {baselines[args.data]:.1f}, {args.zero_shot} "
          f"{baselines[args.zero_shot]:.1f}\n")
    print(f"| model | widths | frames trained | {args.data} | {args.zero_shot}, correction on | correction off |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        off = f"{r['zero_shot_off']:.1f}" if "zero_shot_off" in r else "(no correction phase)"
        print(f"| {r['model']} | {','.join(map(str, r['hidden']))} | {r['frames']:,} | {r['test_on']:.1f} | "
              f"{r['zero_shot_on']:.1f} | {off} |")


if __name__ == "__main__":
    main()

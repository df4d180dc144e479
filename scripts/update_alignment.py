"""Update alignment on an Elman RNN: the angle between BPTT-free updates and the BPTT gradient.

The Elman network built from the shared Dense layers (``tncn.temporal.bptt.ElmanLM``, learner
``elman``) is trained by full BPTT (Adam) on a character stream; at each step listed in ``--at``,
on one fixed validation batch, the script prints the angle in degrees between the full-BPTT
gradient and: truncated BPTT (k = 1 and 10), and the local rules of
``tncn.temporal.bptt_alignment`` (FA, DFA, P-TNCN-style targets; random or transposed feedback),
per weight and over all weights of the recurrent layers (the output layer's update is exact for
every rule: 0°, not shown).
90° is no alignment; FA with transposed feedback is truncated BPTT with k = 1.

    python scripts/update_alignment.py                          # stdlib corpus, H = 128, steps 0, 100, 300
    python scripts/update_alignment.py --hidden 128,128 --at 0,500 --json alignment.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sequences import text  # noqa: E402
from tncn.temporal.bptt_alignment import alignment  # noqa: E402
from tncn.temporal import build_learner  # noqa: E402


def _label(name: str) -> str:
    kind, l, what = name.split(".")
    return {"inputs": {"weight": "W_in", "bias": "b"}, "recurrent": {"weight": "W_rec"}}[kind][what] + str(int(l) + 1)


def format_table(rows: list) -> str:
    cols = [k for k in rows[0] if k not in ("update", "hidden", "all") and not k.startswith("head.")]
    lines = ["| update | " + " | ".join(_label(c) for c in cols) + " | all recurrent-layer weights |",
             "|---|" + "---|" * (len(cols) + 1)]
    for r in rows:
        lines.append(f"| {r['update']} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + f" | {r['hidden']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="stdlib", help="a text corpus (tncn train's forms; default stdlib)")
    ap.add_argument("--hidden", default="128", help="Elman widths, e.g. 128,128 (default 128)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=50, help="segment length, and the length of the measured batch")
    ap.add_argument("--at", default="0,100,300", help="training steps at which to measure (default 0,100,300)")
    ap.add_argument("--beta", type=float, default=0.1, help="β of the P-TNCN-style targets (0.1)")
    ap.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate of the BPTT training (0.002)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the tables to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    marks = sorted(int(v) for v in args.at.split(","))

    corpus = text.load(args.data)
    vocab = corpus.vocabulary("stream")
    train = corpus.batches("train", vocab, "stream", args.batch_size, args.seq_len, args.seed)
    probe = next(corpus.batches("valid", vocab, "stream", args.batch_size, args.seq_len, clamp=True).epoch(None))
    hidden = [int(h) for h in args.hidden.split(",")]
    learner = build_learner("elman", {"hidden": hidden, "lr": args.lr}, len(vocab), "cpu", args.seed)
    print(f"Elman RNN {args.hidden} on {args.data} ({len(vocab)} symbols), trained by full BPTT with Adam; "
          f"angles (degrees) to the full-BPTT gradient on one validation batch of {args.batch_size} x {args.seq_len}")
    out, step, batches = {}, 0, iter(())
    for mark in marks:
        while step < mark:
            batch = next(batches, None)
            if batch is None:
                batches = train.epoch(step // len(train))
                continue
            learner.train_segment(batch)
            step += 1
        rows = alignment(learner.model, probe.tokens, probe.score, beta=args.beta, seed=args.seed)
        out[str(mark)] = rows
        print(f"\nafter {mark} BPTT steps:\n{format_table(rows)}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

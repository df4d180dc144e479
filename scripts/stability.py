"""Training stability: the validation score next to weight norms, state statistics and (P-TNCN)
the misalignment of the error weights, along one run.

At every validation (``--eval-every`` steps) the script prints one row: the step, the training
tokens, the validation score, the Frobenius norm of each weight matrix (P-TNCN: M, V, U, W, E per
layer; BPTT models: each recurrent and output weight), for P-TNCN ‖E^l − (W^l)ᵀ‖ / ‖W^l‖ (the
error weights' distance from the transpose of the prediction weights they stand in for, in the
stored layout E{l} ≈ W{l}), and the mean |state| and share of saturated units (|s| > 0.99) of the
carried states. It is how the causes of a run that gets worse were found (docs/stability.md).

    python scripts/stability.py --data stdlib --minutes 3                        # P-TNCN, quick preset
    python scripts/stability.py --model gru --hidden 207,207 --set lr=0.001 --tokens 3000000
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tncn import runs  # noqa: E402
from tncn.commands import sizing  # noqa: E402
from tncn.commands.train import PRESETS  # noqa: E402
from tncn.guard import Diverged  # noqa: E402
from tncn.metrics import unigram_entropy  # noqa: E402
from tncn.options import WIDTHS  # noqa: E402
from tncn.temporal import build_learner, learner_class  # noqa: E402
from tncn.train import Budget, fit  # noqa: E402


def _flatten(state) -> list:
    """Every floating tensor of a learner's carried state (nested lists, tuples, dicts)."""
    if torch.is_tensor(state):
        return [state] if state.is_floating_point() else []
    if isinstance(state, dict):
        return [t for v in state.values() for t in _flatten(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in _flatten(v)]
    return []


def measure(learner) -> dict:
    """Weight norms, E−Wᵀ misalignment (P-TNCN) and state statistics of ``learner`` now."""
    row = {}
    params = dict(learner.model.named_parameters())
    for name, p in params.items():
        if p.dim() >= 2:
            row[f"‖{name}‖"] = float(p.detach().norm())
    for name in params:
        if name.startswith("E") and name[1:].isdigit() and f"W{name[1:]}" in params:
            W, E = params[f"W{name[1:]}"].detach(), params[name].detach()
            row[f"E{name[1:]}-W{name[1:]}ᵀ"] = float((E - W).norm() / W.norm().clamp_min(1e-12))
    states = _flatten(learner.carry_state())
    if states:
        flat = torch.cat([s.detach().flatten() for s in states])
        row["mean abs s"] = float(flat.abs().mean())
        row["saturated"] = float((flat.abs() > 0.99).float().mean())
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="stdlib", help="a text corpus (tncn train's forms; default stdlib)")
    ap.add_argument("--model", default="ptncn", help="the learner (default ptncn)")
    ap.add_argument("--hidden", type=WIDTHS.read, default=[128, 128], help="widths (default 128,128)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a learner option (repeatable); P-TNCN starts from the quick preset's Adam 2e-3")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--minutes", type=float, help="training budget in minutes (default 3)")
    ap.add_argument("--tokens", type=int, help="training budget in tokens, instead of --minutes")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--valid-lines", type=int, default=0, help="score only the first N validation lines (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    corpus = runs.open_data(args.data, {})
    if args.valid_lines:
        corpus.lines["valid"] = corpus.lines["valid"][:args.valid_lines]
    vocab = corpus.vocabulary("stream")
    train = corpus.batches("train", vocab, "stream", args.batch_size, args.seq_len, args.seed)
    valid = corpus.batches("valid", vocab, "stream", args.batch_size, args.seq_len, clamp=True)
    cls = learner_class(args.model)
    options = {"hidden": args.hidden, **PRESETS["quick"].get(cls.name, {})}
    options.update(sizing.parse_sets([f"{cls.name}:{s}" for s in args.set], [cls.name])[cls.name])
    torch.manual_seed(args.seed)
    learner = build_learner(cls.name, options, len(vocab), "cpu", args.seed)
    baseline = unigram_entropy(vocab.counts)
    budget = Budget(tokens=args.tokens) if args.tokens else Budget(minutes=args.minutes or 3.0)
    print(f"{cls.label} {','.join(map(str, args.hidden))} on {args.data}, {learner.training_label(learner.options)}, "
          f"options {json.dumps({k: v for k, v in options.items() if k != 'hidden'})}; unigram entropy "
          f"{baseline:.3f}", flush=True)
    rows, header = [], []

    def on_record(record, p):
        row = dict(step=p.step, tokens=p.tokens, valid=round(record["valid_bpc"], 4), **measure(learner))
        rows.append(row)
        if not header:
            header.extend(row)
            print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
        print("| " + " | ".join(f"{row[k]:.4g}" if isinstance(row[k], float) else f"{row[k]:,}" for k in header)
              + " |", flush=True)

    t0 = time.perf_counter()
    try:
        fit(learner, train, valid, budget, args.eval_every, on_record=on_record, bar=False)
    except Diverged as err:
        print(f"stopped: {err}", flush=True)
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(options=options, rows=rows), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Character PTB with the reference P-TNCN protocol and settings: validation BPC and tokens/s.

Ororbia, Mali, Giles, Kifer, IEEE TNNLS 2020 (arXiv 1810.07411); protocol of the authors' official
code: one sentence per sequence (state reset between sentences), the first character of each
sentence not scored, the 49 characters of ``ptb.char.*`` (``_`` for spaces; the vocabulary adds
the unknown token, which never occurs), L = 2 latent layers of H = 1000, batch 50 sentences,
SGD with Nesterov momentum (lr 0.075, momentum 0.95), the reference model options (β 0.1,
α 0.001, tanh, no biases, N(0, 0.05²) weights, updates clipped to norm 1). Sentences are batched
with others of similar length, which wastes less padding than the official code but scores the
same characters.

Trains for one epoch over ``ptb.char.train.txt`` or until ``--minutes`` of training have passed
(default 60), whichever comes first, then scores the whole validation split and prints a table
(tokens/s counts real characters in training). Reads the files in place; copies nothing.

    python scripts/ptb_reference.py --root DIR                        # L = 2
    python scripts/ptb_reference.py --root DIR --layers 3             # L = 3
    python scripts/ptb_reference.py --root DIR --minutes 1            # a quick check that it runs
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from sequences import text
from tncn import files
from tncn.guard import Diverged
from tncn.metrics import unigram_entropy
from tncn.temporal import build_learner
from tncn.train import Budget, evaluate, fit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="folder with Mikolov's ptb.char.*.txt files")
    ap.add_argument("--layers", type=int, default=2, help="latent layers L (default 2)")
    ap.add_argument("--hidden", type=int, default=1000, help="width of every latent layer (default 1000)")
    ap.add_argument("--minutes", type=float, default=60.0, help="training time budget (default 60)")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help=f"CPU threads (default {torch.get_num_threads()})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    corpus = text.load(f"ptb-char:{args.root}")
    vocab = corpus.vocabulary("lines")
    train = corpus.batches("train", vocab, "lines", args.batch_size, seed=args.seed)
    valid = corpus.batches("valid", vocab, "lines", args.batch_size)
    learner = build_learner("ptncn", {"hidden": [args.hidden] * args.layers}, len(vocab), "cpu", args.seed)
    print(f"PTB char: {len(vocab) - 1} symbols + unknown; train {train.n_tokens:,} characters in "
          f"{len(train)} batches of {args.batch_size} sentences; L = {args.layers}, H = {args.hidden}, "
          f"{args.threads} thread(s)", file=sys.stderr)

    t0 = time.perf_counter()
    try:
        progress, stopped = fit(learner, train, valid, Budget(epochs=1),
                                should_stop=lambda: time.perf_counter() - t0 > 60.0 * args.minutes,
                                on_record=None, bar=sys.stderr.isatty(), baseline=unigram_entropy(vocab.counts))
    except Diverged as err:
        sys.exit(f"ptb_reference: {err}")
    valid_bpc = evaluate(learner, valid).bpc if stopped else progress.records[-1]["valid_bpc"]
    result = dict(layers=args.layers, hidden=args.hidden, batch_size=args.batch_size, threads=args.threads,
                  epochs=round(progress.step / len(train), 4), tokens=progress.tokens,
                  train_s=round(progress.train_s, 1), tokens_per_s=round(progress.tokens / progress.train_s, 1),
                  valid_bpc=round(valid_bpc, 4), unigram_entropy=round(unigram_entropy(vocab.counts), 4))
    print("| L | H | epochs | train chars | train s | tokens/s | valid BPC | unigram entropy |")
    print("|---|---|---|---|---|---|---|---|")
    r = result
    print(f"| {r['layers']} | {r['hidden']} | {r['epochs']} | {r['tokens']:,} | {r['train_s']} | "
          f"{r['tokens_per_s']:,} | {r['valid_bpc']:.4f} | {r['unigram_entropy']:.4f} |")
    if args.json:
        files.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``tncn eval``: score a trained sequence model on a split, with frozen weights.

Prints bits per symbol (BPC for characters; bits per word and perplexity for words), top-1
accuracy and the counts of symbols, scored symbols and symbols unknown to the model's vocabulary
(mapped to its unknown token and scored). ``--frozen-correction off`` scores without the
state-correction phase (P-TNCN: the uncorrected hypothesis is carried); weights never change.
``--json FILE`` writes the same numbers as one JSON object.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from tncn import runs
from tncn.errors import UserError
from tncn.train import evaluate


def register(sub) -> None:
    p = sub.add_parser("eval", help="score a trained sequence model (BPC, perplexity, accuracy)",
                       description="Score a checkpoint on a data split with frozen weights.")
    p.add_argument("--checkpoint", required=True, help="run folder (or its checkpoint.pt)")
    p.add_argument("--data", help="data to score (default: the run's own data); same forms as tncn train")
    p.add_argument("--split", choices=["train", "valid", "test"], default="test", help="default test")
    p.add_argument("--protocol", choices=["lines", "stream"], help="default: the run's protocol")
    p.add_argument("--batch-size", type=int, help="rows per batch (default: the run's; the stream protocol "
                                                  "scores the first symbol of each row without context)")
    p.add_argument("--frozen-correction", choices=["on", "off"], default="on",
                   help="score with (on, default) or without the state-correction phase")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--device", help="default: the device the run used")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    p.set_defaults(func=run)


def run(args) -> int:
    from sequences import text

    if args.threads <= 0:
        raise UserError(f"--threads must be positive, got {args.threads}")
    torch.set_num_threads(args.threads)
    saved = runs.load(args.checkpoint, args.device)
    config, vocab = saved.config, saved.vocab
    data = args.data or config["data"]
    protocol = args.protocol or config["protocol"]
    batch_size = args.batch_size or config["batch_size"]
    if batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    corpus = text.load(data, None if data.startswith(("ptb-char", "ptb-word")) else vocab.level)
    # the segment length only sets how the stream is cut; the state is carried across segments
    batches = corpus.batches(args.split, vocab, protocol, batch_size, config["seq_len"] or 100, clamp=True)
    correction = args.frozen_correction == "on"
    t0 = time.perf_counter()
    tally = evaluate(saved.learner, batches, correction=correction)
    elapsed = time.perf_counter() - t0
    result = dict(
        checkpoint=str(saved.path), model=config["model"], step=saved.progress.step, data=data, split=args.split,
        protocol=protocol, level=vocab.level, correction=correction and saved.learner.has_correction,
        batch_size=batches.batch_size,
        bpc=tally.bpc, perplexity=tally.perplexity, accuracy=tally.accuracy, scored=tally.scored,
        tokens=batches.n_tokens, unknown=batches.unknown, elapsed_s=round(elapsed, 3))
    unit = "bits/char" if vocab.level == "char" else "bits/word"
    ppl = f", perplexity {tally.perplexity:.2f}" if vocab.level == "word" else ""
    phase = f", state correction {args.frozen_correction}" if saved.learner.has_correction else ""
    print(f"{args.split} split of {data} ({protocol} protocol{phase}): "
          f"{tally.bpc:.4f} {unit}{ppl}, accuracy {100 * tally.accuracy:.2f} %, {tally.scored:,} scored of "
          f"{batches.n_tokens:,} symbols, {batches.unknown:,} unknown to the model")
    if args.json:
        path = Path(args.json)
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0

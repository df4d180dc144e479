"""``tncn sample``: generate text from a trained sequence model.

The model observes the prime, then draws ``--length`` symbols one at a time, each observed before
the next is drawn (temperature 0: always the most probable symbol). An empty prime starts from a
symbol drawn from the training unigram distribution. Prints the prime followed by the sample;
prime symbols unknown to the model are reported on stderr.
"""
from __future__ import annotations

import sys

import torch

from tncn import runs
from tncn.commands import flags
from tncn.errors import UserError
from tncn.train import generate


def register(sub, argv=None) -> None:
    p = sub.add_parser("sample", help="generate text from a trained sequence model",
                       description="Generate text from a checkpoint.",
                       parents=[flags.parent("seed", "device", helps={
                           "seed": "seed of the draws", "device": "cpu, cuda or cuda:N (default: the run's)"})])
    p.add_argument("--checkpoint", required=True, help="run folder (or its checkpoint.pt)")
    p.add_argument("--prime", default="", help="text the model reads before sampling (default: none)")
    p.add_argument("--length", type=int, default=300, help="symbols to generate (default 300)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0: greedy (default 1)")
    p.set_defaults(func=run)


def run(args) -> int:
    torch.set_num_threads(1)
    o = flags.given(args, [flags.FLAGS["device"]])
    saved = runs.load(args.checkpoint, o.get("device"))
    if saved.vocab.level == "frames":
        raise UserError("tncn sample draws symbols from text models; for a video model, "
                        "tncn eval --frames-png FILE draws its predicted frames")
    if args.length < 0:
        raise UserError(f"--length must be non-negative, got {args.length}")
    sample, unknown = generate(saved.learner, saved.vocab, args.prime, args.length, args.temperature,
                                 flags.read(args, "seed")["seed"])
    if unknown:
        print(f"tncn sample: {unknown} prime symbol(s) unknown to the model were read as its unknown token",
              file=sys.stderr)
    sep = " " if saved.vocab.level == "word" and args.prime.strip() else ""
    print(args.prime + sep + sample)
    return 0

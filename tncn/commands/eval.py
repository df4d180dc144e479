"""``tncn eval``: score a trained sequence model on a split, with frozen weights.

Prints bits per symbol (BPC for characters; bits per word and perplexity for words), top-1
accuracy and the counts of symbols, scored symbols and symbols unknown to the model's vocabulary
(mapped to its unknown token and scored); for video, the binary cross-entropy per frame and per
sequence. ``--data`` may name data the model never saw (another corpus; bouncing notMNIST for a
bouncing-MNIST model): zero-shot adaptation (Ororbia et al. 2020, §V): with ``--frozen-correction
on`` (default) P-TNCN still error-corrects its states with each observation after scoring it,
``off`` carries the uncorrected hypothesis instead. Weights never change, and this is checked:
every parameter and buffer is compared bit for bit before and after (``weights_unchanged``).
``--json FILE`` writes the same numbers as one JSON object (with ``unknown_share``, the share of
symbols unknown to the model; above 5 % a warning says the score means little: every unknown
symbol is read and scored as the one unknown token); ``--frames-png FILE`` (video) draws the first
sequence of the split with its predictions.
"""
from __future__ import annotations

import sys
import time

import torch

from tncn import files, runs
from tncn.commands import flags
from tncn.errors import UserError
from tncn.train import evaluate


UNKNOWN_WARN = 0.05
"""Warn when more than this share of the scored text's symbols is unknown to the model."""


def register(sub, argv=None) -> None:
    run_default = "(default: the run's)"
    p = sub.add_parser("eval", help="score a trained sequence model (BPC, perplexity, accuracy)",
                       description="Score a checkpoint on a data split with frozen weights.",
                       parents=[flags.parent("data", "data_root", "protocol", "batch_size", "device", "threads", helps={
                           "data": f"data to score {run_default}; the forms of tncn train",
                           "data_root": f"folder holding the IDX image sets {run_default}",
                           "protocol": f"lines or stream {run_default}",
                           "batch_size": f"rows per batch {run_default}; the stream protocol scores the first symbol "
                                         "of each row without context",
                           "device": f"cpu, cuda or cuda:N {run_default}"})])
    p.add_argument("--checkpoint", required=True, help="run folder (or its checkpoint.pt)")
    p.add_argument("--split", choices=["train", "valid", "test"], default="test", help="default test")
    p.add_argument("--frozen-correction", choices=["on", "off"], default="on",
                   help="score with (on, default) or without the state-correction phase")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--frames-png", help="video: draw the split's first sequence and its predictions into this PNG")
    p.set_defaults(func=run)


def _snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _unchanged(before: dict, module: torch.nn.Module) -> bool:
    """Every tensor of ``module`` bit-identical to ``before`` (float tensors compared as raw bits,
    so NaN equals NaN and -0.0 differs from 0.0)."""
    after = module.state_dict()
    return before.keys() == after.keys() and all(
        before[k].dtype == after[k].dtype and before[k].shape == after[k].shape
        and torch.equal(_raw(before[k]), _raw(after[k])) for k in before)


def _raw(t: torch.Tensor) -> torch.Tensor:
    if not t.dtype.is_floating_point:
        return t
    return t.contiguous().view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


def run(args) -> int:
    o = flags.given(args, [flags.FLAGS[k] for k in ("data", "data_root", "protocol", "batch_size", "device")])
    torch.set_num_threads(flags.read(args, "threads")["threads"])
    saved = runs.load(args.checkpoint, o.get("device"))
    config, vocab, learner = saved.config, saved.vocab, saved.learner
    data = o.get("data", config["data"])
    frames = vocab.level == "frames"
    if frames and "protocol" in o:
        raise UserError("--protocol applies to text; video sequences are whole clips")
    protocol = o.get("protocol", config["protocol"])
    batch_size = o.get("batch_size", config["batch_size"])
    if args.frames_png and not frames:
        raise UserError("--frames-png applies to models of video frames")
    json_path, png_path = flags.output_file(args.json, "--json"), flags.output_file(args.frames_png, "--frames-png")
    corpus = runs.open_data(data, {**config, "data_root": o.get("data_root", config.get("data_root"))})
    # the segment length only sets how the stream is cut; the state is carried across segments
    batches = corpus.batches(args.split, vocab, protocol, batch_size, config["seq_len"] or 100, clamp=True)
    correction = args.frozen_correction == "on"
    before = _snapshot(learner.model)
    t0 = time.perf_counter()
    tally = evaluate(learner, batches, correction=correction)
    elapsed = time.perf_counter() - t0
    if png_path:
        runs.plot_frames(png_path, learner, corpus, args.split, correction=correction)
    unchanged = _unchanged(before, learner.model)
    result = dict(
        checkpoint=str(saved.path), model=config["model"], step=saved.progress.step, data=data, split=args.split,
        protocol=protocol, level=vocab.level, correction=correction and learner.has_correction,
        batch_size=batches.batch_size, scored=tally.scored, tokens=batches.n_tokens)
    phase = f", state correction {args.frozen_correction}" if learner.has_correction else ""
    if frames:
        n_seq = tally.scored // max(corpus.n_frames - 1, 1)
        result.update(bce_per_frame=tally.mean, bce_per_sequence=tally.total / n_seq if n_seq else float("nan"))
        print(f"{args.split} split of {data} (frozen weights{phase}): {tally.mean:.2f} nats BCE per frame, "
              f"{result['bce_per_sequence']:.1f} per sequence, {tally.scored:,} frames scored in {n_seq:,} sequences")
    else:
        share = batches.unknown / batches.n_tokens if batches.n_tokens else 0.0
        result.update(bpc=tally.bpc, perplexity=tally.perplexity, accuracy=tally.accuracy, unknown=batches.unknown,
                      unknown_share=round(share, 6))
        unit = "bits/char" if vocab.level == "char" else "bits/word"
        ppl = f", perplexity {tally.perplexity:.2f}" if vocab.level == "word" else ""
        print(f"{args.split} split of {data} ({protocol} protocol{phase}): "
              f"{tally.bpc:.4f} {unit}{ppl}, accuracy {100 * tally.accuracy:.2f} %, {tally.scored:,} scored of "
              f"{batches.n_tokens:,} symbols, {batches.unknown:,} unknown to the model")
        if share > UNKNOWN_WARN:
            print(f"tncn eval: warning: {100 * share:.1f} % of the symbols of {data} are unknown to the model and "
                  f"scored as its one unknown token, which is easy to predict: the score says little about this "
                  f"text", file=sys.stderr)
    result.update(weights_unchanged=unchanged, elapsed_s=round(elapsed, 3))
    if not unchanged:  # a bug, never the user's doing: say it loudly
        raise RuntimeError("evaluation changed the model's weights")
    if json_path:
        files.write_json(json_path, result)
    return 0

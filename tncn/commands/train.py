"""``tncn train``: train a character, word or video-frame model (P-TNCN by default) into a run folder.

With no argument it trains the quick default: a 2-layer P-TNCN character model on the embedded
corpus (``stdlib``) for a few minutes on 2 CPU cores, then prints the validation BPC next to the
corpus's unigram entropy, a generated sample and the run folder. ``--preset reference`` selects
the paper's settings (L = 2, H = 1000, batch 50 sentences, the lines protocol, SGD with Nesterov
momentum lr 0.075 / momentum 0.95, the reference model options); any option given on the command
line wins over the preset. The resolved options are written to ``config.json``.

Video data (``--data bouncing-mnist``, ``bouncing-notmnist``, ``bouncing-fashion``,
``bouncing-glyphs`` or ``bouncing:DIR``; ``sequences.video``): the model predicts each frame
(flattened, a sigmoid per pixel) from the frames before it; the score is the binary
cross-entropy per frame (first frame of each sequence not scored), printed next to the no-context
baseline (every pixel predicted by its mean training intensity), and ``frames.png`` shows a test
sequence's true and predicted frames. ``--frames``, ``--frame-size`` and ``--glyphs`` shape the
sequences; the protocol is one sequence per row, state reset per batch.

``--resume`` continues the run in ``--out`` from its checkpoint with its saved options; only the
budget (``--steps/--epochs/--minutes/--tokens``), ``--device`` and ``--threads`` may change, and a run
resumed with the same threads on the CPU ends exactly as an uninterrupted one. Ctrl-C (or SIGTERM)
stops after the current batch and saves a checkpoint to resume from.
"""
from __future__ import annotations

import argparse
import re
import signal
import sys
import time
from pathlib import Path

import torch

from sequences import text, video
from tncn import runs
from tncn.checkpoint import set_rng_state
from tncn.errors import UserError
from tncn.metrics import unigram_entropy
from tncn.train import BUDGET_KEYS, LEARNERS, OPTIMIZERS, Budget, Progress, build_learner, fit, generate, learner_module

RUN_DEFAULTS = dict(data="stdlib", level=None, protocol="stream", seq_len=100, batch_size=32, model="ptncn",
                    steps=None, epochs=None, minutes=None, tokens=None, eval_every=0, seed=0, device="cpu", threads=1)
VIDEO_DEFAULTS = dict(frames=20, frame_size=64, glyphs=2)  # video runs only (sequences.video)
PRESETS = {
    # the quick default: learns within a few minutes on 2 CPU cores (measured in the issue 3 note)
    "quick": dict(hidden=[128, 128], optimizer="adam", lr=2e-3, steps=400, eval_every=100),
    # the paper's PTB settings (Ororbia et al. 2020; the official code)
    "reference": dict(protocol="lines", batch_size=50, hidden=[1000, 1000], optimizer="nesterov", lr=0.075,
                      epochs=1, eval_every=0),
}
PTNCN_ONLY = {"reference": ("optimizer", "lr")}
"""Preset options that are P-TNCN's own: the BPTT baselines keep their optimizer (Adam 1e-3)."""
MAY_CHANGE_ON_RESUME = set(BUDGET_KEYS) | {"device", "threads", "compile"}
SAMPLE_CHARS, SAMPLE_WORDS, SAMPLE_TEMPERATURE = 300, 60, 0.7
PLOT_EVERY_S = 60.0  # curves.png is redrawn at most this often during a run, and at its end


def _widths(text: str) -> list[int]:
    try:
        return [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 256,256, got {text!r}") from None


def _float_or_none(text: str):
    if text.lower() == "none":
        return "none"  # kept distinct from "not given" (None) until resolved
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or none, got {text!r}") from None


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a character, word or video-frame model (P-TNCN) on a corpus or videos",
        description="Train a sequence model into a run folder (config.json, metrics.jsonl, checkpoint.pt, "
                    "curves.png). With no option: a 2-layer P-TNCN character model on the embedded corpus, "
                    "a few minutes on 2 CPU cores. Options not given come from --preset.")
    d = p.add_argument_group("data")
    d.add_argument("--data", help="stdlib (default: the embedded corpus), a text file (split 90/5/5), a folder "
                                  "with train/valid/test files, ptb-char:DIR, ptb-word:DIR, hf:NAME[:CONFIG]; "
                                  "videos: bouncing-mnist, bouncing-notmnist, bouncing-fashion, bouncing-glyphs "
                                  "(no file needed), bouncing:DIR (MNIST-format IDX files)")
    d.add_argument("--level", choices=["char", "word"], help="symbols: characters (default) or words")
    d.add_argument("--protocol", choices=["lines", "stream"],
                   help="lines: one line per sequence, state reset, first symbol unscored; "
                        "stream: one continuous stream in segments, state carried (default: stream)")
    d.add_argument("--seq-len", type=int, help="segment length of the stream protocol (default 100)")
    d.add_argument("--batch-size", type=int, help="sequences (lines) or parallel streams per batch (default 32)")
    d.add_argument("--frames", type=int, help="video: frames per sequence (20)")
    d.add_argument("--frame-size", type=int, help="video: side of the square frame in pixels (64)")
    d.add_argument("--glyphs", type=int, help="video: moving glyphs per sequence (2)")
    m = p.add_argument_group("model (P-TNCN)")
    m.add_argument("--model", help=f"the learner: {', '.join(LEARNERS)} (default ptncn; rnn, gru, lstm, elman: BPTT)")
    m.add_argument("--hidden", type=_widths, help="widths of the latent layers, e.g. 1000,1000 (default 128,128)")
    m.add_argument("--activation", help="state activation f (tanh, relu, ltanh, sign, ...; default tanh)")
    m.add_argument("--beta", type=float, help="state-correction rate β (0.1)")
    m.add_argument("--alpha", type=float, help="weight α of a layer's own error in its correction (0.001)")
    m.add_argument("--gamma", type=float, help="error-weight learning factor γ (1.0)")
    m.add_argument("--K", "-K", type=int, dest="K", help="error-correction iterations per step (1)")
    m.add_argument("--e-rule", choices=["transpose", "temporal"], help="rule for the error weights E (transpose)")
    m.add_argument("--w-error", choices=["epsilon", "e"], help="error driving the hidden prediction weights (epsilon)")
    m.add_argument("--hidden-prediction", help="activation on predictions of hidden layers (identity)")
    m.add_argument("--top-down", choices=["on", "off"], help="top-down weights U (on)")
    m.add_argument("--sparsity", type=float, help="lateral sparsity penalty λ (0: off)")
    m.add_argument("--clip", type=_float_or_none, help="Frobenius-norm clip of each update, or none (1.0)")
    m.add_argument("--max-norm", type=_float_or_none, help="bound on weight-row norms, or none (none)")
    m.add_argument("--init", choices=["normal", "uniform", "orthogonal", "zeros"], help="weight initialiser (normal)")
    m.add_argument("--init-std", type=float, help="standard deviation of the initial weights (0.05)")
    m.add_argument("--e-init-std", type=float, help="standard deviation of the initial error weights (0.05)")
    m.add_argument("--compile", action="store_const", const=True,
                   help="run each training step as one torch.compile graph (compiling takes up to a minute; "
                        "same numbers up to float rounding)")
    t = p.add_argument_group("model (BPTT baselines: rnn, gru, lstm, elman)")
    t.add_argument("--bptt", help="full (default: one backward per batch) or K: truncated BPTT, windows of K steps")
    t.add_argument("--clip-grad", type=float, help="clip the total gradient norm to this (5.0; 0: off)")
    t.add_argument("--input", choices=["onehot", "embedding"], help="symbol input (onehot)")
    t.add_argument("--embed", type=int, help="embedding width (default: the first hidden width)")
    o = p.add_argument_group("optimizer")
    o.add_argument("--optimizer", choices=OPTIMIZERS, help="default adam (reference: nesterov)")
    o.add_argument("--lr", type=float, help="learning rate (default 0.002; reference 0.075)")
    o.add_argument("--momentum", type=float, help="momentum of sgd/nesterov (nesterov: 0.95, sgd: 0)")
    o.add_argument("--weight-decay", type=float, help="weight decay (0)")
    r = p.add_argument_group("run")
    b = r.add_mutually_exclusive_group()
    b.add_argument("--steps", type=int, help="training batches (default 400)")
    b.add_argument("--epochs", type=int, help="passes over the training split")
    b.add_argument("--minutes", type=float, help="wall-time budget, validation included")
    b.add_argument("--tokens", type=int, help="training symbols (frames for video)")
    r.add_argument("--eval-every", type=int, help="validate every N steps; 0: only at the end (default 100)")
    r.add_argument("--seed", type=int, help="seed of the weights and the batch order (0)")
    r.add_argument("--device", help="cpu (default), cuda or cuda:N")
    r.add_argument("--threads", type=int, help="CPU threads for torch (default 1: fastest for small widths "
                                                "and on a shared machine)")
    r.add_argument("--preset", choices=sorted(PRESETS), help="quick (default) or reference (the paper's settings)")
    r.add_argument("--out", help="run folder (default runs/DATA-MODEL-TIME)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    r.add_argument("--force", action="store_true", help="overwrite the run files in an existing --out")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- options

def _explicit(args) -> dict:
    keys = set(RUN_DEFAULTS) | set(VIDEO_DEFAULTS) | {k for mod in LEARNERS for k in learner_module(mod).DEFAULTS}
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if "data" in out:
        out["data"] = text.canonical(out["data"])
    if "top_down" in out:
        out["top_down"] = out["top_down"] == "on"
    for k in ("clip", "max_norm"):
        if out.get(k) == "none":
            out[k] = None
    return out


def resolve(explicit: dict, preset: str) -> dict:
    """The run's options: model defaults < run defaults < preset < the command line."""
    model = explicit.get("model", RUN_DEFAULTS["model"])
    defaults = learner_module(model).DEFAULTS
    wrong = sorted(k for k in explicit if k not in RUN_DEFAULTS and k not in VIDEO_DEFAULTS and k not in defaults)
    if wrong:
        raise UserError(f"{', '.join('--' + k.replace('_', '-') for k in wrong)} do(es) not apply to --model {model}")
    own = PTNCN_ONLY.get(preset, ()) if model != "ptncn" else ()
    chosen = {k: v for k, v in PRESETS[preset].items() if (k in RUN_DEFAULTS or k in defaults) and k not in own}
    if any(k in explicit for k in BUDGET_KEYS):
        chosen = {k: v for k, v in chosen.items() if k not in BUDGET_KEYS}
    is_video = video.is_video(explicit.get("data", RUN_DEFAULTS["data"]))
    if is_video:
        given = [k for k in ("level", "protocol", "seq_len") if k in explicit]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} applies to text; video sequences are whole clips")
        chosen.update(level="frames", protocol="sequences", seq_len=None)
    else:
        given = [k for k in VIDEO_DEFAULTS if k in explicit]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} applies to video data (bouncing-...), "
                            f"not to {explicit.get('data', RUN_DEFAULTS['data'])}")
    merged = {**defaults, **RUN_DEFAULTS, **(VIDEO_DEFAULTS if is_video else {}), **chosen, **explicit}
    config = {k: merged[k] for k in [*RUN_DEFAULTS, *(VIDEO_DEFAULTS if is_video else ()), *defaults]}
    config["preset"] = preset
    if config["protocol"] == "lines":
        if "seq_len" in explicit:
            raise UserError("--seq-len applies to the stream protocol only")
        config["seq_len"] = None
    for k in ("batch_size", "seq_len", "eval_every", "threads", *VIDEO_DEFAULTS):
        if config.get(k) is not None and (config[k] < 0 or (config[k] == 0 and k != "eval_every")):
            raise UserError(f"--{k.replace('_', '-')} must be positive, got {config[k]}")
    Budget(**{k: config.get(k) for k in BUDGET_KEYS})  # exactly one, positive
    return config


def _show(value) -> str:
    """An option value as it is typed: widths as 128,128."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _resume_config(saved: dict, explicit: dict, out: Path) -> dict:
    """The saved options, with a new budget, device or thread count where given."""
    differ = [k for k, v in explicit.items() if k not in MAY_CHANGE_ON_RESUME and v != saved.get(k)]
    if differ:
        k = differ[0]
        raise UserError(f"--{k.replace('_', '-')} {_show(explicit[k])} differs from the run in {out} "
                        f"({_show(saved.get(k))}); a resumed run keeps its options (only --steps/--epochs/--minutes/"
                        f"--tokens, --device, --threads may change)")
    config = dict(saved)
    if any(k in explicit for k in BUDGET_KEYS):
        config.update({k: explicit.get(k) for k in BUDGET_KEYS})
    config.update({k: explicit[k] for k in ("device", "threads") if k in explicit})
    Budget(**{k: config.get(k) for k in BUDGET_KEYS})
    return config


def _default_out(config: dict) -> Path:
    data = config["data"]
    if data.startswith("hf:"):
        name = data[3:]
    elif data.startswith("bouncing:"):
        name = "bouncing-" + Path(data[len("bouncing:"):]).name
    elif data.startswith(("ptb-char", "ptb-word")):
        name = data.split(":")[0]
    else:
        name = Path(data).stem or Path(data).name
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "data"
    return Path("runs") / f"{name}-{config['model']}-{time.strftime('%Y%m%d-%H%M%S')}"


# --------------------------------------------------------------------------- the command

def run(args) -> int:
    explicit = _explicit(args)
    if args.resume and not args.out:
        raise UserError("--resume needs --out DIR, the run folder to continue")
    if args.resume:
        out = Path(args.out)
        runs.check_out(out, resume=True, force=args.force)
        saved = runs.load(out, explicit.get("device"))
        if args.preset and args.preset != saved.config["preset"]:
            raise UserError(f"--preset {args.preset} differs from the run in {out} ({saved.config['preset']})")
        config = _resume_config(saved.config, explicit, out)
    else:
        config = resolve(explicit, args.preset or "quick")
        out = Path(args.out) if args.out else _default_out(config)
        runs.check_out(out, resume=False, force=args.force)
    device = runs.resolve_device(config["device"])
    torch.set_num_threads(config["threads"])

    corpus = runs.open_data(config["data"], config)
    config["level"] = corpus.level
    frames = corpus.level == "frames"
    vocab = corpus.vocabulary(config["protocol"])
    if args.resume and vocab != saved.vocab:
        raise UserError(f"the vocabulary of {config['data']} ({len(vocab)} symbols) differs from the checkpoint's "
                        f"({len(saved.vocab)}): the training data changed since the run started")
    train = corpus.batches("train", vocab, config["protocol"], config["batch_size"], config["seq_len"], config["seed"])
    valid = corpus.batches("valid", vocab, config["protocol"], config["batch_size"], config["seq_len"], clamp=True)
    if valid.unknown:
        print(f"tncn train: {valid.unknown:,} validation symbols are not in the training vocabulary; "
              f"they are read and scored as its unknown token", file=sys.stderr)
    if args.resume:
        learner, progress = saved.learner, Progress.from_dict(saved.progress.to_dict(), resume=True)
        set_rng_state(saved.rng)
    else:
        torch.manual_seed(config["seed"])
        learner = build_learner(config["model"], runs.learner_options(config), len(vocab), device, config["seed"],
                                frames)
        progress = Progress()

    # every check has passed: from here on the run folder is written
    out.mkdir(parents=True, exist_ok=True)
    if args.force:  # only the run's own files, so an old checkpoint cannot outlive its config
        for name in runs.FILES:
            (out / name).unlink(missing_ok=True)
    runs.write_config(out, config)
    runs.write_metrics(out, progress.records)
    if frames:
        baseline, unit = corpus.mean_frame_bce(), "nats BCE/frame"
    else:
        baseline, unit = unigram_entropy(vocab.counts), "bits/char" if corpus.level == "char" else "bits/word"

    plotted = [time.perf_counter()]

    def plot(records: list) -> None:
        runs.plot_curves(out, records, unit.replace("/", " per "), baseline, learner.metric)
        plotted[0] = time.perf_counter()

    def on_record(record: dict, p: Progress) -> None:
        runs.append_metric(out, record)
        runs.save(out, config, vocab, learner, p)
        if time.perf_counter() - plotted[0] > PLOT_EVERY_S:
            plot(p.records)

    stop = _StopFlag()
    with stop:
        progress, stopped = fit(learner, train, valid, Budget(**{k: config.get(k) for k in BUDGET_KEYS}),
                                config["eval_every"], progress, on_record, stop.requested)
    runs.save(out, config, vocab, learner, progress)
    if progress.records:
        plot(progress.records)
    if stopped:
        print(f"tncn train: stopped at step {progress.step}; continue with: tncn train --out {out} --resume",
              file=sys.stderr)
        return 130

    last = progress.records[-1]
    if frames:
        print(f"validation: {last['valid_bce']:.2f} nats BCE per frame after {progress.step} steps "
              f"({progress.tokens:,} frames, {progress.elapsed_s:.0f} s); no-context baseline (every pixel "
              f"predicted by its mean training intensity): {baseline:.2f}")
        runs.plot_frames(out / "frames.png", learner, corpus)
        print(f"run saved in {out} (true and predicted frames of a test sequence: {out / 'frames.png'})")
        return 0
    word = corpus.level == "word"
    ppl = f", perplexity {2 ** last['valid_bpc']:.1f}" if word else ""
    print(f"validation: {last['valid_bpc']:.4f} {unit}{ppl}, accuracy {100 * last['valid_accuracy']:.1f} % "
          f"after {progress.step} steps ({progress.tokens:,} tokens, {progress.elapsed_s:.0f} s); "
          f"unigram entropy of the training text: {baseline:.4f} {unit}")
    first = corpus.sequences("valid", config["protocol"])[0]
    prime = first[:32] if not word else " ".join(first[:8])
    sample, _ = generate(learner, vocab, prime, SAMPLE_WORDS if word else SAMPLE_CHARS, SAMPLE_TEMPERATURE, config["seed"])
    print(f"sample (temperature {SAMPLE_TEMPERATURE}, primed with the start of the validation text):")
    print(prime + (" " if word else "") + sample)
    print(f"run saved in {out}")
    return 0


class _StopFlag:
    """While active, the first Ctrl-C/SIGTERM asks the loop to stop after the current batch."""

    def __init__(self):
        self.flag = False

    def requested(self) -> bool:
        return self.flag

    def _handle(self, signum, frame):
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True

    def __enter__(self):
        self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)

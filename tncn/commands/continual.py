"""``tncn continual``: learn a stream of tasks one after another and measure what is kept.

The stream (``sequences.streams``): an ordered list of experiences, each a data set with a
training budget (``--minutes`` of training time, validation excluded, or ``--tokens`` training
symbols/frames; a JSON stream file may give each its own). Every model of ``--models`` starts
from the same seed and trains on experience 1, then 2, ... with no access to earlier ones (no
replay, no task labels; P-TNCN keeps learning online as in Ororbia et al. 2020, §V). After each
experience (and ``--points`` times along it) every experience's **test** split is scored, which
gives the matrix R[i][j] = score on task j after training on tasks 1..i, plus the scores before
any training. ``tncn.continual`` turns R into the average final score, backward transfer (BWT),
forward transfer (FWT) and forgetting per task (scores are losses: BPC for text, BCE per frame
for video; positive BWT/FWT = better, positive forgetting = worse).

All experiences are video (one frame shape: ``--frames``, ``--frame-size``, ``--glyphs``) or all
text (one ``--level`` and ``--protocol``). Text models share one vocabulary: the union of the
experiences' training symbols, fixed before the first experience (the output layer must cover
every task; the symbols are an inventory, no training text of a later task is seen early).
Sizes as in ``tncn compare`` (``--hidden`` for P-TNCN, ``--match params|hidden``, ``--set``).

Writes ``DIR/results.json`` (the stream, per model: options, params, R, initial scores, the
summary, the curve), ``DIR/matrix.png`` (heat maps), ``DIR/curves.png`` (every task's score along
the stream) and ``DIR/table.md``, and prints the table. ``results.json`` is rewritten after
each model, so an interrupted run keeps the finished ones. A model whose training diverges
(``tncn.guard``: a non-finite loss, weight or test score) stops there: ``results.json`` holds
``diverged`` (the experience, step and what went wrong) and the rows of R before it, and the
table says so in place of its matrix.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

from tncn import continual, files, runs
from tncn.commands import flags, sizing
from tncn.errors import UserError
from tncn.guard import Diverged
from tncn.metrics import METRICS
from tncn.options import INT, Option, positive
from tncn.temporal import build_learner
from tncn.train import Progress, evaluate, fit_marks

MODELS = "ptncn,lstm"
"""The default ``--models``."""
POINTS = Option("points", INT, 4, "scorings along each experience (the last at its end)", check=positive)


def register(sub, argv=None) -> None:
    p = sub.add_parser(
        "continual", help="train on a stream of tasks in turn; score matrix, forgetting, transfer",
        description="Train each model on the experiences of --stream one after another; after each one score "
                    "every experience's test split. Writes results.json, matrix.png, curves.png and table.md.",
        parents=[flags.parent("data_root", "level", "protocol", "seq_len", "batch_size", title="data"),
                 flags.parent(*flags.VIDEO, title="video data"),
                 flags.budget(("minutes", "tokens"), helps={
                     "minutes": "training time per experience in minutes (validation excluded)",
                     "tokens": "training symbols (frames for video) per experience"}),
                 flags.parent("seed", "device", "threads", title="run"),
                 flags.outputs("output folder", required=True)])
    p.add_argument("--stream", required=True,
                   help="comma-separated data (e.g. bouncing-mnist,bouncing-notmnist,bouncing-fashion or "
                        "stdlib,PATH.txt) or a JSON stream file "
                        "[{\"data\": ..., \"name\": ..., \"minutes\"|\"tokens\": ...}]")
    g = p.add_argument_group("models")
    sizing.add_flags(g, MODELS)
    flags.add(g, [POINTS])
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- data

def open_stream(experiences: list, settings: dict) -> tuple[list, object, str]:
    """Every experience's data, the shared observation space and the metric (``bpc`` or ``bce``)."""
    from sequences import text, video
    from sequences.vocab import Vocabulary

    kinds = {video.is_video(e.data) for e in experiences}
    if len(kinds) > 1:
        raise UserError("a stream mixes video and text experiences; a model reads one kind of observation")
    frames = kinds == {True}
    data = []
    for e in experiences:
        config = dict(settings, level="frames") if frames else dict(level=settings["level"])
        data.append(runs.open_data(text.canonical(e.data), config))
    if frames:
        return data, data[0].vocabulary(), "bce"
    levels = {d.level for d in data}
    if len(levels) > 1:
        raise UserError(f"the stream's corpora have different levels ({', '.join(sorted(levels))}); give --level")
    protocol = settings["protocol"]
    vocab = Vocabulary.build(levels.pop(), [s for d in data for s in d.sequences("train", protocol)])
    return data, vocab, "bpc"


# --------------------------------------------------------------------------- one model along the stream

def run_stream(kind: str, options: dict, experiences: list, data: list, vocab, settings: dict,
               points: int, device, seed: int) -> dict:
    """Train one model on the experiences in turn; its matrix, initial scores and curve."""
    from tqdm.auto import tqdm

    frames = vocab.level == "frames"
    torch.manual_seed(seed)
    learner = build_learner(kind, options, len(vocab), device, seed, frames)
    args = (vocab, settings["protocol"], settings["batch_size"], settings["seq_len"])
    tests = [d.batches("test", *args, clamp=True) for d in data]
    names = [e.name for e in experiences]

    def scores(step: int = 0) -> list:
        row = [evaluate(learner, t).mean for t in tests]
        for name, score in zip(names, row):
            if not math.isfinite(score):
                raise Diverged(step, f"the test score on {name} is {score}")
        return row

    initial = scores()
    curve = {"tokens": [0], "seconds": [0.0], "scores": {n: [s] for n, s in zip(names, initial)}, "boundaries": []}
    R, done_tokens, done_s, legs, diverged = [], 0, 0.0, [], None
    bar = tqdm(total=len(experiences) * points, unit="point", desc=kind, dynamic_ncols=True)
    try:
        for i, (e, d) in enumerate(zip(experiences, data)):
            train = d.batches("train", *args, seed + i)

            def mark(p, e=e) -> None:
                row = scores(p.step)
                curve["tokens"].append(done_tokens + p.tokens)
                curve["seconds"].append(round(done_s + p.train_s, 3))
                for n, s in zip(names, row):
                    curve["scores"][n].append(s)
                bar.update(1)
                bar.set_postfix_str(f"{e.name}: " + ", ".join(f"{s:.3f}" for s in row), refresh=False)

            p = Progress()
            try:
                fit_marks(learner, train, e.minutes, e.tokens, points, mark, progress=p)
            except Diverged as err:  # the table says so; R keeps the rows before it
                diverged = dict(err.to_dict(), experience=e.name)
                bar.write(f"{kind}: {err} of {e.name}", file=sys.stderr)
                break
            row = [curve["scores"][n][-1] for n in names]
            R.append(row)
            done_tokens, done_s = done_tokens + p.tokens, done_s + p.train_s
            curve["boundaries"].append(done_tokens)
            legs.append(dict(name=e.name, tokens=p.tokens, steps=p.step, train_s=round(p.train_s, 3)))
            bar.write(f"{kind} after {e.name} ({p.tokens:,} tokens, {p.train_s:.0f} s): "
                      + ", ".join(f"{n} {s:.4f}" for n, s in zip(names, row)), file=sys.stderr)
    finally:
        bar.close()
    return dict(options=options, params=learner.n_weights(), hidden=list(options["hidden"]),
                R=R, initial=initial, experiences=legs, curve=curve, diverged=diverged,
                summary=None if diverged else continual.summarize(R, higher_is_better=False, initial=initial))


# --------------------------------------------------------------------------- the command

def run(args) -> int:
    from sequences import streams

    o = flags.read(args, "data_root", "level", "protocol", "seq_len", "batch_size", *flags.VIDEO, "seed", "device",
                   "threads")
    points = flags.values(args, [POINTS])["points"]
    budget = flags.given(args, [flags.FLAGS["minutes"], flags.FLAGS["tokens"]])
    experiences = streams.parse(args.stream, budget.get("minutes"), budget.get("tokens"))
    side = sizing.read(args, MODELS)
    models = side["models"]
    device = runs.resolve_device(o["device"])
    out = Path(args.out)
    flags.check_out(out, args.force)
    torch.set_num_threads(o["threads"])

    settings = dict(frames=o["frames"], frame_size=o["frame_size"], glyphs=o["glyphs"], data_root=o["data_root"],
                    level=o["level"], protocol=o["protocol"], batch_size=o["batch_size"],
                    seq_len=o["seq_len"] if o["protocol"] == "stream" else None)
    data, vocab, metric = open_stream(experiences, settings)
    frames = metric == "bce"
    if frames:
        settings.update(level="frames", protocol="sequences", seq_len=None)
    else:
        settings = {k: v for k, v in settings.items() if k not in flags.VIDEO}
        settings["level"] = vocab.level
    args_b = (vocab, settings["protocol"], settings["batch_size"], settings["seq_len"])
    for d in data:  # a batch size the data cannot fill fails here, in one line
        d.batches("train", *args_b, o["seed"])
        d.batches("test", *args_b, clamp=True)
    options, target = sizing.plan(models, len(vocab), side["hidden"], side["match"], side["bptt"], side["sets"],
                                  o["seed"], frames, o["batch_size"])

    out.mkdir(parents=True, exist_ok=True)
    names = [e.name for e in experiences]
    result = dict(stream=streams.to_json(experiences), **settings, metric=metric, unit=METRICS[metric].unit,
                  higher_is_better=False, points=points, seed=o["seed"], threads=o["threads"], device=str(device),
                  torch=torch.__version__, size=len(vocab), first_model=models[0], first_params=target, models={})
    for kind in models:
        print(f"== {kind}: widths {','.join(map(str, options[kind]['hidden']))}", flush=True)
        t0 = time.perf_counter()
        result["models"][kind] = run_stream(kind, options[kind], experiences, data, vocab, settings,
                                            points, device, o["seed"])
        result["models"][kind]["wall_s"] = round(time.perf_counter() - t0, 1)
        files.write_json(out / "results.json", result)
    matrices = {k: m["R"] for k, m in result["models"].items() if not m["diverged"]}
    if matrices:
        continual.plot_matrix(out / "matrix.png", matrices, names, METRICS[metric].unit)
    curves = {k: m["curve"] for k, m in result["models"].items()}
    continual.plot_curves(out / "curves.png", curves, names, METRICS[metric].unit)
    table = continual.format_table({k: m["summary"] for k, m in result["models"].items()}, matrices, names,
                                   METRICS[metric].short,
                                   {k: m["diverged"] for k, m in result["models"].items() if m["diverged"]})
    budgets = "; ".join(f"{e.name}: " + (f"{e.minutes:g} min" if e.minutes is not None else f"{e.tokens:,} tokens")
                        for e in experiences)
    table = f"stream {' → '.join(names)} (budgets {budgets}; test-split {METRICS[metric].unit}, lower is better)\n\n" + table
    files.write_text(out / "table.md", table + "\n")
    print(table)
    print(f"results in {out}")
    return 0

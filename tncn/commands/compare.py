"""``tncn compare``: P-TNCN against the baselines (BPTT-trained RNN, GRU, LSTM; the ESN) on equal
terms: one table, two plots.

Each model trains in turn in a fresh Python process (``tncn.isolate``: none inherits another's
allocator state, and its peak memory is its own) on the same data, split, protocol, batches and
seed, for the same budget: ``--minutes`` of training time (time inside the learner's
``train_segment``; validation passes excluded) or ``--tokens`` real training symbols. The loop is
``tncn.train.fit_marks``: it stops at ``--points`` evenly spaced marks of the budget, where the
validation score is recorded (plus once before training); then the test split is scored.

Sizes (``tncn.commands.sizing``): ``--hidden`` gives the first model's widths (P-TNCN's by
default); ``--match params`` gives every other model that depth (or its declared one) and the
width whose weight count is closest to the first's (P-TNCN's E matrices and the ESN's fixed
reservoir count); ``--match hidden`` gives them the same widths. A model's options: its
learner's declared defaults (P-TNCN: the reference ones; BPTT baselines: Adam 1e-3, full BPTT,
one-hot input) < the sizing and ``--bptt`` < ``--set MODEL:KEY=VALUE`` (VALUE read as JSON when
it parses, then by the option's declaration).

Video data (``--data bouncing-mnist`` ...; ``sequences.video``) works the same way, scored by
the binary cross-entropy per frame (``bce``) in place of bits per symbol (``bpc``); frames count
as tokens, and the baselines then read frames as they are (``--match params`` sizes them with the
frame as input).

Writes ``DIR/results.json`` (per model: ``params``, ``hidden``, ``tokens_per_s``,
``peak_memory_mb`` (growth of the peak over the set-up: model built, data loaded; see
``tncn.bench.peak_mb``), ``valid_bpc`` (``valid_bce``) as a curve against training tokens and
seconds, ``test_bpc`` (``test_bce``)), ``DIR/bpc_vs_time.png``, ``DIR/bpc_vs_tokens.png``
(``bce_vs_...`` for video) and ``DIR/table.md``, and prints the table. ``results.json`` is
rewritten after each model, so an interrupted run keeps the finished ones. A model whose training
diverges (``tncn.guard``: a non-finite loss, weight or score, or a validation score back above the
no-context baseline) stops there: the table says "diverged at step N" in place of its scores, and
``results.json`` holds ``diverged`` (the step and what went wrong) and the curve up to then.

``--memory``: instead, the peak memory of one training pass over a single sequence of each length
in ``--lengths`` (random ids of the data's vocabulary, ``--batch-size`` rows) for each model, the
baselines with full BPTT unless ``--bptt`` says otherwise, each pass in a fresh process
(``tncn.bench.peak_memory_mb``, as ``tncn bench`` measures). Writes ``DIR/memory.json`` and
``DIR/memory_vs_length.png`` and prints the table.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from tncn import bench, files, isolate, runs
from tncn.commands import flags, sizing
from tncn.errors import UserError
from tncn.guard import Diverged, Watch
from tncn.metrics import METRICS
from tncn.options import INT, WIDTHS, Option, positive
from tncn.temporal import build_learner, learner_class
from tncn.train import Progress, evaluate, fit_marks

MODELS = "ptncn,lstm,gru,rnn"
"""The default ``--models``."""
OWN = (
    Option("points", INT, 10, "validations along each run, besides the one before", check=positive),
    Option("valid_lines", INT, None, "score the curve on the first N lines of the validation split", check=positive),
    Option("lengths", WIDTHS, [100, 1000, 10000], "--memory: sequence lengths"),
)


def register(sub, argv=None) -> None:
    p = sub.add_parser(
        "compare", help="train P-TNCN and the baselines for the same budget: one table, two plots",
        description="Train each model in turn for the same budget on the same data, split and seed; write "
                    "results.json, bpc_vs_time.png, bpc_vs_tokens.png and table.md into --out. "
                    "--memory: peak memory of one training pass against sequence length instead.",
        parents=[flags.parent("data", "data_root", "level", "protocol", "seq_len", "batch_size", title="data"),
                 flags.parent(*flags.VIDEO, title="video data"),
                 flags.budget(("minutes", "tokens"), helps={"minutes": "training time of each model in minutes "
                                                                      "(validation excluded)",
                                                            "tokens": "training symbols (frames) of each model"}),
                 flags.parent("seed", "device", "threads", title="run"),
                 flags.outputs("output folder", required=True)])
    g = p.add_argument_group("models")
    sizing.add_flags(g, MODELS)
    flags.add(g, OWN)
    g.add_argument("--memory", action="store_true", help="measure peak memory against sequence length instead")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- one model, in a child process

def batches_of(task: dict):
    """The corpus, vocabulary and train, valid, test batches a compare (or tune) task reads."""
    corpus = runs.open_data(task["data"], task)
    if task.get("valid_lines") and corpus.level != "frames":
        corpus.lines["valid"] = corpus.lines["valid"][:task["valid_lines"]]
    vocab = corpus.vocabulary(task["protocol"])
    args = (vocab, task["protocol"], task["batch_size"], task["seq_len"])
    return (corpus, vocab, corpus.batches("train", *args, task["seed"]),
            corpus.batches("valid", *args, clamp=True), corpus.batches("test", *args, clamp=True))


def _import_optimizers() -> None:
    """Building the first torch optimizer imports torch's compiler stack (seconds, and memory):
    pay that before the clock starts and before the peak memory is reset."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)


def train_one(task: dict) -> dict:
    """Train one model for the budget; its curve, speed, peak memory and test score (what the
    child process of each model runs)."""
    _, vocab, train, valid, test = batches_of(task)
    device = runs.resolve_device(task["device"])
    torch.manual_seed(task["seed"])
    learner = build_learner(task["kind"], task["options"], len(vocab), device, task["seed"], vocab.level == "frames")
    metric = learner.metric
    _import_optimizers()
    curve = {"tokens": [], "seconds": [], "wall_seconds": [], metric: []}
    start = time.perf_counter()
    base = bench.peak_mb(device, reset=True)
    watch = Watch(task["baseline"])

    def point(p):
        v = evaluate(learner, valid)
        watch.check(v.mean, p.step)
        for key, value in (("tokens", p.tokens), ("seconds", round(p.train_s, 3)),
                           ("wall_seconds", round(time.perf_counter() - start, 3)), (metric, v.mean)):
            curve[key].append(value)
        print(f"{task['kind']}: {p.tokens:,} tokens, {p.train_s:.0f} s of training: valid {v.mean:.4f}", flush=True)

    p, diverged = Progress(), None
    try:
        point(p)
        fit_marks(learner, train, task["minutes"], task["tokens"], task["points"], point, progress=p)
    except Diverged as err:  # the table says so; the curve keeps the finite points before it
        print(f"{task['kind']}: {err}", flush=True)
        diverged = err.to_dict()
    peak = bench.peak_mb(device)
    t = evaluate(learner, test) if diverged is None else None
    return dict(kind=task["kind"], options=task["options"], params=learner.n_weights(),
                hidden=list(task["options"]["hidden"]), tokens=p.tokens, steps=p.step, train_s=round(p.train_s, 3),
                tokens_per_s=round(p.tokens / p.train_s, 1) if p.train_s else None,
                peak_memory_mb=round(peak - base, 1), peak_rss_mb=round(peak, 1), diverged=diverged,
                **{f"valid_{metric}": curve, f"test_{metric}": t.mean if t else None},
                **({"test_accuracy": t.accuracy if t else None} if metric == "bpc" else {}))


# --------------------------------------------------------------------------- the command

def open_task(o: dict, splits=("train", "valid", "test")) -> tuple:
    """The data of a run of side-by-side models (compare, tune) from the shared flags ``o``: the
    corpus, its vocabulary (a ``FrameSpace`` for video) and the settings every child process
    reads (data, data_root, level, protocol, batch_size, seq_len, seed, device, the video shape).
    A batch size that ``splits`` cannot fill fails here, in one line."""
    from sequences import text, video

    data = text.canonical(o["data"])
    frames = video.is_video(data)
    if frames and o["level"]:
        raise UserError("--level applies to text; video is scored per frame")
    shape = {k: o[k] for k in flags.VIDEO} if frames else {}
    corpus = runs.open_data(data, dict(level="frames" if frames else o["level"], data_root=o["data_root"], **shape))
    protocol = "sequences" if frames else o["protocol"]
    vocab = corpus.vocabulary(protocol)
    common = dict(data=data, data_root=o["data_root"], level=corpus.level, protocol=protocol,
                  batch_size=o["batch_size"], seq_len=o["seq_len"] if protocol == "stream" else None, seed=o["seed"],
                  device=o["device"], **shape)
    for split in splits:
        corpus.batches(split, vocab, protocol, o["batch_size"], common["seq_len"], o["seed"], clamp=split != "train")
    return corpus, vocab, common


def no_context(corpus, vocab) -> float:
    """The score of a model without context: the mean-pixel BCE for video, the unigram entropy for text."""
    from tncn.metrics import unigram_entropy

    return corpus.mean_frame_bce() if vocab.level == "frames" else unigram_entropy(vocab.counts)


def run(args) -> int:
    o = flags.read(args, "data", "data_root", "level", "protocol", "seq_len", "batch_size", *flags.VIDEO,
                   "seed", "device", "threads")
    own = flags.values(args, OWN)
    budget = flags.given(args, [flags.FLAGS["minutes"], flags.FLAGS["tokens"]])
    if not args.memory and not budget:
        raise UserError("give the budget of each model: --minutes M or --tokens N")
    if args.memory and budget:
        raise UserError("--memory measures one pass per length; drop --minutes/--tokens")
    side = sizing.read(args, MODELS)
    models = side["models"]
    runs.resolve_device(o["device"])
    out = Path(args.out)
    flags.check_out(out, args.force)

    corpus, vocab, common = open_task(o, () if args.memory else ("train", "valid", "test"))
    frames = common["level"] == "frames"
    options, target = sizing.plan(models, len(vocab), side["hidden"], side["match"], side["bptt"], side["sets"],
                                  o["seed"], frames, o["batch_size"])
    common["threads"] = o["threads"]
    if args.memory:
        return _run_memory(out, models, options, len(vocab), common, own["lengths"])

    out.mkdir(parents=True, exist_ok=True)
    result = dict(**common, torch=torch.__version__, budget=budget, match=side["match"],
                  first_model=models[0], first_params=target, points=own["points"], valid_lines=own["valid_lines"],
                  vocab_size=len(vocab), metric="bce" if frames else "bpc", baseline=no_context(corpus, vocab),
                  models={})
    for kind in models:
        print(f"== {kind}: widths {','.join(map(str, options[kind]['hidden']))}", flush=True)
        task = dict(common, kind=kind, options=options[kind], baseline=result["baseline"],
                    minutes=budget.get("minutes"), tokens=budget.get("tokens"), points=own["points"],
                    valid_lines=own["valid_lines"])
        result["models"][kind] = isolate.run("tncn.commands.compare:train_one", task, o["threads"], kind)
        files.write_json(out / "results.json", result)
    plot_curves(out, result)
    table = format_table(result)
    files.write_text(out / "table.md", table + "\n")
    print(table)
    print(f"results in {out}")
    return 0


def _run_memory(out: Path, models: list, options: dict, size: int, common: dict, lengths: list) -> int:
    if min(lengths) < 2:
        raise UserError("--lengths must be at least 2 (a sequence needs a symbol to predict)")
    out.mkdir(parents=True, exist_ok=True)
    result = dict(**common, torch=torch.__version__, vocab_size=size, lengths=lengths, models={})
    frames = common["level"] == "frames"
    for kind in models:
        opts = options[kind]
        entry = result["models"][kind] = dict(hidden=opts["hidden"], training=learner_class(kind).training_label(opts),
                                              rows={})
        for T in lengths:
            print(f"== {kind}, T = {T:,}", flush=True)
            entry["rows"][str(T)] = bench.peak_memory_mb(kind, opts, T, common["batch_size"], size, frames,
                                                         common["device"], common["seed"], common["threads"])
        files.write_json(out / "memory.json", result)
    plot_memory(out, result)
    table = format_memory_table(result)
    print(table)
    print(f"results in {out}")
    return 0


# --------------------------------------------------------------------------- tables and plots

def _label(kind: str, m: dict) -> str:
    return f"{kind} ({','.join(map(str, m['hidden']))})"


def format_table(result: dict) -> str:
    metric = result["metric"]
    column, unit, _, baseline, tokens = METRICS[metric]
    budget = result["budget"]
    what = f"{budget['minutes']:g} min of training" if "minutes" in budget else f"{budget['tokens']:,} training {tokens}"
    lines = [f"{result['data']}, {result['protocol']} protocol, batch {result['batch_size']}, {what} per model, "
             f"seed {result['seed']}, {result['threads']} thread(s) on {result['device']}; "
             f"{baseline} {result['baseline']:.3f} {unit}",
             "",
             f"| model | widths | params | {tokens} | {tokens}/s | peak memory MB | valid {column} | test {column} |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, m in result["models"].items():
        if m.get("diverged"):
            scores = f"diverged at step {m['diverged']['step']:,} | diverged"
        else:
            scores = f"{m[f'valid_{metric}'][metric][-1]:.4f} | {m[f'test_{metric}']:.4f}"
        lines.append(f"| {kind} | {','.join(map(str, m['hidden']))} | {m['params']:,} | {m['tokens']:,} | "
                     f"{m['tokens_per_s'] or 0:,.0f} | {m['peak_memory_mb']:,.1f} | {scores} |")
    return "\n".join(lines)


def plot_curves(out: Path, result: dict) -> None:
    """``bpc_vs_time.png`` and ``bpc_vs_tokens.png`` (``bce_...`` for video): every model's
    validation score."""
    from matplotlib.figure import Figure

    metric = result["metric"]
    _, unit, _, baseline, tokens = METRICS[metric]
    for key, name, xlabel in (("seconds", f"{metric}_vs_time.png", "training time (s)"),
                              ("tokens", f"{metric}_vs_tokens.png", f"training {tokens}")):
        fig = Figure(figsize=(6.5, 4.5), layout="constrained")
        ax = fig.subplots()
        for kind, m in result["models"].items():
            ax.plot(m[f"valid_{metric}"][key], m[f"valid_{metric}"][metric], "o-", ms=3, label=_label(kind, m))
        ax.axhline(result["baseline"], color="gray", ls="--", lw=1, label=baseline)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"validation {unit}")
        ax.set_title(f"{Path(result['data']).name}, {result['protocol']} protocol", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
        files.save_figure(fig, out / name)


def format_memory_table(result: dict) -> str:
    lengths = result["lengths"]
    lines = [f"growth of peak memory (MB) during one training pass over one sequence, batch {result['batch_size']}, "
             f"vocabulary {result['vocab_size']}, {result['device']}",
             "",
             "| model | widths | training | " + " | ".join(f"T = {T:,}" for T in lengths) + " |",
             "|---|---|---|" + "---|" * len(lengths)]
    for kind, m in result["models"].items():
        how = m["training"]
        cells = " | ".join(f"{m['rows'][str(T)]['growth_mb']:,.1f}" for T in lengths)
        lines.append(f"| {kind} | {','.join(map(str, m['hidden']))} | {how} | {cells} |")
    return "\n".join(lines)


def plot_memory(out: Path, result: dict) -> None:
    """``memory_vs_length.png``: growth of the peak against T, log-log."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for kind, m in result["models"].items():
        T = result["lengths"]
        ax.plot(T, [max(m["rows"][str(t)]["growth_mb"], 0.1) for t in T], "o-", label=_label(kind, m))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("growth of peak memory (MB, floor 0.1)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    files.save_figure(fig, out / "memory_vs_length.png")

"""``tncn compare``: P-TNCN against BPTT-trained RNN, GRU and LSTM on equal terms: one table, two plots.

Each model trains in turn in a fresh Python process (none inherits another's allocator state, and
its peak memory is its own) on the same data, split, protocol, batches and seed, for the same
budget: ``--minutes`` of training time (time inside the learner's ``train_segment``; validation
passes excluded) or ``--tokens`` real training symbols. The loop is ``tncn.train.fit``; its stop
rule ends each leg of a run at one of ``--points`` evenly spaced marks of the budget, where the
validation BPC is recorded (plus once before training); then the test split is scored.

Sizes: ``--hidden`` gives P-TNCN's widths; ``--match params`` gives every baseline P-TNCN's depth
and the one width whose parameter count is closest to P-TNCN's (its E matrices count;
``tncn.temporal.bptt.width_for_params``); ``--match hidden`` gives them P-TNCN's widths. A model's
options: its learner's defaults (P-TNCN: the reference ones; baselines: Adam 1e-3, full BPTT, one-hot
input) < the sizing and ``--bptt`` < ``--set MODEL:KEY=VALUE`` (VALUE read as JSON when it parses).

Video data (``--data bouncing-mnist`` ...; ``sequences.video``) works the same way, scored by
the binary cross-entropy per frame (``bce``) in place of bits per symbol (``bpc``); frames count
as tokens, and the baselines then read frames as they are (``--match params`` sizes them with the
frame as input).

Writes ``DIR/results.json`` (per model: ``params``, ``hidden``, ``tokens_per_s``,
``peak_memory_mb`` (growth of the peak over the set-up: model built, data loaded; see
``tncn.bench.peak_mb``), ``valid_bpc`` (``valid_bce``) as a curve against training tokens and
seconds, ``test_bpc`` (``test_bce``)), ``DIR/bpc_vs_time.png``, ``DIR/bpc_vs_tokens.png``
(``bce_vs_...`` for video) and ``DIR/table.md``, and prints the table. ``results.json`` is
rewritten after each model, so an interrupted run keeps the finished ones.

``--memory``: instead, the peak memory of one training pass over a single sequence of each length
in ``--lengths`` (random ids of the data's vocabulary, ``--batch-size`` rows) for each model, the
baselines with full BPTT unless ``--bptt`` says otherwise, each pass in a fresh process. Writes
``DIR/memory.json`` and ``DIR/memory_vs_length.png`` and prints the table.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tncn import runs
from tncn.commands import sizing
from tncn.errors import UserError
from tncn.metrics import METRICS
from tncn.train import NEVER, Progress, build_learner, evaluate, fit

DEFAULT_MODELS = "ptncn,lstm,gru,rnn"


def register(sub) -> None:
    p = sub.add_parser(
        "compare", help="train P-TNCN and BPTT baselines for the same budget: one table, two plots",
        description="Train each model in turn for the same budget on the same data, split and seed; write "
                    "results.json, bpc_vs_time.png, bpc_vs_tokens.png and table.md into --out. "
                    "--memory: peak memory of one training pass against sequence length instead.")
    p.add_argument("--data", default="stdlib", help="same forms as tncn train (default stdlib, the embedded corpus)")
    p.add_argument("--level", choices=["char", "word"], help="symbols: characters (default) or words")
    p.add_argument("--protocol", choices=["lines", "stream"], default="stream", help="default stream")
    p.add_argument("--seq-len", type=int, default=100, help="segment length of the stream protocol (100)")
    p.add_argument("--batch-size", type=int, default=32, help="sentences or parallel streams per batch (32)")
    p.add_argument("--frames", type=int, default=20, help="video: frames per sequence (20)")
    p.add_argument("--frame-size", type=int, default=64, help="video: side of the square frame in pixels (64)")
    p.add_argument("--glyphs", type=int, default=2, help="video: moving glyphs per sequence (2)")
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated learners (default {DEFAULT_MODELS})")
    p.add_argument("--hidden", default="256,256", help="P-TNCN's widths, e.g. 1000,1000 (default 256,256)")
    p.add_argument("--match", choices=["params", "hidden"], default="params",
                   help="size the baselines to P-TNCN's parameter count (default) or give them its widths")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--minutes", type=float, help="training-time budget of each model")
    b.add_argument("--tokens", type=int, help="training symbols of each model")
    p.add_argument("--points", type=int, default=10, help="validations along each run, besides the one before (10)")
    p.add_argument("--valid-lines", type=int, help="score the curve on the first N lines of the validation split")
    p.add_argument("--bptt", help="full (default) or K: truncated BPTT window of the baselines")
    p.add_argument("--set", action="append", default=[], metavar="MODEL:KEY=VALUE",
                   help="an option of one model, e.g. lstm:lr=0.002 or ptncn:optimizer=adam (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch order (0)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch in each run (1)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--memory", action="store_true", help="measure peak memory against sequence length instead")
    p.add_argument("--lengths", default="100,1000,10000", help="--memory: sequence lengths (100,1000,10000)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="overwrite the files in an existing --out")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- one model, in a child process

def _spawn(task: dict, threads: int) -> dict:
    """Run ``task`` in a fresh interpreter (``child_main``) and return its result."""
    with tempfile.TemporaryDirectory(prefix="tncn-compare-") as tmp:
        spec, result = Path(tmp) / "task.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps(task))
        code = "import sys; from tncn.commands.compare import child_main; child_main(sys.argv[1], sys.argv[2])"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        previous = signal.signal(signal.SIGTERM, _exit_on_term)
        try:  # a SIGTERM (kill) ends the child too: subprocess.run kills it on any exception
            proc = subprocess.run([sys.executable, "-c", code, str(spec), str(result)], env=env)
        finally:
            signal.signal(signal.SIGTERM, previous)
        if proc.returncode != 0:
            raise UserError(f"the {task['kind']} run stopped with exit status {proc.returncode} (its messages are above)")
        return json.loads(result.read_text())


def _exit_on_term(signum, frame):
    raise SystemExit(128 + signum)


def child_main(spec_path: str, result_path: str) -> None:
    task = json.loads(Path(spec_path).read_text())
    Path(result_path).write_text(json.dumps(run_task(task)))


def run_task(task: dict) -> dict:
    """One ``train`` or ``memory`` task (what a child process runs)."""
    torch.set_num_threads(task["threads"])
    return train_one(task) if task["task"] == "train" else memory_one(task)


def _batches(task: dict):
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
    """Train one model for the budget; its curve, speed, peak memory and test score."""
    from tncn.bench import peak_mb

    _, vocab, train, valid, test = _batches(task)
    device = runs.resolve_device(task["device"])
    torch.manual_seed(task["seed"])
    learner = build_learner(task["kind"], task["options"], len(vocab), device, task["seed"], vocab.level == "frames")
    metric = learner.metric
    _import_optimizers()
    by_time = task["minutes"] is not None
    total = 60.0 * task["minutes"] if by_time else task["tokens"]
    p = Progress()
    spent = (lambda: p.train_s) if by_time else (lambda: p.tokens)
    curve = {"tokens": [], "seconds": [], "wall_seconds": [], metric: []}
    start = time.perf_counter()
    base = peak_mb(device, reset=True)

    def point():
        v = evaluate(learner, valid)
        for key, value in (("tokens", p.tokens), ("seconds", round(p.train_s, 3)),
                           ("wall_seconds", round(time.perf_counter() - start, 3)), (metric, v.mean)):
            curve[key].append(value)
        print(f"{task['kind']}: {p.tokens:,} tokens, {p.train_s:.0f} s of training: valid {v.mean:.4f}", flush=True)

    point()
    for i in range(1, task["points"] + 1):
        mark = total * i / task["points"]
        if spent() < mark:
            fit(learner, train, valid, NEVER, progress=p, should_stop=lambda: spent() >= mark, bar=False)
        point()
    peak = peak_mb(device)
    t = evaluate(learner, test)
    return dict(kind=task["kind"], options=task["options"], params=sizing.n_params(learner),
                hidden=list(task["options"]["hidden"]), tokens=p.tokens, steps=p.step, train_s=round(p.train_s, 3),
                tokens_per_s=round(p.tokens / p.train_s, 1) if p.train_s else None,
                peak_memory_mb=round(peak - base, 1), peak_rss_mb=round(peak, 1),
                **{f"valid_{metric}": curve, f"test_{metric}": t.mean},
                **({"test_accuracy": t.accuracy} if metric == "bpc" else {}))


def memory_one(task: dict) -> dict:
    """Peak memory of one training pass over one sequence of ``T`` random ids (after a warm-up
    pass, so that gradients and optimizer state already exist)."""
    from sequences.batching import Batch
    from tncn.bench import peak_mb, sync

    device = runs.resolve_device(task["device"])
    gen = torch.Generator().manual_seed(task["seed"])
    frames = task["level"] == "frames"
    learner = build_learner(task["kind"], task["options"], task["vocab"], device, task["seed"], frames)

    def batch(T):
        mask = torch.ones(T, task["batch_size"])
        score = mask.bool()
        score[0] = False
        if frames:
            x = torch.rand(T, task["batch_size"], task["vocab"], generator=gen)
        else:
            x = torch.randint(0, task["vocab"], (T, task["batch_size"]), generator=gen)
        return Batch(x, mask, score, reset=True)

    learner.train_segment(batch(3))
    data = batch(task["T"])
    base = peak_mb(device, reset=True)
    learner.train_segment(data)
    sync(device)
    peak = peak_mb(device)
    return {"peak_mb": round(peak, 1), "growth_mb": round(peak - base, 1)}


# --------------------------------------------------------------------------- the command

def run(args) -> int:
    from sequences import text, video
    from tncn.metrics import unigram_entropy

    models = sizing.model_list(args.models)
    hidden = sizing.ints(args.hidden, "--hidden")
    sizing.check_positive(args, ("batch_size", "seq_len", "points", "threads"))
    if args.valid_lines is not None and args.valid_lines <= 0:
        raise UserError(f"--valid-lines must be positive, got {args.valid_lines}")
    if not args.memory:
        if args.minutes is None and args.tokens is None:
            raise UserError("give the budget of each model: --minutes M or --tokens N")
        budget = args.minutes if args.minutes is not None else args.tokens
        if not budget > 0:
            raise UserError(f"the budget must be positive, got {budget}")
    elif args.minutes is not None or args.tokens is not None:
        raise UserError("--memory measures one pass per length; drop --minutes/--tokens")
    sets = sizing.parse_sets(args.set, models)
    runs.resolve_device(args.device)
    out = Path(args.out)
    runs.check_out(out, resume=False, force=args.force)

    data = text.canonical(args.data)
    frames = video.is_video(data)
    if frames and args.level:
        raise UserError("--level applies to text; video is scored per frame")
    shape = dict(frames=args.frames, frame_size=args.frame_size, glyphs=args.glyphs) if frames else {}
    corpus = runs.open_data(data, dict(level="frames" if frames else args.level, **shape))
    protocol = "sequences" if frames else args.protocol
    vocab = corpus.vocabulary(protocol)
    options, target = sizing.plan(models, len(vocab), hidden, args.match, args.bptt, sets, args.seed, frames)
    common = dict(data=data, level=corpus.level, protocol=protocol, batch_size=args.batch_size,
                  seq_len=args.seq_len if protocol == "stream" else None, seed=args.seed,
                  threads=args.threads, device=args.device, **shape)
    if args.memory:
        return _run_memory(args, out, models, options, len(vocab), common)
    for split in ("train", "valid", "test"):  # a batch size the data cannot fill fails here, in one line
        corpus.batches(split, vocab, protocol, args.batch_size, common["seq_len"], args.seed, clamp=split != "train")

    out.mkdir(parents=True, exist_ok=True)
    result = dict(**common, torch=torch.__version__, budget={"minutes": args.minutes} if args.minutes else
                  {"tokens": args.tokens}, match=args.match, ptncn_params=target, points=args.points,
                  valid_lines=args.valid_lines, vocab_size=len(vocab), metric="bce" if frames else "bpc",
                  baseline=corpus.mean_frame_bce() if frames else unigram_entropy(vocab.counts), models={})
    for kind in models:
        print(f"== {kind}: widths {','.join(map(str, options[kind]['hidden']))}", flush=True)
        task = dict(common, task="train", kind=kind, options=options[kind], minutes=args.minutes,
                    tokens=args.tokens, points=args.points, valid_lines=args.valid_lines)
        result["models"][kind] = _spawn(task, args.threads)
        (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_curves(out, result)
    table = format_table(result)
    (out / "table.md").write_text(table + "\n")
    print(table)
    print(f"results in {out}")
    return 0


def _run_memory(args, out: Path, models: list, options: dict, vocab_size: int, common: dict) -> int:
    lengths = sizing.ints(args.lengths, "--lengths")
    if min(lengths) < 2:
        raise UserError("--lengths must be at least 2 (a sequence needs a symbol to predict)")
    out.mkdir(parents=True, exist_ok=True)
    result = dict(**common, torch=torch.__version__, vocab_size=vocab_size, lengths=lengths, models={})
    for kind in models:
        opts = options[kind]
        entry = result["models"][kind] = dict(hidden=opts["hidden"], bptt=opts.get("bptt"), rows={})
        for T in lengths:
            print(f"== {kind}, T = {T:,}", flush=True)
            task = dict(common, task="memory", kind=kind, options=opts, T=T, vocab=vocab_size)
            entry["rows"][str(T)] = _spawn(task, args.threads)
        (out / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
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
        lines.append(f"| {kind} | {','.join(map(str, m['hidden']))} | {m['params']:,} | {m['tokens']:,} | "
                     f"{m['tokens_per_s'] or 0:,.0f} | {m['peak_memory_mb']:,.1f} | "
                     f"{m[f'valid_{metric}'][metric][-1]:.4f} | {m[f'test_{metric}']:.4f} |")
    return "\n".join(lines)


def _save(fig, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


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
        _save(fig, out / name)


def format_memory_table(result: dict) -> str:
    lengths = result["lengths"]
    lines = [f"growth of peak memory (MB) during one training pass over one sequence, batch {result['batch_size']}, "
             f"vocabulary {result['vocab_size']}, {result['device']}",
             "",
             "| model | widths | training | " + " | ".join(f"T = {T:,}" for T in lengths) + " |",
             "|---|---|---|" + "---|" * len(lengths)]
    for kind, m in result["models"].items():
        how = "local (no autograd)" if m["bptt"] is None else ("full BPTT" if str(m["bptt"]) == "full" else f"truncated BPTT, k = {m['bptt']}")
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
    _save(fig, out / "memory_vs_length.png")

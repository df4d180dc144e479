"""Speed and memory of a P-TNCN training step, measured against the machine and against BPTT.

One run measures, side by side (so ratios are meaningful on a noisy shared machine):

- the float32 matrix-multiply rate of this machine (GFLOP/s), square and at P-TNCN's shape;
- tokens/s of P-TNCN training (``train_segment`` of the ``ptncn`` learner that ``tncn compare``
  runs: hypothesize, correct, local updates, the reference Nesterov SGD, scoring) on three update
  paths timed in turn (``learner_train_rates``): the optimizer fused into the step (the default,
  ``tncn.fused``), ``.grad`` + ``torch.optim`` and the ``torch.compile``'d step; and its *useful*
  GFLOP/s: the FLOPs of the products the equations need (``ptncn_flops_per_token``) divided by
  the time, as a fraction of the measured matrix-multiply rate;
- a bound for each path from two measured rates (``ptncn_bound``): its products at the matmul
  rate of the step's own shape, then its weight traffic (``ptncn_step_bytes``, which counts the
  passes of the path the model is on) at the measured memory bandwidth;
- on a CUDA device, the GPU rows (``gpu_rows``): P-TNCN at H = 1000, 2048, 4096 and B = 50, 256,
  1024, its step captured as a CUDA graph, beside the same-size cuDNN LSTM;
- tokens/s of the ``lstm`` and ``gru`` learners (one-hot input, Adam) with truncated BPTT (window
  50) at the same width, depth and batch;
- tokens/s of the online learners of an Elman network (``rtrl``, ``uoro``, ``snap1``; one layer,
  batch 32; ``--online``: only these) at H = 128 and 256, RTRL at 32, 64 and 128 (a width over
  its memory limit is a row that says what it would need), with the peak memory of a training
  pass over T = 100, beside P-TNCN at the same batch;
- peak memory growth of one training pass over a single sequence of length T for P-TNCN and for
  the LSTM trained by full BPTT (``memory_pass``, each in a fresh process: ``peak_memory_mb``; CPU:
  growth of the peak resident set size over the set-up, the peak being reset first through
  /proc/self/clear_refs; CUDA: ``torch.cuda.max_memory_allocated``); ``tncn compare --memory``
  measures its table the same way.

Every token here is real (random ids, no padding): the rates count real tokens only.
"""
from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass

import torch

import tncn
from sequences.batching import Batch
from tncn import files, isolate
from tncn.errors import UserError
from tncn.temporal import build_learner, learner_class


def sync(device):
    """Wait for queued CUDA work (a no-op on the CPU), so a timing or a memory peak is complete."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _median_rate(fn, work: float, repeats: int, device) -> float:
    """Median of ``work / seconds`` over ``repeats`` calls of ``fn`` (after one warm-up call)."""
    fn()
    sync(device)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        rates.append(work / (time.perf_counter() - t0))
    return statistics.median(rates)


def matmul_gflops(m: int, k: int, n: int, device="cpu", repeats: int = 5) -> float:
    """Measured float32 GFLOP/s of an [m,k] @ [k,n] product (2mkn FLOPs)."""
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    out = torch.empty(m, n, device=device)
    calls = min(1000, max(1, int(2e9 / (2 * m * k * n))))

    def run():
        for _ in range(calls):
            torch.mm(a, b, out=out)
    return _median_rate(run, 2 * m * k * n * calls / 1e9, repeats, device)


def stream_gbps(device="cpu", n: int = 2**25, repeats: int = 5) -> float:
    """Measured memory bandwidth (GB/s) of c = a + b over float32 arrays of n elements (12n bytes)."""
    a, b = torch.rand(n, device=device), torch.rand(n, device=device)
    c = torch.empty(n, device=device)
    return _median_rate(lambda: torch.add(a, b, out=c), 12 * n / 1e9, repeats, device)


GRAD_PASSES = {"sgd": 3, "momentum": 5, "nesterov": 5, "adam": 7}
"""Weight-sized passes of torch's fused kernel per weight under the ``.grad`` contract (SGD reads
weight and update and writes the weight; with momentum it also reads and writes the buffer; Adam
reads and writes two moments)."""
FUSED_PASSES = {"sgd": 2, "momentum": 5, "nesterov": 4, "adam": 6}
"""The same with the optimizer fused into the step (``tncn.fused``): SGD, an addmm into the weight
(read, write); heavy-ball momentum, an addmm into the buffer, then w − lr·b (read and write the
buffer, read it and the weight, write the weight); Nesterov and Adam step from a scratch tile
that stays in cache (read and write the weight and its one or two buffers)."""


def ptncn_step_bytes(model: "tncn.PTNCN", optimizer: str = "nesterov") -> int:
    """Bytes of weight-sized memory traffic in one training step with ``optimizer``, on the update
    path the model is on (``PTNCN.use_optimizer``; none attached: the ``.grad`` contract).

    ``.grad``: each update written once (ΔE, a scaled copy of ΔW under the transpose rule: read
    ΔW, write ΔE), then ``GRAD_PASSES``. Fused: ``FUSED_PASSES``, except a held E^l = γ W^l + D^l
    (read W and D, write E: 3) and, for token inputs, ΔM^1 under SGD without momentum or with its
    rows stepped lazily (``tncn.lazy_rows``: B rows a step, and one pass per segment, not
    counted: 0) or else its V-row scratch (zeroed and read back: 2 more)."""
    fused, held = model.steps_optimizer, set(model._held)
    total = 0
    for name, p in model.named_parameters():
        size = p.numel() * p.element_size()
        copy = name[0] == "E" and model.e_rule == "transpose"
        if not fused:
            passes = (2 if copy else 1) + GRAD_PASSES[optimizer]
        elif name[0] == "E" and int(name[1:]) in held:
            passes = 3
        elif name == "M1" and model.tokens:
            passes = 0 if optimizer == "sgd" or model._lazy is not None else FUSED_PASSES[optimizer] + 2
        else:
            passes = FUSED_PASSES[optimizer]
        total += passes * size
    return total


def ptncn_bound(flops_per_token: float, step_bytes: int, batch: int, gflops: float, gbps: float) -> float:
    """Tokens/s a step could reach if its products ran at ``gflops`` and its weight traffic at
    ``gbps``, one after the other, and nothing else cost time (a roofline for the recipe)."""
    return batch / (flops_per_token * batch / (gflops * 1e9) + step_bytes / (gbps * 1e9))


def ptncn_flops_per_token(model: "tncn.PTNCN") -> float:
    """FLOPs per observation that the P-TNCN equations need (``tncn.temporal.ptncn``), K = 1.

    2·(rows·cols) per weight for each product a row vector goes through: the hypothesis
    (M^l for l > 1 — M^1 is a row gather for tokens — V^l, U^l, and the predictions W^l), the
    correction (E^l), and the outer-product updates (W^l, M^l, V^l, U^l; E^l by the temporal rule
    only, the default rule transposes ΔW). Gathers, index-adds and elementwise work are not counted.
    """
    flops = 0.0
    for name, p in model.named_parameters():
        kind, size = name[0], p.numel()
        first_input = name == "M1" and model.tokens
        hypothesis = kind in "MVUW" and not first_input
        correction = kind == "E"
        update = kind in "MVUW" and not first_input or (kind == "E" and model.e_rule == "temporal")
        flops += 2 * size * (hypothesis + correction + update)
    return flops


def random_batch(size: int, steps: int, batch: int, generator: torch.Generator, frames: bool = False,
                 reset: bool = False) -> Batch:
    """``steps`` × ``batch`` random ids of a vocabulary of ``size`` (or binary frames of ``size``
    pixels), all real; every position scored but the first after a reset."""
    x = (torch.rand(steps, batch, size, generator=generator).round() if frames
         else torch.randint(0, size, (steps, batch), generator=generator))
    mask = torch.ones(steps, batch)
    score = mask.bool()
    if reset:
        score[0] = False
    return Batch(x, mask, score, reset)


def learner_train_rates(learners: dict, batch: int, steps: int, repeats: int = 5) -> dict:
    """Tokens/s of each learner's ``train_segment`` (learners as ``tncn compare`` builds them) on
    segments of ``steps`` random observations in ``batch`` rows, the state carried from one to the
    next: one warm-up segment each, then ``repeats`` rounds that time every learner in turn (so
    their ratios share the machine's state); the median per learner."""
    gen = torch.Generator().manual_seed(0)
    segments = {}
    for key, learner in learners.items():
        learner.train_segment(random_batch(learner.size, 2, batch, gen, learner.frames, reset=True))
        segments[key] = random_batch(learner.size, steps, batch, gen, learner.frames)
        learner.train_segment(segments[key])
    rates = {key: [] for key in learners}
    for _ in range(repeats):
        for key, learner in learners.items():
            sync(learner.device)
            t0 = time.perf_counter()
            learner.train_segment(segments[key])
            sync(learner.device)
            rates[key].append(steps * batch / (time.perf_counter() - t0))
    return {key: statistics.median(r) for key, r in rates.items()}


def learner_train_rate(learner, batch: int, steps: int, repeats: int = 5) -> float:
    """``learner_train_rates`` of one learner."""
    return learner_train_rates({0: learner}, batch, steps, repeats)[0]


def ptncn_learner(hidden, vocab, device="cpu", tokens=True, **options):
    """The ``ptncn`` learner (reference options but ``options``) that the P-TNCN rows time."""
    return build_learner("ptncn", {"hidden": list(hidden), **options}, vocab, device, frames=not tokens)


def ptncn_steps(learner, batch: int) -> int:
    """Time steps per timed segment: about 10 GFLOP of P-TNCN products, between 40 and 400 (a
    training segment's length, so that what a segment costs once, and the caches the learners
    timed in turn take from each other, weigh as little as they do in training)."""
    return min(400, max(40, int(1e10 / (ptncn_flops_per_token(learner.model) * batch))))


def ptncn_train_rate(hidden, vocab, batch, device="cpu", repeats=5, tokens=True, **options) -> float:
    """Tokens/s of P-TNCN training (the ``ptncn`` learner; ``compile=True`` compiles in the
    untimed warm-up)."""
    learner = ptncn_learner(hidden, vocab, device, tokens, **options)
    return learner_train_rate(learner, batch, ptncn_steps(learner, batch), repeats)


def bptt_train_rate(cell, hidden, layers, vocab, batch, window=50, device="cpu", repeats=5) -> float:
    """Tokens/s of the ``cell`` learner (lstm, gru, rnn) with truncated BPTT (window ``window``)."""
    windows = max(2, int(20 * 50 * 256 * 256 / (window * hidden * hidden)))
    learner = build_learner(cell, {"hidden": [hidden] * layers, "bptt": window}, vocab, device)
    return learner_train_rate(learner, batch, windows * window, repeats)


ONLINE = ("rtrl", "uoro", "snap1")
"""The online learners the table times (``tncn.temporal.online``)."""


def online_train_rate(kind: str, hidden: int, vocab: int, batch: int, device="cpu", repeats=5) -> float:
    """Tokens/s of the online learner ``kind`` at one layer of width ``hidden`` (its defaults)."""
    learner = build_learner(kind, {"hidden": [hidden]}, vocab, device)
    P = sum(p.numel() for p in learner.model.parameters())
    per_step = 2.0 * batch * P * (hidden if kind == "rtrl" else 1)  # RTRL's trace product dominates
    steps = max(3, min(100, int(2e10 / per_step)))
    return learner_train_rate(learner, batch, steps, repeats)


# --------------------------------------------------------------------------- memory

def memory_pass(task: dict) -> dict:
    """Peak memory of one training pass of the learner ``task["kind"]`` (``options``, observation
    ``size``, ``frames``) over one sequence of ``T`` random observations in ``batch_size`` rows,
    after a warm-up pass, so that gradients and optimizer state already exist: ``peak_mb`` and its
    ``growth_mb`` over the set-up. Run it in a fresh process (``peak_memory_mb``)."""
    device = task["device"]
    gen = torch.Generator().manual_seed(task["seed"])
    learner = build_learner(task["kind"], task["options"], task["size"], device, task["seed"], task["frames"])
    learner.train_segment(random_batch(task["size"], 3, task["batch_size"], gen, task["frames"], reset=True))
    data = random_batch(task["size"], task["T"], task["batch_size"], gen, task["frames"], reset=True)
    base = peak_mb(device, reset=True)
    learner.train_segment(data)
    sync(device)
    peak = peak_mb(device)
    return {"peak_mb": round(peak, 1), "growth_mb": round(peak - base, 1)}


def peak_mb(device, reset=False) -> float:
    """Peak memory in MB so far (CUDA: allocated by torch; CPU: the process peak RSS); ``reset`` restarts it."""
    if torch.device(device).type == "cuda":
        if reset:
            torch.cuda.reset_peak_memory_stats()
        return torch.cuda.max_memory_allocated() / 2**20
    # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM) to the current one
    if reset:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def peak_memory_mb(kind: str, options: dict, T: int, batch: int = 32, size: int = 49, frames: bool = False,
                   device="cpu", seed: int = 0, threads: int = 1) -> dict:
    """``memory_pass`` in a fresh interpreter."""
    task = dict(kind=kind, options=options, T=T, batch_size=batch, size=size, frames=frames, device=str(device),
                seed=seed)
    return isolate.run("tncn.bench:memory_pass", task, threads, f"{kind} memory (T = {T:,})")


# --------------------------------------------------------------------------- the table

@dataclass
class Row:
    config: str
    tokens_per_s: float | None = None
    useful_gflops: float | None = None
    fraction_of_matmul_peak: float | None = None
    bound_tokens_per_s: float | None = None
    fraction_of_bound: float | None = None
    peak_memory_mb: float | None = None
    note: str = ""


def online_rows(device, repeats: int, quick: bool, progress) -> list:
    """The online learners' rows, beside P-TNCN at the same batch (L = 2, H = 128, B = 32)."""
    rows = [Row("P-TNCN L=2 H=128 B=32 V=49", ptncn_train_rate([128, 128], 49, 32, device, repeats),
                note="the same batch as the online rows")]
    for kind in ONLINE:
        cls = learner_class(kind)
        widths = (32, 64, 128) if kind == "rtrl" else (128, 256)
        for H in widths[:1] if quick else widths:
            config = f"{cls.label} L=1 H={H} B=32 V=49"
            try:
                cls.check_fit(49, cls.read_options({"hidden": [H]}), 32)
            except UserError as err:
                rows.append(Row(config, note=str(err)))
                continue
            progress(f"{cls.label} H={H} ...")
            memory = peak_memory_mb(kind, {"hidden": [H]}, 100, device=device, threads=torch.get_num_threads())
            rows.append(Row(config, online_train_rate(kind, H, 49, 32, device, repeats),
                            peak_memory_mb=memory["peak_mb"],
                            note=f"growth during a pass over T=100: {memory['growth_mb']:,.1f} MB"))
    return rows


GPU_WIDTHS = (1000, 2048, 4096)
GPU_BATCHES = (50, 256, 1024)


def gpu_rows(device, repeats: int, peak: float, widths=GPU_WIDTHS, batches=GPU_BATCHES, progress=print,
             graph: bool = True) -> list:
    """P-TNCN (L = 2, V = 49, the reference optimizer fused into the step, the step captured as a
    CUDA graph: the ``cuda_graph`` option) beside the same-size cuDNN LSTM with truncated BPTT
    (window 50), timed in turn, at each width H and batch B; each P-TNCN row's useful GFLOP/s as a
    fraction of ``peak`` (the run's 2048³ rate) and, in the note, of the measured B×H @ H×H rate.
    The widest, B = 256 configuration is also run with TF32 matmuls. ``graph=False`` runs the
    same rows eagerly and in fp32 (how the CPU tests run it)."""
    rows = []
    for H in widths:
        for B in batches:
            progress(f"GPU: P-TNCN and LSTM H={H} B={B} ...")
            shape = matmul_gflops(B, H, H, device, repeats)
            variants = {"fp32": {"cuda_graph": graph}}
            if graph and H == max(widths) and B == sorted(batches)[len(batches) // 2]:
                variants["tf32"] = {"cuda_graph": graph, "precision": "tf32"}
            learners = {key: ptncn_learner([H, H], 49, device, **o) for key, o in variants.items()}
            learners["lstm"] = build_learner("lstm", {"hidden": [H, H], "bptt": 50}, 49, device)
            steps = 50 * max(1, ptncn_steps(learners["fp32"], B) // 50)
            rates = learner_train_rates(learners, B, steps, repeats)
            flops = ptncn_flops_per_token(learners["fp32"].model)
            for key in variants:
                useful = rates[key] * flops / 1e9
                rows.append(Row(f"GPU P-TNCN L=2 H={H} B={B} V=49{', TF32' if key == 'tf32' else ''}", rates[key],
                                useful, useful / peak,
                                note=f"{useful / shape:.0%} of the {B}×{H} @ {H}×{H} rate ({shape:,.0f} GFLOP/s); "
                                     f"P-TNCN / LSTM = {rates[key] / rates['lstm']:.2f}"))
            rows.append(Row(f"GPU LSTM L=2 H={H} B={B}, cuDNN, truncated BPTT (50)", rates["lstm"]))
    return rows


def run_all(device="cpu", repeats=5, quick=False, progress=print, online_only=False) -> dict:
    """Measure everything (``online_only``: the rates and the online learners' rows); return the
    JSON-ready result (also see ``format_table``)."""
    result = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "repeats": repeats, "rows": []}
    progress("matrix multiply and memory bandwidth ...")
    result["matmul_gflops"] = matmul_gflops(2048, 2048, 2048, device, repeats)
    result["matmul_gflops_50x1000x1000"] = matmul_gflops(50, 1000, 1000, device, repeats)
    result["stream_gbps"] = stream_gbps(device, repeats=repeats)
    rows, shape_gflops = [], {}

    def ptncn_row(config, model, rate, note=""):
        flops = ptncn_flops_per_token(model)
        H = model.hidden[0]
        if H not in shape_gflops:
            shape_gflops[H] = matmul_gflops(50, H, H, device, repeats)
        bound = ptncn_bound(flops, ptncn_step_bytes(model), 50, shape_gflops[H], result["stream_gbps"])
        useful = rate * flops / 1e9
        return Row(config, rate, useful, useful / result["matmul_gflops"], bound, rate / bound, note=note)

    if not online_only:
        for H in [256] if quick else [256, 1000]:
            progress(f"P-TNCN H={H}: fused, .grad, compiled ...")
            learners = {"fused": ptncn_learner([H, H], 49, device), ".grad": ptncn_learner([H, H], 49, device, fused=False),
                        "compiled": ptncn_learner([H, H], 49, device, compile=True)}
            rates = learner_train_rates(learners, 50, ptncn_steps(learners["fused"], 50), repeats)
            for key, label in (("fused", ""), (".grad", ", .grad + torch.optim"), ("compiled", ", torch.compile")):
                note = learners[key].update_path
                if key != "fused":
                    note = f"fused / this = {rates['fused'] / rates[key]:.2f}; {note}"
                rows.append(ptncn_row(f"P-TNCN L=2 H={H} B=50 V=49{label}", learners[key].model, rates[key], note))
            for cell in ("lstm", "gru"):
                progress(f"{cell.upper()} H={H} ...")
                r = bptt_train_rate(cell, H, 2, 49, 50, 50, device, repeats)
                rows.append(Row(f"{cell.upper()} L=2 H={H} B=50, truncated BPTT (50)", r,
                                note=f"P-TNCN / {cell.upper()} = {rates['fused'] / r:.2f}"))
        if not quick:
            progress("P-TNCN word level: fused, .grad ...")
            learners = {"fused": ptncn_learner([1000, 1000], 10000, device),
                        ".grad": ptncn_learner([1000, 1000], 10000, device, fused=False)}
            rates = learner_train_rates(learners, 50, ptncn_steps(learners["fused"], 50), max(1, repeats // 2))
            for key, label in (("fused", ""), (".grad", ", .grad + torch.optim")):
                note = learners[key].update_path if key == "fused" else f"fused / this = {rates['fused'] / rates[key]:.2f}"
                rows.append(ptncn_row(f"P-TNCN L=2 H=1000 B=50 V=10000 (word){label}", learners[key].model,
                                      rates[key], note))
        if torch.device(device).type == "cuda" and not quick:
            rows += gpu_rows(device, repeats, result["matmul_gflops"], progress=progress)
        for kind, label in (("ptncn", "P-TNCN (no autograd)"), ("lstm", "LSTM, full BPTT")):
            for T in [100, 1000] if quick else [100, 1000, 10000]:
                progress(f"memory {label} T={T} ...")
                m = peak_memory_mb(kind, {"hidden": [256, 256]}, T, device=device, threads=torch.get_num_threads())
                rows.append(Row(f"memory {label} T={T} H=256 B=32", peak_memory_mb=m["peak_mb"],
                                note=f"growth during the pass: {m['growth_mb']:,.1f} MB"))
    rows += online_rows(device, repeats, quick, progress)
    result["matmul_gflops_50xHxH"] = shape_gflops  # the rates the bounds used, by width H
    result["rows"] = [r.__dict__ for r in rows]
    return result


def format_table(result: dict) -> str:
    def f(v, fmt):
        return "" if v is None else format(v, fmt)
    lines = [
        f"device {result['device']}, torch {result['torch']}, {result['threads']} threads, median of {result['repeats']}",
        f"matrix multiply: {result['matmul_gflops']:.0f} GFLOP/s (2048³), "
        f"{result['matmul_gflops_50x1000x1000']:.0f} GFLOP/s (50×1000 @ 1000×1000); "
        f"memory bandwidth {result['stream_gbps']:.1f} GB/s (c = a + b)",
        "bound: the tokens/s if the step's products ran at the measured rate of its shape (50×H @ H×H) and "
        "its weight traffic (the update path's weight-sized passes, tncn.bench.ptncn_step_bytes) at the measured "
        "bandwidth, and nothing else cost time",
        "",
        "| configuration | tokens/s | useful GFLOP/s | fraction of matmul peak | bound tokens/s | fraction of bound "
        "| peak memory MB | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['config']} | {f(r['tokens_per_s'], ',.0f')} | {f(r['useful_gflops'], '.1f')} | "
                     f"{f(r['fraction_of_matmul_peak'], '.0%')} | {f(r['bound_tokens_per_s'], ',.0f')} | "
                     f"{f(r['fraction_of_bound'], '.0%')} | {f(r['peak_memory_mb'], ',.0f')} | {r['note']} |")
    return "\n".join(lines)


def save_json(result: dict, path: str) -> None:
    files.write_json(path, result)

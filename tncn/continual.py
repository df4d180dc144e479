"""Continual-learning scores: the score matrix, its summaries, its plots and a Markdown table.

A model trains on the tasks (experiences) 0..N-1 of a stream in turn. The score matrix R
(Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning") is N x N with
``R[i][j]`` = the score on task j after training on tasks 0..i. Scores here are usually losses
(bits per character, BCE per frame: lower is better), sometimes accuracies; with the sign
``s = +1`` if higher is better else ``-1``, every summary keeps the literature's meaning:

- average final score: ``mean_j R[N-1][j]`` (the raw score, no sign);
- backward transfer (Lopez-Paz & Ranzato 2017):
  ``BWT = 1/(N-1) sum_{j<N-1} s (R[N-1][j] - R[j][j])``; positive: later training improved the
  earlier tasks, negative: forgetting;
- forward transfer (Lopez-Paz & Ranzato 2017), given the scores ``b[j]`` before any training:
  ``FWT = 1/(N-1) sum_{j>=1} s (R[j-1][j] - b[j])``; positive: earlier tasks helped a task not
  yet trained on;
- forgetting (Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning"), per task j < N-1:
  ``f_j = max_{l in [j, N-2]} s R[l][j] - s R[N-1][j]`` (the best score it ever had minus its final
  one; > 0 is forgetting, < 0 means it kept improving), and its mean over j < N-1;
- learning: ``R[j][j]``, the score just after learning task j.

Plots use ``matplotlib.figure.Figure`` (never pyplot) and are written atomically.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from tncn import files


def _matrix(R, what: str = "the score matrix") -> np.ndarray:
    """R as a square float array with finite entries, or ValueError."""
    try:
        a = np.asarray([list(row) for row in R], dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a square matrix of numbers ({err})") from None
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{what} must be a non-empty square N x N matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        i, j = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"{what} has a non-finite entry at [{i}][{j}]: {a[i, j]}")
    return a


def summarize(R, higher_is_better: bool = False, initial=None) -> dict:
    """The summaries of the score matrix R (see the module docstring): ``average_final``, ``bwt``,
    ``forgetting`` (per task, None for the last), ``average_forgetting``, ``fwt`` (None without
    ``initial``, the scores before any training) and ``learning`` (per task)."""
    a = _matrix(R)
    n = a.shape[0]
    s = 1.0 if higher_is_better else -1.0
    b = None
    if initial is not None:
        try:
            b = np.asarray(list(initial), dtype=float)
        except (TypeError, ValueError) as err:
            raise ValueError(f"the initial scores must be numbers ({err})") from None
        if b.shape != (n,):
            raise ValueError(f"the initial scores must be a list of {n} numbers (one per task), got shape {b.shape}")
        if not np.isfinite(b).all():
            raise ValueError(f"the initial scores must be finite, got {b.tolist()}")
    last = a[n - 1]
    forgetting = [float(np.max(s * a[j:n - 1, j]) - s * last[j]) for j in range(n - 1)] + [None]
    return {
        "average_final": float(last.mean()),
        "bwt": float(np.mean([s * (last[j] - a[j, j]) for j in range(n - 1)])) if n > 1 else None,
        "forgetting": forgetting,
        "average_forgetting": float(np.mean(forgetting[:-1])) if n > 1 else None,
        "fwt": (float(np.mean([s * (a[j - 1, j] - b[j]) for j in range(1, n)]))
                if n > 1 and b is not None else None),
        "learning": [float(a[j, j]) for j in range(n)],
    }


def _check_names(matrices: dict, task_names) -> dict:
    if not matrices:
        raise ValueError("no models to show: give at least one score matrix")
    out = {}
    for model, R in matrices.items():
        a = _matrix(R, f"the score matrix of {model!r}")
        if a.shape[0] != len(task_names):
            raise ValueError(f"the score matrix of {model!r} is {a.shape[0]} x {a.shape[0]} "
                             f"but there are {len(task_names)} task names")
        out[model] = a
    return out


def plot_matrix(path, matrices: dict, task_names: list, unit: str, higher_is_better: bool = False) -> None:
    """One heat map of R per model, side by side, on one shared colour scale; "better" has the
    same colour whether scores are losses or accuracies (viridis: bright is better)."""
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    arrays = _check_names(matrices, task_names)
    n, k = len(task_names), len(arrays)
    lo = min(float(a.min()) for a in arrays.values())
    hi = max(float(a.max()) for a in arrays.values())
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    norm = Normalize(lo, hi)
    cmap = "viridis" if higher_is_better else "viridis_r"
    side = max(3.0, 0.9 * n + 1.8)
    fig = Figure(figsize=(side * k + 1.2, side), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, k, squeeze=False)[0])
    im = None
    for ax, (model, a) in zip(axes, arrays.items()):
        im = ax.imshow(a, cmap=cmap, norm=norm)
        for i in range(n):
            for j in range(n):
                # bright (better) cells get dark text, dark cells light text
                shade = norm(a[i, j]) if higher_is_better else 1.0 - norm(a[i, j])
                ax.text(j, i, f"{a[i, j]:.2f}", ha="center", va="center", fontsize=9,
                        color="black" if shade > 0.6 else "white")
        ax.set_xticks(range(n), task_names, rotation=30, ha="right")
        ax.set_yticks(range(n), [f"after {t}" for t in task_names])
        ax.set_xlabel("score on task")
        ax.set_ylabel("after training on task")
        ax.set_title(model)
    better = "higher is better" if higher_is_better else "lower is better"
    fig.colorbar(im, ax=list(axes), label=f"{unit} ({better})", shrink=0.85)
    files.save_figure(fig, path)


def plot_curves(path, curves: dict, task_names: list, unit: str) -> None:
    """One panel per model: the score on every task against the training tokens over the whole
    stream, with dashed lines where each experience ends. ``curves[model]`` is
    ``{"tokens": [...], "scores": {task: [...]}, "boundaries": [...]}`` (None scores: not measured)."""
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("no models to show: give at least one set of curves")
    for model, c in curves.items():
        for key in ("tokens", "scores", "boundaries"):
            if key not in c:
                raise ValueError(f"the curves of {model!r} lack {key!r}")
        for task, ys in c["scores"].items():
            if len(ys) != len(c["tokens"]):
                raise ValueError(f"the curves of {model!r}: {len(ys)} scores on {task!r} "
                                 f"for {len(c['tokens'])} token counts")
    k = len(curves)
    fig = Figure(figsize=(5.5 * k, 4), layout="constrained")
    axes = fig.subplots(1, k, squeeze=False, sharey=True)[0]
    for ax, (model, c) in zip(axes, curves.items()):
        x = list(c["tokens"])
        for task in task_names:
            if task in c["scores"]:
                y = [math.nan if v is None else float(v) for v in c["scores"][task]]
                ax.plot(x, y, ".-", label=task)
        start = 0.0
        labels = ax.get_xaxis_transform()  # x in data, y in axes fraction
        for b, name in zip(c["boundaries"], task_names):
            ax.axvline(b, color="gray", ls="--", lw=1)
            ax.text((start + b) / 2, 0.98, name, transform=labels, ha="center", va="top", fontsize=8,
                    color="dimgray", clip_on=True)
            start = b
        ax.set_xlabel("training tokens (whole stream)")
        ax.set_ylabel(unit)
        values = [v for ys in c["scores"].values() for v in ys if v is not None and v > 0]
        if values and max(values) > 3 * min(values):  # e.g. untrained scores far above trained ones
            ax.set_yscale("log")
        ax.set_title(model)
        ax.grid(alpha=0.3)

    handles, labels = axes[0].get_legend_handles_labels()
    if handles:  # one legend for all panels, outside them, so that no line hides behind it
        fig.legend(handles, labels, loc="outside right center", fontsize=8, title="score on")
    files.save_figure(fig, path)


def _fmt(x, sign: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.3f}" if sign else f"{x:.3f}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def format_table(summaries: dict, matrices: dict, task_names, unit: str, diverged: Optional[dict] = None) -> str:
    """Markdown for the terminal: per model its score matrix (rows "after <task>") and a line with
    the average final score, BWT, average forgetting and FWT (where measured); a model of
    ``diverged`` (``{model: {"experience", "step", "what"}}``) gets one line saying where it diverged."""
    arrays = _check_names(matrices, task_names) if matrices else {}
    lines = []
    for model, d in (diverged or {}).items():
        lines += [f"### {model}", "", f"diverged during {_cell(d['experience'])} at step {d['step']:,}: "
                                      f"{_cell(d['what'])}", ""]
    for model, a in arrays.items():
        lines += [f"### {model}", "",
                  f"| {_cell(unit)} | " + " | ".join(_cell(t) for t in task_names) + " |",
                  "|---|" + "---:|" * len(task_names)]
        for i, t in enumerate(task_names):
            lines.append(f"| after {_cell(t)} | " + " | ".join(_fmt(v) for v in a[i]) + " |")
        s = summaries.get(model)
        if s:
            parts = [f"average final {_fmt(s['average_final'])} {unit}"]
            if s.get("bwt") is not None:
                parts.append(f"BWT {_fmt(s['bwt'], True)}")
            if s.get("average_forgetting") is not None:
                parts.append(f"average forgetting {_fmt(s['average_forgetting'], True)}")
            if s.get("fwt") is not None:
                parts.append(f"FWT {_fmt(s['fwt'], True)}")
            lines += ["", " · ".join(parts)]
        lines.append("")
    lines.append("(BWT, FWT > 0: other tasks helped; forgetting > 0: a task lost ground after it was learned.)")
    return "\n".join(lines)

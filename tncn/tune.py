"""Hyperparameter search for a sequence learner with Optuna (Akiba et al., KDD 2019): the study, one
trial, and the study's plots, table and best preset.

The first trial of a study is the learner's untuned setting (its defaults, where the space holds
them), so that what tuning changed is measured on the same budget.

The study minimises the validation score (BPC, or BCE per frame) at the end of a trial's budget.
Its sampler is TPE (Bergstra et al., NeurIPS 2011; multivariate, so that a learning rate is
modelled with its optimizer) after random start-up trials, and a median pruner stops a trial
whose score at a mark of its budget (from the middle of the budget on; not at its end) is worse
than the median of earlier trials at the same mark.

Each trial runs in a fresh process (``tncn.isolate``, as ``tncn compare`` runs a model) with the
same budget: ``run_trial`` reopens the study from its storage, reports the validation score at
each of ``points`` marks and asks whether to stop. The study lives in an Optuna storage (SQLite in
the run folder by default): a study is resumable, and several ``tncn tune`` processes, on one
machine or on several sharing a database URL, can work on one study. A diverged trial
(``tncn.guard``) is told the no-context baseline as its value (no better than knowing nothing),
so the sampler steers away from it, and is marked ``diverged``.
"""
from __future__ import annotations

import datetime
import math
import time
import warnings
from typing import Optional

from tncn import files

STATE_DIVERGED = "diverged"


def load_optuna():
    """The optuna module, with its per-trial log lines off (tncn prints its own)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_study(storage: str, name: str, seed: Optional[int], trials: int, points: int, attrs: dict):
    """The study ``name`` in ``storage`` (created, or loaded when it exists; ``attrs`` are its
    settings, which a process joining an existing study must share). The sampler's seed is
    ``seed`` plus the trials the study already has (None: drawn from the OS)."""
    from tncn.errors import UserError

    optuna = load_optuna()
    try:
        existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    except Exception as err:  # a bad URL, an unreadable file: every storage error reads as one line
        raise UserError(f"--storage {storage}: {str(err).splitlines()[0]}") from None
    offset = existing[name].n_trials if name in existing else 0
    with warnings.catch_warnings():  # Optuna marks multivariate TPE experimental
        warnings.simplefilter("ignore")
        sampler = optuna.samplers.TPESampler(seed=None if seed is None else seed + offset, multivariate=True,
                                             n_startup_trials=max(3, min(10, trials // 3)))
    # compare trials from the middle of the budget on: early curves are close and noisy
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, (points + 1) // 2))
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", attrs)
    elif saved != attrs:
        differ = sorted(k for k in set(saved) | set(attrs) if saved.get(k) != attrs.get(k))
        raise UserError(f"the study {name!r} in {storage} was made with other settings ({', '.join(differ)}); "
                        f"give the same ones or another --study")
    return study


def counts(study) -> dict:
    """How many trials are finished (complete, pruned or failed) and running."""
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    return {"finished": sum(s in ("COMPLETE", "PRUNED", "FAIL") for s in states),
            "running": states.count("RUNNING")}


def fail_stale(study, older_than_s: float) -> int:
    """Mark as failed the running trials started more than ``older_than_s`` ago (their process
    was killed); returns how many."""
    optuna = load_optuna()
    now = datetime.datetime.now()
    stale = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
             if t.datetime_start is not None and (now - t.datetime_start).total_seconds() > older_than_s]
    for t in stale:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(stale)


# --------------------------------------------------------------------------- one trial, in a child process

def run_trial(task: dict) -> dict:
    """Train one setting for the trial's budget, reporting to the study at each mark (what the child
    process of each trial runs). Returns the state (complete, pruned, diverged), the curve and the
    final validation score."""
    import torch

    from tncn import runs
    from tncn.commands.compare import batches_of
    from tncn.guard import Diverged, Watch
    from tncn.temporal import build_learner
    from tncn.train import Progress, evaluate, fit_marks

    optuna = load_optuna()
    study = optuna.load_study(study_name=task["study"], storage=task["storage"])
    trial = optuna.trial.Trial(study, task["trial_id"])
    _, vocab, train, valid, _ = batches_of(task)
    device = runs.resolve_device(task["device"])
    torch.manual_seed(task["seed"])
    learner = build_learner(task["kind"], task["options"], len(vocab), device, task["seed"], vocab.level == "frames")
    watch = Watch(task["baseline"])
    curve = {"tokens": [], "seconds": [], "score": []}

    def mark(p):
        v = evaluate(learner, valid).mean
        watch.check(v, p.step)
        for key, value in (("tokens", p.tokens), ("seconds", round(p.train_s, 3)), ("score", v)):
            curve[key].append(value)
        trial.report(v, len(curve["score"]))
        if len(curve["score"]) < task["points"] and trial.should_prune():  # a finished trial is complete
            raise optuna.TrialPruned()

    p = Progress()
    out = dict(curve=curve)
    t0 = time.perf_counter()
    try:
        fit_marks(learner, train, task["minutes"], task["tokens"], task["points"], mark, progress=p)
        out.update(state="complete", value=curve["score"][-1])
    except optuna.TrialPruned:
        out.update(state="pruned", value=curve["score"][-1])
    except Diverged as err:
        out.update(state=STATE_DIVERGED, value=None, diverged=err.to_dict())
    out.update(tokens=p.tokens, steps=p.step, train_s=round(p.train_s, 3), wall_s=round(time.perf_counter() - t0, 1))
    return out


# --------------------------------------------------------------------------- results

def best_trial(study):
    """The best complete trial that did not diverge, or None."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"
            and not t.user_attrs.get(STATE_DIVERGED) and t.value is not None and math.isfinite(t.value)]
    return min(done, key=lambda t: t.value) if done else None


def rows(study) -> list[dict]:
    """One row per finished trial: number, state, value, the options it set, tokens trained."""
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name in ("RUNNING", "WAITING"):
            continue
        state = STATE_DIVERGED if t.user_attrs.get(STATE_DIVERGED) else t.state.name.lower()
        out.append(dict(number=t.number, state=state, value=None if state == STATE_DIVERGED else t.value,
                        options=t.user_attrs.get("options", {}), tokens=t.user_attrs.get("tokens"),
                        defaults=bool(t.user_attrs.get("defaults"))))
    return out


def show(v) -> str:
    """An option value in a table: floats to three figures."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def format_table(study, metric: str, baseline: float) -> str:
    from tncn.metrics import METRICS

    column = METRICS[metric].column
    best = best_trial(study)
    lines = [f"study {study.study_name}: {len(rows(study))} finished trials; validation {column} "
             f"(no-context baseline {baseline:.3f})", "",
             f"| trial | state | valid {column} | tokens | options |", "|---|---|---|---|---|"]
    for r in rows(study):
        value = "-" if r["value"] is None else f"{r['value']:.4f}"
        mark = (" (best)" if best is not None and r["number"] == best.number else "") + \
            (" (defaults)" if r["defaults"] else "")
        options = ", ".join(f"{k} {show(v)}" for k, v in r["options"].items())
        lines.append(f"| {r['number']}{mark} | {r['state']} | {value} | {r['tokens'] or 0:,} | {options} |")
    return "\n".join(lines)


def plot_history(path, study, metric: str, baseline: Optional[float] = None) -> None:
    """``history.png``: every trial's validation score by trial number (pruned trials at their last
    report, diverged ones at the baseline), and the best so far."""
    from matplotlib.figure import Figure

    from tncn.metrics import METRICS

    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    styles = {"complete": ("o", "C0"), "pruned": ("x", "C1"), STATE_DIVERGED: ("v", "C3")}
    points = [(r, baseline if r["state"] == STATE_DIVERGED else r["value"]) for r in rows(study)
              if r["state"] in styles]
    points = [(r, y) for r, y in points if y is not None and math.isfinite(y)]
    # far-off scores (a trial that learned nothing) would flatten the rest: clip them to the top edge
    top = 1.5 * baseline if baseline is not None else math.inf
    best, xs, ys = math.inf, [], []
    for r, y in points:
        marker, color = styles[r["state"]]
        ax.plot(r["number"], min(y, top), "^" if y > top else marker, color=color,
                label=f"{r['state']} (above the top: clipped)" if y > top else r["state"])
        if r["defaults"]:
            ax.plot(r["number"], min(y, top), "o", ms=12, mfc="none", color="k", label="the untuned defaults")
        if r["state"] == "complete" and y < best:
            best = y
        if math.isfinite(best):
            xs.append(r["number"])
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="k", lw=1, label="best so far")
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", lw=1, label=METRICS[metric].baseline)
    handles = {}
    for h, label in zip(*ax.get_legend_handles_labels()):
        handles.setdefault(label, h)
    ax.legend(handles.values(), handles.keys(), fontsize=8)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {METRICS[metric].unit}")
    ax.set_title(f"study {study.study_name}: optimization history", fontsize=10)
    ax.grid(alpha=0.3)
    files.save_figure(fig, path)


def importances(study) -> dict:
    """How much each tuned option matters: PED-ANOVA (Watanabe et al., IJCAI 2023, as Optuna computes
    it; no dependency beyond Optuna), how differently the option is distributed in the best trials
    than in all, normalised to sum to 1; over the complete trials, empty with fewer than four."""
    optuna = load_optuna()
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"
                and not t.user_attrs.get(STATE_DIVERGED)]
    if len(complete) < 4 or not complete[0].params:
        return {}
    try:
        with warnings.catch_warnings():  # Optuna marks the evaluator experimental
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. every trial set the same value
        return {}


def plot_importances(path, study) -> dict:
    """``importances.png``: a bar per tuned option (``importances``); returns them."""
    from matplotlib.figure import Figure

    values = importances(study)
    fig = Figure(figsize=(6.5, 0.4 * max(len(values), 3) + 1.2), layout="constrained")
    ax = fig.subplots()
    if values:
        names = list(values)[::-1]
        ax.barh(names, [values[n] for n in names], color="C0")
        ax.set_xlabel("importance (PED-ANOVA, normalised)")
    else:
        ax.text(0.5, 0.5, "too few complete trials to estimate importances", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title(f"study {study.study_name}: option importances", fontsize=10)
    files.save_figure(fig, path)
    return values

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

The flags are built from declarations: the shared ones from ``tncn.commands.flags``, the model's
from its learner's ``OPTIONS`` (``tncn train --model X --help`` lists X's).

Under ``torchrun --nproc_per_node=N -m tncn train ...`` the N processes train one run
(``tncn.distributed``): each takes B/N rows of every batch (``--batch-size`` must be a multiple of
N); ``--parallel exact`` (default) gives the one-process update on the global batch (P-TNCN's
summed local updates, or DDP for the BPTT baselines), ``--parallel average`` is local SGD with
the weights averaged every ``--average-every`` steps. Only rank 0 writes the run folder and
prints; ``config.json`` records ``world_size``, and a resume needs the same one. Bad input,
including ranks started with different options, is one line from rank 0, and every rank exits 2.

``--resume`` continues the run in ``--out`` from its checkpoint with its saved options; only the
budget (``--steps/--epochs/--minutes/--tokens``), ``--device``, ``--threads`` and the learner's
runtime options (``--compile``) may change, and a run resumed with the same threads on the CPU
ends exactly as an uninterrupted one. Ctrl-C (or SIGTERM)
stops after the current batch and saves a checkpoint to resume from.
"""
from __future__ import annotations

import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from sequences import text, video
from tncn import checkpoint, distributed, presets, runs
from tncn.checkpoint import set_rng_state
from tncn.commands import flags
from tncn.errors import UserError
from tncn.guard import EXIT_STATUS, Diverged, check_weights
from tncn.metrics import perplexity, unigram_entropy
from tncn.options import INT, STR, Option, non_negative
from tncn.temporal import LEARNERS, build_learner, learner_class
from tncn.train import BUDGET_KEYS, Budget, Progress, fit, generate

PRESETS = {
    # the quick default: learns within a few minutes on 2 CPU cores. Its recipes for P-TNCN (under
    # ``text`` and ``video``) are the best measured at its 400 steps (README, "Tuning"): on text
    # Adam 2e-3 with the rate halving every 150 steps (0.26 BPC ahead of the reference Nesterov
    # recipe on the embedded corpus, 0.22 on tiny-shakespeare, never seen in tuning); a constant
    # Adam rate degrades over a longer run (docs/stability.md), the decay is what keeps it. On
    # video Adam 2e-3 (479 against 579 nats BCE per frame after 2 minutes of bouncing glyphs).
    "quick": dict(hidden=[128, 128], steps=400, eval_every=100,
                  text=dict(ptncn=dict(optimizer="adam", lr=2e-3, half_life=150)),
                  video=dict(ptncn=dict(optimizer="adam", lr=2e-3))),
    # the paper's PTB settings (Ororbia et al. 2020; the official code); the optimizer is each
    # learner's own default (P-TNCN's is the reference Nesterov SGD, lr 0.075, momentum 0.95)
    "reference": dict(protocol="lines", batch_size=50, hidden=[1000, 1000], epochs=1, eval_every=0),
}
"""Presets: run settings and options of every learner that has them, (under a learner's name)
options of that learner only, and (under ``text`` and ``video``) a learner's recipe for that kind
of data (``recipe``: it follows the budget)."""
DEFAULT_MODEL = "ptncn"
OWN = (Option("eval_every", INT, 0, "validate every N steps; 0: only at the end", check=non_negative),
       Option("preset", STR, "quick", "options not given on the command line come from this preset: quick, "
                                      "reference (the paper's settings), or a preset file (tncn tune's "
                                      "best_preset.json: its learner options over the quick run settings)",
              check=lambda v: None if v in PRESETS or presets.is_file(v)
              else f"must be one of {', '.join(PRESETS)} or a preset file (.json)"))
RUN_KEYS = ("data", "data_root", "level", "protocol", "seq_len", "batch_size", "model", *BUDGET_KEYS,
            "eval_every", "seed", "device", "threads", "parallel", "average_every")
"""The run's own keys in config.json (video runs add ``flags.VIDEO``), before the learner's options."""
SAMPLE_CHARS, SAMPLE_WORDS, SAMPLE_TEMPERATURE = 300, 60, 0.7
PLOT_EVERY_S = 60.0  # curves.png is redrawn at most this often during a run, and at its end


def _model_in(argv) -> str:
    """The learner a command line trains: ``--model``, else the saved run's for ``--resume``."""
    seen = flags.peek(argv, "--model", "--out", "--resume", "--preset")
    if seen.model:
        return seen.model
    if seen.preset and presets.is_file(seen.preset):
        try:
            return presets.load(seen.preset)[0]
        except UserError:  # said again, in one line, when the command runs
            return DEFAULT_MODEL
    if seen.resume and seen.out:
        return runs.saved_model(Path(seen.out)) or DEFAULT_MODEL
    return DEFAULT_MODEL


def _preset_text(name: str) -> str:
    def show(items: dict) -> str:
        return ", ".join(f"{k} {','.join(map(str, v)) if isinstance(v, list) else v}" if not isinstance(v, dict)
                         else f"on {k} {show(v)}" if k in ("text", "video") else f"{k}: {show(v)}"
                         for k, v in items.items())
    return show(PRESETS[name])


def register(sub, argv=None) -> None:
    cls = LEARNERS.get(_model_in(argv), LEARNERS[DEFAULT_MODEL])
    p = sub.add_parser(
        "train", help="train a character, word or video-frame model (P-TNCN) on a corpus or videos",
        description="Train a sequence model into a run folder (config.json, metrics.jsonl, checkpoint.pt, "
                    "curves.png). With no option: a 2-layer P-TNCN character model on the embedded corpus, "
                    "a few minutes on 2 CPU cores. Options not given come from --preset (quick: "
                    f"{_preset_text('quick')}; reference: {_preset_text('reference')}), then from the learner's "
                    "own defaults shown below. A preset's recipe for text or video follows the budget: with "
                    "--steps N its half-life scales to N; under --minutes, --tokens or --epochs, or with "
                    "another --optimizer, the learner's own recipe applies.",
        parents=[flags.parent("data", "data_root", "level", "protocol", "seq_len", "batch_size", title="data"),
                 flags.parent(*flags.VIDEO, title="video data"),
                 flags.budget(helps={"minutes": "training budget: wall time in minutes, validation included"}),
                 flags.parent("seed", "device", "threads", "parallel", "average_every", title="run"),
                 flags.outputs("run folder (default runs/DATA-MODEL-TIME)", resume=True)])
    run_group = p.add_argument_group("training")
    run_group.add_argument("--model", choices=list(LEARNERS), metavar="|".join(LEARNERS),
                           help=f"the learner (default {DEFAULT_MODEL}); tncn train --model NAME --help lists its options")
    flags.add(run_group, OWN)
    flags.add(p.add_argument_group(f"model {cls.name} ({cls.label}, {cls.training_label(cls.defaults())})"),
              cls.OPTIONS)
    p.set_defaults(func=run, learner=cls)


# --------------------------------------------------------------------------- options

def _explicit(args) -> dict:
    """What the command line gives: run flags, the training flags and the learner's options."""
    cls = args.learner
    out = flags.given(args, [*(flags.FLAGS[k] for k in RUN_KEYS if k in flags.FLAGS), *(flags.FLAGS[k] for k in flags.VIDEO),
                             *OWN, *cls.OPTIONS])
    if args.model is not None:
        out["model"] = args.model
    if "data" in out:
        out["data"] = text.canonical(out["data"])
    return out


def recipe(preset: dict, kind: str, model: str, explicit: dict) -> dict:
    """The preset's recipe of ``model`` for ``kind`` of data (text, video) as the command line
    leaves it: whole under the preset's budget; with ``--steps N`` its half-life scaled by N over
    the preset's steps; none under another budget (a minutes, tokens or epochs budget does not
    fix the step count a schedule is tuned for: the learner's own recipe, stable at any length)
    or another ``--optimizer`` (its learning rate belongs to the recipe's optimizer)."""
    own = dict(preset.get(kind, {}).get(model, {}))
    if not own or explicit.get("optimizer", own.get("optimizer")) != own.get("optimizer"):
        return {}
    if not any(k in explicit for k in BUDGET_KEYS):
        return own
    if "half_life" in own:
        if "steps" not in explicit or not preset.get("steps"):
            return {}
        own["half_life"] = max(1, round(own["half_life"] * explicit["steps"] / preset["steps"]))
    return own


def resolve(explicit: dict, preset: str) -> dict:
    """The run's options: the learner's defaults < the run defaults < the preset < the command line.

    A preset file gives learner options over the quick preset's run settings."""
    own: dict = {}
    if presets.is_file(preset):
        model, own, _ = presets.load(preset)
        if explicit.get("model", model) != model:
            raise UserError(f"--preset {preset} holds options of {model}, not of --model {explicit['model']}")
        explicit = {"model": model, **explicit}
    base = PRESETS["quick"] if presets.is_file(preset) else PRESETS[preset]
    cls = learner_class(explicit.get("model", DEFAULT_MODEL))
    is_video = video.is_video(explicit.get("data", flags.FLAGS["data"].default))
    keys = [*RUN_KEYS, *(flags.VIDEO if is_video else ())]
    on_data = {} if own else recipe(base, "video" if is_video else "text", cls.name, explicit)  # a file: its own
    items = {**base, **base.get(cls.name, {}), **on_data, **own}
    chosen = {k: v for k, v in items.items() if k in keys or k in cls.defaults()}
    if any(k in explicit for k in BUDGET_KEYS):
        chosen = {k: v for k, v in chosen.items() if k not in BUDGET_KEYS}
    if is_video:
        given = [k for k in ("level", "protocol", "seq_len") if k in explicit]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} applies to text; video sequences are whole clips")
        chosen.update(level="frames", protocol="sequences", seq_len=None)
    else:
        given = [k for k in flags.VIDEO if k in explicit]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} applies to video data (bouncing-...), "
                            f"not to {explicit.get('data', flags.FLAGS['data'].default)}")
    run_defaults = {k: flags.FLAGS[k].default if k in flags.FLAGS else None for k in keys}
    run_defaults.update(model=cls.name, eval_every=0)
    merged = {**cls.defaults(), **run_defaults, **chosen, **explicit}
    config = {k: merged[k] for k in keys}
    config.update(cls.read_options({k: merged[k] for k in cls.defaults()}))
    config["preset"] = preset
    if config["protocol"] == "lines":
        if "seq_len" in explicit:
            raise UserError("--seq-len applies to the stream protocol only")
        config["seq_len"] = None
    Budget(**{k: config.get(k) for k in BUDGET_KEYS})  # exactly one, positive
    return config


def _show(value) -> str:
    """An option value as it is typed: widths as 128,128."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _resume_config(saved: dict, explicit: dict, out: Path, cls) -> dict:
    """The saved options, with a new budget, device, thread count or runtime option where given."""
    may_change = {*BUDGET_KEYS, "device", "threads", *(o.name for o in cls.OPTIONS if o.runtime)}
    differ = [k for k, v in explicit.items() if k not in may_change and v != saved.get(k)]
    if differ:
        k = differ[0]
        raise UserError(f"--{k.replace('_', '-')} {_show(explicit[k])} differs from the run in {out} "
                        f"({_show(saved.get(k))}); a resumed run keeps its options (only the budget, "
                        f"{', '.join('--' + n.replace('_', '-') for n in sorted(may_change - set(BUDGET_KEYS)))} "
                        f"may change)")
    config = dict(saved)
    if any(k in explicit for k in BUDGET_KEYS):
        config.update({k: explicit.get(k) for k in BUDGET_KEYS})
    config.update({k: v for k, v in explicit.items() if k in may_change - set(BUDGET_KEYS)})
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
    return distributed.launched(_run, args)


@dataclass
class _Setup:
    """A run that passed every check, before anything is written."""

    config: dict
    out: Path
    vocab: object
    corpus: object
    train: object
    valid: object
    learner: object
    progress: Progress
    ranks: Optional[list]  # the saved ranks' own states (a resumed distributed run)


def _prepare(args, group) -> _Setup:
    """Every check a run makes before it writes anything; the learner built or loaded."""
    world = group.world if group else 1
    explicit = _explicit(args)
    if args.resume and not args.out:
        raise UserError("--resume needs --out DIR, the run folder to continue")
    ranks = None
    if args.resume:
        out = Path(args.out)
        if runs.unstarted(out) and not args.force:
            raise UserError(f"--resume: the run in {out} stopped before its first checkpoint; "
                            f"start it again without --resume")
        flags.check_out(out, args.force, resume=True)
        cls = learner_class(runs.saved_model(out) or DEFAULT_MODEL)
        runtime = {o.name: explicit[o.name] for o in cls.OPTIONS if o.runtime and o.name in explicit}
        saved_device = explicit.get("device") or runs.saved_config(out).get("device", "cpu")
        saved = runs.load(out, distributed.device_name(saved_device, group), runtime)
        config = _resume_config(saved.config, explicit, out, cls)
        if config.get("world_size", 1) != world:
            raise UserError(f"the run in {out} was trained by {config.get('world_size', 1)} process(es) and is "
                            f"resumed by {world}: resume it with the same world size (torchrun --nproc_per_node)")
        _check_budget_left(config, saved.progress, explicit, out)
        ranks = saved.ranks
    else:
        config = resolve({k: v for k, v in explicit.items() if k != "preset"}, explicit.get("preset", "quick"))
        config["world_size"] = world
        out = Path(args.out) if args.out else _default_out(config)
        if group is None or group.main:  # rank 0 alone owns the run folder
            flags.check_out(out, args.force or runs.unstarted(out), resume=False)
    if "average_every" in explicit and config.get("parallel", "exact") != "average":
        raise UserError("--average-every applies to --parallel average")
    if group is not None:
        if config["batch_size"] % world:
            raise UserError(f"--batch-size {config['batch_size']} does not split over {world} processes: "
                            f"give a multiple of {world} (each rank trains batch-size / {world} rows)")
        learner_class(config["model"]).check_parallel(runs.learner_options(config), config.get("parallel", "exact"))
    device = runs.resolve_device(distributed.device_name(config["device"], group))
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
    if valid.unknown and (group is None or group.main):
        print(f"tncn train: {valid.unknown:,} validation symbols are not in the training vocabulary; "
              f"they are read and scored as its unknown token", file=sys.stderr)
    if args.resume:
        learner, progress = saved.learner, Progress.from_dict(saved.progress.to_dict(), resume=True)
        set_rng_state(saved.rng)
    else:
        torch.manual_seed(config["seed"])
        learner_class(config["model"]).check_fit(len(vocab), runs.learner_options(config), config["batch_size"] // world)
        learner = build_learner(config["model"], runs.learner_options(config), len(vocab), device, config["seed"],
                                frames)
        progress = Progress()
    return _Setup(config, out, vocab, corpus, train, valid, learner, progress, ranks)


def _run(args, group) -> int:
    setup, failure = distributed.attempt(_prepare, args, group)
    digest = distributed.fingerprint(setup and setup.config, args.out, args.resume, args.force)
    out = distributed.agree(group, failure, digest, setup and str(setup.out))
    config, vocab, corpus, learner, progress = setup.config, setup.vocab, setup.corpus, setup.learner, setup.progress
    train, valid, out = setup.train, setup.valid, Path(out)
    frames = corpus.level == "frames"
    main = group is None or group.main
    if group is not None:  # the same start on every rank, then each rank's own saved state
        group.mode, group.every, group.steps = config.get("parallel", "exact"), config.get("average_every", 1), progress.step
        learner.distribute(group)
        if setup.ranks is not None:
            learner.load_rank_state(setup.ranks[group.rank]["learner"])
            set_rng_state(setup.ranks[group.rank]["rng"])

    # every check has passed: from here on the run folder is written (by rank 0)
    if main:
        _start_folder(out, config, progress, args.force)
    if frames:
        baseline, unit = corpus.mean_frame_bce(), "nats BCE/frame"
    else:
        baseline, unit = unigram_entropy(vocab.counts), "bits/char" if corpus.level == "char" else "bits/word"

    plotted = [time.perf_counter()]
    saved_at = [progress.step if args.resume else None]  # the step of the checkpoint on disk
    key = f"valid_{learner.metric}"

    def plot(records: list) -> None:
        if main:
            runs.plot_curves(out, records, unit.replace("/", " per "), baseline, learner.metric)
        plotted[0] = time.perf_counter()

    def save(p: Progress) -> None:  # every rank hands its own state to rank 0, which writes
        ranks = None if group is None else group.gather(
            {"learner": learner.rank_state(group.mode == "average"), "rng": checkpoint.rng_state()})
        if main:
            runs.save(out, config, vocab, learner, p, ranks)
        saved_at[0] = p.step

    def on_record(record: dict, p: Progress) -> None:  # fit has checked the weights and the score
        save(p)
        if main:
            if record[key] <= min(r[key] for r in p.records):
                runs.keep_best(out)
            runs.append_metric(out, record)
        if time.perf_counter() - plotted[0] > PLOT_EVERY_S:
            plot(p.records)

    stop = _StopFlag()
    # a stop asked of one rank stops every rank after the same batch
    requested = stop.requested if group is None else (lambda: group.any(stop.requested()))
    budget, until = Budget(**{k: config.get(k) for k in BUDGET_KEYS}), None
    if group is not None and budget.minutes is not None:  # the ranks' clocks differ: they stop together
        budget, until = None, (lambda p, b=budget: group.any(b.spent(p)))
    try:
        with stop:
            progress, stopped = fit(learner, train, valid, budget, config["eval_every"], progress, on_record,
                                    requested, until=until, baseline=baseline, bar=main, verbose=main)
        if saved_at[0] != progress.step:  # stopped between validations
            check_weights(learner.model, progress.step)
            save(progress)
    except Diverged as err:
        if not main:
            return EXIT_STATUS
        if err.record is not None:
            runs.append_metric(out, {**err.record, "diverged": err.what})
        if progress.records:
            plot(progress.records)
        print(f"tncn train: {err}; {_kept(out, saved_at[0], progress.records, key)}"
              + ("; a smaller --lr may help" if "lr" in learner.options else ""), file=sys.stderr)
        return EXIT_STATUS
    except KeyboardInterrupt:
        print(f"tncn train: interrupted twice: stopped at once without saving; "
              f"{_kept(out, saved_at[0], progress.records, key)}", file=sys.stderr)
        return 130
    if progress.records:
        plot(progress.records)
    if stopped:
        if not main:
            return 130
        print(f"tncn train: stopped at step {progress.step}; continue with: tncn train --out {out} --resume",
              file=sys.stderr)
        return 130

    if not main:
        return 0
    last = progress.records[-1]
    if last[key] > baseline:
        print(f"tncn train: warning: the validation score {last[key]:.4f} is worse than the no-context baseline "
              f"{baseline:.4f}: the model has not learned yet (train longer) or its updates are too large "
              f"(a smaller learning rate)", file=sys.stderr)
    if frames:
        print(f"validation: {last['valid_bce']:.2f} nats BCE per frame after {progress.step} steps "
              f"({progress.tokens:,} frames, {progress.elapsed_s:.0f} s); no-context baseline (every pixel "
              f"predicted by its mean training intensity): {baseline:.2f}")
        runs.plot_frames(out / "frames.png", learner, corpus)
        print(f"run saved in {out} (true and predicted frames of a test sequence: {out / 'frames.png'})")
        return 0
    word = corpus.level == "word"
    ppl = f", perplexity {perplexity(last['valid_bpc']):.1f}" if word else ""
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


def _start_folder(out: Path, config: dict, progress: Progress, force: bool) -> None:
    """Make the run folder and write its config and the metrics so far."""
    out.mkdir(parents=True, exist_ok=True)
    if runs.clean(out):
        print(f"tncn train: removed the temporary files of a save that was killed in {out}", file=sys.stderr)
    if force:  # only the run's own files, so an old checkpoint cannot outlive its config
        for name in runs.FILES:
            (out / name).unlink(missing_ok=True)
    runs.write_config(out, config)
    runs.write_metrics(out, progress.records)


def _check_budget_left(config: dict, p: Progress, explicit: dict, out: Path) -> None:
    """Refuse to resume a run whose budget is spent (a smaller one than it has used, or its own
    once it has finished): it would train nothing."""
    budget = Budget(**{k: config.get(k) for k in BUDGET_KEYS})
    finished = p.records and p.records[-1]["step"] == p.step
    if not (budget.spent(p) and finished):
        return
    name = next(k for k in BUDGET_KEYS if config.get(k) is not None)
    used = {"steps": f"{p.step:,} steps", "epochs": f"{p.epoch} epochs", "tokens": f"{p.tokens:,} tokens",
            "minutes": f"{p.elapsed_s / 60:.1f} minutes"}[name]
    if name in explicit:
        raise UserError(f"--{name} {_show(config[name])} is no more than the run in {out} has done ({used}); "
                        f"give a larger budget to continue it")
    raise UserError(f"the run in {out} has finished its budget (--{name} {_show(config[name])}, {used} done); "
                    f"give a larger one to continue it")


def _kept(out: Path, step, records: list, key: str) -> str:
    """What the run folder keeps after a run stopped without saving."""
    if step is None:
        return f"{out} holds no checkpoint yet"
    best = min(records, key=lambda r: r[key]) if records else None
    text = f"{out / checkpoint.FILENAME} keeps step {step:,}"
    if best is not None and (out / runs.BEST).exists():
        text += f", {out / runs.BEST} the best validation ({best[key]:.4f} at step {best['step']:,})"
    return text


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

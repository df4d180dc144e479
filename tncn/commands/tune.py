"""``tncn tune``: search a sequence learner's options with Optuna, every trial on the same budget.

    tncn tune --data D --model M --trials N --minutes-per-trial m --out DIR

Each trial trains the model from scratch in a fresh process for ``--minutes-per-trial`` of
training time (or ``--tokens-per-trial`` symbols), on the same data, batches and seed, and is
scored on the validation split at ``--points`` marks of its budget (the median pruner stops a
trial that is behind at a mark; ``tncn.tune``). The options searched are the learner's declared
space (``tncn.space``; ``tncn tune --model M --help`` lists it), or ``--space FILE`` (JSON, the same
form); ``--set KEY=VALUE`` fixes an option for every trial; ``--hidden`` the widths.

Writes into ``--out``: ``study.db`` (the SQLite study; ``--storage URL`` puts it elsewhere, e.g. one
database several machines share), ``history.png`` (each trial's score, the best so far),
``importances.png``, ``best_preset.json`` (the best trial's options as a preset file for
``tncn train --preset FILE`` and ``tncn compare --preset MODEL=FILE``), ``trials.md`` and
``tune.json`` (the settings). ``--resume`` continues a study until it has ``--trials`` finished
trials; several processes given the same ``--storage`` and ``--study`` share the work.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tncn import files, isolate, presets, runs, space, tune
from tncn.commands import flags, sizing
from tncn.commands.compare import no_context, open_task
from tncn.errors import UserError
from tncn.metrics import METRICS
from tncn.options import FILE, FLOAT, INT, STR, URL, WIDTHS, Option, optional, positive
from tncn.temporal import LEARNERS

OWN = (
    Option("trials", INT, 20, "finished trials the study should have", check=positive),
    Option("minutes_per_trial", optional(FLOAT), None, "training budget of each trial: minutes of training time "
                                                       "(validation excluded)", check=positive),
    Option("tokens_per_trial", optional(INT), None, "training budget of each trial: training symbols (frames)",
           check=positive),
    Option("points", INT, 4, "validations along each trial (the pruner compares trials at these marks)",
           check=positive),
    Option("valid_lines", optional(INT), None, "score on the first N lines of the validation split", check=positive),
    Option("hidden", WIDTHS, [128, 128], "the widths every trial trains"),
    Option("space", optional(FILE), None, "a JSON search space {option: {\"low\", \"high\"[, \"log\", \"int\"]} or "
                                          "{\"choices\": [...]}} in place of the learner's declared one"),
    Option("storage", optional(URL), None, "Optuna storage URL (none: sqlite:///OUT/study.db)"),
    Option("study", optional(STR), None, "study name (none: the model's name)"),
)
DEFAULT_MODEL = "ptncn"
FILES = ("study.db", "tune.json", "trials.md", "history.png", "importances.png", "best_preset.json")


def register(sub, argv=None) -> None:
    model = flags.peek(argv, "--model").model
    cls = LEARNERS.get(model, LEARNERS[DEFAULT_MODEL])
    default_space = ", ".join(space.of(cls.OPTIONS))
    p = sub.add_parser(
        "tune", help="search a learner's options with Optuna, every trial on the same budget",
        description="Tune one sequence model: each trial trains it from scratch in a fresh process for the same "
                    "budget and is scored on the validation split; writes study.db, history.png, importances.png, "
                    f"best_preset.json and trials.md into --out. The default space of {cls.name}: {default_space}.",
        parents=[flags.parent("data", "data_root", "level", "protocol", "seq_len", "batch_size", title="data"),
                 flags.parent(*flags.VIDEO, title="video data"),
                 flags.parent("seed", "device", "threads", title="run", helps={
                     "threads": "CPU threads of each trial (1: run one tune process per core to use them all)"}),
                 flags.outputs("output folder", resume=True, required=True)])
    g = p.add_argument_group("search")
    g.add_argument("--model", choices=list(LEARNERS), metavar="|".join(LEARNERS),
                   help=f"the learner to tune (default {DEFAULT_MODEL}); tncn tune --model NAME --help shows its space")
    flags.add(g, OWN)
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an option every trial uses, outside the space (repeatable)")
    p.set_defaults(func=run, learner=cls)


def _space(path, cls) -> dict:
    if path is None:
        declared = space.of(cls.OPTIONS)
        if not declared:
            raise UserError(f"model {cls.name} declares no search space; give --space FILE")
        return declared
    return space.check(files.read_json(path, f"--space {path}"), cls.OPTIONS, f"model {cls.name}")


def run(args) -> int:
    cls = args.learner
    o = flags.read(args, "data", "data_root", "level", "protocol", "seq_len", "batch_size", *flags.VIDEO, "seed",
                   "device", "threads")
    own = flags.values(args, OWN)
    if (own["minutes_per_trial"] is None) == (own["tokens_per_trial"] is None):
        raise UserError("give the budget of each trial: --minutes-per-trial M or --tokens-per-trial N")
    out = Path(args.out)
    if args.resume:
        if not (out / "tune.json").is_file():
            raise UserError(f"--resume: no study settings (tune.json) in {out}")
    else:
        flags.check_out(out, args.force, resume=None)
    runs.resolve_device(o["device"])
    fixed = sizing.parse_sets([f"{cls.name}:{item}" for item in args.set], [cls.name])[cls.name]
    search = _space(own["space"], cls)
    clash = sorted(set(search) & set(fixed))
    if clash:
        raise UserError(f"--set {clash[0]} fixes an option the search space tunes; drop one of them")

    corpus, vocab, common = open_task(o, ("train", "valid"))
    frames = common["level"] == "frames"
    base = cls.read_options({**fixed, "hidden": own["hidden"]})
    cls.check_fit(len(vocab), base, o["batch_size"])
    metric = "bce" if frames else "bpc"
    baseline = no_context(corpus, vocab)
    device = common.pop("device")
    common["valid_lines"] = own["valid_lines"]
    settings = dict(common, model=cls.name, fixed=fixed, hidden=own["hidden"], space=search,
                    minutes=own["minutes_per_trial"], tokens=own["tokens_per_trial"], points=own["points"])
    common["device"] = device
    if args.resume:
        saved = files.read_json(out / "tune.json", f"--resume: {out / 'tune.json'}").get("settings")
        if saved != json.loads(files.dumps(settings)):
            raise UserError(f"--resume: the options differ from the study's in {out}/tune.json; "
                            f"a resumed study keeps them (only --trials, --threads and --device may change)")
    out.mkdir(parents=True, exist_ok=True)
    if args.force:  # only the study's own files, so an old study cannot outlive its settings
        for name in FILES:
            (out / name).unlink(missing_ok=True)
    storage = own["storage"] or f"sqlite:///{(out / 'study.db').resolve()}"
    name = own["study"] or cls.name
    # a shared study (--storage) is drawn from by processes in any order: seed its sampler from the OS
    sampler_seed = None if own["storage"] else o["seed"]
    study = tune.open_study(storage, name, sampler_seed, own["trials"], own["points"],
                            json.loads(files.dumps(settings)))
    files.write_json(out / "tune.json", dict(settings=settings, storage=storage, study=name, metric=metric,
                                             baseline=baseline))
    budget_s = 60.0 * own["minutes_per_trial"] if own["minutes_per_trial"] else 600.0
    if tune.fail_stale(study, older_than_s=3 * budget_s + 600):
        print("tncn tune: marked the trials of a killed process as failed", file=sys.stderr)

    if not any(t.user_attrs.get("defaults") for t in study.get_trials(deepcopy=False)):
        # the untuned setting first, scored on the same budget: what tuning changed is then measured
        study.enqueue_trial(space.as_params(search, base), user_attrs={"defaults": True})
    while True:
        c = tune.counts(study)
        if c["finished"] + c["running"] >= own["trials"]:
            break
        trial = study.ask()
        params = space.suggest(trial, search)
        options = cls.read_options({**base, **params})
        trial.set_user_attr("options", params)
        task = dict(common, kind=cls.name, options=options, baseline=baseline, minutes=own["minutes_per_trial"],
                    tokens=own["tokens_per_trial"], points=own["points"], storage=storage, study=name,
                    trial_id=trial._trial_id)  # the storage's id: the child reopens this trial by it
        print(f"== trial {trial.number}: " + ", ".join(f"{k} {tune.show(v)}" for k, v in params.items()), flush=True)
        try:
            result = isolate.run("tncn.tune:run_trial", task, o["threads"], f"trial {trial.number}")
        except BaseException:  # a failed child or Ctrl-C: the trial is over, not running
            study.tell(trial, state=tune.load_optuna().trial.TrialState.FAIL)
            raise
        trial.set_user_attr("tokens", result["tokens"])
        trial.set_user_attr("curve", result["curve"])
        if result["state"] == tune.STATE_DIVERGED:
            trial.set_user_attr(tune.STATE_DIVERGED, result["diverged"])
            study.tell(trial, baseline)
            print(f"   diverged at step {result['diverged']['step']}: {result['diverged']['what']}", flush=True)
        elif result["state"] == "pruned":
            study.tell(trial, state=tune.load_optuna().trial.TrialState.PRUNED)
            print(f"   pruned at {result['value']:.4f}", flush=True)
        else:
            study.tell(trial, result["value"])
            print(f"   valid {result['value']:.4f} ({result['tokens']:,} tokens)", flush=True)
        _write_outputs(out, study, cls, base, settings, metric, baseline)
    _write_outputs(out, study, cls, base, settings, metric, baseline)
    table = tune.format_table(study, metric, baseline)
    print(table)
    best = tune.best_trial(study)
    if best is None:
        print(f"tncn tune: no trial finished without diverging; results in {out}", file=sys.stderr)
        return 0
    print(f"best: trial {best.number}, valid {best.value:.4f} {METRICS[metric].short}; "
          f"preset {out / 'best_preset.json'}")
    return 0


def _write_outputs(out: Path, study, cls, base: dict, settings: dict, metric: str, baseline: float) -> None:
    tune.plot_history(out / "history.png", study, metric, baseline)
    importances = tune.plot_importances(out / "importances.png", study)
    files.write_text(out / "trials.md", tune.format_table(study, metric, baseline) + "\n")
    best = tune.best_trial(study)
    if best is not None:
        options = cls.read_options({**base, **best.user_attrs.get("options", {})})
        source = dict(study=study.study_name, trial=best.number, value=best.value, metric=metric,
                      data=settings["data"], protocol=settings["protocol"], batch_size=settings["batch_size"],
                      seq_len=settings["seq_len"], minutes_per_trial=settings["minutes"],
                      tokens_per_trial=settings["tokens"], importances=importances)
        presets.save(out / "best_preset.json", cls.name, options, source)

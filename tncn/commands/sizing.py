"""Options and sizes of the models that ``tncn compare`` and ``tncn continual`` run side by side.

``plan`` gives every model its options: its learner's declared defaults < the sizing < ``bptt``
(for the learners that declare it) < ``--set MODEL:KEY=VALUE`` items (``parse_sets``; VALUE read
as JSON when it parses, then by the option's declaration). Sizing: the first model of
``--models`` gets the ``--hidden`` widths; with ``match="params"`` every other one gets the
first's depth (or its own declared ``depth``) and the one width whose weight count is closest to
the first model's (``SequenceLearner.width_for_params``); with ``match="hidden"`` the same widths.
"""
from __future__ import annotations

import json

from tncn import presets
from tncn.commands import flags
from tncn.errors import UserError
from tncn.options import INT, STR, WIDTHS, Option, OptionError, either, find, positive
from tncn.temporal import build_learner, learner_class


def _flags(models: str) -> tuple:
    """The side-by-side flags, ``--models`` defaulting to ``models``."""
    return (
        Option("models", STR, models, "comma-separated learners; the first is sized by --hidden"),
        Option("hidden", WIDTHS, [256, 256], "the first model's widths, e.g. 1000,1000"),
        Option("match", STR, "params", "size the other models to the first one's weight count (params) or give "
                                       "them its widths (hidden)", choices=("params", "hidden")),
        Option("bptt", either("full", INT), None, "full or K: the BPTT window of the models that have one",
               check=lambda v: None if v in (None, "full") else positive(v)),
    )


def add_flags(group, models: str) -> None:
    """``--models`` (default ``models``), ``--hidden``, ``--match``, ``--bptt`` and ``--set`` on an
    argparse group; ``read(args, models)`` reads them."""
    flags.add(group, _flags(models))
    group.add_argument("--set", action="append", default=[], metavar="MODEL:KEY=VALUE",
                       help="an option of one model, e.g. lstm:lr=0.002 or ptncn:optimizer=adam (repeatable)")
    group.add_argument("--preset", action="append", default=[], metavar="MODEL=FILE",
                       help="one model's options from a preset file (tncn tune's best_preset.json), under --set; "
                            "its widths are left to the sizing (repeatable)")


def read(args, models: str) -> dict:
    """The side-by-side flags: ``models`` (checked), ``sets`` (``parse_sets``), ``hidden``,
    ``match`` and ``bptt`` (what ``plan`` takes)."""
    o = flags.values(args, _flags(models))
    o["models"] = model_list(o["models"])
    sets = parse_sets(args.set, o["models"])
    for item in getattr(args, "preset", []):
        model, eq, path = item.partition("=")
        if not eq or model not in o["models"]:
            raise UserError(f"--preset takes MODEL=FILE with MODEL one of --models ({', '.join(o['models'])}), "
                            f"got {item!r}")
        saved, options, _ = presets.load(path)
        if saved != model:
            raise UserError(f"--preset {item}: the file holds options of {saved}, not of {model}")
        sets[model] = {**{k: v for k, v in options.items() if k != "hidden"}, **sets[model]}
    o["sets"] = sets
    return o


def model_list(text: str) -> list[str]:
    """The distinct learner names of a comma-separated ``--models`` value, each checked to exist."""
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models or len(set(models)) != len(models):
        raise UserError(f"--models takes distinct comma-separated names, got {text!r}")
    for m in models:
        learner_class(m)
    return models


def parse_sets(items: list[str], models: list[str]) -> dict:
    """``MODEL:KEY=VALUE`` items as {model: {key: value}}, each read and checked by the model's
    declaration of KEY (an error names the model, the key and the allowed values)."""
    out = {m: {} for m in models}
    for item in items:
        model, _, rest = item.partition(":")
        key, eq, value = rest.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise UserError(f"--set takes MODEL:KEY=VALUE, got {item!r}")
        if model not in out:
            raise UserError(f"--set {item}: {model!r} is not one of --models ({', '.join(models)})")
        cls = learner_class(model)
        try:
            option = find(cls.OPTIONS, key, f"model {model}")
            try:
                raw = json.loads(value)
            except json.JSONDecodeError:
                raw = value
            out[model][key] = option.read(raw)
        except OptionError as err:
            raise UserError(f"--set {item}: {err.render(f'{model}:{key}')}") from None
    return out


def plan(models: list[str], size: int, hidden: list[int], match: str, bptt, sets: dict, seed: int = 0,
         frames: bool = False, batch: int = 1) -> tuple[dict, int]:
    """Every model's complete options (checked by building it once, and ``check_fit`` for
    ``batch`` streams) and the first model's weight count."""
    first = models[0]
    takes_bptt = [m for m in models if "bptt" in learner_class(m).defaults()]
    if bptt is not None and not takes_bptt:
        raise UserError(f"--bptt applies to none of the models {', '.join(models)}")
    options, target = {}, None
    for kind in models:  # the first model first: its weight count sizes the others
        cls = learner_class(kind)
        opts = {"bptt": bptt} if bptt is not None and kind in takes_bptt else {}
        opts.update(sets.get(kind, {}))
        if "hidden" not in opts:
            if kind == first or match == "hidden":
                opts["hidden"] = hidden
            else:
                layers = cls.depth or len(hidden)
                width = cls.width_for_params(size, layers, target, cls.read_options(opts))
                opts["hidden"] = [width] * layers
        opts = cls.read_options(opts)
        cls.check_fit(size, opts, batch)
        learner = build_learner(kind, opts, size, "cpu", seed, frames)  # a bad option fails here, before any run
        if kind == first:
            target = learner.n_weights()
        options[kind] = opts
    return options, target

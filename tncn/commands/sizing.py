"""Options and sizes of the models that ``tncn compare`` and ``tncn continual`` run side by side.

``plan`` gives every model its options: its learner's defaults < the sizing (``match="params"``:
P-TNCN's depth and the one width whose parameter count is closest to P-TNCN's, see
``tncn.temporal.bptt.width_for_params``; ``match="hidden"``: P-TNCN's widths) and ``bptt`` <
``--set MODEL:KEY=VALUE`` items (``parse_sets``; VALUE read as JSON when it parses).
"""
from __future__ import annotations

import json

from tncn.errors import UserError
from tncn.train import build_learner, learner_module



def model_list(text: str) -> list[str]:
    """The distinct learner names of a comma-separated ``--models`` value, each checked to exist."""
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models or len(set(models)) != len(models):
        raise UserError(f"--models takes distinct comma-separated names, got {text!r}")
    for m in models:
        learner_module(m)
    return models


def check_positive(args, names) -> None:
    """Every option of ``names`` in the parsed ``args`` is positive, or a ``UserError`` naming it."""
    for name in names:
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")


def ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{what} takes comma-separated integers, got {text!r}") from None
    if min(values) <= 0:
        raise UserError(f"{what} must be positive, got {text}")
    return values


def parse_sets(items: list[str], models: list[str]) -> dict:
    """``MODEL:KEY=VALUE`` items as {model: {key: value}}, each key checked against the learner."""
    out = {m: {} for m in models}
    for item in items:
        model, _, rest = item.partition(":")
        key, eq, value = rest.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise UserError(f"--set takes MODEL:KEY=VALUE, got {item!r}")
        if model not in out:
            raise UserError(f"--set {item}: {model!r} is not one of --models ({', '.join(models)})")
        if key not in learner_module(model).DEFAULTS:
            raise UserError(f"--set {item}: {model} has no option {key!r}; its options: "
                            f"{', '.join(learner_module(model).DEFAULTS)}")
        try:
            out[model][key] = json.loads(value)
        except json.JSONDecodeError:
            out[model][key] = value
    return out


def n_params(learner) -> int:
    return sum(p.numel() for p in learner.model.parameters())


def plan(models: list[str], vocab_size: int, hidden: list[int], match: str, bptt, sets: dict, seed: int = 0,
         frames: bool = False) -> tuple[dict, int]:
    """Every model's options (checked by building it once) and P-TNCN's parameter count."""
    from tncn.temporal.bptt import GATES, width_for_params

    ptncn = build_learner("ptncn", {"hidden": hidden, **sets.get("ptncn", {})}, vocab_size, "cpu", seed, frames)
    target = n_params(ptncn)
    options = {}
    for kind in models:
        defaults = learner_module(kind).DEFAULTS
        opts = {"hidden": hidden} if kind == "ptncn" else {}
        if kind != "ptncn" and bptt is not None:
            if "bptt" not in defaults:
                raise UserError(f"--bptt does not apply to model {kind}")
            opts["bptt"] = bptt
        opts.update(sets.get(kind, {}))
        if "hidden" not in opts:
            if match == "hidden":
                opts["hidden"] = hidden
            elif kind not in GATES:
                raise UserError(f"--match params cannot size model {kind}; give it --set {kind}:hidden=[...]")
            else:
                merged = {**defaults, **opts}
                width = width_for_params(kind, vocab_size, len(hidden), target, merged["input"], merged["embed"])
                opts["hidden"] = [width] * len(hidden)
        opts = {**defaults, **opts}
        build_learner(kind, opts, vocab_size, "cpu", seed, frames)  # a bad option fails here, before any run
        options[kind] = opts
    return options, target

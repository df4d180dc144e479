"""Search spaces of the hyperparameter search (``tncn tune``), declared with the options they tune.

A space is plain JSON data, one entry per option, so that a ``--space FILE`` reads the same way:

- ``{"low": a, "high": b}``: a float in [a, b]; ``"log": true`` samples it on a log scale,
  ``"int": true`` makes it a whole number;
- ``{"choices": [v1, v2, ...]}``: one of the values; ``"then": {v1: {option: spec, ...}}`` gives
  the options that depend on the choice their own ranges (the learning rate of each optimizer).

An ``Option`` (``tncn.options``) carries its entry in ``space``; ``of(cls)`` gathers a learner's
default space, ``suggest(trial, space)`` draws one setting from an Optuna trial. A dependent
option is suggested under the name ``CHOICE.OPTION`` (``adam.lr``), so the sampler keeps one
model per range.
"""
from __future__ import annotations

import math
from typing import Iterable

from tncn.errors import UserError


def log_range(low: float, high: float) -> dict:
    return {"low": low, "high": high, "log": True}


def float_range(low: float, high: float) -> dict:
    return {"low": low, "high": high}


def int_range(low: int, high: int) -> dict:
    return {"low": low, "high": high, "int": True}


def choice(*values, then: dict | None = None) -> dict:
    return {"choices": list(values), **({"then": then} if then else {})}


def of(options: Iterable) -> dict:
    """The default space of a learner: the entries of its options that declare one."""
    return {o.name: o.space for o in options if getattr(o, "space", None) is not None}


def check(space: dict, options: Iterable, owner: str) -> dict:
    """``space`` with every entry well formed and naming an option of ``owner``, else a UserError."""
    by_name = {o.name: o for o in options}
    if not isinstance(space, dict) or not space:
        raise UserError(f"a search space is a non-empty JSON object {{option: range}}, got {space!r}")

    def one(name, spec, where):
        if name not in by_name:
            raise UserError(f"{where}: {owner} has no option {name!r}; its options: {', '.join(by_name)}")
        if not isinstance(spec, dict):
            raise UserError(f"{where}: {name}: expected {{\"low\", \"high\"}} or {{\"choices\"}}, got {spec!r}")
        if "choices" in spec:
            values = spec["choices"]
            if not isinstance(values, list) or not values:
                raise UserError(f"{where}: {name}: choices must be a non-empty list, got {values!r}")
            for v in values:
                by_name[name].read(v)  # an impossible value fails here, naming the option
            then = spec.get("then", {})
            for value, sub in then.items():
                if value not in map(str, values):
                    raise UserError(f"{where}: {name}: 'then' names {value!r}, which is not one of its choices")
                for key, sub_spec in sub.items():
                    one(key, sub_spec, f"{where}: {name}={value}")
            return
        try:
            low, high = float(spec["low"]), float(spec["high"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{where}: {name}: a range needs numbers low and high, got {spec!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high) or (spec.get("log") and low <= 0):
            raise UserError(f"{where}: {name}: needs low < high (and low > 0 on a log scale), got {spec!r}")
        for v in (low, high):
            by_name[name].read(int(v) if spec.get("int") else v)

    for name, spec in space.items():
        one(name, spec, "the search space")
    return space


def as_params(space: dict, options: dict) -> dict:
    """``options`` (a learner's defaults) under the names ``suggest`` draws, for the entries of
    ``space`` whose ranges hold them (an Optuna trial to enqueue: the untuned setting, scored
    like any other)."""
    out: dict = {}

    def put(name: str, spec: dict, label: str) -> None:
        value = options.get(name)
        if value is None:
            return
        if "choices" in spec:
            if value in spec["choices"]:
                out[label] = value
                for key, sub in spec.get("then", {}).get(str(value), {}).items():
                    put(key, sub, f"{value}.{key}")
        elif float(spec["low"]) <= value <= float(spec["high"]):
            out[label] = value

    for name, spec in space.items():
        put(name, spec, name)
    return out


def suggest(trial, space: dict) -> dict:
    """One setting of every option of ``space``, drawn from the Optuna ``trial``."""
    out: dict = {}

    def draw(name: str, spec: dict, label: str) -> None:
        if "choices" in spec:
            value = trial.suggest_categorical(label, spec["choices"])
            out[name] = value
            for key, sub in spec.get("then", {}).get(str(value), {}).items():
                draw(key, sub, f"{value}.{key}")
        elif spec.get("int"):
            out[name] = trial.suggest_int(label, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
        else:
            out[name] = trial.suggest_float(label, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))

    for name, spec in space.items():
        draw(name, spec, name)
    return out

"""Continual-learning streams: an ordered list of experiences.

A learner trains on each experience of a stream in turn, with no access to the earlier ones
("experience" as in Lomonaco et al. 2021, "Avalanche: an End-to-End Library for Continual
Learning"). Each experience names its data (a data spec understood by the loaders elsewhere:
``bouncing-mnist``, ``stdlib``, ``ptb-char:DIR``, a file path) and its training budget: exactly
one of ``minutes`` (training time) or ``tokens`` (training symbols or frames).

- ``parse(spec, minutes=None, tokens=None)``: a stream from a comma-separated list of data specs
  (all with the command-line budget) or from a JSON file (a spec ending in ``.json``) holding
  ``[{"data": ..., "name": ..., "minutes": ... | "tokens": ...}, ...]`` or
  ``{"experiences": [...]}``; an experience without its own budget takes the command-line one.
- ``to_json(experiences)``: plain dicts for results files (itself a valid stream file).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Optional

from sequences.errors import DataError

KEYS = ("data", "name", "minutes", "tokens")


@dataclass
class Experience:
    """One step of a stream: its name, its data spec and its budget (exactly one of the two)."""

    name: str
    data: str
    minutes: Optional[float] = None
    tokens: Optional[int] = None

    def __post_init__(self):
        problem = _budget_problem(self.minutes, self.tokens)
        if problem:
            raise DataError(f"experience {self.name!r}: {problem}")


def _budget_problem(minutes, tokens) -> Optional[str]:
    """Why (minutes, tokens) is not a valid budget, or None."""
    if (minutes is None) == (tokens is None):
        return "give exactly one of minutes or tokens as its budget"
    if minutes is not None:
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not math.isfinite(minutes):
            return f"minutes must be a number, got {minutes!r}"
        if not minutes > 0:
            return f"minutes must be positive, got {minutes!r}"
    else:
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            return f"tokens must be a whole number, got {tokens!r}"
        if not tokens > 0:
            return f"tokens must be positive, got {tokens!r}"
    return None


def default_name(data: str) -> str:
    """The name of an experience after its data: the spec itself, or for a path its last part
    (``ptb-char:/data/ptb`` -> ``ptb-char:ptb``, ``corpora/tiny.txt`` -> ``tiny.txt``)."""
    prefix, rest = "", data
    m = re.match(r"^([A-Za-z][\w.-]+):(.*)$", data)  # a loader prefix (not a one-letter drive)
    if m:
        prefix, rest = m.group(1) + ":", m.group(2)
    base = os.path.basename(rest.rstrip("/\\").replace("\\", "/"))
    return prefix + (base or rest)


def _unique(names: list, explicit: list) -> list:
    """Auto names made unique with ``#2``, ``#3``... avoiding every other name."""
    taken = {n for n, e in zip(names, explicit) if e}
    out = []
    for name, given in zip(names, explicit):
        if not given:
            k, candidate = 1, name
            while candidate in taken:
                k += 1
                candidate = f"{name}#{k}"
            name = candidate
        taken.add(name)
        out.append(name)
    return out


def _cli_budget(minutes, tokens, required: bool) -> tuple:
    if minutes is not None and tokens is not None:
        raise DataError("give only one of minutes or tokens as the budget per experience")
    if minutes is None and tokens is None:
        if required:
            raise DataError("give one of minutes or tokens as the budget per experience")
        return None, None
    problem = _budget_problem(minutes, tokens)
    if problem:
        raise DataError(f"the budget per experience: {problem}")
    return minutes, tokens


def parse(spec: str, minutes: Optional[float] = None, tokens: Optional[int] = None) -> list:
    """The stream ``spec`` (a comma-separated list of data specs, or a ``.json`` stream file) as a
    list of ``Experience``; ``minutes``/``tokens`` is the budget of experiences without their own."""
    spec = (spec or "").strip()
    if not spec:
        raise DataError("the stream is empty: give comma-separated data specs or a .json stream file")
    if spec.lower().endswith(".json"):
        return _parse_file(spec, minutes, tokens)
    minutes, tokens = _cli_budget(minutes, tokens, required=True)
    datas = [part.strip() for part in spec.split(",")]
    for i, d in enumerate(datas):
        if not d:
            raise DataError(f"stream {spec!r}: experience {i} has an empty data spec")
    names = _unique([default_name(d) for d in datas], [False] * len(datas))
    return [Experience(n, d, minutes, tokens) for n, d in zip(names, datas)]


def _parse_file(path: str, minutes, tokens) -> list:
    minutes, tokens = _cli_budget(minutes, tokens, required=False)
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise DataError(f"{path}: no such stream file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read the stream file ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON at line {err.lineno} column {err.colno} ({err.msg})") from None
    if isinstance(doc, dict):
        extra = sorted(set(doc) - {"experiences"})
        if extra or "experiences" not in doc:
            raise DataError(f"{path}: a stream object holds only the key \"experiences\""
                            + (f", not {', '.join(map(repr, extra))}" if extra else ""))
        doc = doc["experiences"]
    if not isinstance(doc, list):
        raise DataError(f"{path}: a stream file holds a list of experiences or {{\"experiences\": [...]}}")
    if not doc:
        raise DataError(f"{path}: the stream is empty")
    rows = []
    for i, item in enumerate(doc):
        where = f"{path}: experience {i}"
        if not isinstance(item, dict):
            raise DataError(f"{where}: must be an object with \"data\" and a budget, got {item!r}")
        extra = sorted(set(item) - set(KEYS))
        if extra:
            raise DataError(f"{where}: unknown key(s) {', '.join(map(repr, extra))} (known: {', '.join(KEYS)})")
        data = item.get("data")
        if not isinstance(data, str) or not data.strip():
            raise DataError(f"{where}: needs \"data\", a non-empty data spec string")
        name = item.get("name")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise DataError(f"{where}: \"name\" must be a non-empty string, got {name!r}")
        m, t = item.get("minutes"), item.get("tokens")
        if m is not None and t is not None:
            raise DataError(f"{where}: give only one of \"minutes\" or \"tokens\"")
        if m is None and t is None:
            if minutes is None and tokens is None:
                raise DataError(f"{where}: has no budget; give \"minutes\" or \"tokens\" in the file "
                                "or one budget for all experiences")
            m, t = minutes, tokens
        elif isinstance(t, float) and t.is_integer():
            t = int(t)  # 1e6 in JSON
        problem = _budget_problem(m, t)
        if problem:
            raise DataError(f"{where}: {problem}")
        rows.append((name.strip() if name else None, data.strip(), m, t))
    first = {}
    for i, r in enumerate(rows):
        if r[0] is not None and r[0] in first:
            raise DataError(f"{path}: experience {i}: the name {r[0]!r} is already used by experience {first[r[0]]}")
        first.setdefault(r[0], i)
    names = _unique([r[0] or default_name(r[1]) for r in rows], [r[0] is not None for r in rows])
    return [Experience(n, d, m, t) for n, (_, d, m, t) in zip(names, rows)]


def to_json(experiences) -> list:
    """Plain dicts (``name``, ``data`` and the one budget given), e.g. for results.json."""
    out = []
    for e in experiences:
        row = {"name": e.name, "data": e.data}
        row.update({"minutes": e.minutes} if e.minutes is not None else {"tokens": e.tokens})
        out.append(row)
    return out

"""Declared options: the typed fields that every learner's settings are read from.

An ``Option`` is a name (a Python identifier: the key in ``config.json``, in ``--set
MODEL:KEY=VALUE`` and in presets; its command-line flag is ``--name-with-dashes``), a ``Kind``
(how a value is read from command-line text or from JSON, and how it is shown), a default, one
line of help, and optionally the allowed ``choices``, a ``check`` and the ``space`` that
``tncn tune`` searches (``tncn.space``). A learner class declares a
tuple of them (``OPTIONS``); ``read`` turns a dict of given values into the learner's complete,
checked options, and the command line, ``--set``, ``config.json`` and presets all go through it,
so a new option needs no edit anywhere else.

Errors are ``OptionError``: one line that names the key (the library's word) and the allowed
values. The command line shows the same message with the key as its flag (``render``).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from tncn.errors import UserError


class OptionError(UserError):
    """A value an option cannot take. ``template`` holds ``{}`` where the option's name goes."""

    def __init__(self, key: str, template: str):
        self.key, self.template = key, template
        super().__init__(template.format(key))

    def render(self, name: str) -> str:
        """The message with the option called ``name`` (a flag such as ``--lr``, or ``lstm:lr``)."""
        return self.template.format(name)


# --------------------------------------------------------------------------- kinds of values

@dataclass(frozen=True)
class Kind:
    """How a value is read (from command-line text or a JSON value) and shown."""

    metavar: str
    read: Callable[[Any], Any]  # raises ValueError(why) for a value of the wrong form
    show: Callable[[Any], str] = str


def _int(v) -> int:
    if isinstance(v, bool):
        raise ValueError("expected a whole number")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            pass
    raise ValueError("expected a whole number")


def _float(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError("expected a number")
    try:
        x = float(v)
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(x):
        raise ValueError("expected a finite number")
    return x


_TRUE, _FALSE = ("on", "true", "yes", "1"), ("off", "false", "no", "0")


def _bool(v) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
        return v.strip().lower() in _TRUE
    raise ValueError("expected on or off")


def _str(v) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError("expected a name")
    return v


def _widths(v) -> list:
    if isinstance(v, str):
        parts = [p for p in v.replace(" ", "").split(",")]
    elif isinstance(v, (list, tuple)):
        parts = list(v)
    else:
        parts = [v]
    try:
        widths = [_int(p) for p in parts]
    except ValueError:
        widths = []
    if not widths or min(widths) <= 0:
        raise ValueError("expected positive whole numbers, comma-separated (such as 256,256)")
    return widths


def _show_widths(v) -> str:
    return ",".join(map(str, v))


def _floats(v) -> list:
    parts = v.replace(" ", "").split(",") if isinstance(v, str) else list(v) if isinstance(v, (list, tuple)) else [v]
    try:
        values = [_float(p) for p in parts]
    except ValueError:
        values = []
    if not values:
        raise ValueError("expected numbers, comma-separated (such as 1,0.5)")
    return values


INT = Kind("INT", _int)
FLOAT = Kind("X", _float)
BOOL = Kind("on|off", _bool, lambda v: "on" if v else "off")
STR = Kind("NAME", _str)
PATH = Kind("DIR", _str)
FILE = Kind("FILE", _str)
URL = Kind("URL", _str)
WIDTHS = Kind("H1,H2,...", _widths, _show_widths)
FLOATS = Kind("X1,X2,...", _floats, _show_widths)

_NONE = ("none", "null", "off")


def optional(kind: Kind) -> Kind:
    """``kind`` or None (written ``none``)."""
    def read(v):
        if v is None or (isinstance(v, str) and v.strip().lower() in _NONE):
            return None
        return kind.read(v)
    return Kind(f"{kind.metavar}|none", read, lambda v: "none" if v is None else kind.show(v))


def either(word: str, kind: Kind) -> Kind:
    """The fixed word ``word`` (e.g. ``full``) or a value of ``kind``."""
    def read(v):
        if isinstance(v, str) and v.strip().lower() == word:
            return word
        try:
            return kind.read(v)
        except ValueError as err:
            raise ValueError(f"expected {word} or {str(err).removeprefix('expected ')}") from None
    return Kind(f"{word}|{kind.metavar}", read, lambda v: v if v == word else kind.show(v))


# --------------------------------------------------------------------------- checks

def positive(v) -> Optional[str]:
    return None if v is None or v > 0 else "must be positive"


def non_negative(v) -> Optional[str]:
    return None if v is None or v >= 0 else "must be non-negative"


def at_least(n) -> Callable[[Any], Optional[str]]:
    def check(v):
        return None if v is None or v >= n else f"must be at least {n}"
    return check


def in_range(lo, hi) -> Callable[[Any], Optional[str]]:
    """lo < v <= hi."""
    def check(v):
        return None if v is None or lo < v <= hi else f"must be in ({lo:g}, {hi:g}]"
    return check


# --------------------------------------------------------------------------- options

@dataclass(frozen=True)
class Option:
    """One declared option (see the module docstring).

    ``runtime``: it says how the model runs, not what it computes (``compile``), so a resumed
    run may change it. ``space``: the range ``tncn tune`` searches by default (``tncn.space``;
    None: not tuned)."""

    name: str
    kind: Kind
    default: Any
    help: str
    choices: Optional[tuple] = None
    check: Optional[Callable[[Any], Optional[str]]] = None
    runtime: bool = False
    space: Optional[dict] = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def metavar(self) -> str:
        return "|".join(map(str, self.choices)) if self.choices else self.kind.metavar

    def read(self, raw) -> Any:
        """The value of ``raw`` (command-line text or a JSON value), checked; else an ``OptionError``."""
        try:
            value = self.kind.read(raw)
        except (ValueError, TypeError) as err:
            raise OptionError(self.name, f"{{}}: {err}, got {raw!r}") from None
        if self.choices is not None and value not in self.choices:
            raise OptionError(self.name, f"{{}} must be one of {', '.join(map(str, self.choices))}, got {raw!r}")
        problem = self.check(value) if self.check is not None else None
        if problem:
            raise OptionError(self.name, f"{{}} {problem}, got {self.kind.show(value)}")
        return value

    def describe(self) -> str:
        """The help line with the default, as ``--help`` shows it."""
        return f"{self.help} (default {self.kind.show(self.default) if self.default is not None else 'none'})"


def argument(fn, name: str, kind: Kind, help: str, **kw) -> Option:
    """An option for the keyword argument ``name`` of ``fn``, with ``fn``'s default (so that the
    default is written once, in the signature)."""
    return Option(name, kind, inspect.signature(fn).parameters[name].default, help, **kw)


def names(options) -> list[str]:
    return [o.name for o in options]


def defaults(options) -> dict:
    return {o.name: o.default for o in options}


def find(options, name: str, owner: str) -> Option:
    """The option called ``name`` of ``owner`` (a learner's name), or an error listing them."""
    for o in options:
        if o.name == name:
            return o
    message = f"{owner} has no option {name!r}; its options: {', '.join(names(options))}"
    raise OptionError(name, message.replace("{", "{{").replace("}", "}}"))  # the message names no flag


def read(options, given: dict, owner: str) -> dict:
    """Every option of ``options``: the ``given`` values (read and checked), else the defaults.

    An unknown key is an ``OptionError`` that names ``owner`` and lists its options."""
    for key in given:
        find(options, key, owner)
    return {o.name: o.read(given[o.name]) if o.name in given else o.default for o in options}

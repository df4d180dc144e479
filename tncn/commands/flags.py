"""Flags shared by the sub-commands, declared once, and declared options turned into flags.

The shared flags are ``tncn.options.Option``s (``FLAGS``), read and checked like a learner's
options. ``parent(*names)`` makes an argparse parent parser with some of them, ``budget(...)`` the
mutually exclusive budget flags and ``outputs(...)`` the run-folder flags; ``add(group, options)``
adds any declared options (a learner's) to a parser. Every such flag is parsed as text and
defaults to None ("not given"); ``given(args, options)`` reads and checks the ones given, and
``read(args, names)`` fills in the declared defaults. A bad value raises the option's
``OptionError``, which ``tncn.cli`` prints as one line naming the flag and its allowed values.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Optional

from tncn import checkpoint
from tncn.errors import UserError
from tncn.options import BOOL, FLOAT, INT, PATH, STR, Option, at_least, optional, positive

FLAGS = {o.name: o for o in (
    Option("data", STR, "stdlib",
           "stdlib (the embedded corpus), a text file (its lines split 90/5/5), a folder with train/valid/test "
           "files, ptb-char:DIR, ptb-word:DIR, hf:NAME[:CONFIG]; videos: bouncing-glyphs (no file needed), "
           "bouncing-mnist, bouncing-notmnist, bouncing-fashion (IDX files under --data-root), bouncing:DIR"),
    Option("data_root", optional(PATH), None,
           "folder holding mnist/, fashion_mnist/, notmnist/ (none: $TNCN_DATA, else ~/.cache/tncn)"),
    Option("level", optional(STR), None, "symbols: characters (none: char) or words", choices=("char", "word")),
    Option("protocol", STR, "stream", "lines: one line per sequence, state reset, first symbol unscored; "
                                      "stream: one continuous stream in segments, state carried",
           choices=("lines", "stream")),
    Option("seq_len", INT, 100, "segment length of the stream protocol", check=positive),
    Option("batch_size", INT, 32, "sequences (lines) or parallel streams per batch", check=positive),
    Option("frames", INT, 20, "video: frames per sequence", check=at_least(2)),
    Option("frame_size", INT, 64, "video: side of the square frame in pixels", check=positive),
    Option("glyphs", INT, 2, "video: moving glyphs per sequence", check=positive),
    Option("seed", INT, 0, "seed of the weights and the batch order"),
    Option("device", STR, "cpu", "cpu, cuda or cuda:N"),
    Option("threads", INT, 1, "CPU threads for torch (1: fastest for small widths and on a shared machine)",
           check=positive),
    Option("parallel", STR, "exact", "under torchrun: exact (the one-process update on the global batch: summed "
                                     "local updates or DDP) or average (local SGD: each rank learns alone, the "
                                     "weights are averaged every --average-every steps)", choices=("exact", "average")),
    Option("average_every", INT, 1, "under torchrun with --parallel average: average the weights every K "
                                    "training steps", check=positive),
    Option("steps", optional(INT), None, "training budget: batches", check=positive),
    Option("epochs", optional(INT), None, "training budget: passes over the training split", check=positive),
    Option("minutes", optional(FLOAT), None, "training budget: minutes", check=positive),
    Option("tokens", optional(INT), None, "training budget: training symbols (frames for video)", check=positive),
)}
VIDEO = ("frames", "frame_size", "glyphs")
"""The flags that shape video data (``sequences.video``)."""


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (and a pointer to ``--help``), never the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add(group, options: Iterable[Option]) -> None:
    """Each option as a flag ``--name`` read as text (``--flag`` alone means on for on/off options)."""
    for o in options:
        extra = {"nargs": "?", "const": "on"} if o.kind is BOOL else {}
        group.add_argument(o.flag, dest=o.name, metavar=o.metavar, default=None, help=o.describe(), **extra)


def _flag(name: str, helps: Optional[dict], defaults: Optional[dict]) -> Option:
    """The shared flag ``name`` with a command's own help text or default, where it has one."""
    o = FLAGS[name]
    return replace(o, help=(helps or {}).get(name, o.help), default=(defaults or {}).get(name, o.default))


def parent(*names: str, title: Optional[str] = None, helps: Optional[dict] = None,
           defaults: Optional[dict] = None) -> argparse.ArgumentParser:
    """A parent parser with the shared flags ``names``; a command may give some its own help text
    (``helps``) or default (``defaults``: then ``read`` them with the same ``defaults``)."""
    p = argparse.ArgumentParser(add_help=False)
    add(p.add_argument_group(title) if title else p, [_flag(n, helps, defaults) for n in names])
    return p


def budget(names=("steps", "epochs", "minutes", "tokens"), helps: Optional[dict] = None) -> argparse.ArgumentParser:
    """A parent parser with mutually exclusive budget flags."""
    p = argparse.ArgumentParser(add_help=False)
    group = p.add_argument_group("budget (one of)").add_mutually_exclusive_group()
    for name in names:
        o = FLAGS[name]
        group.add_argument(o.flag, dest=o.name, metavar=o.kind.metavar.split("|")[0], default=None,
                           help=(helps or {}).get(name, o.help))
    return p


def outputs(help: str, resume: bool = False, required: bool = False) -> argparse.ArgumentParser:
    """A parent parser with ``--out DIR``, ``--force`` and (``resume``) ``--resume``."""
    p = argparse.ArgumentParser(add_help=False)
    group = p.add_argument_group("output")
    group.add_argument("--out", required=required, metavar="DIR", help=help)
    group.add_argument("--force", action="store_true", help="overwrite the run files in an existing --out")
    if resume:
        group.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    return p


def given(args, options: Iterable[Option]) -> dict:
    """The ``options`` given on the command line, read and checked (errors name the flag)."""
    return {o.name: o.read(getattr(args, o.name)) for o in options if getattr(args, o.name, None) is not None}


def values(args, options: Iterable[Option]) -> dict:
    """The ``options``: given values, else their declared defaults."""
    options = list(options)
    return {**{o.name: o.default for o in options}, **given(args, options)}


def read(args, *names: str, defaults: Optional[dict] = None) -> dict:
    """The shared flags ``names``: given values, else their defaults (a command's own ``defaults``
    first, then the declared ones)."""
    return values(args, [_flag(n, None, defaults) for n in names])


def peek(argv: Optional[list], *flags: str) -> argparse.Namespace:
    """The values of a few flags in ``argv`` before the real parse (which depends on them)."""
    p = argparse.ArgumentParser(add_help=False)
    for flag in flags:
        p.add_argument(flag, action="store_true" if flag in ("--resume", "--force") else "store")
    return p.parse_known_args(argv or [])[0]


def output_file(path, flag: str) -> Optional[Path]:
    """The file a flag such as ``--json FILE`` names, checked before any work: its folder is made
    if missing, and a folder or an unwritable place is refused in one line (None stays None)."""
    if path is None:
        return None
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{flag} {path}: cannot make its folder ({err.strerror or err})") from None
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"{flag} {path}: its folder is not writable")
    return path


def check_out(out: Path, force: bool, resume: Optional[bool] = None) -> None:
    """Refuse to write into an existing, non-empty ``--out`` unless forced or (for commands that
    can, ``resume`` not None) resuming."""
    if resume and force:
        raise UserError("--resume and --force exclude each other")
    if resume:
        if not (out / checkpoint.FILENAME).is_file():
            raise UserError(f"--resume: no checkpoint in {out}")
        return
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        how = "continue it with --resume or overwrite it with --force" if resume is not None else "overwrite it with --force"
        raise UserError(f"--out {out} already exists; {how}")

"""The ``tncn`` command line: a thin layer over the library, one module per sub-command.

Each module in ``tncn.commands`` defines ``register(subparsers)``, which adds its parser and sets
``func`` to a function taking the parsed arguments. A ``UserError`` (bad input) is printed as one
line on stderr with exit status 2; nothing else is caught, so real bugs keep their tracebacks.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from tncn.errors import UserError

COMMANDS = ["train", "eval", "sample", "classify", "compare", "bench", "continual"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tncn", description="Temporal neural coding networks: train, evaluate and compare recurrent models without BPTT.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"tncn.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"tncn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tncn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

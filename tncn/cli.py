"""The ``tncn`` command line: a thin layer over the library, one module per sub-command.

Each module in ``tncn.commands`` defines ``register(subparsers, argv)``, which adds its parser (its
flags may depend on ``argv``: ``tncn train --model X`` shows X's options) and sets ``func`` to a
function taking the parsed arguments. Bad input (a ``UserError``, a ``DataError`` of the data
package, an ``OptionError`` shown with its flag) is printed as one line on stderr with exit status
2; a training run that diverged (``tncn.guard.Diverged``) as one line with exit status 3; Ctrl-C
exits with 130. Nothing else is caught, so real bugs keep their tracebacks.
"""
from __future__ import annotations

import sys

from sequences.errors import DataError
from tncn.commands import autoencode, bench, classify, compare, continual, eval, flags, sample, train, tune
from tncn import guard
from tncn.errors import UserError
from tncn.guard import Diverged
from tncn.options import OptionError

COMMANDS = (train, eval, sample, classify, autoencode, compare, tune, bench, continual)


def build_parser(argv: list[str] | None = None) -> flags.Parser:
    parser = flags.Parser(prog="tncn", description="Temporal neural coding networks: train, evaluate and compare "
                                                   "recurrent models without BPTT.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub, argv)
    parser.set_defaults(commands=sub.choices)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # said by the sub-command, whose --help lists what it takes
            (args.commands.get(args.command) or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as done:  # --help, or a one-line usage error (flags.Parser)
        return int(done.code or 0)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except OptionError as err:
        print(f"tncn {args.command}: error: {err.render('--' + err.key.replace('_', '-'))}", file=sys.stderr)
    except (UserError, DataError) as err:
        print(f"tncn {args.command}: error: {err}", file=sys.stderr)
    except Diverged as err:
        print(f"tncn {args.command}: {err}; nothing was saved", file=sys.stderr)
        return guard.EXIT_STATUS
    except KeyboardInterrupt:
        print(f"tncn {args.command}: interrupted; the work in progress was not saved", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())

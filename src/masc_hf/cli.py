"""The ``masc-hf`` command. It parses arguments and calls the library; nothing else lives here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

# Each entry adds one subcommand to the parser: register(subparsers) -> None.
# The function it sets with ``set_defaults(func=...)`` receives the parsed namespace.
_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def command(register: Callable[[argparse._SubParsersAction], None]):
    _COMMANDS.append(register)
    return register


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="masc-hf", description=__doc__)
    parser.add_argument("--version", action="version", version=f"masc-hf {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _COMMANDS:
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .errors import MASCError

    try:
        return int(args.func(args) or 0)
    except MASCError as err:  # bad input: one clear line, no traceback
        print(f"masc-hf {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

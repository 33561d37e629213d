"""`data-gen` command line: one subcommand per module, each module adds its own parser.

A subcommand module exposes `register(subparsers)` which adds a parser and sets `func=<callable(args)>`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module that registers it
SUBCOMMANDS = {
    "eventworld": "data_gen.eventworld.cli",
    "extract": "data_gen.extract",
    "describe": "data_gen.describe",
    "build": "data_gen.build",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="data-gen", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; completed work is kept and a re-run resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The `cnnlab` command: a thin layer over the Python API, one module per group of commands.

User mistakes (CnnlabError, and argparse's own) print one line and exit with code 2; Ctrl-C exits with 130.
`--help`, `--version` and `cnnlab models` import no torch: command modules import the API inside their functions.
A new command is a module with `register(subparsers)` plus its name in COMMANDS.
"""

from __future__ import annotations

import argparse
import sys

from cnnlab import __version__
from cnnlab.cli import data, evaluate, models, train
from cnnlab.errors import CnnlabError

COMMANDS = (train, evaluate, data, models)


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (what is wrong, and where the help is), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"cnnlab: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cnnlab", description="Train, evaluate and understand CNN image classifiers.")
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CnnlabError as e:
        print(f"cnnlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # TrainingInterrupted says where it saved and how to resume
        print(str(e) or "cnnlab: interrupted", file=sys.stderr)
        return 130

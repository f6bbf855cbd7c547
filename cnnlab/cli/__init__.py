"""The `cnnlab` command: a thin layer over the Python API, one module per group of commands.

User mistakes (CnnlabError, and argparse's own) print one line and exit with code 2; Ctrl-C exits with 130.
`--help`, `--version` and `cnnlab models` import no torch: command modules import the API inside their functions.
A new command is a module with `register(subparsers)` plus its name in COMMANDS.
"""

from __future__ import annotations

import argparse
import os
import sys

from cnnlab import __version__
from cnnlab.cli import compare, data, doctor, evaluate, export, models, report, train, tune
from cnnlab.errors import CnnlabError

COMMANDS = (train, doctor, tune, evaluate, compare, report, export, data, models)


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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line as given (the --nproc launcher hands it to its workers)
    try:
        return args.func(args)
    except CnnlabError as e:
        if speaks() and not getattr(e, "printed", False):
            print(f"cnnlab: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)  # 2: a user mistake
    except KeyboardInterrupt as e:  # TrainingInterrupted says where it saved and how to resume
        if speaks():
            print(str(e) or "cnnlab: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        lost = lost_peer(e)
        if lost is None:
            raise
        if speaks(peer_lost=True):
            print(f"cnnlab: error: {lost}", file=sys.stderr)
        return 1


def speaks(peer_lost: bool = False) -> bool:
    """In a distributed run rank 0 prints the job's errors; under `--nproc` the launcher reports a lost rank."""
    rank = int(os.environ.get("RANK", "0"))
    return rank == 0 and not (peer_lost and os.environ.get("CNNLAB_LAUNCHED"))


def lost_peer(error: RuntimeError) -> str | None:
    """A one-line message when a collective failed because another rank died or stopped answering."""
    text = str(error)
    signs = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out", "timed out",
             "NCCL communicator was aborted", "ProcessGroupGloo", "gloo")
    if not os.environ.get("WORLD_SIZE") or not any(s in text for s in signs):
        return None
    return (f"rank {os.environ.get('RANK', '?')}: another rank stopped answering ({text.splitlines()[0][:120]}); "
            "the job stops. Continue it with: cnnlab train --resume RUN")

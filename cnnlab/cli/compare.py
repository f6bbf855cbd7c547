"""`cnnlab compare RUN...`: run folders side by side (the config keys that differ, headline metrics, the best)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare run folders: differing config keys, val metrics, the best run",
                       description="Compare run folders (tune trials or any runs): one table with only the config "
                       "keys that differ, the headline val metrics, and which run is best on the monitored metric. "
                       "Runs validated on different data or val splits are not ranked.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from cnnlab.tune.compare import compare, print_comparison

    result = compare(args.runs)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_comparison(result, Console(highlight=False))
    return 0

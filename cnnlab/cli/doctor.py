"""`cnnlab doctor DATA [train options] [--out DIR] [--quick]`: the learning-process checks with a verdict each.

Exit code 0 when nothing failed, 1 when a check failed (a CI gate), 2 on a user error."""

from __future__ import annotations

import argparse

from cnnlab.cli.options import add_config_options, config_keywords
from cnnlab.config import build_config
from cnnlab.errors import CnnlabError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check the learning process on DATA: data, initial loss, init, gradients, "
                       "overfit a tiny subset, lr range test; a verdict and a fix each",
                       usage="cnnlab doctor DATA [train options] [--out DIR] [--quick]",
                       description="Run the course's learning-process checks with the model and options cnnlab "
                       "train would use; print a table, write doctor.json and PNG plots into --out (default "
                       "runs/doctor-<time>). Exit code 1 when a check failed.")
    add_config_options(p)
    p.add_argument("--config", help="a YAML config to start from")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, e.g. --set train.weight_decay=5e-4 (repeatable)")
    p.add_argument("--quick", action="store_true", help="fewer steps and seeds (about half the time)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.data is None and args.config is None:
        raise CnnlabError("say what to check: cnnlab doctor DATA (e.g. cnnlab doctor digits)")
    kwargs = config_keywords(args)
    cfg = build_config(args.data, args.config, args.overrides, caller="cnnlab doctor", **kwargs)
    from rich.console import Console

    from cnnlab.doctor.run import output_folder, print_report

    cfg.out = str(output_folder(cfg.out))  # a new folder by default; a non-empty --out is refused
    import sys

    from cnnlab.doctor import doctor

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
    report = doctor(config=cfg, quick=args.quick, console=console)
    print_report(report, console)
    return report.exit_code

"""`cnnlab tune DATA [train options] --trials N [...]`: hyperparameter search on Optuna (cnnlab.tune)."""

from __future__ import annotations

import argparse

from cnnlab.cli.options import add_config_options, config_keywords
from cnnlab.config import build_config
from cnnlab.errors import CnnlabError

RENAMED = {"--workers": "--data-workers"}  # data.workers: DataLoader processes; --workers here: trial processes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="hyperparameter search (Optuna): every trial a run folder, crash-safe, "
                       "many workers", usage="cnnlab tune DATA [train options] --trials N [--space space.yaml] "
                       "[--sampler random|grid|tpe] [--pruner median|hyperband|none] [--workers K] [--storage URL] "
                       "[--study NAME] [--timeout S] [--confirm K] [--out DIR]",
                       description="Search hyperparameters around the train options given (the base config). "
                       "Trials are run folders DIR/trials/NNNN; the objective is each run's monitored metric on "
                       "val. Rerun the same command to continue an interrupted study. --out is the study folder "
                       "(default runs/tune-STUDY).")
    s = p.add_argument_group("search")
    s.add_argument("--trials", type=int, default=20, metavar="N", help="trials in the study in all (default 20)")
    s.add_argument("--space", metavar="YAML", help="search space keyed by config names, e.g. train.lr: "
                   "{loguniform: [1e-4, 1e-1]} (default: one for scratch, one for feature-extract / fine-tune)")
    s.add_argument("--sampler", default="random", choices=("random", "grid", "tpe"), help="default random (the "
                   "notes: random, not grid, for the learning rate and regularization); seeded by --seed")
    s.add_argument("--pruner", default="median", choices=("median", "hyperband", "none"),
                   help="stop unpromising trials from their per-epoch monitor (default median)")
    s.add_argument("--workers", dest="tune_workers", type=int, default=1, metavar="K",
                   help="trial processes on this machine, splitting the CPU threads (default 1)")
    s.add_argument("--storage", metavar="URL", help="Optuna storage: a journal file path, or an RDB URL such as "
                   "postgresql://user:pw@host/db that workers on many machines join (default DIR/study.journal)")
    s.add_argument("--study", default="tune", metavar="NAME", help="study name (default tune)")
    s.add_argument("--timeout", type=float, metavar="S",
                   help="start no new trial after S seconds (each worker runs at least one)")
    s.add_argument("--confirm", type=int, default=0, metavar="K", help="then re-run the top K configurations with "
                   "--confirm-seeds other seeds (DIR/confirm/), so the winner is judged against seed noise")
    s.add_argument("--confirm-seeds", type=int, default=3, metavar="S", help="seeds per confirmed configuration")
    s.add_argument("--confirm-strategy", choices=("same", "fine-tune"), default="same", help="confirm with the "
                   "same strategy, or fine-tune a feature-extract search's winners with the full model")
    add_config_options(p, rename=RENAMED)
    p.add_argument("--config", help="a YAML config to start from (e.g. a run's config.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--quiet", action="store_true", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", help=argparse.SUPPRESS)  # a worker process started by --workers K
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.worker is not None:
        from cnnlab.tune.search import worker_main

        return worker_main(args.worker, args.worker_index, args.trials, args.deadline)
    if args.data is None and args.config is None:
        raise CnnlabError("say what to search on: cnnlab tune DATA --trials N (e.g. cnnlab tune digits --trials 10)")
    kwargs = config_keywords(args)
    cfg = build_config(args.data, args.config, args.overrides, caller="cnnlab tune", **kwargs)
    from rich.console import Console

    from cnnlab.tune import summarize, tune

    console = Console(highlight=False)
    log = lambda m: console.print(m, markup=False, soft_wrap=True)  # noqa: E731
    out = tune(cfg, trials=args.trials, space=args.space, sampler=args.sampler, pruner=args.pruner,
               workers=args.tune_workers, storage=args.storage, study=args.study, timeout=args.timeout, log=log)
    summary = summarize(out, args.storage, console)
    if args.confirm:
        from cnnlab.tune.confirm import confirm

        confirm(out, summary, args.confirm, args.confirm_seeds, args.confirm_strategy, console)
    return 0

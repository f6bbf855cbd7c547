"""`cnnlab train DATA [options]` and `cnnlab train --resume RUN`."""

from __future__ import annotations

import argparse

from cnnlab.cli.options import add_config_options, config_keywords, given_flags
from cnnlab.config import build_config
from cnnlab.errors import CnnlabError

RESUME_FLAGS = ("--device", "--checkpoint-every", "--nproc")  # besides --quiet: what a resumed run may change


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on DATA and write a run folder",
                       usage="cnnlab train DATA [options] | cnnlab train --resume RUN",
                       description="Train a model on DATA and write a run folder. Every option is a config field "
                       "(also --set section.key=value, or a YAML --config).")
    add_config_options(p)
    p.add_argument("--config", help="a YAML config (e.g. a run's config.yaml) to start from")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, e.g. --set train.weight_decay=5e-4 (repeatable)")
    p.add_argument("--quiet", action="store_true", default=None, help="no progress bar; log lines only")
    p.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN from its last checkpoint "
                   "(same config; only --device, --quiet, --checkpoint-every, --nproc may be given)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        return resume(args)
    if args.data is None and args.config is None:
        raise CnnlabError("say what to train on: cnnlab train DATA (e.g. cnnlab train digits)")
    kwargs = config_keywords(args)
    kwargs["quiet"] = args.quiet
    # checked before torch is imported: a misspelt model or option fails in a fraction of a second
    cfg = build_config(args.data, args.config, args.overrides, caller="cnnlab train", **kwargs)
    from cnnlab import distributed

    if cfg.distributed.nproc > 1 and not distributed.in_worker():  # this process launches the workers
        from cnnlab.runs import default_path

        out = cfg.out or str(default_path(cfg.model.name))
        return distributed.launch([*args.argv, *([] if cfg.out else ["--out", out])], cfg.distributed.nproc, out)
    from cnnlab.api import fit

    fit(config=cfg)
    return 0


def resume(args: argparse.Namespace) -> int:
    given = [f for f in given_flags(args) if f not in RESUME_FLAGS]
    given += ["DATA"] * (args.data is not None) + ["--config"] * (args.config is not None)
    given += ["--set"] * bool(args.overrides)
    if given:
        raise CnnlabError(f"--resume continues a run with its own config.yaml; drop {', '.join(given)} (or start a "
                          "new run with --config RUN/config.yaml)")
    from cnnlab.api import resume as resume_run

    resume_run(args.resume, device=args.device, quiet=args.quiet, checkpoint_every=args.checkpoint_every,
               nproc=args.nproc)
    return 0

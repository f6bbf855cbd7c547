"""`cnnlab report RUN [DATA] [--split auto|val|test|train] [--out DIR]`: one offline HTML page about a run."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write RUN/report/index.html: curves, confusion matrix with its images, "
                       "Grad-CAM, calibration", description="Write an HTML report of a run (opens from file://, "
                       "no network): run info, learning curves, per-class metrics, a confusion matrix whose cells "
                       "show their images, top losses and Grad-CAM, calibration, filters and feature maps.")
    p.add_argument("run", help="run folder")
    p.add_argument("data", nargs="?", help="data to report on (default: the run's own data)")
    p.add_argument("--split", default="auto", choices=("auto", "val", "test", "train"),
                   help="auto (default): test if the data has one, else the run's held-out val split")
    p.add_argument("--out", help="folder for index.html and its images (default RUN/report)")
    p.add_argument("--per-cell", type=int, default=24, metavar="N",
                   help="images shown per confusion-matrix cell, most confident first (default 24)")
    p.add_argument("--weights", default="best", choices=("best", "last"))
    p.add_argument("--device")
    p.set_defaults(func=report)


def report(args: argparse.Namespace) -> int:
    from cnnlab.inference import load_run
    from cnnlab.report import write_report

    run = load_run(args.run, weights=args.weights, device=args.device)
    write_report(run, args.data, args.split, args.out, per_cell=args.per_cell, log=print)
    return 0

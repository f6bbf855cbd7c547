"""`cnnlab evaluate RUN [DATA]` and `cnnlab predict RUN INPUTS... [--csv FILE]`: a run folder at work."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cnnlab.errors import CnnlabError


def check_output_file(path: str | None, flag: str) -> None:
    """Refuse an output file whose folder does not exist (before any work, not after it)."""
    if path and (not Path(path).expanduser().parent.is_dir() or Path(path).is_dir()):
        raise CnnlabError(f"{flag} {path}: its folder does not exist or it is a folder; name a file in an existing "
                          "folder")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics and confusion matrix of a run on DATA")
    p.add_argument("run", help="run folder")
    p.add_argument("data", nargs="?", help="data to evaluate on (default: the run's own data)")
    p.add_argument("--split", default="auto", help="test, val, train, or auto (test, else held-out val)")
    p.add_argument("--weights", default="best", choices=("best", "last"))
    p.add_argument("--device")
    p.add_argument("--precision", help="fp32, bf16 or fp16 (default: the run's own)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=evaluate)
    p = sub.add_parser("predict", help="predict images, folders or zips with a run; --csv for a submission")
    p.add_argument("run", help="run folder")
    p.add_argument("inputs", nargs="+", help="image files, folders or .zip archives")
    p.add_argument("--csv", help="write id, label and class probabilities to this CSV")
    p.add_argument("--id-format", default="auto", choices=("auto", "name", "stem", "path"))
    p.add_argument("--weights", default="best", choices=("best", "last"))
    p.add_argument("--device")
    p.add_argument("--precision", help="fp32, bf16 or fp16 (default: the run's own; an ONNX export computes in fp32)")
    p.add_argument("--show", type=int, default=20, help="rows to print (default 20)")
    p.add_argument("--backend", default="torch", choices=("torch", "onnx"),
                   help="torch, or onnx: ONNX Runtime on RUN/export/model.onnx (cnnlab export RUN)")
    p.set_defaults(func=predict)


def evaluate(args: argparse.Namespace) -> int:
    from cnnlab.inference import evaluate, load_run

    check_output_file(args.json, "--json")
    from rich.console import Console

    run = load_run(args.run, weights=args.weights, device=args.device, precision=args.precision)
    result = evaluate(run, args.data, args.split)
    run.task.print_evaluation(result, Console(highlight=False))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


def predict(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from cnnlab.inference import load_run, predict

    check_output_file(args.csv, "--csv")
    run = load_run(args.run, weights=args.weights, device=args.device, precision=args.precision)
    rows = predict(run, args.inputs, args.csv, id_format=args.id_format, backend=args.backend)
    console = Console(highlight=False)
    table = Table()
    for col in ("id", "label", "confidence"):
        table.add_column(col)
    for r in rows[: args.show]:
        table.add_row(r["id"], r["label"], f"{r['confidence']:.3f}")
    console.print(table)
    if len(rows) > args.show:
        console.print(f"... {len(rows) - args.show} more")
    console.print(f"{len(rows)} images predicted in " + ("fp32 by ONNX Runtime (the export)" if args.backend == "onnx"
                  else f"{run.predictor.precision} by PyTorch on {run.predictor.device}"), soft_wrap=True)
    if args.csv:
        console.print(f"wrote {len(rows)} predictions to {args.csv}")
    return 0

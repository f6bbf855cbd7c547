"""The `cnnlab` command: a thin layer over the Python API (cnnlab.api).

User mistakes (CnnlabError) print one line and exit with code 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cnnlab.errors import CnnlabError


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="?", help="folder, .zip, .csv (+ images), .npz, MNIST IDX folder, or a builtin "
                   "name: digits, mnist, fashion_mnist, cifar10")
    p.add_argument("--config", help="a YAML config (e.g. a run's config.yaml) to start from")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, e.g. --set train.weight_decay=5e-4 (repeatable)")
    g = p.add_argument_group("data")
    g.add_argument("--val-split", type=float, help="fraction held out for validation when DATA has no val split "
                   "(default 0.2)")
    g.add_argument("--image-size", type=int, help="resize images to this square size")
    g.add_argument("--channels", type=int, choices=(1, 3), help="1 (grayscale) or 3 (RGB); default from the data")
    g.add_argument("--images", help="image folder or zip for a CSV (default: detected beside it)")
    g.add_argument("--id-col", help="CSV column with image ids")
    g.add_argument("--label-col", help="CSV column with labels")
    g.add_argument("--skip-missing", action="store_true", default=None, help="skip CSV ids that have no image")
    g.add_argument("--normalize", help="standardize, scale, model, zero_center, per_image, zca, pca")
    g.add_argument("--augment", metavar="PRESET", help="training augmentation: none (default), light, medium, "
                   "heavy; options with --set augment.KEY=VALUE")
    g = p.add_argument_group("model")
    g.add_argument("--model", help="model name (cnnlab models), timm:<name>, or a layer-spec .yaml")
    g.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="model option, e.g. --model-arg dropout=0.3 (repeatable)")
    g.add_argument("--weights", help="start from a local checkpoint (.safetensors, .pth, .pt, .th, .tar)")
    g.add_argument("--pretrained", action="store_true", default=None, help="download pretrained weights (timm)")
    g.add_argument("--skip-head", action="store_true", default=None, help="load --weights without its classifier "
                   "(automatic with a transfer --strategy)")
    g.add_argument("--allow-partial", action="store_true", default=None, help="load only the tensors of --weights "
                   "that fit the model and report the rest")
    g = p.add_argument_group("transfer learning")
    g.add_argument("--strategy", help="none, feature-extract (train a new head on cached bottleneck features), "
                   "fine-tune (also the last --unfreeze blocks), full, auto (decide from the data)")
    g.add_argument("--unfreeze", type=int, metavar="N", help="fine-tune: blocks trained besides the head (default 4)")
    g.add_argument("--head", help="linear, mlp, or logreg (scikit-learn, with feature-extract)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", help="mini-batch size; 'full' for batch gradient descent, 1 for stochastic")
    g.add_argument("--lr", type=float, help="(peak) learning rate")
    g.add_argument("--optimizer", help="sgd, adam, adamw, rmsprop")
    g.add_argument("--momentum", type=float)
    g.add_argument("--nesterov", action="store_true", default=None)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--schedule", help="constant, step, cosine, onecycle")
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--loss", help="cross_entropy, focal, bce, mse, mae")
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--balance", help="imbalanced data, comma-separated: oversample, undersample, class_weights, "
                   "focal, smote, borderline_smote, adasyn, threshold (settings: --set balance.KEY=VALUE)")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps")
    g.add_argument("--precision", help="auto, fp32, bf16, fp16")
    g = p.add_argument_group("callbacks")
    g.add_argument("--monitor", help="metric for checkpoints / early stopping (default val_accuracy)")
    g.add_argument("--early-stopping", type=int, metavar="PATIENCE", help="stop after PATIENCE epochs without "
                   "improvement (and restore the best weights)")
    g.add_argument("--reduce-lr", type=int, metavar="PATIENCE", help="ReduceLROnPlateau patience")
    g.add_argument("--target", type=float, help="stop once the monitored metric reaches this value")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None)
    p.add_argument("--out", help="run folder (default runs/<time>-<model>); never overwritten")
    g = p.add_argument_group("crash safety")
    g.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN from its last checkpoint "
                   "(same config; only --device, --quiet, --checkpoint-every may be given)")
    g.add_argument("--checkpoint-every", type=int, metavar="N", help="also save the `last` checkpoint every N "
                   "steps, so a crash loses at most N steps (default: every epoch)")
    p.add_argument("--quiet", action="store_true", default=None, help="no progress bar; log lines only")


_TRAIN_KEYS = ("val_split", "image_size", "channels", "images", "id_col", "label_col", "skip_missing", "normalize",
               "augment", "model",
               "weights", "pretrained", "epochs", "batch_size", "lr", "optimizer", "momentum", "nesterov",
               "weight_decay", "schedule", "warmup_epochs", "loss", "label_smoothing", "balance", "seed", "device",
               "precision", "monitor", "early_stopping", "reduce_lr", "target", "tensorboard", "out", "quiet",
               "checkpoint_every", "skip_head", "allow_partial", "strategy", "unfreeze", "head")


def _model_kwargs(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise CnnlabError(f"--model-arg expects KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _cmd_resume(args: argparse.Namespace) -> int:
    from cnnlab.resume import resume

    allowed = {"device", "quiet", "checkpoint_every"}
    given = [k for k in (*_TRAIN_KEYS, "data", "config") if k not in allowed and getattr(args, k) is not None]
    given += ["--set"] * bool(args.overrides) + ["--model-arg"] * bool(args.model_arg)
    if given:
        names = ", ".join(g if g.startswith("--") else "--" + g.replace("_", "-") for g in given)
        raise CnnlabError(f"--resume continues a run with its own config.yaml; drop {names} (or start a new run "
                          "with --config RUN/config.yaml)")
    resume(args.resume, device=args.device, quiet=args.quiet, checkpoint_every=args.checkpoint_every)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cnnlab.api import fit

    if args.resume is not None:
        return _cmd_resume(args)
    if args.data is None and args.config is None:
        raise CnnlabError("say what to train on: cnnlab train DATA (e.g. cnnlab train digits)")
    kwargs = {k: getattr(args, k) for k in _TRAIN_KEYS}
    if kwargs["skip_missing"] is not None:
        kwargs["skip_missing"] = True
    overrides = list(args.overrides)
    if args.model_arg:
        overrides.append(f"model.kwargs={json.dumps(_model_kwargs(args.model_arg))}")
    fit(args.data, config=args.config, overrides=overrides, **kwargs)
    return 0


def _print_eval(result: dict[str, Any], class_names: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    keys = [k for k in ("loss", "accuracy", "balanced_accuracy", "precision", "recall", "f1") if k in result]
    keys += [k for k in result if k.startswith("top") or k in ("roc_auc", "pr_auc", "decision_threshold", "mse", "mae")]
    console.print(f"{result['data']} [{result['split']}], {result['count']} images: "
                  + "  ".join(f"{k} {result[k]:.4f}" for k in keys), soft_wrap=True, markup=False)
    per = Table(title="per class")
    for col in ("class", "precision", "recall", "f1", "support"):
        per.add_column(col, justify="left" if col == "class" else "right")
    for row in result["per_class"]:
        per.add_row(row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                    str(row["support"]))
    console.print(per)
    cm = Table(title="confusion matrix (rows: true, columns: predicted)")
    cm.add_column("")
    for name in class_names:
        cm.add_column(name[:10], justify="right")
    for name, row in zip(class_names, result["confusion_matrix"]):
        cm.add_row(name[:16], *map(str, row))
    console.print(cm)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cnnlab.api import evaluate, load_run

    run = load_run(args.run, weights=args.weights, device=args.device)
    result = evaluate(run, args.data, args.split)
    _print_eval(result, run.class_names)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from cnnlab.api import load_run, predict

    run = load_run(args.run, weights=args.weights, device=args.device)
    rows = predict(run, args.inputs, args.csv, id_format=args.id_format)
    console = Console(highlight=False)
    table = Table()
    for col in ("id", "label", "confidence"):
        table.add_column(col)
    for r in rows[: args.show]:
        table.add_row(r["id"], r["label"], f"{r['confidence']:.3f}")
    console.print(table)
    if len(rows) > args.show:
        console.print(f"... {len(rows) - args.show} more")
    if args.csv:
        console.print(f"wrote {len(rows)} predictions to {args.csv}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from cnnlab.inspect import inspect_data, print_inspection

    print_inspection(inspect_data(args.data, val_split=args.val_split, images=args.images, id_col=args.id_col,
                                  label_col=args.label_col))
    return 0


def cmd_augment_preview(args: argparse.Namespace) -> int:
    from cnnlab.data.preview import write_augment_preview

    path = write_augment_preview(args.data, args.out, preset=args.augment, n=args.n, seed=args.seed,
                                 image_size=args.image_size, overrides=args.overrides)
    print(f"wrote {path}")
    return 0


def _parse_input(text: str) -> tuple[int, int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        c, h, w = (int(p) for p in parts)
    except ValueError:
        raise CnnlabError(f"--input expects CxHxW, e.g. 1x28x28 or 3x224x224; got '{text}'") from None
    return c, h, w


def cmd_summary(args: argparse.Namespace) -> int:
    from cnnlab.models import create_model
    from cnnlab.models.summary import format_summary, summarize

    c, h, w = _parse_input(args.input)
    model = create_model(args.model, args.classes, in_chans=c, input_size=(h, w), **_model_kwargs(args.model_arg))
    print(format_summary(summarize(model, (c, h, w)), title=f"Model: {args.model}, input {c}x{h}x{w}"))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from cnnlab.models import MODELS, list_models

    for name in MODELS.names():
        print(f"{name:24s} {MODELS.doc(name)}")
    if args.timm:
        for name in list_models(args.timm):
            if name.startswith("timm:"):
                print(name)
    else:
        print("\nand any timm model as timm:<name> (list them with: cnnlab models --timm '*resnet*')")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from cnnlab import __version__

    parser = argparse.ArgumentParser(prog="cnnlab", description="Train, evaluate and understand CNN image "
                                     "classifiers.")
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model on DATA and write a run folder")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="metrics and confusion matrix of a run on DATA")
    p.add_argument("run", help="run folder")
    p.add_argument("data", nargs="?", help="data to evaluate on (default: the run's own data)")
    p.add_argument("--split", default="auto", help="test, val, train, or auto (test, else held-out val)")
    p.add_argument("--weights", default="best", choices=("best", "last"))
    p.add_argument("--device")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("predict", help="predict images, folders or zips with a run; --csv for a submission")
    p.add_argument("run", help="run folder")
    p.add_argument("inputs", nargs="+", help="image files, folders or .zip archives")
    p.add_argument("--csv", help="write id, label and class probabilities to this CSV")
    p.add_argument("--id-format", default="auto", choices=("auto", "name", "stem", "path"))
    p.add_argument("--weights", default="best", choices=("best", "last"))
    p.add_argument("--device")
    p.add_argument("--show", type=int, default=20, help="rows to print (default 20)")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("inspect", help="classes, counts per split, image sizes and modes, bad files")
    p.add_argument("data")
    p.add_argument("--val-split", type=float, default=0.2)
    p.add_argument("--images")
    p.add_argument("--id-col")
    p.add_argument("--label-col")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("augment-preview", help="a grid of original vs augmented training images (PNG)")
    p.add_argument("data")
    p.add_argument("--out", default="augment_preview.png", help="PNG to write (default augment_preview.png)")
    p.add_argument("--augment", default="medium", help="preset: none, light, medium, heavy (default medium)")
    p.add_argument("--n", type=int, default=8, help="images per row (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="e.g. --set augment.rotate=30")
    p.set_defaults(func=cmd_augment_preview)
    p = sub.add_parser("summary", help="Keras-style table of a model's layers, shapes and parameters")
    p.add_argument("model")
    p.add_argument("--input", default="3x32x32", help="CxHxW (default 3x32x32)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_summary)
    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("--timm", metavar="PATTERN", help="also list timm models matching PATTERN")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CnnlabError as e:
        print(f"cnnlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # TrainingInterrupted says where it saved and how to resume
        print(str(e) or "cnnlab: interrupted", file=sys.stderr)
        return 130

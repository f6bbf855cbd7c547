"""`cnnlab models` (the registered models, listed without importing torch) and `cnnlab summary MODEL`."""

from __future__ import annotations

import argparse

from cnnlab.cli.options import key_values
from cnnlab.errors import CnnlabError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="Keras-style table of a model's layers, shapes and parameters")
    p.add_argument("model")
    p.add_argument("--input", default="3x32x32", help="CxHxW (default 3x32x32)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=summary)
    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("--timm", metavar="PATTERN", help="also list timm models matching PATTERN")
    p.set_defaults(func=models)


def parse_input(text: str) -> tuple[int, int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        c, h, w = (int(p) for p in parts)
    except ValueError:
        raise CnnlabError(f"--input expects CxHxW, e.g. 1x28x28 or 3x224x224; got '{text}'") from None
    return c, h, w


def summary(args: argparse.Namespace) -> int:
    from cnnlab.config import check_model_name

    c, h, w = parse_input(args.input)
    check_model_name(args.model)
    from cnnlab.models import create_model
    from cnnlab.models.summary import format_summary, summarize

    model = create_model(args.model, args.classes, in_chans=c, input_size=(h, w),
                         **key_values(args.model_arg, "--model-arg"))
    print(format_summary(summarize(model, (c, h, w)), title=f"Model: {args.model}, input {c}x{h}x{w}"))
    return 0


def models(args: argparse.Namespace) -> int:
    from cnnlab.models.registry import MODELS

    for name in MODELS.names():
        print(f"{name:24s} {MODELS.doc(name)}")
    if args.timm:
        from cnnlab.models import list_models

        for name in list_models(args.timm):
            if name.startswith("timm:"):
                print(name)
    else:
        print("\nand any timm model as timm:<name> (list them with: cnnlab models --timm '*resnet*')")
    return 0

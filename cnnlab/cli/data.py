"""`cnnlab inspect DATA` and `cnnlab augment-preview DATA`: look at a dataset before training on it."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="classes, counts per split, image sizes and modes, bad files")
    p.add_argument("data")
    p.add_argument("--val-split", type=float, default=0.2)
    p.add_argument("--images")
    p.add_argument("--id-col")
    p.add_argument("--label-col")
    p.set_defaults(func=inspect)
    p = sub.add_parser("augment-preview", help="a grid of original vs augmented training images (PNG)")
    p.add_argument("data")
    p.add_argument("--out", default="augment_preview.png", help="PNG to write (default augment_preview.png)")
    p.add_argument("--augment", default="medium", help="preset: none, light, medium, heavy (default medium)")
    p.add_argument("--n", type=int, default=8, help="images per row (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="e.g. --set augment.rotate=30")
    p.set_defaults(func=augment_preview)


def inspect(args: argparse.Namespace) -> int:
    from cnnlab.inspection import inspect_data, print_inspection

    print_inspection(inspect_data(args.data, val_split=args.val_split, images=args.images, id_col=args.id_col,
                                  label_col=args.label_col))
    return 0


def augment_preview(args: argparse.Namespace) -> int:
    from cnnlab.data.preview import write_augment_preview

    path = write_augment_preview(args.data, args.out, preset=args.augment, n=args.n, seed=args.seed,
                                 image_size=args.image_size, overrides=args.overrides)
    print(f"wrote {path}")
    return 0

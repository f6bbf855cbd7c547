"""`cnnlab export RUN`: the run's model as ONNX / TorchScript / ExportedProgram, with its parity checked."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run's model (ONNX, TorchScript, ExportedProgram), parity-checked",
                       description="Write RUN/export/model.<ext> and model.json, then check that the export agrees "
                       "with PyTorch on the run's val images (exit 1 if not).")
    p.add_argument("run", help="run folder")
    p.add_argument("--format", default="onnx", choices=("onnx", "torchscript", "exported-program"))
    p.add_argument("--raw-input", action="store_true", help="the graph takes uint8 (N, H, W, C) images and "
                   "normalizes them itself (default: normalized float (N, C, H, W))")
    p.add_argument("--softmax", action="store_true", help="output class probabilities instead of logits")
    p.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=True,
                   help="any batch size (default); --no-dynamic-batch fixes it to 1")
    p.add_argument("--dynamic-size", action="store_true", help="any image height / width (models with a global "
                   "pool; the default is the run's image size)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--quantize", choices=("int8", "int8-dynamic"), help="also write model.int8.onnx: static int8 "
                   "calibrated on training images, or dynamic")
    p.add_argument("--check", type=int, default=256, help="val images of the parity check (default 256)")
    p.add_argument("--data", help="images for the check (default: the run's own val / test split)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab.export import export_run

    result = export_run(args.run, args.format, raw_input=args.raw_input, softmax=args.softmax,
                        dynamic_batch=args.dynamic_batch, dynamic_size=args.dynamic_size, opset=args.opset,
                        quantize_mode=args.quantize, check=args.check, data=args.data)
    p = result.parity
    print(f"wrote {result.path} and {result.spec_path.name}")
    print(f"parity on {p['images']} images against PyTorch in fp32: top-1 agreement {p['top1_agreement']:.2%}, "
          f"largest probability difference {p['max_abs_prob_diff']:.1e}, accuracy {p['accuracy_torch']:.4f} (torch) "
          f"vs {p['accuracy_export']:.4f} (export)")
    if "predict_top1_agreement" in p:
        print(f"note: cnnlab predict computes in {p['predict_precision']} here (the run's precision): it agrees with "
              f"the export on {p['predict_top1_agreement']:.2%} of these images; {p['predict_precision']} rounding "
              "can change an image near a decision boundary. predict --precision fp32 gives the export's numbers")
    if result.int8 is not None:
        q = result.int8
        print(f"int8 ({q['mode']}, {q['images']} images): top-1 agreement {q['top1_agreement']:.2%}, largest "
              f"probability difference {q['max_abs_prob_diff']:.1e}, accuracy {q['accuracy_export']:.4f} "
              f"({q['accuracy_change']:+.4f})")
    return 0

"""Export and inference speed (issue 16): torch eager fp32 / bf16 against ONNX Runtime fp32 / int8.

    PYTHONPATH=$PWD python benchmarks/bench_export.py [--repeats 30]

Three trained runs (one epoch each; accuracy is not the point): seed_cnn on MNIST, ResNet-20 on the cifar10 npz
(from the pretrained CIFAR weights), MobileNetV1 x0.25 at 160 px on cats_vs_dogs (feature extraction from the
ImageNet weights). Each is exported with `--raw-input --quantize int8` (static, calibrated). Then, on the same
uint8 val images, images/s and p50 / p95 latency of one call at batch 1 and 64 for: torch eager fp32, torch eager
bf16 (autocast; only where the CPU has native bf16), ORT fp32, ORT int8 (preprocessing inside the ORT graphs,
outside in torch). Last, `cnnlab predict` end to end on the cats_vs_dogs val folder (1,000 JPEGs, decoding
included) with each backend, against decoding alone. Results: benchmarks/results/export.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import datasets_root, hardware_info, has_native_bf16, write_results  # noqa: E402

W = datasets_root() / "weights"
CASES = {
    "seed_cnn / MNIST": ("mnist", {"model": "seed_cnn", "epochs": 1}),
    "ResNet-20 / cifar10": ("cifar10", {"model": "resnet20", "epochs": 1, "weights": str(W / "resnet20-12fca82f.th"),
                                        "strategy": "fine-tune"}),
    "MobileNetV1 x0.25 / cats_vs_dogs 160 px": ("cats_vs_dogs", {
        "model": "mobilenet_v1", "model_kwargs": {"width": 0.25, "activation": "leaky_relu:0.1"},
        "weights": str(W / "mobilenetV1X0.25_pretrain.tar"), "strategy": "feature-extract", "image_size": 160}),
}


def timed(fn, repeats: int) -> list[float]:
    fn()
    fn()  # warm-up: allocations, oneDNN / ORT kernel selection
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summary(times: list[float], batch: int) -> dict[str, float]:
    p50, p95 = np.percentile(times, 50), np.percentile(times, 95)
    return {"p50_ms": round(p50 * 1e3, 3), "p95_ms": round(p95 * 1e3, 3), "images_per_s": round(batch / p50, 1)}


def contenders(run: Any, export_dir: Path) -> dict[str, Any]:
    from cnnlab.recipe import build_preprocess
    from cnnlab.runs import RunDir
    from cnnlab.runtime import OrtModel

    model = run.model.cpu().eval()
    pre = build_preprocess(run.config, torch.device("cpu"), True, RunDir(run.dir).read_whitening())

    def eager(dtype):
        def call(x):
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                return model(pre(x))
        return call

    out = {"torch eager fp32": eager(None)}
    if has_native_bf16():
        out["torch eager bf16"] = eager(torch.bfloat16)
    for name, file in (("ORT fp32", "model.onnx"), ("ORT int8", "model.int8.onnx")):
        out[name] = OrtModel(export_dir / file)  # called with uint8 NHWC numpy, as a client has the images
    return out


def bench_case(name: str, data: str, opts: dict[str, Any], repeats: int, tmp: Path) -> dict[str, Any]:
    import cnnlab
    from cnnlab.export import export_run
    from cnnlab.inference import load_images

    run = cnnlab.fit(str(datasets_root() / data), out=str(tmp / name.split()[0]), verbose=0, tensorboard=False,
                     **opts)
    t0 = time.perf_counter()
    result = export_run(run.dir, raw_input=True, quantize_mode="int8")
    row: dict[str, Any] = {"export_s": round(time.perf_counter() - t0, 1), "parity": result.parity,
                           "int8": {k: v for k, v in result.int8.items() if k != "disagreeing"}}
    images = load_images(cnnlab.load_run(run.dir)).x
    # The NHWC numpy copy for ORT is made outside the timed call: made inside with torch, its OpenMP threads
    # were still spinning when ORT's own pool started, which added ~7 ms to every batch-1 call on 2 cores.
    nhwc = np.ascontiguousarray(images.numpy().transpose(0, 2, 3, 1))
    for label, call in contenders(cnnlab.load_run(run.dir, device="cpu"), result.path.parent).items():
        for batch in (1, 64):
            x = nhwc[:batch] if label.startswith("ORT") else images[:batch]
            row[f"{label} @ {batch}"] = summary(timed(lambda c=call, x=x: c(x), repeats), batch)
    return row


def bench_predict(repeats: int, run_dir: Path) -> dict[str, Any]:
    import cnnlab
    from cnnlab.data.readers import list_images
    from cnnlab.inference import decoded_batches

    folder = datasets_root() / "cats_vs_dogs" / "val"
    run = cnnlab.load_run(run_dir)
    items = list_images([str(folder)])
    out: dict[str, Any] = {"images": len(items)}

    def decode_only():
        for _ in decoded_batches(items, run.geometry, run.config.data.resize, run.config.train.eval_batch_size):
            pass

    for label, fn in (("decode only", decode_only),
                      ("predict torch", lambda: cnnlab.predict(run, [str(folder)])),
                      ("predict onnx", lambda: cnnlab.predict(run, [str(folder)], backend="onnx"))):
        times = timed(fn, max(1, repeats // 10))
        out[label] = {"seconds": round(float(np.median(times)), 3),
                      "images_per_s": round(len(items) / float(np.median(times)), 1)}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    results: dict[str, Any] = {"hardware": hardware_info(), "load_before": os.getloadavg()[0], "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (data, opts) in CASES.items():
            results["cases"][name] = bench_case(name, data, opts, args.repeats, Path(tmp))
            print(name, results["cases"][name], flush=True)
        cats = Path(tmp) / "MobileNetV1"
        results["predict_cats_val"] = bench_predict(args.repeats, cats)
    results["load_after"] = os.getloadavg()[0]
    write_results("export", results, markdown(results))


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Export and inference speed", "", f"Load average before / after: {r['load_before']:.2f} / "
             f"{r['load_after']:.2f}", "", "| model | contender | batch | images/s | p50 ms | p95 ms |",
             "|---|---|---|---|---|---|"]
    for name, row in r["cases"].items():
        for key, v in row.items():
            if " @ " in key:
                who, batch = key.split(" @ ")
                lines.append(f"| {name} | {who} | {batch} | {v['images_per_s']} | {v['p50_ms']} | {v['p95_ms']} |")
    lines += ["", "| model | export s | parity top-1 / max dp | int8 agreement | int8 accuracy change |",
              "|---|---|---|---|---|"]
    for name, row in r["cases"].items():
        p, q = row["parity"], row["int8"]
        lines.append(f"| {name} | {row['export_s']} | {p['top1_agreement']:.4f} / {p['max_abs_prob_diff']:.1e} | "
                     f"{q['top1_agreement']:.4f} | {q['accuracy_change']:+.4f} |")
    pr = r["predict_cats_val"]
    lines += ["", f"End to end on cats_vs_dogs val ({pr['images']} JPEGs):", "", "| step | seconds | images/s |",
              "|---|---|---|"]
    lines += [f"| {k} | {v['seconds']} | {v['images_per_s']} |" for k, v in pr.items() if k != "images"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

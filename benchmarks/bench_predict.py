"""Inference throughput (issue 8): `evaluate` and `predict` against a plain PyTorch eval loop and Keras predict.

    PYTHONPATH=$PWD python benchmarks/bench_predict.py [--cases mnist,cifar] [--repeats 3]

For each case a cnnlab run is trained for one epoch (accuracy does not matter here, only the network), then:
  - cnnlab evaluate, in process: `run.evaluate()` on the 10,000-image test split (decode from the npz / IDX files,
    preprocess, forward, metrics), and the same for `cnnlab evaluate RUN` as a whole command (interpreter start,
    imports, run-folder load);
  - cnnlab predict: `cnnlab predict RUN <zip of PNGs>` as a whole command, images decoded from a zip in place;
  - the plain loop: the peer's `evaluate` (in-memory tensors, channels_last, batch 1000) in fp32 and bf16;
  - Keras: `model.predict(x, batch_size=1000)` on the in-memory test set (fp32).
Every measurement runs in its own fresh process, one after another. Results: benchmarks/results/predict.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import datasets_root, hardware_info, load_dataset, median, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CASES = {"mnist": ("mnist", "seed_cnn"), "cifar": ("cifar10", "resnet20")}
TAG = "BENCH_RESULT "


def _timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: first-call allocations, oneDNN primitive creation
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def worker(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(job["threads"])
    dataset, model = CASES[job["case"]]
    kind, repeats = job["kind"], job["repeats"]
    if kind == "cnnlab-evaluate":
        from cnnlab.inference import load_run

        run = load_run(job["run"])
        n = {}

        def once():
            n["count"] = run.evaluate(str(datasets_root() / dataset))["count"]

        secs = _timed(once, repeats)
        return {"seconds": secs, "images": n["count"]}
    data = load_dataset(dataset)
    if kind.startswith("torch"):
        from benchmarks.peers import torch_loop

        net = torch_loop.build_model(model, data).eval()
        precision = kind.split(":")[1]
        secs = _timed(lambda: torch_loop.evaluate(net, data.test, precision), repeats)
        return {"seconds": secs, "images": len(data.test)}
    if kind == "keras":
        from benchmarks.peers import keras_peer

        reason = keras_peer.available()
        if reason:
            return {"status": f"unavailable: {reason}"}
        net = keras_peer.build_model(model, data)
        secs = _timed(lambda: net.predict(data.test.x, batch_size=1000, verbose=0), repeats)
        return {"seconds": secs, "images": len(data.test)}
    raise ValueError(kind)


def _run_worker(job: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(TAG):
            return json.loads(line[len(TAG):])
    return {"status": "error: " + " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])}


def _command(args: list[str], repeats: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    secs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "cnnlab", *args], capture_output=True, text=True, env=env)
        secs.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"cnnlab {' '.join(args)} failed: {proc.stderr[-800:]}")
    return secs


def _png_zip(case: str, path: Path, count: int) -> None:
    """The first `count` test images as PNG files in a zip: what predict reads from disk in practice."""
    from PIL import Image

    raw = load_dataset(CASES[case][0]).test.x  # normalised floats: back to uint8 (pixel values do not matter here)
    x = ((raw - raw.min()) / (raw.max() - raw.min()) * 255).round().astype("uint8")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(min(count, len(x))):
            img = x[i].squeeze(-1) if x.shape[-1] == 1 else x[i]
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            zf.writestr(f"test/{i:05d}.png", buf.getvalue())


def run_case(case: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    dataset, model = CASES[case]
    threads = args.threads
    run_dir = tmp / f"{case}-run"
    print(f"[{case}] training a 1-epoch {model} run for the run folder ...", file=sys.stderr, flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "cnnlab", "train", str(datasets_root() / dataset), "--model", model,
                    "--epochs", "1", "--quiet", "--no-tensorboard", "--out", str(run_dir)], check=True, env=env,
                   capture_output=True)
    rows: dict[str, Any] = {}
    for name, job in (("cnnlab evaluate (in process)", {"kind": "cnnlab-evaluate", "run": str(run_dir)}),
                      ("plain loop fp32 (in memory)", {"kind": "torch:fp32"}),
                      ("plain loop bf16 (in memory)", {"kind": "torch:bf16"}),
                      ("keras predict fp32 (in memory)", {"kind": "keras"})):
        print(f"[{case}] {name} ...", file=sys.stderr, flush=True)
        res = _run_worker({**job, "case": case, "threads": threads, "repeats": args.repeats})
        if "seconds" in res:
            res["images_per_s"] = res["images"] / median(res["seconds"])
        rows[name] = res
    zip_path = tmp / f"{case}-test.zip"
    _png_zip(case, zip_path, args.predict_images)
    print(f"[{case}] cnnlab evaluate / predict commands ...", file=sys.stderr, flush=True)
    secs = _command(["evaluate", str(run_dir)], args.repeats)
    count = rows["cnnlab evaluate (in process)"].get("images", 0)  # the test split evaluate picks
    rows["cnnlab evaluate RUN (whole command)"] = {"seconds": secs, "images": count,
                                                  "images_per_s": count / median(secs)}
    csv = tmp / f"{case}-pred.csv"
    secs = _command(["predict", str(run_dir), str(zip_path), "--csv", str(csv)], args.repeats)
    rows[f"cnnlab predict RUN zip of {args.predict_images} PNGs (whole command)"] = {
        "seconds": secs, "images": args.predict_images, "images_per_s": args.predict_images / median(secs)}
    return {"dataset": dataset, "model": model, "rows": rows}


def markdown(payload: dict[str, Any]) -> str:
    hw = payload["hardware"]
    lines = [f"# Inference throughput ({payload['date']})", "",
             f"{hw['cpu_model']}, {hw['usable_cores']} cores, native bf16 {hw['native_bf16']}; torch "
             f"{hw['versions']['torch']}, keras {hw['versions']['keras']}; median of {payload['repeats']} timed runs "
             f"after one warm-up; load average at start {[round(v, 2) for v in hw['load_average_at_start']]}.", ""]
    for res in payload["cases"].values():
        lines += [f"## {res['model']} on {res['dataset']}", "", "| what | images | median s | images/s | status |",
                  "|---|---|---|---|---|"]
        for name, r in res["rows"].items():
            secs = median(r["seconds"]) if r.get("seconds") else None
            rate = r.get("images_per_s")
            lines.append(f"| {name} | {r.get('images', '')} | {'' if secs is None else f'{secs:.2f}'} | "
                         f"{'' if rate is None else f'{rate:.0f}'} | {r.get('status', 'ok')} |")
        lines.append("")
    lines.append("In-process rows time the call alone; whole-command rows include the interpreter, imports "
                 "(torch alone is ~2.5 s) and loading the run folder.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="mnist,cifar")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--predict-images", type=int, default=2000)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(TAG + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    payload: dict[str, Any] = {"name": "predict", "date": time.strftime("%Y-%m-%d %H:%M"),
                               "hardware": hardware_info(), "repeats": args.repeats, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            payload["cases"][case] = run_case(case, args, Path(tmp))
    md = markdown(payload)
    write_results("predict", payload, md)
    print(md)


if __name__ == "__main__":
    main()

"""`cnnlab report` acceptance numbers (issue 15): how long a report takes and how much memory it needs.

    PYTHONPATH=$PWD python benchmarks/bench_report.py                  # trains the two runs, then times reports
    PYTHONPATH=$PWD python benchmarks/bench_report.py --runs /tmp/rr   # keep (and reuse) the trained runs there

Cases (each report in a fresh process; the training is not timed):
  mnist: seed_cnn trained on MNIST with the defaults (3 epochs), report on its 10,000-image test split;
  cats: MobileNetV1 x0.25 from the ImageNet checkpoint, `--strategy feature-extract` on cats_vs_dogs, report on its
        1,000-image val split (160 px);
  cats-10k: the same run reported on a folder of 10,000 JPEG files (symlinks to the cats_vs_dogs images, repeated),
        a split of 768 MB decoded at 160 px that is never decoded whole: peak memory shows the bound.
Per case: the wall time of the whole `cnnlab report` command, the time inside write_report, the peak RSS of the
process and its RSS after loading the run (torch and the model), and the load average before the case (the
machine may be shared: compare timings only at similar load). Results: benchmarks/results/report.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("CNNLAB_DATASETS", REPO.parent / "shared" / "datasets"))
RESULTS = REPO / "benchmarks" / "results"
MNV1 = ["--model", "mobilenet_v1", "--model-arg", "width=0.25", "--model-arg", "activation=leaky_relu:0.1",
        "--weights", str(DATASETS / "weights" / "mobilenetV1X0.25_pretrain.tar"), "--strategy", "feature-extract"]

CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from cnnlab.inference import load_run
from cnnlab.report import write_report
run = load_run(sys.argv[1])
rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t1 = time.perf_counter()
page = write_report(run, sys.argv[2] or None, sys.argv[3], sys.argv[4])
t2 = time.perf_counter()
summary = json.loads((page.parent / "summary.json").read_text())
print(json.dumps({"page": str(page), "report_s": round(t2 - t1, 2), "load_s": round(t1 - t0, 2),
                  "rss_after_load_mb": round(rss_loaded),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "images": summary["count"], "accuracy": summary["accuracy"], "ece": summary["ece"],
                  "target_layer": summary["target_layer"], "phases": summary["phases"]}))
"""


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split(" ")[:3]


def train(run: Path, data: str, args: list[str]) -> None:
    if (run / "metrics.json").is_file():
        return
    cmd = [sys.executable, "-m", "cnnlab", "train", data, *args, "--out", str(run), "--quiet", "--no-tensorboard"]
    print("training:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def ten_thousand_files(root: Path) -> Path:
    """A folder of 10,000 JPEG files (symlinks to the cats_vs_dogs images, repeated), classes cats / dogs."""
    out = root / "cats_10k"
    if out.is_dir():
        return out
    sources = {c: sorted((DATASETS / "cats_vs_dogs").glob(f"*/{c}/*.jpg")) for c in ("cats", "dogs")}
    for c, files in sources.items():
        (out / c).mkdir(parents=True)
        for i in range(5000):
            (out / c / f"{i:05d}.jpg").symlink_to(files[i % len(files)])
    return out


def report(case: str, run: Path, data: str, split: str, out: Path) -> dict:
    before = loadavg()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(run), data, split, str(out)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{case}: {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    row = {"case": case, "split": split, **result, "command_s": round(wall, 2), "loadavg_before": before,
           "loadavg_after": loadavg()}
    print(json.dumps(row), flush=True)
    return row


def write_results(rows: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "report.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    lines = ["# cnnlab report: time and memory", "",
             "`benchmarks/bench_report.py`; each report in a fresh process on this 2-core CPU. command: the whole "
             "`cnnlab report` process (start-up, loading the run, the report); report: inside `write_report`. "
             "RSS after load: torch and the model, before the report. Phases: reading + predicting the split, "
             "thumbnails + Grad-CAM, figures. Load average (1, 5, 15 min) before the case.", "",
             "| case | split | images | command s | report s | phases s | peak RSS MB | RSS after load MB "
             "| load before |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        phases = " / ".join(f"{v:.1f}" for v in r["phases"].values())
        lines.append(f"| {r['case']} | {r['split']} | {r['images']:,} | {r['command_s']} | {r['report_s']} | "
                     f"{phases} | {r['peak_rss_mb']} | {r['rss_after_load_mb']} | {', '.join(r['loadavg_before'])} |")
    (RESULTS / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", help="folder for the trained runs (kept and reused); default a temporary one")
    parser.add_argument("--only", choices=("mnist", "cats", "cats-10k"), action="append")
    args = parser.parse_args()
    root = Path(args.runs) if args.runs else Path(tempfile.mkdtemp(prefix="bench-report-"))
    root.mkdir(parents=True, exist_ok=True)
    only = set(args.only or ("mnist", "cats", "cats-10k"))
    rows = []
    if "mnist" in only:
        train(root / "mnist_seed_cnn", str(DATASETS / "mnist"), ["--model", "seed_cnn"])
        rows.append(report("mnist seed_cnn", root / "mnist_seed_cnn", "", "test", root / "out-mnist"))
    if only & {"cats", "cats-10k"}:
        train(root / "cats_mnv1", str(DATASETS / "cats_vs_dogs"), MNV1)
    if "cats" in only:
        rows.append(report("cats_vs_dogs MobileNetV1 x0.25 feature-extract", root / "cats_mnv1", "", "val",
                           root / "out-cats"))
    if "cats-10k" in only:
        rows.append(report("same run, 10,000 JPEG files", root / "cats_mnv1", str(ten_thousand_files(root)),
                           "auto", root / "out-cats-10k"))
    write_results(rows)


if __name__ == "__main__":
    main()

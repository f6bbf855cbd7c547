"""How long `cnnlab doctor` takes, and how soon it says something: wall time and time to the first printed row.

Cases (the default model, seed_cnn, which cnnlab doctor uses when no --model is given):
- photos244: a photo folder made from cats_vs_dogs (122 images per class: 98 train, 24 val), about 240x160 px, so
  seed_cnn at 160 px with 13.2 M parameters: the case a new user hit (595 s, silent until the end);
- cats_vs_dogs: its 2,000 train / 1,000 val images.
Each case runs with and without --quick, each in a fresh process (the decoded-image cache warm: a first run fills
it). Target (issue 26): at most 60 s, --quick under 20 s, for up to 1,000 images on this 2-core CPU.

    python benchmarks/bench_doctor.py [--repeats N]

Writes results/doctor.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, RESULTS_DIR, datasets_root, hardware_info

TABLE_LINES = ("│", "┃", "┏", "┡", "└", "┗")


def make_photos(root: Path, per_class: int = 122, val: int = 24) -> Path:
    """The 244-image photo folder: the first images of each cats_vs_dogs train class, train / val folders."""
    src = datasets_root() / "cats_vs_dogs" / "train"
    for cls in ("cats", "dogs"):
        files = sorted((src / cls).glob("*.jpg"))[:per_class]
        for split, part in (("train", files[: per_class - val]), ("val", files[per_class - val:])):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for f in part:
                shutil.copy(f, root / split / cls / f.name)
    return root


def run_doctor(data: Path, quick: bool, out: Path) -> dict:
    """One `cnnlab doctor` process: wall time, time to the first printed row, the rows' statuses."""
    cmd = [sys.executable, "-m", "cnnlab", "doctor", str(data), "--out", str(out), *(["--quick"] if quick else [])]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    first, lines = None, []
    for line in proc.stdout:
        if first is None and line.strip():
            first = time.perf_counter() - t0
        if not line.startswith(TABLE_LINES):
            lines.append(line.rstrip())
    proc.wait()
    wall = time.perf_counter() - t0
    rows = json.loads((out / "doctor.json").read_text()) if (out / "doctor.json").is_file() else []
    plan = next((line for line in lines if line.startswith("doctor: training checks:")), "")
    return {"wall_s": round(wall, 2), "first_row_s": round(first or wall, 2), "exit": proc.returncode,
            "verdicts": {r["name"]: r["status"] for r in rows}, "plan": plan}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = {"photos244": make_photos(Path(tmp) / "photos244"), "cats_vs_dogs": datasets_root() / "cats_vs_dogs"}
        for name, data in cases.items():
            run_doctor(data, True, Path(tmp) / f"warm-{name}")  # fills the decoded-image cache
            for quick in (False, True):
                runs = [run_doctor(data, quick, Path(tmp) / f"{name}-{quick}-{k}") for k in range(args.repeats)]
                row = {"case": name, "quick": quick, "wall_s": statistics.median(r["wall_s"] for r in runs),
                       "first_row_s": statistics.median(r["first_row_s"] for r in runs), "runs": runs}
                results.append(row)
                print(f"{name} quick={quick}: {row['wall_s']} s, first row at {row['first_row_s']} s", flush=True)
    record = {"machine": hardware_info(), "results": results}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "doctor.json").write_text(json.dumps(record, indent=1))
    m = record["machine"]
    lines = ["# cnnlab doctor: wall time and time to the first row", "",
             f"{m['cpu_model']}, {m['usable_cores']} cores, load at start {m['load_average_at_start']}; median of "
             f"{args.repeats}; decoded-image cache warm", "",
             "| case | mode | wall (s) | first row (s) | failed / warned checks |", "|---|---|---|---|---|"]
    for r in results:
        verdicts = r["runs"][0]["verdicts"]
        bad = ", ".join(f"{k}: {v}" for k, v in verdicts.items() if v != "ok") or "all ok"
        lines.append(f"| {r['case']} | {'--quick' if r['quick'] else 'default'} | {r['wall_s']} | "
                     f"{r['first_row_s']} | {bad} |")
    (RESULTS_DIR / "doctor.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

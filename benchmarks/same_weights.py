"""Same seed, same machine, same weights: the sha256 of last.safetensors for four reference runs.

A refactor that must not change behaviour (the task seam, issue 22) is checked by running this script on the
commit before and on the commit after, on the same machine, and comparing the hashes:

    python benchmarks/same_weights.py --repo /tmp/before --tag before
    python benchmarks/same_weights.py --tag after

`--repo` runs another checkout's cnnlab (e.g. a `git archive` of the earlier commit): its own package directory
goes first on PYTHONPATH. Writes results/same_weights_<tag>.json and .md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, RESULTS_DIR, datasets_root, hardware_info

MNV1 = ["--model", "mobilenet_v1", "--model-arg", "width=0.25", "--model-arg", "activation=leaky_relu:0.1",
        "--weights", "{weights}/mobilenetV1X0.25_pretrain.tar", "--image-size", "160"]
CASES = {
    "digits seed_cnn": ["digits"],
    "cats_vs_dogs MobileNetV1 feature-extract": ["{data}/cats_vs_dogs", *MNV1, "--strategy", "feature-extract"],
    "cats_vs_dogs MobileNetV1 fine-tune": ["{data}/cats_vs_dogs", *MNV1, "--strategy", "fine-tune", "--epochs", "1"],
    "aerial_cactus --balance oversample --epochs 2": ["{data}/aerial_cactus/train.csv", "--balance", "oversample",
                                                      "--epochs", "2"],
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_case(repo: Path, args: list[str], out: Path) -> dict:
    data = datasets_root()
    argv = [a.format(data=data, weights=data / "weights") for a in args]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    cmd = [sys.executable, "-m", "cnnlab", "train", *argv, "--seed", "0", "--quiet", "--no-tensorboard",
           "--out", str(out)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out.parent)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return {"command": " ".join(cmd[2:]), "sha256": sha256(out / "last.safetensors"),
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=str(REPO_ROOT), help="the checkout whose cnnlab runs (default: this one)")
    p.add_argument("--tag", default="now")
    p.add_argument("--cases", default=",".join(range_names()), help="comma-separated case numbers (1-4)")
    a = p.parse_args()
    names = [list(CASES)[int(i) - 1] for i in a.cases.split(",")]
    repo = Path(a.repo).resolve()
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "(not a git checkout)"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names):
            results[name] = run_case(repo, CASES[name], Path(tmp) / f"run{i}")
            print(f"{results[name]['sha256'][:16]}  {name}  ({results[name]['seconds']} s)", flush=True)
    record = {"repo": str(repo), "commit": commit, "machine": hardware_info(), "runs": results}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"same_weights_{a.tag}.json").write_text(json.dumps(record, indent=1))
    lines = [f"# same weights: {a.tag} ({commit})", "", "| run | sha256 (first 16) | seconds |", "|---|---|---|"]
    lines += [f"| {n} | {r['sha256'][:16]} | {r['seconds']} |" for n, r in results.items()]
    (RESULTS_DIR / f"same_weights_{a.tag}.md").write_text("\n".join(lines) + "\n")


def range_names() -> list[str]:
    return [str(i + 1) for i in range(len(CASES))]


if __name__ == "__main__":
    main()

"""Data-pipeline speed: cnnlab's in-memory batches vs a plain torch DataLoader, and the decoded-image cache.

    PYTHONPATH=. python benchmarks/bench_data.py [--quick]

Measures, on the real datasets (CNNLAB_DATASETS, default ../shared/datasets):
  1. MNIST (60k, 1x28x28) and cifar10 npz (10k, 3x32x32), batch 128, shuffled, one epoch, DATA ONLY (every batch
     produced and normalised to float, no model):
       cnnlab in-memory      TensorBatches (uint8 tensor, index_select per batch) + Preprocess
       cnnlab + medium aug   the same plus the batched, seeded `medium` augmentation
       DataLoader/tensors    DataLoader(TensorDataset(float images)), shuffle=True, num_workers=0
       DataLoader/per-item   a Dataset that converts and normalises each image with v2 transforms (the
                             torchvision-datasets way), shuffle=True, num_workers=2
  2. cifar10: one TRAINING epoch of seed_cnn (fp32) fed by cnnlab in-memory vs the per-item DataLoader.
  3. cats_vs_dogs (3000 JPEGs, 160 px): prepare_data cold (decoding) vs warm (decoded-image cache), and one
     streamed epoch (data only) decoding per item vs reading the cache's memory map.
Writes benchmarks/results/bench_data.json and .md. Times are wall-clock seconds, single torch thread (the machine
is shared; `uptime` load is recorded with the results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2 as v2
from torch.utils.data import DataLoader, Dataset, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnnlab.config import AugmentConfig, Config  # noqa: E402
from cnnlab.data.augment import Augmenter  # noqa: E402
from cnnlab.data.loader import TensorBatches  # noqa: E402
from cnnlab.data.preprocess import Preprocess, channel_stats_of  # noqa: E402
from cnnlab.data.readers import load_source  # noqa: E402
from cnnlab.data.stream import StreamBatches  # noqa: E402

DATASETS = Path(os.environ.get("CNNLAB_DATASETS", ROOT.parent / "shared" / "datasets"))
CPU = torch.device("cpu")
BATCH = 128


class PerItemDataset(Dataset):
    """How a typical user writes it: one HWC uint8 image at a time through v2 transforms."""

    def __init__(self, x: np.ndarray, y: np.ndarray, mean, std):
        self.x, self.y = x, y
        self.tf = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.tf(self.x[i]), int(self.y[i])


def load_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    path = {"mnist": DATASETS / "mnist", "cifar10": DATASETS / "cifar10" / "train.npz"}[name]
    if name == "cifar10" and not path.exists():
        path = next((DATASETS / "cifar10").glob("*.npz"))
    split = load_source(str(path), val_split=0.0).splits["train"]
    return split.array, split.labels


def timed_epoch(iterate) -> float:
    t0 = time.perf_counter()
    n = 0
    for xb, _ in iterate():
        n += len(xb)
    return time.perf_counter() - t0


def data_only(name: str) -> dict[str, float]:
    x, y = load_arrays(name)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    yt = torch.from_numpy(y)
    mean, std = channel_stats_of(xt[::10])
    pre = Preprocess("standardize", mean, std, CPU, channels_last=False)
    batches = TensorBatches(xt, yt, BATCH, True, seed=0)
    aug = Augmenter(AugmentConfig(preset="medium"), 0, 10)
    out = {"images": len(y)}
    out["cnnlab_in_memory"] = timed_epoch(lambda: ((pre(xb), yb) for xb, yb in batches.batches(0)))
    out["cnnlab_in_memory_medium_aug"] = timed_epoch(
        lambda: ((pre(aug.augment_batch(xb, 0, s)), yb) for s, (xb, yb) in enumerate(batches.batches(0))))
    floats = (xt.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    plain = DataLoader(TensorDataset(floats, yt), batch_size=BATCH, shuffle=True, num_workers=0)
    out["dataloader_tensors"] = timed_epoch(lambda: iter(plain))
    per_item = DataLoader(PerItemDataset(x, y, mean, std), batch_size=BATCH, shuffle=True, num_workers=2,
                          persistent_workers=True)
    next(iter(per_item))  # start the workers outside the timing
    out["dataloader_per_item_2_workers"] = timed_epoch(lambda: iter(per_item))
    return out


def train_epoch_cifar() -> dict[str, float]:
    from cnnlab.models import create_model

    x, y = load_arrays("cifar10")
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    yt = torch.from_numpy(y)
    mean, std = channel_stats_of(xt[::10])
    pre = Preprocess("standardize", mean, std, CPU, channels_last=True)
    out = {}

    def run(batches, prepare) -> float:
        torch.manual_seed(0)
        model = create_model("seed_cnn", 10, in_chans=3, input_size=(32, 32)).to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        model.train()
        t0 = time.perf_counter()
        for xb, yb in batches:
            loss = torch.nn.functional.cross_entropy(model(prepare(xb)), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    out["cnnlab_in_memory"] = run(TensorBatches(xt, yt, BATCH, True, 0).batches(0), pre)
    per_item = DataLoader(PerItemDataset(x, y, mean, std), batch_size=BATCH, shuffle=True, num_workers=2)
    out["dataloader_per_item_2_workers"] = run(per_item, lambda xb: xb.contiguous(memory_format=torch.channels_last))
    return out


def cats_vs_dogs_cache(size: int) -> dict[str, float]:
    from cnnlab.data.dataset import infer_geometry
    from cnnlab.data.stream import stream_split
    from cnnlab.prepare import prepare_data

    tmp = Path(tempfile.mkdtemp(prefix="cnnlab-bench-cache-"))
    os.environ["CNNLAB_CACHE_DIR"] = str(tmp)
    out = {}
    try:
        for label in ("prepare_cold_decode", "prepare_warm_cache"):
            cfg = Config()
            cfg.data.source, cfg.data.image_size = str(DATASETS / "cats_vs_dogs"), size
            t0 = time.perf_counter()
            prepared = prepare_data(cfg, log=lambda m: None)
            out[label] = time.perf_counter() - t0
        out["images"] = sum(len(s) for s in prepared.splits.values())
        src = load_source(str(DATASETS / "cats_vs_dogs"), val_split=0.0)
        geom = infer_geometry(src, size, 3)
        for label, use_cache in (("stream_epoch_decode_per_item", False), ("stream_epoch_cached_memmap", True)):
            split = stream_split(src, src.splits["train"], geom, "crop", use_cache)
            batches = StreamBatches(split.dataset, split.y, BATCH, True, 0, CPU, workers=2)
            next(iter(batches.batches(0)))  # start the workers outside the timing
            out[label] = timed_epoch(lambda b=batches: b.batches(1))
        out["cache_dir_mb"] = round(sum(p.stat().st_size for p in tmp.glob("*")) / 2**20, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_results(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_data.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    lines = ["# Data pipeline benchmark (benchmarks/bench_data.py)", "",
             f"{results['machine']}; load average before/after: {results['load_before']} / {results['load_after']}",
             "", "Wall-clock seconds for one epoch, batch 128, single torch thread.", ""]
    for section, rows in results["results"].items():
        lines += [f"## {section}", "", "| measurement | seconds |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows.items()]
        lines.append("")
    (out_dir / "bench_data.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the cifar10 training epoch")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    if not DATASETS.is_dir():
        sys.exit(f"datasets not found at {DATASETS}; set CNNLAB_DATASETS")
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    results = {"mnist data only": data_only("mnist"), "cifar10 data only": data_only("cifar10")}
    if not args.quick:
        results["cifar10 seed_cnn training epoch"] = train_epoch_cifar()
    results["cats_vs_dogs decoded-image cache (160 px)"] = cats_vs_dogs_cache(160)
    payload = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                          f"{torch.__version__}", "load_before": round(load_before, 2),
               "load_after": round(os.getloadavg()[0], 2), "results": results}
    write_results(payload, Path(args.out))
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()

"""Preprocessing modes, seeded batch augmentation, streaming == in-memory, and the decoded-image cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlab.data.cache as cache_mod
from cnnlab.api import fit
from cnnlab.config import AugmentConfig, Config
from cnnlab.data.augment import PRESETS, Augmenter, step_seed
from cnnlab.data.preprocess import Normalization, Preprocess, fit_whitening
from cnnlab.data.stream import StreamBatches, StreamedSplit
from cnnlab.errors import CnnlabError
from cnnlab.inference import evaluate
from cnnlab.prepare import prepare_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """A private decoded-image cache, and one thread: on a shared, loaded 2-core machine more threads only spin."""
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def small_folder(tmp_path) -> Path:
    """3 classes x 14 PNGs of 12x12: class k is brighter in channel k, with noise."""
    rng = np.random.default_rng(0)
    root = tmp_path / "small"
    for k in range(3):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(14):
            arr = rng.integers(0, 120, (12, 12, 3)).astype(np.uint8)
            arr[..., k] += 120
            Image.fromarray(arr).save(root / f"c{k}" / f"{i}.png")
    return root


def _fit(data, tmp_path, name, **kw):
    opts = {"epochs": 2, "batch_size": 32, "precision": "fp32", "device": "cpu", "quiet": True,
            "tensorboard": False, "out": str(tmp_path / name), "seed": 3}
    return fit(str(data), **{**opts, **kw})


# -- preprocessing ---------------------------------------------------------------------------------------------


def test_zca_whitening_decorrelates_the_training_sample():
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (400, 1, 4, 4), generator=g).float()
    x = (base * 0.7 + base.roll(1, dims=3) * 0.3).to(torch.uint8)  # correlated neighbouring pixels
    white = fit_whitening(x, "zca", eps=1e-6)
    out = Preprocess(Normalization("zca", whitening=white), torch.device("cpu"), False)(x).reshape(400, -1).double()
    cov = torch.cov(out.T)
    assert torch.allclose(cov, torch.eye(16, dtype=torch.float64), atol=0.02)
    with pytest.raises(CnnlabError, match="small images"):
        fit_whitening(torch.zeros(4, 3, 64, 64, dtype=torch.uint8), "zca", 0.1)


def test_per_image_and_zero_center_modes():
    x = torch.randint(0, 256, (5, 3, 6, 6), dtype=torch.uint8)
    per = Preprocess(Normalization("per_image"), torch.device("cpu"), False)(x)
    assert per.mean(dim=(1, 2, 3)).abs().max() < 1e-5
    zc = Preprocess(Normalization("zero_center", [0.5, 0.25, 0.0], [1.0, 1.0, 1.0]), torch.device("cpu"), False)(x)
    assert torch.allclose(zc, x.float() / 255 - torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1), atol=1e-6)


def test_whitening_run_is_reproduced_by_evaluate(tmp_path):
    run = _fit("digits", tmp_path, "zca", normalize="zca", epochs=1)
    assert (run.dir / "preprocess.safetensors").is_file()
    again = evaluate(run.dir)  # load_run rebuilds the same whitening from the run folder
    assert again["accuracy"] == pytest.approx(run.metrics["val"]["accuracy"])


# -- augmentation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_preset_is_a_pure_function_of_seed_epoch_step(preset, channels):
    x = torch.randint(0, 256, (20, channels, 16, 16), dtype=torch.uint8)
    aug = Augmenter(AugmentConfig(preset=preset), seed=7, num_classes=4)
    rng_before = torch.get_rng_state()
    a, b = aug.augment_batch(x, 2, 5), aug.augment_batch(x, 2, 5)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is never consumed
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= 0 and a.max() <= 255
    if preset != "none":
        assert not torch.equal(a, aug.augment_batch(x, 2, 6))
    else:
        assert torch.equal(a, x.float())


def test_mixup_targets_are_probabilities_and_metrics_use_hard_labels(tmp_path):
    aug = Augmenter(AugmentConfig(preset="none", mixup=0.4), seed=0, num_classes=3)
    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    xa = aug.augment_batch(x, 0, 0)
    mixed, target = aug.mix(xa, y)
    assert target.shape == (6, 3) and torch.allclose(target.sum(1), torch.ones(6))
    lam = aug.pending["lam"]
    assert torch.allclose(mixed, xa * lam + xa[aug.pending["perm"]] * (1 - lam))
    for loss in ("cross_entropy", "bce"):
        run = _fit("digits", tmp_path, f"mix_{loss}", augment="heavy", loss=loss, epochs=3)
        h = run.history[-1]
        hits = h["accuracy"] * 1438  # train accuracy counts hard labels: whole images of the 1,438, not soft mass
        assert abs(hits - round(hits)) < 1e-6 and np.isfinite(h["loss"])
        assert h["val_accuracy"] > 0.2  # learns through mixup, cutmix and heavy augmentation (chance: 0.1)


def test_step_seed_differs_per_step_and_epoch():
    seeds = {step_seed(0, e, s) for e in range(3) for s in range(50)}
    assert len(seeds) == 150


# -- streaming vs in memory, cache -----------------------------------------------------------------------------


def _weights(run):
    return {k: v.clone() for k, v in run.model.state_dict().items()}


@pytest.mark.parametrize("use_cache", [True, False])
def test_streaming_gives_the_same_batches_and_weights(small_folder, tmp_path, use_cache):
    cfg_opts = {"augment": "medium"}
    mem = _fit(small_folder, tmp_path, f"mem{use_cache}", overrides=[f"data.cache={use_cache}"], **cfg_opts)
    stream = _fit(small_folder, tmp_path, f"stream{use_cache}", overrides=[
        "data.memory_budget_mb=0", f"data.cache={use_cache}", f"data.workers={1 if use_cache else 0}"], **cfg_opts)
    a, b = _weights(mem), _weights(stream)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert mem.history[-1]["val_accuracy"] == stream.history[-1]["val_accuracy"]
    assert mem.config.data.mean == stream.config.data.mean


def test_stream_batches_match_tensor_batches(small_folder):
    cfg = Config()
    cfg.data.source, cfg.data.memory_budget_mb, cfg.data.cache = str(small_folder), 0, False
    prepared = prepare_data(cfg, log=lambda m: None)
    split = prepared.splits["train"]
    assert isinstance(split, StreamedSplit)
    x = torch.stack([split.dataset[i][0] for i in range(len(split))])
    from cnnlab.data.loader import TensorBatches

    mem = TensorBatches(x, split.y, 5, True, seed=4)
    stream = StreamBatches(split.dataset, split.y, 5, True, seed=4, workers=0)
    assert len(mem) == len(stream)
    for epoch in (0, 1):
        for (xa, ya), (xb, yb) in zip(mem.batches(epoch, 2), stream.batches(epoch, 2), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_decoded_cache_is_used_on_the_second_run_and_invalidated_by_changes(small_folder, monkeypatch):
    cfg = Config()
    cfg.data.source = str(small_folder)
    first = prepare_data(cfg, log=lambda m: None)
    assert len(list(Path(os.environ["CNNLAB_CACHE_DIR"]).glob("*.npy"))) == 2  # train and val

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(cache_mod, "decode_split", no_decoding)
    cfg2 = Config()
    cfg2.data.source = str(small_folder)
    second = prepare_data(cfg2, log=lambda m: None)
    assert torch.equal(first.splits["train"].x, second.splits["train"].x)
    target = small_folder / "c0" / "0.png"
    Image.new("RGB", (12, 12), (1, 2, 3)).save(target)
    os.utime(target, (1, 1))
    cfg3 = Config()
    cfg3.data.source = str(small_folder)
    with pytest.raises(AssertionError, match="decoded again"):
        prepare_data(cfg3, log=lambda m: None)


def _key_as_computed_before_containers_fingerprinted(src, split, geom, policy):
    """The cache key formula that caches on disk were written with; split_key must keep producing it."""
    import hashlib
    import json

    from cnnlab.data.dataset import decoder_fingerprint
    from cnnlab.data.readers import ZipContainer

    h = hashlib.sha256()
    h.update(json.dumps([cache_mod.CACHE_VERSION, decoder_fingerprint(), geom.size, geom.channels, policy,
                         Image.MAX_IMAGE_PIXELS]).encode())
    if isinstance(src.container, ZipContainer):
        st = os.stat(src.container.path)
        h.update(f"{Path(src.container.path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        h.update("\n".join(split.refs).encode("utf-8", "surrogateescape"))
    else:
        for ref in split.refs:
            st = os.stat(ref)
            h.update(f"{os.path.abspath(ref)}|{st.st_size}|{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    h.update(np.ascontiguousarray(split.labels).tobytes())
    return h.hexdigest()[:32]


def test_split_key_is_unchanged_for_folder_and_zip_sources(small_folder, tmp_path):
    import zipfile

    from cnnlab.data.dataset import ImageGeometry
    from cnnlab.data.readers import load_source

    archive = tmp_path / "small.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(small_folder.rglob("*.png")):
            zf.write(p, "small/" + p.relative_to(small_folder).as_posix())
    geom = ImageGeometry((12, 12), 3)
    for data in (small_folder, archive):
        src = load_source(str(data), seed=2)
        for split in src.splits.values():
            for policy in ("crop", "squash"):
                key = cache_mod.split_key(src, split, geom, policy)
                assert key == _key_as_computed_before_containers_fingerprinted(src, split, geom, policy)
    assert cache_mod.split_key(load_source("digits"), load_source("digits").splits["train"], geom, "crop") is None


def test_one_cache_root_with_features_below_it(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "c"))
    assert cache_mod.cache_root() == tmp_path / "c" and cache_mod.features_cache_dir() == tmp_path / "c" / "features"
    monkeypatch.delenv("CNNLAB_CACHE_DIR")
    assert cache_mod.cache_root() == Path.home() / ".cache" / "cnnlab"
    assert cache_mod.features_cache_dir() == Path.home() / ".cache" / "cnnlab" / "features"


def test_augment_preview_writes_a_png(tmp_path, capsys):
    from cnnlab.cli import main

    out = tmp_path / "grid.png"
    assert main(["augment-preview", "digits", "--out", str(out), "--n", "4", "--augment", "heavy"]) == 0
    with Image.open(out) as im:
        assert im.width > 300 and im.height > 300
    assert main(["augment-preview", "digits", "--out", str(out), "--augment", "wild"]) == 2
    assert "unknown augmentation preset 'wild'" in capsys.readouterr().err

"""A real user's messy folder and zip: every bad case is converted, skipped with a count, or refused, and training
runs to the end through the CLI; `cnnlab inspect` reports the bad files and duplicates (leakage)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cnnlab.data.dataset import decode_image
from cnnlab.inspection import inspect_data

REPO = Path(__file__).resolve().parents[1]
KOREAN = "강아지"  # "puppy": a non-ASCII class folder name


def _jpeg(color, size=(24, 20), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "JPEG")
    return buf.getvalue()


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _exif_rotated_jpeg() -> bytes:
    """Stored 40 wide x 20 tall, left half red, right half blue, EXIF orientation 6 (display rotated 90 CW)."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def good_images(seed: int) -> dict[str, bytes]:
    """One file of each odd-but-valid kind; `seed` varies the colours so classes differ."""
    rng = np.random.default_rng(seed)
    base = int(rng.integers(0, 120)) + 120 * seed
    gif = io.BytesIO()
    Image.new("P", (1, 1), 0).save(gif, "GIF")
    palette = Image.new("P", (16, 16), 3)
    palette.putpalette([base % 256, 10, 200] * 256)
    return {
        "rgb.jpg": _jpeg((base % 256, 40, 90)),
        "upper.JPG": _jpeg((base % 256, 60, 60)),
        "gray.png": _png(Image.new("L", (18, 22), base % 256)),
        "rgba.PNG": _png(Image.new("RGBA", (20, 20), (base % 256, 0, 0, 128))),
        "palette.png": _png(palette),
        "cmyk.jpg": _jpeg((base % 256, 0, 50, 0), mode="CMYK"),
        "sixteen.png": _png(Image.fromarray((np.full((16, 16), (base % 256) * 257)).astype(np.uint16))),
        "exif.jpg": _exif_rotated_jpeg(),
        "tiny.png": _png(Image.new("RGB", (1, 1), (base % 256, 0, 0))),
        "placeholder.gif": gif.getvalue(),
        **{f"plain{i}.png": _png(Image.new("RGB", (20, 20), ((base + 7 * i) % 256, 30 * i % 256, 9)))
           for i in range(6)},
    }


def bad_files() -> dict[str, bytes]:
    huge = Image.new("1", (10_000, 10_000), 0)  # a few KB on disk, 100 megapixels decoded
    return {
        "truncated.jpg": _jpeg((1, 2, 3), (64, 64))[:300],
        "random.jpg": np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes(),
        "notes.txt": b"not an image",
        ".DS_Store": b"\0\0\0\1Bud1",
        "Thumbs.db": b"\xd0\xcf\x11\xe0",
        "huge.png": _png(huge),
    }


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("messy") / "photos"
    for k, cls in enumerate(("cats", KOREAN)):
        folder = root / cls
        folder.mkdir(parents=True)
        for name, data in good_images(k).items():
            (folder / name).write_bytes(data)
    for name, data in bad_files().items():
        (root / "cats" / name).write_bytes(data)
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.png").write_bytes(good_images(0)["gray.png"])
    outside = root.parent / "outside.png"
    outside.write_bytes(_png(Image.new("RGB", (20, 20), (250, 250, 0))))
    os.symlink(outside, root / KOREAN / "linked.png")  # a symlinked file is followed
    os.symlink(root, root / "cats" / "loop")  # a symlink loop is walked once, never forever
    return root


@pytest.fixture(scope="module")
def messy_zip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("messyzip") / "photos.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("photos/", b"")
        for k, cls in enumerate(("cats", KOREAN)):
            zf.writestr(f"photos/{cls}/", b"")
            for name, data in good_images(k).items():
                zf.writestr(f"photos/{cls}/{name}", data)
        zf.writestr("photos/cats/truncated.jpg", bad_files()["truncated.jpg"])
        zf.writestr("__MACOSX/photos/cats/._rgb.jpg", b"\0\5\26\7 mac resource fork")
        zf.writestr("../evil.jpg", _jpeg((0, 0, 0)))
        zf.writestr("photos/cats/../../escape.png", _png(Image.new("L", (8, 8), 0)))
    return path


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CNNLAB_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cnnlab", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_exif_orientation_is_applied():
    arr = decode_image(_exif_rotated_jpeg(), 3, None)
    assert arr.shape == (40, 20, 3)  # stored 40x20 landscape, displayed 20x40 portrait
    assert arr[5, 10, 0] > 200 and arr[5, 10, 2] < 60  # the stored left (red) half is now on top
    assert arr[35, 10, 2] > 200 and arr[35, 10, 0] < 60


def test_odd_modes_decode_to_the_requested_channels():
    for name, data in good_images(1).items():
        for channels in (1, 3):
            arr = decode_image(data, channels, 16)
            assert arr.shape == (16, 16, channels) and arr.dtype == np.uint8, name
    sixteen = decode_image(_png(Image.fromarray(np.full((4, 4), 65535, np.uint16))), 1, None)
    assert sixteen.max() == 255  # 16-bit is scaled to 8 bits, not clipped


def test_train_on_messy_folder_to_the_end(messy_folder, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", str(messy_folder), "--epochs", "2", "--image-size", "16", "--batch-size", "8",
                "--val-split", "0.25", "--no-tensorboard", "--augment", "medium", "--out", str(out),
                "--set", "data.max_image_pixels=50000000", cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr[-2000:]
    skipped = (out / "skipped.txt").read_text(encoding="utf-8")
    lines = skipped.strip().splitlines()
    reasons = dict(line.split("\t", 1) for line in lines)
    assert "cats/truncated.jpg" in reasons and reasons["cats/truncated.jpg"].startswith("unreadable image")
    assert "cats/random.jpg" in reasons and "not an image file" in reasons["cats/random.jpg"]
    assert "0x" not in skipped and "<_io" not in skipped  # said in words, never a Python object's repr
    assert "decompression-bomb" in reasons["cats/huge.png"]
    assert reasons["cats/notes.txt"] == "not an image file extension"
    assert reasons["cats/.DS_Store"] == reasons[".hidden/secret.png"] == "hidden or system file"
    assert reasons["cats/Thumbs.db"] == "hidden or system file"
    assert f"warning: skipped {len(lines)} files" in r.stdout
    counts = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))["resolved"]["counts"]
    assert counts["train"] + counts["val"] == 2 * 16 + 1  # every valid image of both classes, plus the symlink
    classes = (out / "classes.json").read_text(encoding="utf-8")
    assert KOREAN in classes
    for name in ("rgb.jpg", "upper.JPG", "cmyk.jpg", "sixteen.png", "exif.jpg", "tiny.png", "placeholder.gif"):
        assert f"cats/{name}" not in reasons
    r = run_cli("predict", str(out), str(messy_folder / KOREAN), cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr[-2000:]


def test_train_on_messy_zip_to_the_end(messy_zip, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", str(messy_zip), "--epochs", "1", "--image-size", "16", "--batch-size", "8",
                "--no-tensorboard", "--out", str(out), cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr[-2000:]
    reasons = dict(line.split("\t", 1) for line in (out / "skipped.txt").read_text(encoding="utf-8").splitlines())
    assert "refused" in reasons["../evil.jpg"] and "refused" in reasons["photos/cats/../../escape.png"]
    assert reasons["__MACOSX/photos/cats/._rgb.jpg"] == "hidden or system file"
    assert reasons["cats/truncated.jpg"].startswith("unreadable image")
    assert KOREAN in (out / "classes.json").read_text(encoding="utf-8")


def test_inspect_reports_bad_files_before_training(messy_folder, tmp_path):
    r = run_cli("inspect", str(messy_folder), cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "files will be skipped" in r.stdout
    for name in ("truncated.jpg", "random.jpg", "notes.txt", "Thumbs.db"):
        assert name in r.stdout


def test_inspect_finds_duplicates_and_leakage(tmp_path):
    root = tmp_path / "data"
    same = _png(Image.new("RGB", (10, 10), (9, 9, 9)))
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            (root / split / cls / "own.png").write_bytes(_png(Image.new("RGB", (10, 10), (len(split), ord(cls), 1))))
    (root / "train" / "a" / "copy1.png").write_bytes(same)
    (root / "train" / "b" / "copy2.png").write_bytes(same)  # within train, even across classes
    (root / "val" / "a" / "copy3.png").write_bytes(same)  # and across train/val: leakage
    (root / "train" / "a" / "x.png").write_bytes(_png(Image.new("L", (5, 5), 1)))
    (root / "train" / "b" / "y.png").write_bytes(_png(Image.new("L", (5, 5), 1)))  # a pair within train only
    ins = inspect_data(str(root))
    groups = sorted(sorted(i for _, i in g) for g in ins.duplicates)
    assert groups == [["train/a/copy1.png", "train/b/copy2.png", "val/a/copy3.png"], ["train/a/x.png", "train/b/y.png"]]
    assert len(ins.leaks) == 1
    r = run_cli("inspect", str(root), cache=tmp_path / "cache")
    assert "leakage: 1 duplicate groups" in r.stdout

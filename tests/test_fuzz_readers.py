"""Property / fuzz tests of the readers and the decoder: random and mutated bytes as images, truncated files, CSVs
with odd encodings / quotes / BOMs / missing and duplicate ids, zips with bad CRCs / encrypted entries / absurd sizes
/ names escaping the root, IDX files with wrong magic / dimensions / bodies, npz files with odd keys and dtypes.

Contract: reading then decoding ends in a DataSource / DecodedSplit, a skipped file, or a CnnlabError; never
another exception, never a hang (the hypothesis deadline), never a file outside the data read.
Examples per test are bounded (FUZZ_EXAMPLES, default 60) so the suite stays fast; raise it for a long run.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnlab.data.dataset import decode_or_reason, decode_split, infer_geometry
from cnnlab.data.readers import load_source
from cnnlab.errors import CnnlabError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=4000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def image_bytes(fmt: str, size=(6, 5), mode="RGB", seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3 if mode == "RGB" else 1), dtype=np.uint8)
    im = Image.fromarray(arr.squeeze(-1) if mode == "L" else arr, mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


VALID = {fmt: image_bytes(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")}


class MemoryContainer:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def read(self, ref: str) -> bytes:
        return self.files[ref]


def load_and_decode(source: str, **kwargs) -> None:
    """The whole reading path of a run: read DATA, pick the geometry, decode every split."""
    try:
        src = load_source(source, **kwargs)
        geom = infer_geometry(src, None, None)
        if geom.size[0] > 64:  # keep decoding cheap: the reader is what is under test
            geom.size = (32, 32)
        for split in src.splits.values():
            decoded = decode_split(src, split, geom, workers=1)
            assert decoded.x.dtype.is_floating_point is False and decoded.x.shape[1] == geom.channels
    except CnnlabError as e:
        assert str(e)  # a message for the user


@st.composite
def mutated(draw, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i : i + draw(st.integers(1, 16))]
    return bytes(data)


def mutated_image():
    return st.sampled_from(sorted(VALID)).flatmap(lambda fmt: mutated(VALID[fmt]))


# ------------------------------------------------------------------------------------------------------------
# images


@FUZZ
@given(data=st.one_of(st.binary(max_size=2048), mutated_image()), channels=st.sampled_from([1, 3]),
       size=st.sampled_from([None, 8]), policy=st.sampled_from(["crop", "squash"]))
def test_decode_random_and_mutated_bytes_is_an_image_or_a_skip(data, channels, size, policy):
    from cnnlab.data.dataset import ImageGeometry

    geom = ImageGeometry((size or 6, size or 6), channels)
    out = decode_or_reason((MemoryContainer({"f": data}), "f", geom, policy))
    if not isinstance(out, str):
        assert out.dtype == np.uint8 and out.shape == (geom.size[0], geom.size[1], channels)


@FUZZ
@given(files=st.lists(st.one_of(mutated_image(), st.binary(max_size=64)), min_size=2, max_size=6))
def test_folder_of_damaged_images(files):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        for i, blob in enumerate(files + [VALID["PNG"], VALID["PNG"]]):
            folder = root / ("a" if i % 2 else "b")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}.png").write_bytes(blob)
        load_and_decode(str(root), val_split=0.0)


# ------------------------------------------------------------------------------------------------------------
# CSV + images


IDS = ["img0", "img1", "img2", "img3", "img4", "img5"]
ODD_IDS = ["missing", "", " img1 ", "IMG2", "img3.png", "../img4", "/etc/passwd", "a,b", 'q"uote', "img0"]
LABELS = ["cat", "dog", "1", "0", "", "é", "nan", "inf", "-1", "  dog  "]


@st.composite
def csv_file(draw) -> bytes:
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    header = draw(st.sampled_from([["id", "label"], ["image_id", "has_cactus"], ["label", "id"], ["a"],
                                   ["id", "label", "extra"], ["", ""], ["id", "id"]]))
    rows = draw(st.lists(st.tuples(st.sampled_from(IDS + ODD_IDS), st.sampled_from(LABELS),
                                   st.sampled_from(["", "x", '"', "\n"])), max_size=14))
    quote = draw(st.booleans())

    def cell(v: str) -> str:
        return '"' + v.replace('"', '""') + '"' if quote or delimiter in v or '"' in v or "\n" in v else v

    lines = [delimiter.join(cell(h) for h in header)]
    for ident, label, extra in rows:
        cells = [ident, label, extra][: max(1, len(header) + draw(st.integers(-1, 1)))]
        lines.append(delimiter.join(cell(c) for c in cells))
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines)
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    blob = text.encode(encoding, errors="replace")
    if draw(st.booleans()):
        blob = draw(mutated(blob))
    return blob


@FUZZ
@given(blob=st.one_of(csv_file(), st.binary(max_size=512)), skip_missing=st.booleans(),
       images_as_zip=st.booleans())
def test_csv_with_odd_encodings_quotes_and_ids(blob, skip_missing, images_as_zip):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if images_as_zip:
            with zipfile.ZipFile(tmp / "images.zip", "w") as zf:
                for i in IDS:
                    zf.writestr(f"train/{i}.png", VALID["PNG"])
            images = tmp / "images.zip"
        else:
            images = tmp / "images"
            images.mkdir()
            for i in IDS:
                (images / f"{i}.png").write_bytes(VALID["PNG"])
        (tmp / "secret.png").write_bytes(VALID["PNG"])  # outside the image folder: must never be read
        path = tmp / "labels.csv"
        path.write_bytes(blob)
        try:
            src = load_source(str(path), images=str(images), skip_missing=skip_missing, val_split=0.0)
        except CnnlabError:
            return
        refs = src.splits["train"].refs
        assert all("secret" not in r for r in refs)
        assert len(set(src.splits["train"].ids)) == len(src.splits["train"].ids)  # duplicates dropped
        load_and_decode(str(path), images=str(images), skip_missing=skip_missing, val_split=0.0)


# ------------------------------------------------------------------------------------------------------------
# zip archives


def build_zip(names: list[str], encrypted: set[int], method: int) -> bytearray:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for i, name in enumerate(names):
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            zf.writestr(info, VALID["PNG"] if i % 3 else VALID["JPEG"])
    data = bytearray(buf.getvalue())
    if encrypted:  # set the encryption flag in local and central headers of the chosen entries
        for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            start, k = 0, 0
            while (start := data.find(sig, start)) != -1:
                if k in encrypted:
                    data[start + offset] |= 0x1
                start, k = start + 4, k + 1
    return data


def set_central_sizes(data: bytearray, absurd: int) -> None:
    start = data.find(b"PK\x01\x02")
    if start != -1:
        struct.pack_into("<II", data, start + 20, absurd, absurd)  # compressed and uncompressed size


NAMES = ["a/1.png", "a/2.png", "b/1.jpg", "b/2.png", "a/3.png", "b/3.jpg", "../evil.png", "/abs/a.png",
         "C:\\win\\b.png", "a/../../up.png", "a/.hidden.png", "__MACOSX/a/x.png", "a/notes.txt", "top.png",
         "train/a/1.png", "train/b/2.png", "b/\u00e9t\u00e9.png"]


@st.composite
def zip_file(draw) -> bytes:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=8, unique=True))
    encrypted = set(draw(st.lists(st.integers(0, len(names) - 1), max_size=2)))
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    data = build_zip(names, encrypted, method)
    if draw(st.booleans()):  # bad CRC: damage one byte of some entry's data
        i = draw(st.integers(40, max(40, len(data) - 60)))
        data[i % len(data)] ^= 0xFF
    if draw(st.booleans()):
        set_central_sizes(data, draw(st.sampled_from([0, 1, 2**31 - 1, 2**32 - 1])))
    if draw(st.booleans()):
        data = bytearray(draw(mutated(bytes(data))))
    return bytes(data)


@FUZZ
@given(blob=st.one_of(zip_file(), st.binary(max_size=256)))
def test_zip_with_bad_crc_encryption_absurd_sizes_and_escaping_names(blob):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sub" / "data.zip"
        path.parent.mkdir()
        path.write_bytes(blob)
        before = sorted(os.listdir(tmp))
        try:
            src = load_source(str(path), val_split=0.0)
        except CnnlabError:
            return
        for split in src.splits.values():
            assert not any(r.startswith(("/", "..")) or "/../" in r or ":" in r for r in split.refs)
        load_and_decode(str(path), val_split=0.0)
        assert sorted(os.listdir(tmp)) == before  # nothing extracted, nothing written


# ------------------------------------------------------------------------------------------------------------
# MNIST IDX


@st.composite
def idx_file(draw, kind: str) -> bytes:
    n = draw(st.integers(0, 6))
    if kind == "images":
        dims = [n, draw(st.integers(0, 5)), draw(st.integers(0, 5))]
    else:
        dims = [n]
    dtype_code = draw(st.sampled_from([0x08, 0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07]))
    if draw(st.booleans()):
        dims = draw(st.lists(st.sampled_from([0, 1, 3, 2**16, 2**31 - 1, 2**32 - 1]), min_size=1, max_size=4))
    magic = bytes([0, 0, dtype_code, len(dims)])
    if draw(st.booleans()):
        magic = draw(st.binary(min_size=0, max_size=4))
    itemsize = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}.get(dtype_code, 1)
    count = int(np.prod([min(d, 64) for d in dims])) * itemsize
    body = draw(st.binary(min_size=count, max_size=count)) if count <= 4096 else b""
    data = magic + struct.pack(f">{len(dims)}I", *dims) + body
    if draw(st.booleans()):
        data = draw(mutated(data))
    return data


@FUZZ
@given(images=idx_file("images"), labels=idx_file("labels"), gz=st.sampled_from(["", ".gz", "corrupt.gz"]),
       with_test=st.booleans())
def test_idx_with_wrong_magic_dims_and_bodies(images, labels, gz, with_test):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        suffix = ".gz" if gz else ""
        files = {"train-images-idx3-ubyte": images, "train-labels-idx1-ubyte": labels}
        if with_test:
            files.update({"t10k-images-idx3-ubyte": images, "t10k-labels-idx1-ubyte": labels})
        for name, blob in files.items():
            if gz == ".gz":
                blob = gzip.compress(blob)
            elif gz == "corrupt.gz":
                blob = bytearray(gzip.compress(blob))
                blob[len(blob) // 2] ^= 0x55
                blob = bytes(blob)
            (root / (name + suffix)).write_bytes(blob)
        load_and_decode(str(root), val_split=0.2)


# ------------------------------------------------------------------------------------------------------------
# npz


ARRAYS = st.sampled_from([
    lambda: np.zeros((6, 4, 4), np.uint8), lambda: np.ones((6, 4, 4, 3), np.float32) * 0.5,
    lambda: np.full((6, 4, 4), np.nan, np.float64), lambda: np.zeros((6, 4, 4, 2), np.uint8),
    lambda: np.array(["a", "b", "c", "d", "e", "f"]), lambda: np.arange(6) % 2, lambda: np.arange(6) * 10**9,
    lambda: np.array([0.0, 1.0, np.nan, 1.0, 0.0, 1.0]), lambda: np.zeros((6, 0, 4), np.uint8),
    lambda: np.array([-1, 0, 1, 0, 1, 0]), lambda: np.zeros((0, 4, 4), np.uint8), lambda: np.zeros(6, np.complex64),
    lambda: np.array([True, False] * 3), lambda: np.zeros((6,), np.uint8), lambda: np.array(["x", "y"]),
    lambda: np.zeros((6, 4, 4, 1, 1), np.uint8), lambda: np.array(5),
])
KEYS = ["x", "y", "x_train", "y_train", "x_test", "y_test", "x_val", "class_names", "images", "labels"]


@FUZZ
@given(content=st.dictionaries(st.sampled_from(KEYS), ARRAYS, max_size=5), mutate=st.booleans(),
       raw=st.data())
def test_npz_with_missing_keys_and_odd_dtypes(content, mutate, raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.npz"
        np.savez(path, **{k: make() for k, make in content.items()})
        if mutate:
            path.write_bytes(raw.draw(mutated(path.read_bytes())))
        load_and_decode(str(path), val_split=0.0)


def test_npz_without_x_names_the_keys(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((4, 4, 4), np.uint8), y=np.arange(4) % 2)
    with pytest.raises(CnnlabError, match="needs arrays 'x' and 'y'.*images, y"):
        load_source(str(path))


# ------------------------------------------------------------------------------------------------------------
# what the fuzzing found, kept as plain regression tests


def write_idx(path: Path, dims: list[int], body: bytes, code: int = 0x08) -> None:
    path.write_bytes(bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + body)


def test_found_damaged_gzip_stream_in_idx_is_a_clear_error(tmp_path):
    blob = bytearray(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3]) * 50))
    blob[len(blob) // 2] ^= 0x55  # zlib.error: invalid distance too far back
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(bytes(blob))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(bytes(blob))
    with pytest.raises(CnnlabError, match="cannot read IDX file"):
        load_source(str(tmp_path))


def test_found_idx_with_no_images_or_absurd_dims(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", [0, 0, 0], b"")
    write_idx(tmp_path / "train-labels-idx1-ubyte", [0], b"")
    with pytest.raises(CnnlabError):  # was: ValueError from min() of an empty array
        load_source(str(tmp_path))
    write_idx(tmp_path / "train-labels-idx1-ubyte", [0, 3, 2**31 - 1, 2**31 - 1], b"")
    with pytest.raises(CnnlabError, match="needs"):  # was: ValueError "array is too big"
        load_source(str(tmp_path))


def test_found_absurd_label_values_do_not_build_billions_of_classes(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((6, 4, 4), np.uint8), y=np.arange(6) * 10**9)  # was: hours and GBs of class names
    with pytest.raises(CnnlabError, match="class indices"):
        load_source(str(path))


def test_found_empty_or_odd_npz(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(b"")
    with pytest.raises(CnnlabError, match="cannot read"):  # was: EOFError
        load_source(str(path))
    np.savez(path, x=np.zeros((6, 4, 4), np.uint8), y=np.array(list("abcdef")))
    with pytest.raises(CnnlabError, match="whole numbers"):  # was: ValueError from astype
        load_source(str(path))
    np.savez(path, x=np.array(list("abcdef")).reshape(6, 1, 1), y=np.arange(6) % 2)
    with pytest.raises(CnnlabError, match="must be numbers"):  # was: numpy UFuncTypeError
        load_source(str(path))


def test_zip_entry_declaring_an_absurd_size_is_skipped(tmp_path):
    names = ["a/1.png", "a/2.png", "b/1.png", "b/2.png"]
    data = build_zip(names, set(), zipfile.ZIP_STORED)
    set_central_sizes(data, 2**32 - 1)
    path = tmp_path / "d.zip"
    path.write_bytes(bytes(data))
    src = load_source(str(path), val_split=0.0)
    assert ("a/1.png", "declared size over 512 MB (damaged or a zip bomb)") in src.skipped


def test_found_csv_with_bare_carriage_returns(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in IDS[:4]:
        (images / f"{i}.png").write_bytes(VALID["PNG"])
    path = tmp_path / "labels.csv"
    path.write_bytes(b"id,label\rimg0,a\rimg1,b\rimg2,a\rimg3,b\r")  # was: _csv.Error (new-line in unquoted field)
    src = load_source(str(path), images=str(images), val_split=0.0)
    assert src.class_names == ["a", "b"] and len(src.splits["train"]) == 4
    path.write_bytes(b"\r\x00")
    with pytest.raises(CnnlabError):
        load_source(str(path), images=str(images))


def test_found_npz_with_scalar_class_names(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((6, 4, 4), np.uint8), y=np.arange(6) % 2, class_names=np.array(5))
    with pytest.raises(CnnlabError, match="class_names"):  # was: TypeError iterating a 0-d array
        load_source(str(path))


def test_found_npz_with_a_test_split_only(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_test=np.zeros((6, 4, 4), np.uint8), y_test=np.arange(6) % 2)
    with pytest.raises(CnnlabError, match="needs arrays 'x' and 'y'"):  # was: KeyError 'train'
        load_source(str(path))

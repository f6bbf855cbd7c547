"""Readers: turn the one DATA argument into labelled splits of image references or arrays.

DATA may be an image-folder tree (`<root>/<class>/*.jpg`, or `<root>/{train,val,test}/<class>/...`), a .zip
holding either layout (read in place, never extracted), a Kaggle-style CSV of labels beside an image folder or
zip, a .npz of arrays (or a folder of train/val/test .npz files), a folder of MNIST IDX files, or a builtin
name (digits, mnist, fashion_mnist, cifar10). Decoding is not done here: see cnnlab.data.dataset.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import struct
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from cnnlab.errors import CnnlabError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
BUILTINS = ("digits", "mnist", "fashion_mnist", "cifar10")
MAX_ENTRY_BYTES = 512 << 20  # a zip entry declaring more is skipped: no image for training is that large
MAX_CLASSES = 100_000  # integer labels above this are a broken file, not class indices (and would cost GBs)


@dataclass
class Split:
    """One split: labels plus either references into a container or an in-memory array."""

    labels: np.ndarray  # (N,) int64
    ids: list[str]  # what a user calls each sample (relative path, CSV id, or index)
    refs: list[str] | None = None  # paths / zip entry names, read through DataSource.container
    array: np.ndarray | None = None  # (N, H, W, C) uint8

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> Split:
        return Split(
            labels=self.labels[index],
            ids=[self.ids[i] for i in index],
            refs=[self.refs[i] for i in index] if self.refs is not None else None,
            array=self.array[index] if self.array is not None else None,
        )


class FileContainer:
    """Reads image references that are file-system paths."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, ref: str) -> bytes:
        return Path(ref).read_bytes()

    def describe(self) -> str:
        return str(self.root)


class ZipContainer:
    """Reads entries of a zip archive in place; reopens the file in each process (DataLoader workers)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._pid = -1

    def _handle(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._pid = os.getpid()
        return self._zip

    def read(self, ref: str) -> bytes:
        return self._handle().read(ref)

    def describe(self) -> str:
        return str(self.path)

    def __getstate__(self) -> dict:
        return {"path": self.path, "_zip": None, "_pid": -1}


@dataclass
class DataSource:
    """What a reader returns: class names, splits, the container the refs point into, and skipped files."""

    name: str
    kind: str
    class_names: list[str]
    splits: dict[str, Split]
    container: FileContainer | ZipContainer | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    label_col: str | None = None  # for CSV sources: the column a submission file uses
    id_col: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def counts(self, split: str) -> list[int]:
        labels = self.splits[split].labels
        return np.bincount(labels, minlength=self.num_classes).tolist()


# ----------------------------------------------------------------------------------------------------------------
# image-folder trees and zip archives (one code path over relative POSIX paths)


def _is_hidden(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _is_unsafe(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":")


def _classify_files(rel_paths: list[tuple[str, str]], where: str):
    """Group (relative path, ref) pairs into {split: {class: [(rel, ref)]}} plus skipped files.

    Accepts `<class>/.../file` or `<split>/<class>/.../file` layouts.
    """
    skipped: list[tuple[str, str]] = []
    kept: list[tuple[tuple[str, ...], str, str]] = []
    for rel, ref in rel_paths:
        parts = PurePosixPath(rel).parts
        if _is_hidden(parts) or parts[-1].lower() in JUNK_NAMES:
            skipped.append((rel, "hidden or system file"))
        elif Path(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
            if len(parts) > 1:  # top-level README/SOURCE files are not data; no warning for them
                skipped.append((rel, "not an image file extension"))
        elif len(parts) < 2:
            skipped.append((rel, "image at the top level, outside any class folder"))
        else:
            kept.append((parts, rel, ref))
    if not kept:
        raise CnnlabError(
            f"no images found in {where}: expected <root>/<class>/*.jpg (or .png, .bmp, .gif, .webp, .tif), "
            "or <root>/train/<class>/..."
        )
    top = {p[0].lower() for p, _, _ in kept}
    split_layout = "train" in {SPLIT_ALIASES.get(t) for t in top} and all(
        t in SPLIT_ALIASES or t.startswith(".") for t in top
    )
    groups: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for parts, rel, ref in kept:
        if split_layout:
            if len(parts) < 3:
                skipped.append((rel, "image directly in a split folder, outside any class folder"))
                continue
            split, cls = SPLIT_ALIASES[parts[0].lower()], parts[1]
        else:
            split, cls = "train", parts[0]
        groups.setdefault(split, {}).setdefault(cls, []).append((rel, ref))
    return groups, skipped


def _splits_from_groups(groups, where: str) -> tuple[list[str], dict[str, Split]]:
    if "train" not in groups:
        raise CnnlabError(f"{where} has split folders but no train/ folder with class subfolders")
    class_names = sorted(groups["train"])
    if len(class_names) < 2:
        raise CnnlabError(
            f"only one class ('{class_names[0]}') found in {where}: a classifier needs at least two class "
            "folders, e.g. <root>/cats/*.jpg and <root>/dogs/*.jpg"
        )
    index = {c: i for i, c in enumerate(class_names)}
    splits = {}
    for split, classes in groups.items():
        unknown = sorted(set(classes) - set(index))
        if unknown:
            raise CnnlabError(f"{where}: the {split} split has classes missing from train: {', '.join(unknown)}")
        items = sorted((rel, ref, index[c]) for c, pairs in classes.items() for rel, ref in pairs)
        splits[split] = Split(
            labels=np.array([lab for _, _, lab in items], dtype=np.int64),
            ids=[rel for rel, _, _ in items],
            refs=[ref for _, ref, _ in items],
        )
    return class_names, splits


def _walk_folder(root: Path) -> list[tuple[str, str]]:
    """All files below root as (relative POSIX path, absolute path); follows symlinks, never loops."""
    out = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            out.append((Path(full).relative_to(root).as_posix(), full))
    return out


def read_folder(root: Path) -> DataSource:
    groups, skipped = _classify_files(_walk_folder(root), str(root))
    class_names, splits = _splits_from_groups(groups, str(root))
    return DataSource(root.name, "folder", class_names, splits, FileContainer(root), skipped)


def _zip_entries(path: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(relative name, entry name) for each file entry, with one shared top folder stripped; plus skipped."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, struct.error) as e:
        raise CnnlabError(f"{path} is not a readable zip archive ({type(e).__name__})") from None
    skipped, names = [], []
    for info in infos:
        if info.is_dir():
            continue
        if _is_unsafe(info.filename):
            skipped.append((info.filename, "unsafe entry name (absolute or '..'), refused"))
        elif info.flag_bits & 0x1:
            skipped.append((info.filename, "encrypted entry"))
        elif info.file_size > MAX_ENTRY_BYTES:
            skipped.append((info.filename, f"declared size over {MAX_ENTRY_BYTES >> 20} MB (damaged or a zip bomb)"))
        else:
            names.append(info.filename)
    parts = [PurePosixPath(n).parts for n in names if not _is_hidden(PurePosixPath(n).parts)]
    prefix = ""
    one_top = parts and all(len(p) > 2 for p in parts) and len({p[0] for p in parts}) == 1
    if one_top and parts[0][0].lower() not in SPLIT_ALIASES:  # e.g. dataset/train/cat/1.jpg
        prefix = parts[0][0] + "/"
    entries = [(n[len(prefix):] if n.startswith(prefix) else n, n) for n in names]
    return entries, skipped


def read_zip(path: Path) -> DataSource:
    entries, bad = _zip_entries(path)
    groups, skipped = _classify_files(entries, str(path))
    class_names, splits = _splits_from_groups(groups, str(path))
    return DataSource(path.stem, "zip", class_names, splits, ZipContainer(path), bad + skipped)


# ----------------------------------------------------------------------------------------------------------------
# Kaggle-style CSV + images

_ID_NAMES = ("id", "image_id", "image", "img", "filename", "file_name", "file", "path", "name", "image_name")
_LABEL_NAMES = ("label", "labels", "class", "category", "target", "y", "class_name")


def _detect_images_for_csv(csv_path: Path) -> Path:
    folder, stem = csv_path.parent, csv_path.stem
    candidates = [folder / f"{stem}.zip", folder / stem, folder / "images.zip", folder / "images"]
    for c in candidates:
        if c.exists():
            return c
    zips = [p for p in folder.glob("*.zip")]
    if len(zips) == 1:
        return zips[0]
    raise CnnlabError(
        f"cannot find the images for {csv_path.name}: looked for {stem}.zip, {stem}/, images.zip, images/ beside "
        "it; pass --images PATH (a folder or .zip)"
    )


def _read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_bytes().decode("latin-1")
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = _parse_csv(text, dialect)
    except csv.Error:  # bare CR line ends (old Mac exports): read them as line ends
        try:
            rows = _parse_csv(text.replace("\r\n", "\n").replace("\r", "\n"), dialect)
        except csv.Error as e:  # e.g. a field over csv.field_size_limit()
            raise CnnlabError(f"{path} is not a readable CSV file: {e}") from None
    if len(rows) < 2:
        raise CnnlabError(f"{path} has no data rows: expected a header line (e.g. id,label) and one row per image")
    header = [h.strip() for h in rows[0]]
    return header, rows[1:]


def _parse_csv(text: str, dialect) -> list[list[str]]:
    return [r for r in csv.reader(io.StringIO(text, newline=""), dialect) if any(c.strip() for c in r)]


def _pick_column(header: list[str], wanted: str | None, names: tuple[str, ...], role: str, option: str,
                 path: Path, avoid: str | None = None) -> str:
    if wanted is not None:
        if wanted not in header:
            raise CnnlabError(f"{path.name} has no column '{wanted}' (columns: {', '.join(header)}); "
                              f"fix {option}")
        return wanted
    lowered = {h.lower(): h for h in header if h != avoid}
    for n in names:
        if n in lowered:
            return lowered[n]
    rest = [h for h in header if h != avoid]
    if role == "id" and rest:
        return rest[0]
    if role == "label" and len(rest) == 1:
        return rest[0]
    if role == "label" and rest:
        return rest[-1]
    raise CnnlabError(f"cannot tell which column of {path.name} holds the {role} (columns: {', '.join(header)}); "
                      f"pass {option}")


def _image_index(entries: list[tuple[str, str]]) -> dict[str, str]:
    """Map relative path, basename and stem (all lower-case) of each image to its ref."""
    index: dict[str, str] = {}
    for rel, ref in entries:
        p = PurePosixPath(rel)
        if Path(p.name).suffix.lower() not in IMAGE_EXTENSIONS or _is_hidden(p.parts):
            continue
        for key in (rel.lower(), p.name.lower(), p.stem.lower(), str(p.with_suffix("")).lower()):
            index.setdefault(key, ref)
    return index


def read_csv(path: Path, images: str | None = None, id_col: str | None = None, label_col: str | None = None,
             skip_missing: bool = False) -> DataSource:
    header, rows = _read_csv_rows(path)
    id_name = _pick_column(header, id_col, _ID_NAMES, "id", "--id-col", path)
    label_name = _pick_column(header, label_col, _LABEL_NAMES, "label", "--label-col", path, avoid=id_name)
    if label_name == id_name:
        raise CnnlabError(f"{path.name}: the id and label columns are both '{id_name}'; pass --label-col")
    img_path = Path(images) if images else _detect_images_for_csv(path)
    if not img_path.exists():
        raise CnnlabError(f"image location {img_path} does not exist; fix --images")
    if img_path.suffix.lower() == ".zip":
        entries, skipped = _zip_entries(img_path)
        container: FileContainer | ZipContainer = ZipContainer(img_path)
    else:
        entries, skipped = _walk_folder(img_path), []
        container = FileContainer(img_path)
    index = _image_index(entries)
    i_id, i_label = header.index(id_name), header.index(label_name)
    ids, refs, raw_labels, missing = [], [], [], []
    seen: set[str] = set()
    for row in rows:
        if len(row) <= max(i_id, i_label):
            continue
        key, label = row[i_id].strip(), row[i_label].strip()
        ref = index.get(key.lower()) or index.get(PurePosixPath(key).stem.lower())
        if ref is None:
            missing.append(key)
            continue
        if key in seen:
            skipped.append((key, "duplicate id in the CSV, first row kept"))
            continue
        seen.add(key)
        ids.append(key)
        refs.append(ref)
        raw_labels.append(label)
    if missing and not skip_missing:
        raise CnnlabError(
            f"{len(missing)} ids in {path.name} have no image in {img_path.name} (e.g. {', '.join(missing[:3])}); "
            "check --id-col and --images, or pass --skip-missing to train on the rest"
        )
    skipped += [(m, "id in the CSV without an image") for m in missing]
    if not ids:
        raise CnnlabError(f"no ids of {path.name} match an image in {img_path}")
    class_names = _sorted_labels(set(raw_labels))
    if len(class_names) < 2:
        raise CnnlabError(f"only one class ('{class_names[0]}') in column '{label_name}' of {path.name}: "
                          "a classifier needs at least two; check --label-col")
    lookup = {c: i for i, c in enumerate(class_names)}
    split = Split(np.array([lookup[v] for v in raw_labels], dtype=np.int64), ids, refs)
    return DataSource(path.stem, "csv", class_names, {"train": split}, container, skipped,
                      label_col=label_name, id_col=id_name)


def _sorted_labels(values: set[str]) -> list[str]:
    try:
        return sorted(values, key=lambda v: float(v))
    except ValueError:
        return sorted(values)


# ----------------------------------------------------------------------------------------------------------------
# arrays: .npz, MNIST IDX, builtins


def _check_images_array(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or min(x.shape[1:3]) < 1:
        raise CnnlabError(f"{where}: images must have shape (N,H,W) or (N,H,W,C) with C in 1, 3, 4; "
                          f"got {x.shape}")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == bool):
        raise CnnlabError(f"{where}: images must be numbers (uint8 0..255 or floats), got dtype {x.dtype}")
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.floating) and x.size and float(np.nanmax(x)) <= 1.0:
            x = np.clip(np.nan_to_num(x) * 255.0 + 0.5, 0, 255)
        x = np.clip(x, 0, 255).astype(np.uint8)
    if x.shape[-1] == 4:
        x = x[..., :3]
    x = np.ascontiguousarray(x)
    return x if x.flags.writeable else x.copy()  # IDX arrays are views of read-only bytes


def _array_split(x: np.ndarray, y: np.ndarray, where: str, prefix: str = "") -> Split:
    x = _check_images_array(x, where)
    y = np.asarray(y).reshape(-1)
    if len(x) != len(y):
        raise CnnlabError(f"{where}: {len(x)} images but {len(y)} labels")
    whole = y.dtype.kind in "iub" or (y.dtype.kind == "f" and bool(np.all(np.isfinite(y) & (y == np.round(y)))))
    if not whole:
        raise CnnlabError(f"{where}: labels must be whole numbers 0..K-1 (with class_names for their names), got "
                          f"dtype {y.dtype}")
    return Split(y.astype(np.int64), [f"{prefix}{i}" for i in range(len(y))], array=x)


def _labels_to_index(splits: dict[str, Split], names: list[str] | None, where: str) -> list[str]:
    values = np.unique(np.concatenate([s.labels for s in splits.values()]))
    if values.size == 0:
        raise CnnlabError(f"{where} holds no images")
    if names is None:
        if values.min() < 0 or values.max() >= MAX_CLASSES:
            raise CnnlabError(f"{where}: labels must be class indices 0..K-1 (K up to {MAX_CLASSES:,}) or come "
                              f"with class_names; found values from {values.min()} to {values.max()}")
        names = [str(i) for i in range(int(values.max()) + 1)]
    elif values.max() >= len(names) or values.min() < 0:
        raise CnnlabError(f"{where}: labels go up to {values.max()} but there are {len(names)} class_names")
    return names


def read_npz(path: Path) -> DataSource:
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001  (a damaged file fails in many ways: EOFError, zlib.error, BadZipFile...)
        raise CnnlabError(f"cannot read {path} as a .npz of arrays ({type(e).__name__}: {e})") from None
    names = [str(n) for n in np.asarray(data["class_names"]).reshape(-1)] if "class_names" in data else None
    splits = {}
    if "x" in data and "y" in data:
        splits["train"] = _array_split(data["x"], data["y"], str(path))
    for split in ("train", "val", "test"):
        if f"x_{split}" in data and f"y_{split}" in data:
            splits[split] = _array_split(data[f"x_{split}"], data[f"y_{split}"], str(path), f"{split}/")
    if "train" not in splits:
        raise CnnlabError(f"{path} needs arrays 'x' and 'y' (or x_train/y_train); it has {', '.join(data)}")
    names = _labels_to_index(splits, names, str(path))
    return DataSource(path.stem, "npz", names, splits)


def read_npz_folder(root: Path) -> DataSource:
    splits, names = {}, None
    for split in ("train", "val", "test"):
        p = root / f"{split}.npz"
        if p.exists():
            src = read_npz(p)
            splits[split] = src.splits["train"]
            names = names or (src.class_names if (p.stat().st_size and src.class_names) else None)
    if "train" not in splits:
        raise CnnlabError(f"{root} has .npz files but no train.npz")
    return DataSource(root.name, "npz", _labels_to_index(splits, names, str(root)), splits)


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (gzip or raw): magic 0x0000TTDD, then DD big-endian int32 dims, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; a damaged stream, zlib.error
        raise CnnlabError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or not 1 <= data[3] <= 4:
        raise CnnlabError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise CnnlabError(f"{path} is truncated (header)")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = math.prod(dims) * dtype.itemsize  # exact (Python ints): absurd dims cannot wrap around
    body = data[4 + 4 * ndim :]
    if len(body) != expected or math.prod(d for d in dims if d) * dtype.itemsize >= 2**40:
        raise CnnlabError(f"{path} holds {len(body)} data bytes but its header {dims} needs {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find_idx(root: Path, prefix: str, kind: str) -> Path | None:
    for name in (f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte", f"{prefix}-{kind}.idx"
                 f"{3 if kind == 'images' else 1}-ubyte"):
        for suffix in ("", ".gz"):
            if (root / (name + suffix)).is_file():
                return root / (name + suffix)
    return None


def is_idx_folder(root: Path) -> bool:
    return _find_idx(root, "train", "images") is not None


def read_idx_folder(root: Path) -> DataSource:
    splits = {}
    for prefix, split in (("train", "train"), ("t10k", "test")):
        images, labels = _find_idx(root, prefix, "images"), _find_idx(root, prefix, "labels")
        if images is None:
            continue
        if labels is None:
            raise CnnlabError(f"{root} has {images.name} but no {prefix}-labels-idx1-ubyte(.gz)")
        x, y = read_idx(images), read_idx(labels)
        if x.ndim != 3 or y.ndim != 1:
            raise CnnlabError(f"{images.name}/{labels.name}: expected images (N,H,W) and labels (N,), "
                              f"got {x.shape} and {y.shape}")
        splits[split] = _array_split(x, y, str(images), f"{prefix}/")
    return DataSource(root.name, "idx", _labels_to_index(splits, None, str(root)), splits)


def data_home() -> Path:
    return Path(os.environ.get("CNNLAB_DATA_HOME", Path.home() / ".cache" / "cnnlab" / "datasets"))


def read_builtin(name: str) -> DataSource:
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = np.clip(d.images * 16.0, 0, 255).astype(np.uint8)  # 0..16 -> 0..255, (1797, 8, 8)
        return DataSource("digits", "builtin", [str(i) for i in range(10)], {"train": _array_split(x, d.target, name)})
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    root = data_home()
    try:
        train, test = cls(str(root), train=True, download=True), cls(str(root), train=False, download=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise CnnlabError(
            f"could not download {name} into {root} ({type(e).__name__}); without internet, pass a local path "
            f"instead (e.g. a folder of MNIST IDX files or a .npz), or set CNNLAB_DATA_HOME to where it is"
        ) from None
    splits = {}
    for split, ds in (("train", train), ("test", test)):
        x = np.asarray(ds.data)
        y = np.asarray(ds.targets)
        splits[split] = _array_split(x, y, name, f"{split}/")
    return DataSource(name, "builtin", list(train.classes), splits)


# ----------------------------------------------------------------------------------------------------------------


def _read(source: str, images: str | None, id_col: str | None, label_col: str | None,
          skip_missing: bool) -> DataSource:
    path = Path(source).expanduser()
    if not path.exists():
        if source.lower() in BUILTINS:
            return read_builtin(source.lower())
        raise CnnlabError(f"no such file or folder: {source} (builtin datasets: {', '.join(BUILTINS)})")
    suffix = path.suffix.lower()
    if path.is_dir():
        if is_idx_folder(path):
            return read_idx_folder(path)
        if (path / "train.npz").is_file():
            return read_npz_folder(path)
        return read_folder(path)
    if suffix == ".zip":
        return read_zip(path)
    if suffix in (".csv", ".tsv", ".txt"):
        return read_csv(path, images, id_col, label_col, skip_missing)
    if suffix == ".npz":
        return read_npz(path)
    raise CnnlabError(f"cannot read {source}: expected a folder, .zip, .csv, .npz or a builtin name "
                      f"({', '.join(BUILTINS)})")


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with `fraction` of each class in val (at least one per class with >= 2 samples)."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def load_source(source: str, *, val_split: float = 0.2, seed: int = 0, images: str | None = None,
                id_col: str | None = None, label_col: str | None = None, skip_missing: bool = False) -> DataSource:
    """Read DATA into a DataSource with train and (when possible) val splits.

    Without a val split in the data, a stratified `val_split` fraction of train is held out (seeded).
    """
    src = _read(source, images, id_col, label_col, skip_missing)
    if not 0 <= val_split < 1:
        raise CnnlabError(f"--val-split must be in [0, 1), got {val_split}")
    train = src.splits["train"]
    if len(train) == 0:
        raise CnnlabError(f"{source}: the train split is empty")
    present = np.unique(train.labels)
    if len(present) < 2:
        raise CnnlabError(f"{source}: only one class in the training data; a classifier needs at least two")
    if "val" not in src.splits and val_split > 0:
        tr, va = stratified_split(train.labels, val_split, seed)
        src.splits["train"], src.splits["val"] = train.subset(tr), train.subset(va)
    return src


def describe_counts(src: DataSource) -> dict[str, dict[str, int]]:
    """{split: {class name: count}} for inspect and run logs."""
    return {s: dict(zip(src.class_names, src.counts(s))) for s in src.splits}


def skipped_summary(skipped: list[tuple[str, str]]) -> str:
    reasons = Counter(r for _, r in skipped)
    return ", ".join(f"{n} {r}" for r, n in reasons.most_common())

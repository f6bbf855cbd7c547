"""Kaggle-style CSV of labels beside its images: finding the images (a folder or .zip next to the CSV),
sniffing the dialect, picking the id and label columns, and matching each id to an image file.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path, PurePosixPath

import numpy as np

from cnnlab.data.readers.base import Container, DataSource, ReadRequest, Split, register_reader
from cnnlab.data.readers.folder import FileContainer, has_image_extension, is_hidden, walk_folder
from cnnlab.data.readers.zip import ZipContainer, zip_entries
from cnnlab.errors import CnnlabError

_ID_NAMES = ("id", "image_id", "image", "img", "filename", "file_name", "file", "path", "name", "image_name")
_LABEL_NAMES = ("label", "labels", "class", "category", "target", "y", "class_name")


def _detect_images_for_csv(csv_path: Path) -> Path:
    """The images beside a CSV: <stem>.zip, <stem>/, images.zip, images/, or the folder's only .zip."""
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
    """Header (stripped) and non-blank rows, whatever the encoding, delimiter (, ; tab) and line ends."""
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
    """The column named `wanted`, else the first of `names` present, else a positional guess for the role."""
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
        if not has_image_extension(p.name) or is_hidden(p.parts):
            continue
        for key in (rel.lower(), p.name.lower(), p.stem.lower(), str(p.with_suffix("")).lower()):
            index.setdefault(key, ref)
    return index


def _open_images(img_path: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]], Container]:
    """(relative name, ref) of every file in the image folder or zip, what the zip listing skipped, the container."""
    if img_path.suffix.lower() == ".zip":
        entries, skipped = zip_entries(img_path)
        return entries, skipped, ZipContainer(img_path)
    return walk_folder(img_path), [], FileContainer(img_path)


def _match_rows(rows: list[list[str]], i_id: int, i_label: int, index: dict[str, str]):
    """Rows matched to images: (ids, refs, raw labels), ids without an image, and duplicate ids skipped."""
    ids, refs, raw_labels, missing, duplicates = [], [], [], [], []
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
            duplicates.append((key, "duplicate id in the CSV, first row kept"))
            continue
        seen.add(key)
        ids.append(key)
        refs.append(ref)
        raw_labels.append(label)
    return (ids, refs, raw_labels), missing, duplicates


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
    entries, skipped, container = _open_images(img_path)
    (ids, refs, raw_labels), missing, duplicates = _match_rows(
        rows, header.index(id_name), header.index(label_name), _image_index(entries))
    if missing and not skip_missing:
        raise CnnlabError(
            f"{len(missing)} ids in {path.name} have no image in {img_path.name} (e.g. {', '.join(missing[:3])}); "
            "check --id-col and --images, or pass --skip-missing to train on the rest"
        )
    skipped += duplicates + [(m, "id in the CSV without an image") for m in missing]
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
    """Label values in numeric order when they are all numbers ("2" before "10"), else alphabetical."""
    try:
        return sorted(values, key=lambda v: float(v))
    except ValueError:
        return sorted(values)


@register_reader("csv", order=60, accepts=lambda req: req.is_file_with(".csv", ".tsv", ".txt"))
def _read_csv_request(req: ReadRequest) -> DataSource:
    """A CSV (or .tsv/.txt) of id,label rows beside a folder or .zip of the images."""
    return read_csv(req.path, req.images, req.id_col, req.label_col, req.skip_missing)

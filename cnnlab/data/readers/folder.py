"""Image-folder trees: the file walk, the hidden/junk/extension rules, and the grouping of relative paths into
class and split folders that zip archives share (cnnlab.data.readers.zip feeds its entries through the same code).

Layouts: `<root>/<class>/.../*.jpg`, or `<root>/<split>/<class>/...` with split folders named train, val, test
or an alias (SPLIT_ALIASES).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import numpy as np

from cnnlab.data.readers.base import Container, DataSource, ReadRequest, Split, register_reader
from cnnlab.errors import CnnlabError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}

Groups = dict[str, dict[str, list[tuple[str, str]]]]  # {split: {class: [(relative path, ref)]}}


class FileContainer(Container):
    """Reads image references that are file-system paths."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, ref: str) -> bytes:
        return Path(ref).read_bytes()

    def describe(self) -> str:
        return str(self.root)

    def fingerprint(self, refs: list[str]) -> str:
        """Absolute path, size and mtime_ns of every ref ("missing" for one that cannot be stat'ed)."""
        lines = []
        for ref in refs:
            try:
                st = os.stat(ref)
                stamp = f"{st.st_size}|{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            lines.append(f"{os.path.abspath(ref)}|{stamp}\n")
        return "".join(lines)


def is_hidden(parts: tuple[str, ...]) -> bool:
    """A dot file or folder anywhere in the path, or macOS's __MACOSX/ resource-fork folder."""
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def is_junk(parts: tuple[str, ...]) -> bool:
    """Hidden (is_hidden) or an OS system file such as Thumbs.db: never data, whatever its folder."""
    return is_hidden(parts) or parts[-1].lower() in JUNK_NAMES


def has_image_extension(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def walk_folder(root: Path) -> list[tuple[str, str]]:
    """All files below root as (relative POSIX path, path joined onto root); follows symlinks, never loops.

    Order: each folder's files by name, then its subfolders by name (depth first).
    """
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


def classify_files(rel_paths: list[tuple[str, str]], where: str) -> tuple[Groups, list[tuple[str, str]]]:
    """Group (relative path, ref) pairs into {split: {class: [(rel, ref)]}} plus skipped files.

    Accepts `<class>/.../file` or `<split>/<class>/.../file` layouts.
    """
    skipped: list[tuple[str, str]] = []
    kept: list[tuple[tuple[str, ...], str, str]] = []
    for rel, ref in rel_paths:
        parts = PurePosixPath(rel).parts
        if is_junk(parts):
            skipped.append((rel, "hidden or system file"))
        elif not has_image_extension(parts[-1]):
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
    groups = _group(kept, skipped)
    return groups, skipped


def _group(kept: list[tuple[tuple[str, ...], str, str]], skipped: list[tuple[str, str]]) -> Groups:
    """Split layout when the top folders are all split names (train among them); else every top folder a class.

    Images directly inside a split folder are appended to `skipped`.
    """
    top = {p[0].lower() for p, _, _ in kept}
    split_layout = "train" in {SPLIT_ALIASES.get(t) for t in top} and all(
        t in SPLIT_ALIASES or t.startswith(".") for t in top
    )
    groups: Groups = {}
    for parts, rel, ref in kept:
        if split_layout:
            if len(parts) < 3:
                skipped.append((rel, "image directly in a split folder, outside any class folder"))
                continue
            split, cls = SPLIT_ALIASES[parts[0].lower()], parts[1]
        else:
            split, cls = "train", parts[0]
        groups.setdefault(split, {}).setdefault(cls, []).append((rel, ref))
    return groups


def splits_from_groups(groups: Groups, where: str) -> tuple[list[str], dict[str, Split]]:
    """Class names (sorted train class folders) and one Split per split, items sorted by relative path."""
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


def read_folder(root: Path) -> DataSource:
    groups, skipped = classify_files(walk_folder(root), str(root))
    class_names, splits = splits_from_groups(groups, str(root))
    return DataSource(root.name, "folder", class_names, splits, FileContainer(root), skipped)


@register_reader("folder", order=40, accepts=lambda req: req.path.is_dir())
def _read_folder_request(req: ReadRequest) -> DataSource:
    """A folder of class folders, or of train/val/test folders of class folders."""
    return read_folder(req.path)

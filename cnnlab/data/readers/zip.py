"""Zip archives read in place, never extracted: the safe listing of entries (unsafe names, encrypted and
oversized entries refused) and ZipContainer, which reads entries in any process. The layout rules are the
image folder's (cnnlab.data.readers.folder), applied to entry names.
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path, PurePosixPath

from cnnlab.data.readers.base import Container, DataSource, ReadRequest, register_reader
from cnnlab.data.readers.folder import SPLIT_ALIASES, classify_files, is_hidden, splits_from_groups
from cnnlab.errors import CnnlabError

MAX_ENTRY_BYTES = 512 << 20  # a zip entry declaring more is skipped: no image for training is that large


class ZipContainer(Container):
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

    def fingerprint(self, refs: list[str]) -> str:
        """The archive's resolved path, size and mtime_ns, then the entry names (one archive, one stat)."""
        st = os.stat(self.path)
        # no separator before the first name: cache keys on disk were computed from exactly this text
        return f"{Path(self.path).resolve()}|{st.st_size}|{st.st_mtime_ns}" + "\n".join(refs)

    def __getstate__(self) -> dict:
        return {"path": self.path, "_zip": None, "_pid": -1}


def _is_unsafe(name: str) -> bool:
    """An entry name that would escape an extraction folder: absolute, with '..', or with a drive letter."""
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":")


def zip_entries(path: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
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
    parts = [PurePosixPath(n).parts for n in names if not is_hidden(PurePosixPath(n).parts)]
    prefix = ""
    one_top = parts and all(len(p) > 2 for p in parts) and len({p[0] for p in parts}) == 1
    if one_top and parts[0][0].lower() not in SPLIT_ALIASES:  # e.g. dataset/train/cat/1.jpg
        prefix = parts[0][0] + "/"
    entries = [(n[len(prefix):] if n.startswith(prefix) else n, n) for n in names]
    return entries, skipped


def read_zip(path: Path) -> DataSource:
    entries, bad = zip_entries(path)
    groups, skipped = classify_files(entries, str(path))
    class_names, splits = splits_from_groups(groups, str(path))
    return DataSource(path.stem, "zip", class_names, splits, ZipContainer(path), bad + skipped)


@register_reader("zip", order=50, accepts=lambda req: req.is_file_with(".zip"))
def _read_zip_request(req: ReadRequest) -> DataSource:
    """A .zip holding an image-folder tree (one shared top folder is fine)."""
    return read_zip(req.path)

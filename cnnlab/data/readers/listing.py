"""The images predict reads: every image of the files, folders and zip archives it is given, found with the
same walk and the same hidden/junk/extension rules training applies (cnnlab.data.readers.folder), without the
class-folder layout rules (a folder of unlabelled images is what predict expects).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path, PurePosixPath

from cnnlab.data.readers.folder import FileContainer, has_image_extension, is_junk, walk_folder
from cnnlab.data.readers.zip import ZipContainer, zip_entries
from cnnlab.errors import CnnlabError

ImageItem = tuple[str, Callable[[], bytes]]  # (id, read the image's bytes)


def _is_image(rel: str) -> bool:
    parts = PurePosixPath(rel).parts
    return has_image_extension(parts[-1]) and not is_junk(parts)


def _folder_images(root: Path) -> list[ImageItem]:
    """Ids are POSIX paths relative to root, sorted by their parts (a/x.png before a-b/x.png)."""
    container = FileContainer(root)
    found = [(rel, ref) for rel, ref in walk_folder(root) if _is_image(rel)]
    found.sort(key=lambda item: PurePosixPath(item[0]).parts)
    return [(rel, partial(container.read, ref)) for rel, ref in found]


def _zip_images(path: Path) -> list[ImageItem]:
    """Ids are entry names with a shared top folder stripped (as training names them), in archive order."""
    container = ZipContainer(path)
    return [(rel, partial(container.read, entry)) for rel, entry in zip_entries(path)[0] if _is_image(rel)]


def list_images(inputs: list[str]) -> list[ImageItem]:
    """(id, read) for each image in `inputs`: image files, folders (recursive) and .zip archives.

    A file named directly is always listed (its id is the file name), whatever its extension: decoding decides.
    Hidden files, __MACOSX/ and system files inside folders and archives are left out, as in training.
    """
    found: list[ImageItem] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise CnnlabError(f"no such file or folder: {item}")
        if path.is_dir():
            found += _folder_images(path)
        elif path.suffix.lower() == ".zip":
            found += _zip_images(path)
        else:
            found.append((path.name, path.read_bytes))
    if not found:
        raise CnnlabError(f"no images found in {', '.join(inputs)}")
    return found

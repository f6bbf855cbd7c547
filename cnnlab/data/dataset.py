"""Decode, validate and convert images into uint8 tensors, and hold each split as tensors in memory.

Every image ends up (C, H, W) uint8 at one size and channel count for the whole dataset: grayscale,
palette, RGBA, CMYK, 16-bit and EXIF-rotated files are converted; unreadable files are skipped and
counted, never fatal. Normalisation and augmentation happen later, on whole batches (cnnlab.data.transforms).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from cnnlab.data.readers import DataSource, Split
from cnnlab.errors import CnnlabError

Image.MAX_IMAGE_PIXELS = 400_000_000  # larger raises DecompressionBombError: skipped as too large (data config)
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error (skipped), not half an image
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and float images to 8-bit L by scaling their range (PIL's convert('L') would clip)."""
    arr = np.asarray(im, dtype=np.float64)
    hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
    if im.mode == "F":
        hi = max(float(arr.max()), 1.0) if arr.max() > 1.0 else 1.0
    return Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def convert_mode(im: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode -> 'L' (channels=1) or 'RGB' (channels=3); transparency is composited on white."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        im = _to_8bit(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("L" if channels == 1 else "RGB")


def resize_image(im: Image.Image, size: int, policy: str) -> Image.Image:
    """'crop': shorter side to `size`, then center crop (aspect kept); 'squash': straight to size x size."""
    if im.size == (size, size):
        return im
    if policy == "squash":
        return im.resize((size, size), Image.BICUBIC)
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.BICUBIC, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def set_max_image_pixels(limit: int) -> None:
    """Images with more pixels than `limit` are refused (skipped) before their pixels are decoded."""
    Image.MAX_IMAGE_PIXELS = int(limit)


def decode_image(data: bytes, channels: int, size: int | None, policy: str = "crop") -> np.ndarray:
    """Bytes of any image file -> (H, W, C) uint8. Raises on unreadable data (callers skip the file)."""
    with Image.open(io.BytesIO(data)) as im:
        limit = Image.MAX_IMAGE_PIXELS
        if limit and im.width * im.height > limit:  # PIL itself only refuses above twice the limit
            raise Image.DecompressionBombError(f"{im.width}x{im.height} pixels is over the limit of {limit:,}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
            im = ImageOps.exif_transpose(im)
        im = convert_mode(im, channels)
        if size is not None:
            im = resize_image(im, size, policy)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def read_header(data: bytes) -> tuple[tuple[int, int], str]:
    """(width, height) and PIL mode from the header only."""
    with Image.open(io.BytesIO(data)) as im:
        return im.size, im.mode


def decoder_fingerprint() -> str:
    """A hash of the decoding code itself, so a change to how images are decoded never reuses stale pixels.

    It hashes the source text of the four functions below: any edit to them, even a reformat, is a new decoder.
    """
    parts = [inspect.getsource(f) for f in (decode_image, convert_mode, resize_image, _to_8bit)]
    return hashlib.sha256("".join(parts).encode()).hexdigest()[:16]


@dataclass
class ImageGeometry:
    """The one size and channel count every image of a dataset is converted to."""

    size: tuple[int, int]  # (H, W)
    channels: int


def infer_geometry(src: DataSource, image_size: int | None, channels: int | None,
                   sample: int = 200) -> ImageGeometry:
    """Pick size and channels: from the arrays, or from the headers of up to `sample` files."""
    train = src.splits["train"]
    if train.array is not None:
        h, w, c = train.array.shape[1:]
        c = 1 if c == 1 else 3
        size = (image_size, image_size) if image_size else (h, w)
        return ImageGeometry(size, channels or c)
    refs = train.refs or []
    step = max(1, len(refs) // sample)
    sizes, modes = [], []
    for ref in refs[::step][:sample]:
        try:
            (w, h), mode = read_header(src.container.read(ref))
        except Exception:  # noqa: BLE001  (unreadable files are reported at decode time)
            continue
        sizes.append((h, w))
        modes.append(mode)
    if not sizes:
        raise CnnlabError(f"none of the sampled images in {src.name} could be read; run `cnnlab inspect` on it")
    if image_size is None:
        if len(set(sizes)) == 1 and sizes[0][0] == sizes[0][1]:
            image_size = sizes[0][0]
        else:
            image_size = int(np.clip(np.median([min(s) for s in sizes]), 16, 224))
    gray = all(m in GRAY_MODES for m in modes)
    return ImageGeometry((image_size, image_size), channels or (1 if gray else 3))


def _convert_array(x: np.ndarray, geom: ImageGeometry, policy: str) -> np.ndarray:
    """(N, H, W, C) uint8 -> the geometry's size and channels."""
    if x.shape[-1] != geom.channels:
        if geom.channels == 1:  # ITU-R 601 luma, as PIL's convert('L')
            x = (x[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) + 0.5)
            x = x.clip(0, 255).astype(np.uint8)[..., None]
        else:
            x = np.repeat(x, 3, axis=-1)
    if x.shape[1:3] != geom.size:
        mode = "L" if geom.channels == 1 else "RGB"
        x = np.stack([decode_array(Image.fromarray(im.squeeze(-1) if mode == "L" else im, mode), geom, policy)
                      for im in x])
    return x


def decode_array(im: Image.Image, geom: ImageGeometry, policy: str) -> np.ndarray:
    arr = np.asarray(resize_image(im, geom.size[0], policy), dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


@dataclass
class DecodedSplit:
    x: torch.Tensor  # (N, C, H, W) uint8
    y: torch.Tensor  # (N,) int64
    ids: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y)


OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")  # e.g. <_io.BytesIO object at 0x7f66eb00c130>


def unreadable_reason(error: BaseException) -> str:
    """Why an image file cannot be used, in words (for skipped.txt and the console), without Python reprs."""
    text = OBJECT_REPR.sub("", str(error)).strip()
    if isinstance(error, Image.DecompressionBombError):
        return "image too large (over the decompression-bomb limit, data.max_image_pixels)"
    if isinstance(error, UnidentifiedImageError):
        return "unreadable image: not an image file (no image format recognised: empty, damaged or another kind)"
    if isinstance(error, OSError) and "truncated" in text:
        return "unreadable image: the file is truncated (it ends before the image data does)"
    if isinstance(error, (OSError, SyntaxError, ValueError)) and text:
        return f"unreadable image: damaged image data ({text[:80]})"
    return f"unreadable image ({type(error).__name__}{': ' + text[:80] if text else ''})"


def decode_or_reason(args) -> np.ndarray | str:
    """(container, ref, geom, policy) -> the decoded (H, W, C) image, or why it is skipped (never raises)."""
    container, ref, geom, policy = args
    try:
        return decode_image(container.read(ref), geom.channels, geom.size[0], policy)
    except Exception as e:  # noqa: BLE001  (any unreadable file is skipped, never fatal)
        return unreadable_reason(e)


def decode_split(src: DataSource, split: Split, geom: ImageGeometry, policy: str = "crop",
                 workers: int = 4) -> DecodedSplit:
    """Decode a whole split into a (N, C, H, W) uint8 tensor; bad files are dropped and listed."""
    if split.array is not None:
        x = _convert_array(split.array, geom, policy)
        return DecodedSplit(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(split.labels),
                            list(split.ids))
    jobs = [(src.container, ref, geom, policy) for ref in split.refs]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes release the GIL
        results = list(pool.map(decode_or_reason, jobs, chunksize=32))
    keep = [i for i, r in enumerate(results) if not isinstance(r, str)]
    skipped = [(split.ids[i], r) for i, r in enumerate(results) if isinstance(r, str)]
    if not keep:
        raise CnnlabError(f"no image of {src.name} could be decoded ({skipped[0][1] if skipped else 'empty'})")
    x = np.stack([results[i] for i in keep])
    return DecodedSplit(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(),
                        torch.from_numpy(split.labels[keep]), [split.ids[i] for i in keep], skipped)

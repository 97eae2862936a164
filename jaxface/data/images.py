"""The one image reader of the command line and the evaluators.

`read_image` turns a path or encoded bytes into ``uint8 [H, W, 3]`` RGB, or raises
`UnreadableImageError` (a ``ValueError``) naming the image and the reason. Every way a
file can fail -- missing, empty, truncated, not an image, a format PIL cannot decode, a
pixel mode with no faithful 8-bit RGB meaning, or a header declaring more than
`MAX_PIXELS` pixels (a decompression bomb: a few dozen bytes that would allocate
gigabytes) -- ends up as that one exception, so callers skip and name the image and go
on with the next one.

Conversion to 8-bit RGB:
  * 16-bit greyscale (PIL modes ``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) is scaled,
    ``round(v * 255 / 65535)``, not clipped (PIL's ``convert("RGB")`` clips it to 255:
    a washed-out picture);
  * 32-bit integer greyscale (``I``, how some PNG / TIFF readers return 16-bit data) is
    scaled the same way when its values lie in 0..65535 and refused otherwise;
  * float images (``F``) are refused: their range has no convention to map from;
  * palette (``P``, ``PA``), bilevel, greyscale, CMYK, YCbCr, LAB, HSV and alpha modes
    go through PIL's conversion (alpha is dropped); 16-bit-per-channel RGB PNGs are
    already reduced to 8 bits by PIL (the high byte, a scaling).
Multi-frame files (GIF, TIFF) give their first frame.

`SkipReport` collects what a folder run skipped, for its summary.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import warnings
from typing import Union

import numpy as np

from jaxface.data import recognition_formats

__all__ = [
    "MAX_PIXELS",
    "UnreadableImageError",
    "read_image",
    "to_rgb8",
    "SkipReport",
    "list_images",
]

# Pixels (width x height) an image may declare. PIL warns above 89 M and refuses above
# 179 M; 100 M is a 10000 x 10000 photo, 300 MB as RGB once decoded.
MAX_PIXELS = 100_000_000

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]


class UnreadableImageError(ValueError):
    """An image that cannot be turned into 8-bit RGB; the message names it."""


def _name_of(src: Source, name: str | None) -> str:
    if name:
        return name
    if isinstance(src, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return os.fspath(src)


def to_rgb8(im, name: str = "<image>") -> np.ndarray:
    """A loaded PIL image -> ``uint8 [H, W, 3]`` (see the module docstring for each mode)."""
    mode = im.mode
    if mode.startswith("I;16"):
        grey = np.asarray(im).astype(np.uint32)
        return np.repeat(_scale16(grey)[..., None], 3, axis=-1)
    if mode == "I":
        grey = np.asarray(im)
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise UnreadableImageError(
                f"{name}: 32-bit integer image with values {int(grey.min())}..{int(grey.max())} "
                "outside 0..65535: no 8-bit meaning"
            )
        return np.repeat(_scale16(grey.astype(np.uint32))[..., None], 3, axis=-1)
    if mode == "F":
        raise UnreadableImageError(f"{name}: floating-point image (mode F): unsupported")
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, np.uint8)


def _scale16(v: np.ndarray) -> np.ndarray:
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def read_image(src: Source, *, name: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB of a path or encoded bytes; `UnreadableImageError` naming
    ``name`` (default: the path) otherwise. The declared size is checked against
    ``max_pixels`` before anything is decoded."""
    from PIL import Image, ImageFile, UnidentifiedImageError  # pylint: disable=import-outside-toplevel

    what = _name_of(src, name)
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # a global someone may have set: refuse to be lenient
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; cannot detect truncation")
    fp = io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray, memoryview)) else src
    try:
        with warnings.catch_warnings():
            # PIL warns on opening an image over its warning size; the size check below
            # decides, and says so in its own error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp)
        with im:
            w, h = im.size
            if w <= 0 or h <= 0:
                raise UnreadableImageError(f"{what}: empty image ({w} x {h})")
            if w * h > max_pixels:
                raise UnreadableImageError(
                    f"{what}: declares {w} x {h} = {w * h} pixels, more than the "
                    f"{max_pixels} allowed (a decompression bomb?); not decoded"
                )
            im.load()
            return to_rgb8(im, what)
    except UnreadableImageError:
        raise
    except (
        OSError,
        UnidentifiedImageError,
        SyntaxError,
        ValueError,
        EOFError,
        MemoryError,
        Image.DecompressionBombError,
    ) as err:
        raise UnreadableImageError(
            f"{what}: unreadable image ({type(err).__name__}: {err})"
        ) from None


@dataclasses.dataclass
class SkipReport:
    """What a run skipped: ``(name, reason)`` in order (the reason names the item too),
    and how many items it saw."""

    what: str = "images"
    total: int = 0
    skipped: list = dataclasses.field(default_factory=list)

    def add(self, name: str, reason: str) -> None:
        self.skipped.append((str(name), str(reason)))

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self, limit: int = 50) -> str:
        """One line, then one indented line per skipped item (at most ``limit``)."""
        head = f"{len(self.skipped)} of {self.total} {self.what} skipped"
        lines = [head] + [f"  skipped {r}" for _, r in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"  ... and {len(self.skipped) - limit} more")
        return "\n".join(lines)


def list_images(image_dir) -> list[str]:
    """Image paths under ``image_dir`` (recursive), relative, ``/``-separated, sorted;
    an image is a file named with one of `recognition_formats.IMAGE_EXTENSIONS`."""
    root = pathlib.Path(image_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in recognition_formats.IMAGE_EXTENSIONS
    )

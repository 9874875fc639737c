"""Reading images from every form a user hands us into one canonical form: an ``(H, W, 3)``
uint8 RGB numpy array. Shared by the models, the segmenter and the evaluation harness."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = str | os.PathLike | Image.Image | np.ndarray | Any  # Any: torch.Tensor (CHW)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


# Float images must lie in [0, 1]; this much rounding slack is accepted (values then clipped).
FLOAT_TOLERANCE = 1e-3
# Images larger than this (longest side) are downscaled for the models; outputs stay at full size.
DEFAULT_MAX_SIDE = 1024


class ImageReadError(ValueError):
    """An image file could not be read (missing, truncated, not an image)."""


class MultiFrameWarning(UserWarning):
    """An animated or multi-page image file: only its first frame is segmented."""


def _pil_to_rgb_array(img: Image.Image) -> np.ndarray:
    img = ImageOps.exif_transpose(img)  # honour camera orientation
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit greyscale: rescale the actual range to 0..255.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite transparency onto white rather than dropping alpha (black would leak in).
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """Read an image file into ``(H, W, 3)`` uint8 RGB, EXIF orientation applied.

    Raises :class:`ImageReadError` naming the file when it is missing, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    return _decode(path, path)


def read_image_bytes(data: bytes, name: str) -> np.ndarray:
    """:func:`read_image_file` for an image file's bytes (read elsewhere, e.g. from object
    storage); ``name`` is what errors call it. The same pixels as reading the file."""
    import io

    return _decode(io.BytesIO(data), name)


def _decode(source, name) -> np.ndarray:
    try:
        with Image.open(source) as img:
            img.load()  # force decoding now, so truncated files fail here
            frames = int(getattr(img, "n_frames", 1) or 1)
            if frames > 1:
                warnings.warn(f"{name} has {frames} frames (animated); only the first frame is used",
                              MultiFrameWarning, stacklevel=2)
            return _pil_to_rgb_array(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # PIL names the file object it was given (an address when reading bytes): say what it means
        reason = ("not an image format dslo can read, or an empty or damaged file"
                  if isinstance(exc, UnidentifiedImageError) else exc)
        raise ImageReadError(f"cannot read image {name}: {reason}") from exc


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """Any supported image form → ``(H, W, 3)`` uint8 RGB numpy array.

    Accepts a path, a PIL image, a numpy array ``(H, W)``, ``(H, W, 1|3|4)`` (uint8, or float in
    [0, 1]) or a torch tensor ``(3, H, W)`` / ``(H, W, 3)`` (uint8 or float in [0, 1]).
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image_file(image)
    if isinstance(image, Image.Image):
        return _pil_to_rgb_array(image)
    if hasattr(image, "detach") and hasattr(image, "cpu"):  # torch.Tensor without importing torch
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):
            t = t.permute(1, 2, 0)
        elif t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] in (1, 3, 4):
            t = t.permute(1, 2, 0)  # ambiguous tiny image: torch convention (CHW) wins
        image = t.numpy()
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise ValueError(
                f"image array must have shape (H, W), (H, W, 3) or (3, H, W); got {tuple(image.shape)}"
            )
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"image is empty: shape {tuple(image.shape)}")
        if arr.dtype == np.uint8:
            out = arr
        elif np.issubdtype(arr.dtype, np.floating):
            if not np.isfinite(arr).all():
                raise ValueError("image contains NaN or infinite values")
            lo, hi = float(arr.min()), float(arr.max())
            if lo < -FLOAT_TOLERANCE or hi > 1.0 + FLOAT_TOLERANCE:
                # A 0..255 float image would otherwise be clipped to white without a word.
                hint = (" (it looks like 0..255: divide by 255 or convert to uint8)" if hi <= 255.0 + FLOAT_TOLERANCE
                        and lo >= -FLOAT_TOLERANCE else "")
                raise ValueError(f"a float image must have values in [0, 1]; got [{lo:g}, {hi:g}]{hint}")
            out = np.clip(np.round(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        elif arr.dtype == np.uint16:
            out = (arr.astype(np.uint32) * 255 // 65535).astype(np.uint8)
        elif arr.dtype == np.bool_:
            out = arr.astype(np.uint8) * 255
        else:
            raise ValueError(f"unsupported image dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")
        if out.shape[2] == 1:
            out = np.repeat(out, 3, axis=2)
        elif out.shape[2] == 4:
            out = out[..., :3]
        return np.ascontiguousarray(out)
    raise TypeError(
        f"unsupported image type {type(image).__name__}: pass a path, PIL image, numpy array or torch tensor"
    )


def resize_max_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale ``(H, W, 3)`` uint8 so that max(H, W) <= max_side (no-op when already smaller)."""
    if not max_side:
        return image
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def list_images(path: str | os.PathLike) -> list[Path]:
    """Image files under a folder, recursively, sorted. Symbolic links are followed alike for
    files and folders; a folder reached twice (a link loop, or two links to one folder) is read
    once."""
    root = Path(path)
    seen: set[str] = set()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []  # a loop or a second way into the same folder
            continue
        seen.add(real)
        dirnames.sort()
        d = Path(dirpath)
        found += [d / f for f in filenames
                  if Path(f).suffix.lower() in IMAGE_SUFFIXES and (d / f).is_file()]
    return sorted(found)

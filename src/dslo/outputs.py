"""Writing segmentation results: palette mask PNGs, overlays with a legend, JSON with COCO RLE,
score tensors. Every file is written atomically (a temporary file in the same folder, then
``os.replace``), so an interrupted run never leaves a half-written output that a resumed run would
mistake for a finished one. A ``scheme://`` URI instead of a path writes through pyarrow's
filesystems (:mod:`dslo.remote`), just as atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dslo import remote

# ---------------------------------------------------------------------------------------------
# Atomic writing


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file; mkstemp uses 0600


def atomic_write(path: str | os.PathLike, write: Callable[[Any], object]) -> Path | str:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it onto ``path``.

    Parent folders are created. On any error the temporary file is removed and ``path`` is
    left as it was. ``path`` may be a URI (``s3://...``, ``file://...``): see :mod:`dslo.remote`;
    returns the local ``Path`` or the URI.
    """
    if remote.is_uri(path):
        return remote.write_atomic(str(path), write)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        mode = path.stat().st_mode & 0o7777 if path.exists() else _FILE_MODE
        if hasattr(os, "fchmod"):  # POSIX; on Windows mkstemp's mode is not restrictive anyway
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path | str:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path | str:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_image(path: str | os.PathLike, image: Image.Image, format: str = "PNG",
                      text: dict[str, str] | None = None) -> Path | str:
    """Save ``image`` atomically; ``text``: PNG text chunks (e.g. what produced the image)."""
    # The format is explicit because the temporary file's suffix says nothing about it.
    kw = {}
    if text and format.upper() == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for k, v in text.items():
            info.add_itxt(k, v)  # iTXt: UTF-8, so non-ASCII class names survive
        kw["pnginfo"] = info
    return atomic_write(path, lambda f: image.save(f, format=format, **kw))


def atomic_torch_save(path: str | os.PathLike, obj: object) -> Path | str:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


# ---------------------------------------------------------------------------------------------
# Colours


def _voc_colormap(n: int) -> np.ndarray:
    """The Pascal VOC colour map (bit-interleaved), ``(n, 3)`` uint8; entry 0 is black."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def class_colors(num_classes: int, background_index: int | None = None) -> np.ndarray:
    """``(num_classes, 3)`` uint8 colours, index = class id.

    The background class (when there is one) is black, as in VOC; the other classes take the VOC
    colours from entry 1 on, so that no object class is painted black.
    """
    if num_classes < 1:
        raise ValueError("need at least one class")
    table = _voc_colormap(num_classes + 1)
    colors = np.empty((num_classes, 3), dtype=np.uint8)
    nxt = 1
    for c in range(num_classes):
        if c == background_index:
            colors[c] = 0
        else:
            colors[c] = table[nxt]
            nxt += 1
    return colors


# ---------------------------------------------------------------------------------------------
# Masks


def _check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty (H, W) array; got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers; got {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}]; got [{labels.min()}, {labels.max()}]"
        )
    return labels


def mask_image(labels: np.ndarray, num_classes: int, background_index: int | None = None) -> Image.Image:
    """``(H, W)`` class ids → a PIL image whose pixel values are the class ids.

    Up to 256 classes: mode ``P`` with the :func:`class_colors` palette (opens coloured in any
    viewer, reads back as ids with ``np.array(Image.open(p))``). Beyond 256 a palette cannot hold
    them: a 16-bit greyscale image (mode ``I;16``), still index = class id.
    """
    labels = _check_labels(labels, num_classes)
    if num_classes <= 256:
        ids = np.ascontiguousarray(labels, dtype=np.uint8)
        img = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
        pal = np.zeros((256, 3), dtype=np.uint8)
        pal[:num_classes] = class_colors(num_classes, background_index)
        img.putpalette(pal.reshape(-1).tolist())
        return img
    if num_classes > 65536:
        raise ValueError(f"at most 65536 classes can be saved in a mask; got {num_classes}")
    return Image.fromarray(labels.astype(np.uint16))


def save_mask(path: str | os.PathLike, labels: np.ndarray, num_classes: int,
              background_index: int | None = None, text: dict[str, str] | None = None) -> Path | str:
    """Save ``(H, W)`` class ids as a PNG (index = class id), atomically (``text``: PNG text chunks)."""
    return atomic_save_image(path, mask_image(labels, num_classes, background_index), text=text)


# ---------------------------------------------------------------------------------------------
# Overlay with legend


# Legend fonts, best first: wide-coverage system fonts (CJK, then general Unicode), then the
# DejaVu Sans shipped with dslo (Latin, Greek, Cyrillic, ...). Pillow's built-in default covers
# ASCII only and draws every other character as a box. $DSLO_FONT names another TrueType file.
_SYSTEM_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
    "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",
    "C:/Windows/Fonts/arialuni.ttf",
    "C:/Windows/Fonts/seguisym.ttf",
)
SHIPPED_FONT = Path(__file__).resolve().parent / "fonts" / "DejaVuSans.ttf"


def font_candidates() -> list[Path]:
    """TrueType files to try for the legend, in order."""
    env = os.environ.get("DSLO_FONT")
    return [Path(p) for p in ((env,) if env else ()) + _SYSTEM_FONTS] + [SHIPPED_FONT]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    for path in font_candidates():
        if path.is_file():
            try:
                return ImageFont.truetype(str(path), size=size)
            except (OSError, ImportError):  # unreadable font file, or Pillow without FreeType
                continue
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: scalable
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def overlay_image(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                  background_index: int | None = None, alpha: float = 0.5,
                  legend: bool = True) -> Image.Image:
    """Blend class colours over the image and add a legend of the classes present.

    image: ``(H, W, 3)`` uint8; labels: ``(H, W)`` ids into ``class_names``. The legend is a
    panel to the right of the image listing each present class with its colour and pixel share,
    largest first. Returns an RGB PIL image of size ``(W + legend width, max(H, legend height))``.
    """
    image = np.asarray(image)
    k = len(class_names)
    labels = _check_labels(labels, k)
    if image.shape[:2] != labels.shape or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image {image.shape} and labels {labels.shape} must share (H, W)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1]; got {alpha}")
    colors = class_colors(k, background_index)
    color_map = colors[labels].astype(np.float32)
    blend = image.astype(np.float32) * (1 - alpha) + color_map * alpha
    # Class boundaries drawn in the class colour at full strength: regions stay readable even
    # where the colour is close to the image's.
    edge = np.zeros(labels.shape, dtype=bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    blend[edge] = color_map[edge]
    out = Image.fromarray(np.clip(np.round(blend), 0, 255).astype(np.uint8))
    if not legend:
        return out

    h, w = labels.shape
    counts = np.bincount(labels.reshape(-1), minlength=k)
    present = [c for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    size = int(np.clip(round(h / 28), 11, 28))
    font = _font(size)
    pad, swatch, line = size // 2 + 2, size, size + size // 2
    entries = [f"{class_names[c]}  {100.0 * counts[c] / labels.size:.1f}%" for c in present]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(int(probe.textlength(t, font=font)) for t in entries)
    panel_w = pad * 3 + swatch + text_w
    panel_h = pad * 2 + line * len(entries)
    canvas = Image.new("RGB", (w + panel_w, max(h, panel_h)), (255, 255, 255))
    canvas.paste(out, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (c, text) in enumerate(zip(present, entries, strict=False)):
        y = pad + i * line
        x = w + pad
        draw.rectangle([x, y, x + swatch, y + swatch], fill=tuple(int(v) for v in colors[c]),
                       outline=(0, 0, 0))
        draw.text((x + swatch + pad, y + swatch // 2), text, fill=(0, 0, 0), font=font, anchor="lm")
    return canvas


# ---------------------------------------------------------------------------------------------
# JSON with COCO RLE


def encode_rle(mask: np.ndarray) -> dict:
    """Binary ``(H, W)`` mask → COCO RLE ``{"size": [H, W], "counts": str}`` (pycocotools)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """COCO RLE (as written by :func:`encode_rle`) → ``(H, W)`` bool mask."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    r = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    with warnings.catch_warnings():
        # pycocotools' Cython decode trips NumPy 2's copy-keyword deprecation; harmless here.
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(r).astype(bool)


def segments(labels: np.ndarray, class_names: Sequence[str]) -> list[dict]:
    """One entry per class present: ``{"class_id", "class_name", "area", "rle"}``, by class id.

    Areas are pixel counts, so they sum to H × W.
    """
    labels = _check_labels(labels, len(class_names))
    counts = np.bincount(labels.reshape(-1), minlength=len(class_names))
    return [
        {"class_id": int(c), "class_name": class_names[int(c)], "area": int(counts[c]),
         "rle": encode_rle(labels == c)}
        for c in np.flatnonzero(counts)
    ]


def result_json(image: str | None, labels: np.ndarray, class_names: Sequence[str],
                model: dict, classes: Sequence[Sequence[str]] | None = None,
                extra: dict | None = None) -> dict:
    """The JSON document for one image (see docs/outputs.md)."""
    h, w = np.asarray(labels).shape
    doc: dict[str, Any] = {
        "image": image,
        "width": int(w),
        "height": int(h),
        "classes": list(class_names),
        "model": model,
        "segments": segments(labels, class_names),
    }
    if classes is not None:
        doc["synonyms"] = [list(s) for s in classes]
    if extra:
        doc.update(extra)
    return doc


def save_json(path: str | os.PathLike, doc: dict) -> Path | str:
    return atomic_write_text(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# One image's output files (shared by every engine of `dslo segment` and by `dslo refine`)

OUTPUT_KINDS = {"mask": ".png", "overlay": ".overlay.png", "json": ".json", "scores": ".scores.pt"}


def output_location(out_dir: str | os.PathLike, stem: str | PurePath, kind: str) -> Path | str:
    """Where output ``kind`` of the image with output stem ``stem`` (a relative path without
    suffix) goes: a ``Path`` under a local folder, or a URI string under a URI."""
    name = PurePath(stem).as_posix() + OUTPUT_KINDS[kind]
    if remote.is_uri(out_dir):
        return remote.join(str(out_dir), name)
    return Path(out_dir) / name


def write_result(result, out_dir: str | os.PathLike, stem: str | PurePath, kinds: Iterable[str],
                 image_name: str | None, request: dict | None = None) -> None:
    """Write the requested outputs of one ``SegmentationResult``, each atomically.

    The one writer of ``dslo segment``'s files, whichever engine runs it, so the same result gives
    the same bytes. ``image_name`` is what the JSON's ``image`` field records; ``request`` (a
    JSON-able record of what produced the result, see :mod:`dslo.provenance`) is stamped into every
    file so that a rerun can tell whether it may reuse them.
    """
    from dslo.provenance import png_text, request_id

    text = png_text(request) if request is not None else None
    for kind in kinds:
        path = output_location(out_dir, stem, kind)
        if kind == "mask":
            save_mask(path, result.labels, len(result.class_names), result.background_index, text=text)
        elif kind == "overlay":
            atomic_save_image(path, result.overlay(), text=text)
        elif kind == "json":
            doc = result.to_dict(image_name=image_name)
            if request is not None:
                doc |= {"request": request, "request_id": request_id(request)}
            save_json(path, doc)
        elif kind == "scores":
            rec = result.scores_record()
            if request is not None:
                rec["request_id"] = request_id(request)
            atomic_torch_save(path, rec)
        else:
            raise ValueError(f"unknown output kind {kind!r}; choose from {', '.join(OUTPUT_KINDS)}")


def outputs_exist(out_dir: str | os.PathLike, stem: str | PurePath, kinds: Iterable[str]) -> bool:
    """Whether every requested output of ``stem`` is there (what makes an image "done")."""
    for kind in kinds:
        loc = output_location(out_dir, stem, kind)
        if not (remote.exists(loc) if isinstance(loc, str) else loc.is_file()):
            return False
    return True

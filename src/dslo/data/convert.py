"""The label conversions `dslo data prepare` runs, each equal, byte for byte, to the converter the
benchmarks' papers used (tests/data_fixtures/prepare holds that converter's own output):

- COCO-Stuff 164k: MMSegmentation's ``tools/dataset_converters/coco_stuff164k.py``;
- COCO-Object: SCLIP's ``datasets/cvt_coco_object.py``;
- PASCAL Context: MMSegmentation's ``tools/dataset_converters/pascal_context.py`` (through the
  Detail API, here without it);
- Cityscapes: cityscapesscripts' ``createTrainIdLabelImgs``, computed from the ``labelIds``
  images the archive ships instead of redrawing the polygons.

Each task function is top level (it runs in worker processes) and writes its file atomically.
Standard library, numpy and Pillow only (pycocotools for PASCAL Context's RLE masks).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dslo.outputs import atomic_write

__all__ = [
    "CITYSCAPES_TRAIN_IDS", "CONTEXT_CLASS_IDS", "COCO_OBJECT_LUT", "COCO_STUFF_LUT",
    "cityscapes_task", "coco_task", "context_mask", "context_task", "save_label_png",
]


def _lut(mapping: dict[int, int]) -> np.ndarray:
    """A 256-entry lookup table: ``mapping`` where given, the value itself elsewhere (both
    references assign only the listed ids and leave any other value as it was)."""
    lut = np.arange(256, dtype=np.uint8)
    for k, v in mapping.items():
        lut[k] = v
    return lut


# COCO-Stuff's stuffthingmaps hold 0..181 (COCO category id - 1; 11 of the 91 thing ids are
# never used) and 255 (unlabeled). MMSegmentation packs the 171 used ids into 0..170 in order
# and keeps 255; the unused ids (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90) and 182..254 are not
# in its table, so they keep their value.
_UNUSED_COCO_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
_COCO_USED = [i for i in range(182) if i not in _UNUSED_COCO_IDS]
_COCO_STUFF = {cls: tr for tr, cls in enumerate(_COCO_USED)} | {255: 255}
COCO_STUFF_LUT = _lut(_COCO_STUFF)

# SCLIP's COCO-Object: the same table shifted by one (things 0..79 -> 1..80), and every id above
# 90 — the 91 stuff classes and 255 (unlabeled) — becomes background 0. Ids outside the table
# keep their value here too (an unused id 11 stays 11, i.e. reads as thing 11).
COCO_OBJECT_LUT = _lut({cls: (0 if cls > 90 else tr + 1) for cls, tr in _COCO_STUFF.items()})

# PASCAL Context 59 (+ background 0): the Detail API's category ids, in the order MMSegmentation
# sorts them; class k+1 of context59/60 is CONTEXT_CLASS_IDS[k].
CONTEXT_CLASS_IDS = np.array(sorted([
    0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162,
    420, 454, 295, 296, 427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458,
    34, 207, 80, 355, 85, 347, 220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115]))

# cityscapesscripts' labels table (helpers/labels.py): label id -> train id for ids 0..33
# (255 = ignored in evaluation). 'license plate' (id -1) is never drawn into labelIds images.
CITYSCAPES_TRAIN_IDS = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1, 9: 255, 10: 255, 11: 2,
    12: 3, 13: 4, 14: 255, 15: 255, 16: 255, 17: 5, 18: 255, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 29: 255, 30: 255, 31: 16, 32: 17, 33: 18,
}


def save_label_png(path: str | Path, labels: np.ndarray) -> None:
    """``(H, W)`` uint8 -> a mode-L PNG, atomically, with the bytes the references write
    (``Image.fromarray(labels).save(path, "PNG")``)."""
    img = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))
    atomic_write(path, lambda f: img.save(f, format="PNG"))


def _read_ids(path: str | Path) -> np.ndarray:
    """A label PNG as the references read it: ``np.array(Image.open(path))`` (palette images give
    their indices); only 8-bit maps are valid inputs."""
    with Image.open(path) as img:
        arr = np.array(img)
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel 8-bit label image, got {arr.dtype} {arr.shape}")
    return arr


def coco_task(raw: str, stuff_out: str, object_out: str) -> None:
    """One stuffthingmap -> ``<id>_labelTrainIds.png`` (COCO-Stuff) and ``<id>_instanceTrainIds.png``
    (COCO-Object)."""
    ids = _read_ids(raw)
    save_label_png(stuff_out, COCO_STUFF_LUT[ids])
    save_label_png(object_out, COCO_OBJECT_LUT[ids])


def cityscapes_task(label_ids: str, out: str) -> None:
    """``*_gtFine_labelIds.png`` -> ``*_gtFine_labelTrainIds.png``. cityscapesscripts draws the
    same polygons with the train id instead of the id, so the pixels are the table applied to the
    id image; a value outside the 34 ids means the input is not a Cityscapes labelIds image."""
    ids = _read_ids(label_ids)
    bad = np.setdiff1d(np.unique(ids), list(CITYSCAPES_TRAIN_IDS))
    if bad.size:
        raise ValueError(f"{label_ids}: values {bad.tolist()} are not Cityscapes label ids (0..33)")
    lut = _lut(CITYSCAPES_TRAIN_IDS)
    save_label_png(out, lut[ids])


def context_mask(height: int, width: int, anns: Sequence[tuple[int, dict]], where: str = "") -> np.ndarray:
    """The Detail API's class mask (``getMask(img)``: each annotation's RLE painted with its
    category id, in file order, later ones on top) mapped to 0..59 as MMSegmentation does.

    ``anns``: ``(category_id, segmentation RLE)`` in the order of the JSON's
    ``annos_segmentation``. Returns ``(height, width)`` uint8.
    """
    import warnings

    from pycocotools import mask as mask_utils

    mask = np.zeros((height, width), dtype=np.int64)
    for category, rle in anns:
        with warnings.catch_warnings():
            # pycocotools' Cython decode trips NumPy 2's copy-keyword deprecation; harmless here.
            warnings.simplefilter("ignore", DeprecationWarning)
            m = mask_utils.decode(rle)
        mask[np.nonzero(m)] = category
    values = np.unique(mask)
    unknown = values[~np.isin(values, CONTEXT_CLASS_IDS)]
    if unknown.size:  # MMSegmentation asserts this too
        raise ValueError(f"{where}: category ids {unknown.tolist()} are not among the 59 PASCAL Context classes")
    return np.searchsorted(CONTEXT_CLASS_IDS, mask).astype(np.uint8)


def context_task(out: str, height: int, width: int, anns: list[tuple[int, dict]]) -> None:
    save_label_png(out, context_mask(height, width, anns, where=out))

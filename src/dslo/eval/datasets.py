"""Dataset readers for the standard on-disk layouts (MMSegmentation conventions), CamVid (SegNet
layout) and a generic folder for users' own data. No mmcv: a reader only lists (image, label)
pairs and knows how to turn a label file into train ids (255 = ignore)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dslo.eval.classes import parse_class_lines, read_class_file, resolve_class_file
from dslo.imageio import IMAGE_SUFFIXES

IGNORE_INDEX = 255


class DatasetLayoutError(FileNotFoundError):
    """The data root does not hold the expected layout; the message names the expected paths."""


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """A single-channel label PNG → ``(H, W)`` uint8 (modes L/P) or int64 (16/32-bit)."""
    with Image.open(path) as img:
        if img.mode in ("L", "P"):
            return np.array(img, dtype=np.uint8)  # P: palette indices are the class ids
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.array(img).astype(np.int64)
        raise ValueError(
            f"label {path} has mode {img.mode}; labels must be single-channel index images "
            "(mode L or P, or 16-bit) holding train ids — convert colour-coded labels to ids first"
        )


@dataclass(frozen=True)
class Sample:
    """One (image, label) pair. ``stem`` names the prediction file (``<stem>.png``)."""

    image_path: Path
    label_path: Path
    stem: str
    reduce_zero_label: bool = False
    extra_ignore: tuple[int, ...] = ()  # raw label values mapped to 255 (CamVid's 11)

    def load_label(self) -> np.ndarray:
        """``(H, W)`` train ids (uint8, or int64 for >255 classes); 255 = ignore."""
        raw = read_label_png(self.label_path)
        label = raw.astype(np.int64)
        if self.reduce_zero_label:
            # MMSeg: 0 -> 255, k -> k-1, and 255 stays 255.
            label = np.where(raw == 0, IGNORE_INDEX, label - 1)
            label[raw == IGNORE_INDEX] = IGNORE_INDEX
        for v in self.extra_ignore:
            label[raw == v] = IGNORE_INDEX
        if raw.dtype == np.uint8:
            return label.astype(np.uint8)
        return label

    def load_image(self) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB exactly as stored (no EXIF rotation: labels index stored pixels)."""
        with Image.open(self.image_path) as img:
            return np.array(img.convert("RGB"), dtype=np.uint8)

    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the stored image, read from the header only."""
        with Image.open(self.image_path) as img:
            w, h = img.size
        return h, w


@dataclass
class SegDataset(Sequence[Sample]):
    """A list of samples plus what an evaluation needs to know about the benchmark.

    ``classes``: synonym lists (label order); ``class_names``: one display name per class;
    ``background``: ``"class"`` (an ordinary class at ``background_index`` whose names are stuff
    words or the word background), ``"ignored"`` (background pixels are ignore, reduce_zero_label)
    or ``"none"`` (no background class).
    """

    name: str
    root: Path
    split: str | None
    samples: list[Sample]
    classes: list[list[str]]
    class_file: str
    background: str = "none"
    background_index: int | None = None
    reduce_zero_label: bool = False
    ignore_index: int = IGNORE_INDEX
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = [
                "background" if i == self.background_index else syn[0]
                for i, syn in enumerate(self.classes)
            ]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):  # type: ignore[override]
        return self.samples[i]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __repr__(self) -> str:
        return (
            f"SegDataset({self.name!r}, split={self.split!r}, {len(self)} images, "
            f"{self.num_classes} classes, root={str(self.root)!r})"
        )


# ----------------------------------------------------------------------------------------------
# Layout helpers


def _find_root(data_root: Path, name: str, candidates: Sequence[str], required: Sequence[str]) -> Path:
    """The first of ``data_root/<candidate>`` that holds every ``required`` relative path."""
    if not data_root.exists():
        raise DatasetLayoutError(f"{name}: data root {data_root} does not exist")
    for cand in candidates:
        base = data_root / cand if cand else data_root
        if all((base / r).exists() for r in required):
            return base
    looked = ", ".join(str(data_root / c) if c else str(data_root) for c in candidates)
    need = ", ".join(required)
    raise DatasetLayoutError(
        f"{name}: expected {need} under the data root; looked in {looked}. "
        f"Point --data-root at the folder that holds them (see docs/evaluation.md for the layouts)."
    )


def _read_split_file(path: Path, name: str) -> list[str]:
    if not path.is_file():
        raise DatasetLayoutError(f"{name}: split list {path} not found (one image id per line)")
    return [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()]


def _pairs_from_ids(
    ids: Sequence[str], img_dir: Path, img_suffix: str, ann_dir: Path, ann_suffix: str, name: str, **kw
) -> list[Sample]:
    samples = [
        Sample(img_dir / f"{i}{img_suffix}", ann_dir / f"{i}{ann_suffix}", i, **kw) for i in ids
    ]
    _check_exist(samples, name)
    return samples


def _pairs_from_scan(
    img_dir: Path, img_suffix: str, ann_dir: Path, ann_suffix: str, name: str, recursive: bool = False, **kw
) -> list[Sample]:
    """Every ``img_dir/**/<stem><img_suffix>`` paired with ``ann_dir/<same subpath>/<stem><ann_suffix>``."""
    pattern = f"**/*{img_suffix}" if recursive else f"*{img_suffix}"
    samples = []
    for img in sorted(img_dir.glob(pattern)):
        rel = img.relative_to(img_dir)
        stem = img.name[: -len(img_suffix)]
        samples.append(Sample(img, ann_dir / rel.parent / f"{stem}{ann_suffix}", stem, **kw))
    if not samples:
        raise DatasetLayoutError(f"{name}: no images matching {img_dir / pattern}")
    _check_exist(samples, name)
    return samples


def _check_exist(samples: list[Sample], name: str) -> None:
    missing = [s for s in samples if not s.image_path.is_file() or not s.label_path.is_file()]
    if missing:
        s = missing[0]
        what = s.image_path if not s.image_path.is_file() else s.label_path
        raise DatasetLayoutError(
            f"{name}: {len(missing)} of {len(samples)} pairs are incomplete, e.g. {what} is missing"
        )
    stems = [s.stem for s in samples]
    if len(set(stems)) != len(stems):
        raise DatasetLayoutError(f"{name}: image names are not unique; predictions are named by stem")


# ----------------------------------------------------------------------------------------------
# Readers: (data_root, split) -> (root, samples)


def _voc(data_root: Path, split: str, name: str, reduce: bool):
    root = _find_root(data_root, name, ["", "VOC2012", "VOCdevkit/VOC2012"], ["JPEGImages", "SegmentationClass"])
    ids = _read_split_file(root / "ImageSets" / "Segmentation" / f"{split}.txt", name)
    return root, _pairs_from_ids(
        ids, root / "JPEGImages", ".jpg", root / "SegmentationClass", ".png", name, reduce_zero_label=reduce
    )


def _context(data_root: Path, split: str, name: str, reduce: bool):
    root = _find_root(
        data_root, name, ["", "VOC2010", "VOCdevkit/VOC2010"], ["JPEGImages", "SegmentationClassContext"]
    )
    ids = _read_split_file(root / "ImageSets" / "SegmentationContext" / f"{split}.txt", name)
    return root, _pairs_from_ids(
        ids, root / "JPEGImages", ".jpg", root / "SegmentationClassContext", ".png", name,
        reduce_zero_label=reduce,
    )


def _coco(data_root: Path, split: str, name: str, ann_suffix: str):
    sub = split if split.endswith("2017") or split.endswith("2014") else f"{split}2017"
    root = _find_root(
        data_root, name, ["", "coco_stuff164k", "coco"], [f"images/{sub}", f"annotations/{sub}"]
    )
    return root, _pairs_from_scan(root / "images" / sub, ".jpg", root / "annotations" / sub, ann_suffix, name)


def _ade(data_root: Path, split: str, name: str):
    sub = {"val": "validation", "train": "training"}.get(split, split)
    root = _find_root(
        data_root, name, ["", "ADEChallengeData2016", "ade/ADEChallengeData2016"],
        [f"images/{sub}", f"annotations/{sub}"],
    )
    return root, _pairs_from_scan(
        root / "images" / sub, ".jpg", root / "annotations" / sub, ".png", name, reduce_zero_label=True
    )


def _cityscapes(data_root: Path, split: str, name: str):
    root = _find_root(data_root, name, ["", "cityscapes"], [f"leftImg8bit/{split}", f"gtFine/{split}"])
    return root, _pairs_from_scan(
        root / "leftImg8bit" / split, "_leftImg8bit.png", root / "gtFine" / split,
        "_gtFine_labelTrainIds.png", name, recursive=True,
    )


def _camvid(data_root: Path, split: str, name: str):
    root = _find_root(data_root, name, ["", "CamVid", "camvid"], [split, f"{split}annot"])
    return root, _pairs_from_scan(root / split, ".png", root / f"{split}annot", ".png", name, extra_ignore=(11,))


def _folder(data_root: Path, split: str | None, name: str):
    root = _find_root(data_root, name, [""], ["images", "labels", "classes.txt"])
    img_dir, ann_dir = root / "images", root / "labels"
    if split:
        img_dir, ann_dir = img_dir / split, ann_dir / split
        if not img_dir.is_dir() or not ann_dir.is_dir():
            raise DatasetLayoutError(f"{name}: split {split!r} needs {img_dir} and {ann_dir}")
    samples = []
    for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        samples.append(Sample(img, ann_dir / f"{img.stem}.png", img.stem))
    if not samples:
        raise DatasetLayoutError(f"{name}: no images in {img_dir}")
    _check_exist(samples, name)
    return root, samples


@dataclass(frozen=True)
class DatasetSpec:
    """How to read one benchmark: reader, default split, class file, background handling."""

    reader: Callable[..., tuple[Path, list[Sample]]]
    default_split: str | None
    class_file: str | None  # shipped name; None: the folder's classes.txt
    num_classes: int | None
    background: str = "none"
    background_index: int | None = None
    reduce_zero_label: bool = False
    title: str = ""


DATASETS: dict[str, DatasetSpec] = {
    "voc21": DatasetSpec(lambda r, s, n: _voc(r, s, n, False), "val", "voc21", 21, "class", 0, False, "VOC21"),
    "voc20": DatasetSpec(lambda r, s, n: _voc(r, s, n, True), "val", "voc20", 20, "ignored", None, True, "VOC20"),
    "context60": DatasetSpec(lambda r, s, n: _context(r, s, n, False), "val", "context60", 60, "class", 0, False, "Context60"),
    "context59": DatasetSpec(lambda r, s, n: _context(r, s, n, True), "val", "context59", 59, "ignored", None, True, "Context59"),
    "coco_object": DatasetSpec(lambda r, s, n: _coco(r, s, n, "_instanceTrainIds.png"), "val", "coco_object", 81, "class", 0, False, "COCO-Object"),
    "coco_stuff": DatasetSpec(lambda r, s, n: _coco(r, s, n, "_labelTrainIds.png"), "val", "coco_stuff", 171, "none", None, False, "COCO-Stuff"),
    "cityscapes": DatasetSpec(_cityscapes, "val", "cityscapes", 19, "none", None, False, "Cityscapes"),
    "ade20k": DatasetSpec(_ade, "val", "ade20k", 150, "none", None, True, "ADE20K"),
    "camvid": DatasetSpec(_camvid, "test", "camvid", 11, "none", None, False, "CamVid"),
    "folder": DatasetSpec(_folder, None, None, None, "none", None, False, "folder"),
}

# Table 1 order of the paper.
BENCHMARKS = ["voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k"]

ALIASES = {
    "voc": "voc21", "pascal_voc": "voc21", "voc2012": "voc21", "context": "context60",
    "pascal_context": "context60", "pascal_context59": "context59", "coco-object": "coco_object",
    "cocoobject": "coco_object", "coco_stuff171": "coco_stuff", "coco-stuff": "coco_stuff",
    "cocostuff": "coco_stuff", "city": "cityscapes", "city_scapes": "cityscapes", "ade": "ade20k",
    "ade150": "ade20k",
}


def canonical_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, ALIASES.get(name.strip().lower(), key))
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return key


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def get_dataset(
    name: str, data_root: str | os.PathLike, split: str | None = None, class_file: str | os.PathLike | None = None
) -> SegDataset:
    """Read a benchmark (or ``folder``) from ``data_root``.

    ``split`` defaults to the benchmark's evaluation split (``val``; CamVid ``test``).
    ``class_file`` overrides the shipped class names (a path or a shipped name); it must have one
    line per class. Raises :class:`DatasetLayoutError` naming the expected paths on a wrong layout.
    """
    key = canonical_name(name)
    spec = DATASETS[key]
    split = split if split is not None else spec.default_split
    root, samples = spec.reader(Path(data_root).expanduser(), split, key)
    if class_file is not None:
        cfile = str(resolve_class_file(class_file))
        classes = read_class_file(cfile)
    elif spec.class_file is None:  # generic folder: its own classes.txt
        cfile = str(root / "classes.txt")
        classes = parse_class_lines((root / "classes.txt").read_text(encoding="utf-8"), cfile)
    else:
        cfile = spec.class_file
        classes = read_class_file(cfile)
    if spec.num_classes is not None and len(classes) != spec.num_classes:
        raise ValueError(
            f"{key}: class file {cfile} has {len(classes)} classes, the benchmark has {spec.num_classes}"
        )
    return SegDataset(
        name=key, root=root, split=split, samples=samples, classes=classes, class_file=cfile,
        background=spec.background, background_index=spec.background_index,
        reduce_zero_label=spec.reduce_zero_label,
    )

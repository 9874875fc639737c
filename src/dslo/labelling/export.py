"""An output folder of ``dslo segment`` in the formats labelling tools import: Label Studio tasks
with predictions, and CVAT's "Segmentation mask 1.1" archive.

The label maps are read back from the ``STEM.json`` files (COCO RLE per class: the exact labels
``dslo segment`` wrote), never recomputed; a folder's images must come from one request (one class
list). Both files are written atomically, so an interrupted export leaves the old file or none.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from dslo.labelling.label_config import BrushTarget, default_label_config, parse_label_config
from dslo.labelling.label_studio import class_labels, model_version, prediction, region_scores
from dslo.outputs import OUTPUT_KINDS, atomic_write, atomic_write_text, class_colors, decode_rle

__all__ = ["SegmentedImage", "read_output_folder", "export_label_studio", "export_cvat", "TASKS_FILE",
           "CONFIG_FILE", "image_url"]

TASKS_FILE = "dslo-label-studio-tasks.json"  # what `dslo segment --format label-studio` writes
CONFIG_FILE = "dslo-label-studio-config.xml"


@dataclass
class SegmentedImage:
    """One image of an output folder: its output ``stem``, the ``image`` name its JSON records,
    the label map, the class names and synonym lists, whether class 0 is a background policy's,
    the request record, and the head's scores file when it was saved."""

    stem: str
    image: str
    labels: np.ndarray
    class_names: list[str]
    synonyms: list[list[str]]
    has_background: bool
    request: dict | None
    scores_file: Path | None

    @property
    def image_path(self) -> str:
        """The image's path relative to its input folder: the stem with the image's suffix (a
        stem that kept its suffix, to stay apart from a namesake, already has it)."""
        suffix = PurePosixPath(str(self.image)).suffix
        return self.stem if self.stem.endswith(suffix) else self.stem + suffix


def _labels(doc: dict) -> np.ndarray:
    labels = np.zeros((int(doc["height"]), int(doc["width"])), dtype=np.int64)
    for seg in doc["segments"]:
        labels[decode_rle(seg["rle"])] = int(seg["class_id"])
    return labels


def read_output_folder(out: str | os.PathLike) -> Iterator[SegmentedImage]:
    """Every image ``dslo segment`` wrote under ``out`` (its ``STEM.json``), by stem; a folder
    mixing requests (other classes) is refused with the first image that differs."""
    root = Path(out)
    if not root.is_dir():
        raise ValueError(f"{out}: no such folder; give the --output folder of a dslo segment run")
    first: tuple[str, list[str]] | None = None
    found = False
    for path in sorted(root.rglob("*" + OUTPUT_KINDS["json"])):
        if path.name in (TASKS_FILE,) or path.name.startswith("."):
            continue
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not (isinstance(doc, dict) and {"segments", "classes", "width", "height"} <= doc.keys()):
            continue  # not one of dslo's result documents
        stem = path.relative_to(root).as_posix()[: -len(OUTPUT_KINDS["json"])]
        if first is None:
            first = (stem, doc["classes"])
        elif doc["classes"] != first[1]:
            raise ValueError(f"{stem}: its classes {doc['classes']} differ from those of {first[0]} "
                             f"({first[1]}); export the outputs of one request at a time")
        found = True
        background = (doc.get("model") or {}).get("background") or {}
        scores = root / (stem + OUTPUT_KINDS["scores"])
        yield SegmentedImage(stem, str(doc.get("image") or stem), _labels(doc), list(doc["classes"]),
                             [list(s) for s in doc.get("synonyms") or [[c] for c in doc["classes"]]],
                             background.get("policy", "none") != "none", doc.get("request"),
                             scores if scores.is_file() else None)
    if not found:
        raise ValueError(f"{out}: no dslo segment results here (STEM.json files); run dslo segment with "
                         "--save including json first")


def image_url(item: SegmentedImage, url_prefix: str | None) -> str:
    """Where Label Studio finds the image: ``url_prefix`` + its path relative to the input folder
    (None: the name the JSON records)."""
    if url_prefix is None:
        return item.image
    return url_prefix + item.image_path


def _scores(item: SegmentedImage) -> dict[int, float] | None:
    if item.scores_file is None:
        return None
    import torch

    rec = torch.load(item.scores_file, map_location="cpu", weights_only=True)
    return region_scores(item.labels, rec["scores"], rec["class_ids"].tolist())


def export_label_studio(out: str | os.PathLike, dest: str | os.PathLike, url_prefix: str | None = None,
                        label_config: str | None = None, control: str | None = None) -> tuple[int, str]:
    """Write ``dest``: a JSON list of Label Studio tasks, ``{"data": {KEY: url}, "predictions":
    [prediction]}``, one per image of ``out``. ``label_config``: the project's config (its
    BrushLabels control names the regions); None: a config with one label per class (returned,
    to create the project with). Returns ``(tasks written, the config)``."""
    items = iter(read_output_folder(out))
    head = next(items)
    if label_config is None:
        labels = [", ".join(s) for s, n in zip(head.synonyms, head.class_names, strict=True)]
        label_config = default_label_config(labels[1:] if head.has_background else labels)
    target: BrushTarget = parse_label_config(label_config, control)
    version = model_version(head.request) if head.request else "dslo"
    count = 0

    def write(f) -> None:
        nonlocal count
        f.write(b"[")
        for item in _chain(head, items):
            label_of = class_labels(item.class_names, item.synonyms, target, item.has_background)
            pred = prediction(item.labels, label_of, target, version, _scores(item))
            task = {"data": {target.value: image_url(item, url_prefix)}, "predictions": [pred]}
            f.write((b",\n" if count else b"\n") + json.dumps(task, ensure_ascii=False).encode("utf-8"))
            count += 1
        f.write(b"\n]\n")

    atomic_write(dest, write)
    return count, label_config


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def export_cvat(out: str | os.PathLike, dest: str | os.PathLike) -> int:
    """Write ``dest``: CVAT's "Segmentation mask 1.1" archive of the images of ``out``:
    ``labelmap.txt`` (``background`` at 0,0,0, then each class with a VOC colour, none black),
    ``ImageSets/Segmentation/default.txt`` (the images' names) and ``SegmentationClass/NAME.png``
    (RGB, each pixel its class's colour). Returns the number of images."""
    from PIL import Image

    items = list(read_output_folder(out))
    head = items[0]
    colors = class_colors(len(head.class_names), 0 if head.has_background else None)
    if head.has_background:
        names, palette = head.class_names, colors
    else:  # CVAT's background label first, at 0,0,0; the classes keep their colours
        names = ["background"] + head.class_names
        palette = np.concatenate([np.zeros((1, 3), np.uint8), colors])
    lines = ["# label:color_rgb:parts:actions"] + [f"{n}:{','.join(str(int(v)) for v in c)}::"
                                                   for n, c in zip(names, palette, strict=True)]
    offset = 0 if head.has_background else 1

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("labelmap.txt", "\n".join(lines) + "\n")
            z.writestr("ImageSets/Segmentation/default.txt", "".join(f"{it.stem}\n" for it in items))
            for it in items:
                buf = io.BytesIO()
                Image.fromarray(palette[it.labels + offset]).save(buf, format="PNG")
                z.writestr(f"SegmentationClass/{it.stem}.png", buf.getvalue())

    atomic_write(dest, write)
    return len(items)


def write_label_config(path: str | os.PathLike, config: str) -> None:
    atomic_write_text(path, config)

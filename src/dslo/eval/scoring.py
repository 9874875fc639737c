"""Saved predictions ↔ metrics: the prediction file format (a label PNG per image, named by the
image stem, pixel value = the dataset's train id) and scoring a folder of them."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dslo.eval.datasets import Sample, SegDataset
from dslo.eval.metrics import IoUAccumulator
from dslo.outputs import atomic_save_image


def prediction_path(pred_dir: str | os.PathLike, stem: str) -> Path:
    return Path(pred_dir) / f"{stem}.png"


def write_prediction(path: str | os.PathLike, labels: np.ndarray) -> Path | str:
    """Write ``(H, W)`` integer train ids as a PNG (8-bit when ids < 256, else 16-bit), atomically:
    a half-written file never carries the final name, so an interrupted run resumes cleanly."""
    path = Path(path)
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W); got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise ValueError("prediction ids must be in 0..65535")
    img = (
        Image.fromarray(labels.astype(np.uint8))
        if labels.size == 0 or labels.max() < 256
        else Image.fromarray(labels.astype(np.uint16))
    )
    return atomic_save_image(path, img)


def read_prediction(path: str | os.PathLike) -> np.ndarray:
    """A prediction PNG → ``(H, W)`` int64 train ids. A truncated or non-image file raises a
    :class:`ValueError` naming it."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
                raise ValueError(
                    f"prediction {path} has mode {img.mode}; save single-channel label PNGs whose "
                    "pixel values are the dataset's train ids (not colour-coded masks)"
                )
            return np.array(img).astype(np.int64)
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read prediction {path} ({exc}); it is truncated or not a PNG: "
                         "write it again (or delete it so that dslo eval predicts it again)") from exc


def score_sample(acc: IoUAccumulator, sample: Sample, pred: np.ndarray) -> None:
    label = sample.load_label()
    if pred.shape != label.shape:
        raise ValueError(
            f"prediction for {sample.stem} is {pred.shape[1]}x{pred.shape[0]} but its label is "
            f"{label.shape[1]}x{label.shape[0]}; predictions must be at the original image size"
        )
    acc.update(pred, label)


def new_accumulator(dataset: SegDataset) -> IoUAccumulator:
    return IoUAccumulator(dataset.num_classes, dataset.ignore_index, dataset.class_names)


def score_predictions(
    dataset: SegDataset,
    pred_dir: str | os.PathLike,
    samples: Sequence[Sample] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``pred_dir/<stem>.png`` for every sample (default: the whole dataset).

    Raises FileNotFoundError naming the missing predictions (scoring a subset silently would
    report a number for a different benchmark).
    """
    samples = list(dataset.samples if samples is None else samples)
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder {pred_dir} does not exist")
    missing = [s.stem for s in samples if not prediction_path(pred_dir, s.stem).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(samples)} predictions missing in {pred_dir}, e.g. "
            f"{prediction_path(pred_dir, missing[0]).name}; name each mask <image stem>.png"
        )
    acc = new_accumulator(dataset)
    for s in _maybe_progress(samples, progress, "scoring"):
        score_sample(acc, s, read_prediction(prediction_path(pred_dir, s.stem)))
    return acc.compute()


def _maybe_progress(items: Iterable, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="img", dynamic_ncols=True)


def json_ready(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics with NaN → None (JSON has no NaN); numbers otherwise exact."""

    def fix(v):
        if isinstance(v, float):
            return None if math.isnan(v) else v
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return fix(metrics)

"""Segmentation metrics exactly as MMSegmentation's ``IoUMetric`` computes them.

Intersections and unions are accumulated over the whole dataset (not averaged per image):
per-class IoU = ΣI / ΣU, mIoU = mean over the classes whose union is non-zero (NaN-mean), aAcc =
Σ correct / Σ labelled pixels. Everything is reported in percent.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

ArrayLike = Any  # numpy.ndarray | torch.Tensor (integer)


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class ids, got dtype {t.dtype}")
    return t.to(torch.int64)


def confusion_matrix(
    pred: ArrayLike, target: ArrayLike, num_classes: int, ignore_index: int | None = 255
) -> torch.Tensor:
    """Pixel confusion matrix of one image (or batch).

    pred, target: integer arrays of the same shape (any rank), numpy or torch (computed on the
    tensor's device). Pixels whose target equals ``ignore_index`` are skipped. Target values must be
    in ``[0, num_classes)``; a prediction outside that range counts as wrong for its pixel.

    Returns ``(num_classes, num_classes + 1)`` int64 on the CPU: row = target class, column =
    predicted class, last column = predictions outside ``[0, num_classes)``.
    """
    p, t = _as_tensor(pred, "pred"), _as_tensor(target, "target")
    if p.shape != t.shape:
        raise ValueError(
            f"prediction shape {tuple(p.shape)} differs from label shape {tuple(t.shape)}; "
            "predictions must be at the label's (original image) size"
        )
    p = p.to(t.device)
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        bad = t[(t < 0) | (t >= num_classes)]
        raise ValueError(
            f"label contains value {int(bad[0])} outside 0..{num_classes - 1} that is not the "
            f"ignore index {ignore_index}; check the dataset's label mapping (reduce_zero_label, "
            "ignore value) or num_classes"
        )
    p = torch.where((p < 0) | (p >= num_classes), torch.full_like(p, num_classes), p)
    counts = torch.bincount(t * (num_classes + 1) + p, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1).cpu()


class IoUAccumulator:
    """Accumulates intersections and unions over a dataset, MMSegmentation style.

    >>> acc = IoUAccumulator(3, class_names=["a", "b", "c"])
    >>> acc.update(pred, target)           # (H, W) integer arrays, any number of times
    >>> acc.compute()["miou"]              # percent
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class names for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else None
        self.confusion = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64)
        self.images = 0

    def update(self, pred: ArrayLike, target: ArrayLike) -> torch.Tensor:
        """Add one image's pixels; returns that image's confusion matrix."""
        cm = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        self.confusion += cm
        self.images += 1
        return cm

    def merge(self, other: "IoUAccumulator") -> "IoUAccumulator":
        """Add another accumulator's counts (e.g. from another data-parallel rank)."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError("cannot merge accumulators with different classes or ignore index")
        self.confusion += other.confusion
        self.images += other.images
        return self

    def areas(self) -> dict[str, np.ndarray]:
        """Per-class ``intersect``, ``union``, ``pred_area``, ``label_area`` (int64, ``(K,)``)."""
        cm = self.confusion.numpy()
        k = self.num_classes
        intersect = np.diagonal(cm[:, :k]).copy()
        label_area = cm.sum(axis=1)
        pred_area = cm[:, :k].sum(axis=0)
        return {
            "intersect": intersect,
            "union": label_area + pred_area - intersect,
            "pred_area": pred_area,
            "label_area": label_area,
        }

    def compute(self) -> dict[str, Any]:
        """``miou``, ``aacc``, ``macc`` (percent), ``iou``/``acc`` (per class, NaN where the class
        never appears in prediction or label / label), ``per_class`` (name → IoU), ``images``."""
        a = self.areas()
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = a["intersect"] / a["union"].astype(np.float64) * 100.0
            acc = a["intersect"] / a["label_area"].astype(np.float64) * 100.0
        total = a["label_area"].sum()
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        return {
            "miou": _nanmean(iou),
            "aacc": float(a["intersect"].sum() / total * 100.0) if total else math.nan,
            "macc": _nanmean(acc),
            "iou": iou.tolist(),
            "acc": acc.tolist(),
            "per_class": {n: float(v) for n, v in zip(names, iou)},
            "images": self.images,
        }


def _nanmean(x: np.ndarray) -> float:
    finite = x[~np.isnan(x)]
    return float(finite.mean()) if finite.size else math.nan

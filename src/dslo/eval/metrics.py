"""Segmentation metrics exactly as MMSegmentation's ``IoUMetric`` computes them.

Intersections and unions are accumulated over the whole dataset (not averaged per image):
per-class IoU = ΣI / ΣU, mIoU = mean over the classes whose union is non-zero (NaN-mean), aAcc =
Σ correct / Σ labelled pixels. Everything is reported in percent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = Any  # numpy.ndarray | torch.Tensor (integer)


def _check_integer(dtype_is_int: bool, dtype: object, name: str) -> None:
    if not dtype_is_int:
        raise TypeError(f"{name} must hold integer class ids, got dtype {dtype}")


def _as_array(x: ArrayLike, name: str) -> np.ndarray | torch.Tensor:
    """numpy stays numpy, a CPU tensor becomes a numpy view (numpy's bincount is far faster on
    the CPU than torch's with a busy thread pool), an accelerator tensor stays on its device."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        _check_integer(not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool), t.dtype, name)
        return t.numpy() if t.device.type == "cpu" else t
    if isinstance(x, np.ndarray):
        _check_integer(np.issubdtype(x.dtype, np.integer), x.dtype, name)
        return x
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def _bad_label(value: int, num_classes: int, ignore_index: int | None) -> ValueError:
    return ValueError(
        f"label contains value {value} outside 0..{num_classes - 1} that is not the "
        f"ignore index {ignore_index}; check the dataset's label mapping (reduce_zero_label, "
        "ignore value) or num_classes"
    )


def confusion_matrix(
    pred: ArrayLike, target: ArrayLike, num_classes: int, ignore_index: int | None = 255
) -> torch.Tensor:
    """Pixel confusion matrix of one image (or batch).

    pred, target: integer arrays of the same shape (any rank), numpy or torch (an accelerator
    tensor is counted on its device). Pixels whose target equals ``ignore_index`` are skipped.
    Target values must be in ``[0, num_classes)``; a prediction outside that range counts as
    wrong for its pixel.

    Returns ``(num_classes, num_classes + 1)`` int64 on the CPU: row = target class, column =
    predicted class, last column = predictions outside ``[0, num_classes)``.
    """
    p, t = _as_array(pred, "pred"), _as_array(target, "target")
    if tuple(p.shape) != tuple(t.shape):
        raise ValueError(
            f"prediction shape {tuple(p.shape)} differs from label shape {tuple(t.shape)}; "
            "predictions must be at the label's (original image) size"
        )
    k = num_classes
    if isinstance(p, torch.Tensor) or isinstance(t, torch.Tensor):
        dev = p.device if isinstance(p, torch.Tensor) else t.device
        return _confusion_torch(torch.as_tensor(p, device=dev), torch.as_tensor(t, device=dev), k, ignore_index)
    p, t = p.reshape(-1), t.reshape(-1)
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    t = t.astype(np.int64, copy=False)
    p = p.astype(np.int64, copy=False)
    if t.size and (t.min() < 0 or t.max() >= k):
        raise _bad_label(int(t[(t < 0) | (t >= k)][0]), k, ignore_index)
    p = np.where((p < 0) | (p >= k), k, p)
    counts = np.bincount(t * (k + 1) + p, minlength=k * (k + 1))
    return torch.from_numpy(counts.reshape(k, k + 1))


def _confusion_torch(p: torch.Tensor, t: torch.Tensor, k: int, ignore_index: int | None) -> torch.Tensor:
    """The same count on the tensors' device (used for accelerator tensors)."""
    p, t = p.reshape(-1).long(), t.reshape(-1).long()
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
        raise _bad_label(int(t[(t < 0) | (t >= k)][0]), k, ignore_index)
    p = torch.where((p < 0) | (p >= k), torch.full_like(p, k), p)
    counts = torch.bincount(t * (k + 1) + p, minlength=k * (k + 1))
    return counts.reshape(k, k + 1).cpu()


class IoUAccumulator:
    """Accumulates intersections and unions over a dataset, MMSegmentation style.

    >>> import numpy as np
    >>> acc = IoUAccumulator(3, class_names=["a", "b", "c"])
    >>> _ = acc.update(np.array([[0, 1], [2, 2]]), np.array([[0, 1], [2, 1]]))  # pred, target; repeatable
    >>> round(float(acc.compute()["miou"]), 2)  # percent: IoU 100, 50, 50
    66.67
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

    def merge(self, other: IoUAccumulator) -> IoUAccumulator:
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
            "per_class": {n: float(v) for n, v in zip(names, iou, strict=False)},
            "images": self.images,
        }


def _nanmean(x: np.ndarray) -> float:
    finite = x[~np.isnan(x)]
    return float(finite.mean()) if finite.size else math.nan

"""What a segmenter returns: the label map with its classes, and the ways to save it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dslo import outputs

__all__ = ["SegmentationResult"]


@dataclass
class SegmentationResult:
    """What :meth:`Segmenter.predict` returns.

    labels: ``(H, W)`` int64 numpy array at the original image size, indices into ``class_names``.
    scores: ``(K', h, w)`` float32 tensor, the head's per-class scores at the size the models saw
        (``h, w`` ≤ ``max_side``) for the classes that survived early rejection;
        ``score_class_ids[i]`` is the class id (index into ``class_names``) of ``scores[i]``.
    class_names: display names; with a background policy, ``class_names[0] == "background"``.
    classes: the synonym lists behind each class (the background's stuff words included).
    background: the policy record (``BackgroundPolicy.describe()``).
    model: the settings that produced the result (preset, models, mode, head settings...).
    image: the ``(H, W, 3)`` uint8 image (for :meth:`overlay`).
    image_name: the path the image came from, when it came from a file.
    logits: ``(K_head, h_c, w_c)`` the class evidence the head was given (CLIP's patch logits, the
        stuff background's class first when there is one); ``grid``: the ``(h, w)`` patch grid the
        head worked on. ``seeds``: ``(K'', h·w)`` the class distributions the head started from
        (zero where NMS suppressed a class), ``seed_class_ids`` their class ids; None for a mode
        without the head.
    """

    labels: np.ndarray
    scores: torch.Tensor
    score_class_ids: np.ndarray
    class_names: list[str]
    classes: list[list[str]]
    background: dict
    model: dict
    image: np.ndarray = field(repr=False)
    image_name: str | None = None
    logits: torch.Tensor | None = field(default=None, repr=False)
    grid: tuple[int, int] | None = None
    seeds: torch.Tensor | None = field(default=None, repr=False)
    seed_class_ids: np.ndarray | None = None

    @property
    def background_index(self) -> int | None:
        return 0 if self.background.get("policy", "none") != "none" else None

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the original image."""
        return tuple(self.labels.shape)  # type: ignore[return-value]

    def areas(self) -> dict[str, int]:
        """Class name → number of pixels, for the classes present."""
        counts = np.bincount(self.labels.reshape(-1), minlength=len(self.class_names))
        return {self.class_names[c]: int(counts[c]) for c in np.flatnonzero(counts)}

    def save_mask(self, path: str | os.PathLike) -> Path | str:
        """P-mode palette PNG, pixel value = class id (written atomically)."""
        return outputs.save_mask(path, self.labels, len(self.class_names), self.background_index)

    def overlay(self, alpha: float = 0.5, legend: bool = True):
        """A PIL RGB image: class colours over the image, plus a legend of the classes present."""
        return outputs.overlay_image(self.image, self.labels, self.class_names,
                                     self.background_index, alpha=alpha, legend=legend)

    def save_overlay(self, path: str | os.PathLike, alpha: float = 0.5) -> Path | str:
        return outputs.atomic_save_image(path, self.overlay(alpha=alpha))

    def to_dict(self, image_name: str | None = None) -> dict:
        """The JSON document as a dict (see docs/outputs.md)."""
        name = image_name if image_name is not None else self.image_name
        return outputs.result_json(name, self.labels, self.class_names, self.model, self.classes)

    def to_json(self, image_name: str | None = None, indent: int | None = 1) -> str:
        """``{"image", "width", "height", "classes", "model", "segments": [...]}`` as text;
        one segment per class present with its pixel ``area`` and COCO ``rle``."""
        return json.dumps(self.to_dict(image_name), indent=indent, ensure_ascii=False)

    def save_json(self, path: str | os.PathLike, image_name: str | None = None) -> Path | str:
        return outputs.save_json(path, self.to_dict(image_name))

    def scores_record(self) -> dict:
        """What ``STEM.scores.pt`` holds: the score tensor and how to read it."""
        return {
            "scores": self.scores.detach().to("cpu", torch.float32).contiguous(),
            "class_ids": torch.as_tensor(self.score_class_ids, dtype=torch.int64),
            "class_names": list(self.class_names),
            "image_size": list(self.size),
            "mode": self.model.get("mode"),
        }

    def save_scores(self, path: str | os.PathLike) -> Path | str:
        return outputs.atomic_torch_save(path, self.scores_record())

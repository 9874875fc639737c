"""One image at a time through a request, for the in-process adapters (CVAT's auto-annotation
function, FiftyOne's model): the request's segmenter, loaded once, and the engines' per-image
step (:func:`dslo.engines.step.segment_chunk`), so a label map is the one ``dslo segment`` writes
for the same image, classes and settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dslo.engines.step import segment_chunk
from dslo.imageio import ImageReadError
from dslo.request import SegmentRequest

__all__ = ["ImageFailed", "RequestSegmenter"]


class ImageFailed(ImageReadError):
    """An image the per-image step failed, with the step's one-line reason."""


class RequestSegmenter:
    """``request``'s segmenter (built on first use, or ``segmenter``) applied to one image."""

    def __init__(self, request: SegmentRequest, segmenter: Any = None) -> None:
        self.request = request
        self._segmenter = segmenter

    @property
    def segmenter(self) -> Any:
        if self._segmenter is None:
            self._segmenter = self.request.create_segmenter()
        return self._segmenter

    def __call__(self, load: Callable[[], np.ndarray]) -> Any:
        """The ``SegmentationResult`` of the image ``load()`` returns; :class:`ImageFailed` with
        the engines' reason when the step fails it."""
        got: list[Any] = []
        (outcome,) = segment_chunk(self.segmenter, [load], self.request.class_lists, lambda _i, r: got.append(r))
        if not outcome.ok:
            raise ImageFailed(outcome.error)
        return got[0]

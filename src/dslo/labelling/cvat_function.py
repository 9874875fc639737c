"""dslo as a CVAT auto-annotation function (``pip install "dslo[cvat]"``): one ``mask`` shape per
class present, the label map ``dslo segment`` writes for the same image and settings.

    cvat-cli --server-host http://localhost:8080 task auto-annotate TASK_ID \\
        --function-module dslo.labelling.cvat_function \\
        -p classes=str:"car,road,person" -p model=str:offline -p logits=str:/models/clip

Parameters (``-p NAME=TYPE:VALUE``): ``classes`` (required; commas separate classes, ``|``
separates a class's synonyms: ``road|street``), ``model`` (a preset), ``logits``, ``attention``,
``mode``, ``background`` (``none``, ``stuff`` or a threshold), ``max_side``, ``device``,
``settings`` (``key=value;key=value`` head settings, each read as ``dslo segment --set`` reads
it). CVAT matches the function's labels to the
task's by name: name the task's labels as the classes (their first synonym). The background of a
background policy is not a shape. With ``--conv-mask-to-poly`` each mask is traced into polygons
(scikit-image's contours).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dslo.labelling.single import RequestSegmenter
from dslo.request import ModelChoice, SegmentRequest
from dslo.setting_text import read_setting

__all__ = ["DsloFunction", "create"]


class DsloFunction:
    """A cvat-sdk ``DetectionFunction``: ``spec`` (one mask label per class) and ``detect``."""

    def __init__(self, request: SegmentRequest, segmenter: Any = None) -> None:
        import cvat_sdk.auto_annotation as cvataa

        self.request = request
        self._run = RequestSegmenter(request, segmenter)
        names = [c[0] for c in request.class_lists]
        self.spec = cvataa.DetectionFunctionSpec(
            labels=[cvataa.label_spec(name, i, type="mask") for i, name in enumerate(names)])

    def detect(self, context, image) -> list:
        """The shapes of one frame: ``mask`` shapes (or polygons when CVAT asks for them)."""
        import cvat_sdk.auto_annotation as cvataa
        from cvat_sdk.masks import encode_mask

        from dslo.imageio import to_rgb_array

        result = self._run(lambda: to_rgb_array(image))
        shift = 1 if result.background_index is not None else 0
        shapes = []
        for c in np.unique(result.labels):
            if int(c) < shift:
                continue
            mask = result.labels == c
            if getattr(context, "conv_mask_to_poly", False):
                shapes += [cvataa.polygon(int(c) - shift, pts) for pts in _polygons(mask)]
            else:
                shapes.append(cvataa.mask(int(c) - shift, encode_mask(mask)))
        return shapes


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a mask as flat ``[x1, y1, x2, y2, ...]`` lists (at least 3 points)."""
    try:
        from skimage import measure
    except ImportError as exc:
        raise RuntimeError("--conv-mask-to-poly needs scikit-image (pip install scikit-image)") from exc
    padded = np.pad(mask, 1).astype(np.float32)
    out = []
    for contour in measure.find_contours(padded, 0.5):
        if len(contour) >= 3:
            out.append((contour[:, ::-1] - 1).clip(min=0).ravel().tolist())
    return out


def create(classes: str, model: str = "default", logits: str | None = None, attention: str | None = None,
           mode: str | None = None, background: str = "none", max_side: int = 1024, device: str = "auto",
           settings: str = "") -> DsloFunction:
    """The function for ``cvat-cli ... --function-module dslo.labelling.cvat_function -p ...``."""
    groups = [[s.strip() for s in c.split("|") if s.strip()] for c in classes.split(",") if c.strip()]
    head = dict(read_setting(item) for item in filter(None, (s.strip() for s in settings.split(";"))))
    choice = ModelChoice(preset=model, logits=logits, attention=attention, mode=mode, settings=head,
                         device=device, max_side=max_side or None)
    return DsloFunction(SegmentRequest.create(groups, background, choice))


"""Label Studio's JSON for dslo's label maps: ``brushlabels`` regions, predictions, tasks.

One region per class present (the background of a background policy is not a region: it is what
the annotator leaves unpainted), each with the 0/255 brush RLE of its mask
(:mod:`dslo.labelling.brush`), ``from_name``/``to_name`` of the project's ``BrushLabels`` control,
``original_width``/``original_height`` of the image the labels were made for, and a score.

The score of a region is the mean, over its pixels, of the softmax of the head's class scores
(what the label map's arg-max reads; ``STEM.scores.pt`` holds them); the prediction's score is the
area-weighted mean of its regions' scores. Without the head's scores (an output folder saved
without ``scores``) regions and predictions carry no score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dslo.labelling.brush import brush_rle
from dslo.labelling.label_config import BrushTarget

__all__ = ["model_version", "prediction", "region_scores", "class_labels"]


def model_version(record: Mapping[str, Any]) -> str:
    """``dslo-VERSION-PRESET-DIGEST``: the dslo version, the preset and a digest of the request's
    record (classes, models, every setting), so predictions of different settings never share a
    version."""
    from dslo import __version__
    from dslo.provenance import request_id

    return f"dslo-{__version__}-{record.get('preset', 'custom')}-{request_id(record)[:10]}"


def class_labels(class_names: Sequence[str], synonyms: Sequence[Sequence[str]], target: BrushTarget,
                 has_background: bool) -> list[str | None]:
    """The Label Studio label of each class id (None: the background, not a region). A class is
    the label whose synonyms (dslo's class rule: commas separate them) are the class's."""
    from dslo.classes import normalize_classes

    by_group = {tuple(normalize_classes([lab])[0]): lab for lab in target.labels}
    out: list[str | None] = []
    for i, (name, group) in enumerate(zip(class_names, synonyms, strict=True)):
        if has_background and i == 0:
            out.append(None)
            continue
        label = by_group.get(tuple(group))
        if label is None:
            raise ValueError(f"class {name!r} (synonyms {list(group)}) is not a label of the <BrushLabels "
                             f"name={target.from_name!r}> control (labels: {', '.join(target.labels)})")
        out.append(label)
    return out


def region_scores(labels: np.ndarray, scores: Any, score_class_ids: Sequence[int]) -> dict[int, float]:
    """Class id -> the mean over its pixels of the softmax of the head's scores for that class.

    labels: ``(H, W)`` class ids; scores: ``(K', h, w)`` the head's scores at the size the models
    saw; ``score_class_ids[i]``: the class id of ``scores[i]``. A pixel reads the score cell it
    falls in (nearest). Classes without a score row (a threshold background) score 0."""
    import torch

    s = torch.as_tensor(scores).float()
    p = torch.softmax(s, dim=0).cpu().numpy()
    H, W = labels.shape
    h, w = p.shape[1:]
    ys, xs = (np.arange(H) * h) // H, (np.arange(W) * w) // W
    row = {int(c): i for i, c in enumerate(score_class_ids)}
    out: dict[int, float] = {}
    for c in np.unique(labels):
        r = row.get(int(c))
        if r is None:
            out[int(c)] = 0.0
            continue
        yy, xx = np.nonzero(labels == c)
        out[int(c)] = float(p[r][ys[yy], xs[xx]].mean())
    return out


def prediction(labels: np.ndarray, label_of: Sequence[str | None], target: BrushTarget, version: str,
               scores: Mapping[int, float] | None = None) -> dict[str, Any]:
    """A Label Studio prediction of an ``(H, W)`` label map: ``{"model_version", "score",
    "result": [brushlabels regions]}``; ``label_of[class id]`` its label (None: no region);
    ``scores``: class id -> score (:func:`region_scores`), or None for none."""
    labels = np.asarray(labels)
    H, W = labels.shape
    counts = np.bincount(labels.reshape(-1), minlength=len(label_of))
    regions: list[dict[str, Any]] = []
    area = 0
    weighted = 0.0
    for c in np.flatnonzero(counts):
        label = label_of[int(c)]
        if label is None:
            continue
        region: dict[str, Any] = {
            "id": f"dslo-{c}",
            "from_name": target.from_name,
            "to_name": target.to_name,
            "type": "brushlabels",
            "original_width": int(W),
            "original_height": int(H),
            "image_rotation": 0,
            "value": {"format": "rle", "rle": brush_rle(labels == c), "brushlabels": [label]},
            "readonly": False,
        }
        if scores is not None:
            region["score"] = round(float(scores[int(c)]), 6)
            weighted += float(scores[int(c)]) * int(counts[c])
            area += int(counts[c])
        regions.append(region)
    pred: dict[str, Any] = {"model_version": version, "result": regions}
    if scores is not None:
        pred["score"] = round(weighted / area, 6) if area else 0.0
    return pred

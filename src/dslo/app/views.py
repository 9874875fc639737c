"""Pictures and tables of one result for the app: pure functions of a ``SegmentationResult``.

No Gradio here: every function takes arrays/tensors and returns PIL images or plain rows, so they
are tested without a server. "How the head saw it" reads the head's own steps through its public
API (``dslo.head.seed_classes`` on the evidence the head was given), never a copy of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dslo import outputs
from dslo.imageio import resize_max_side

# A perceptually ordered colour ramp (dark blue → teal → yellow, the ends of viridis) for the heat
# maps; 5 stops interpolated linearly are enough for a preview and avoid a matplotlib dependency.
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                 dtype=np.float32)
NO_SEED_GREY = 0.35  # unseeded patches: the image darkened to this brightness


def class_table(labels: np.ndarray, class_names: Sequence[str]) -> list[list]:
    """One row ``[class, pixels, share %]`` per class (absent ones at 0), in class-id order.

    labels: ``(H, W)`` ids into ``class_names``. Shares are percentages of H × W rounded to 2
    decimals; the pixel counts are exact and sum to H × W.
    """
    counts = np.bincount(np.asarray(labels).reshape(-1), minlength=len(class_names))
    total = int(counts.sum())
    return [[name, int(n), round(100.0 * int(n) / total, 2)] for name, n in zip(class_names, counts, strict=False)]


def _nearest(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` patch ids → ``(H, W)`` by nearest neighbour (patches stay visible as blocks)."""
    t = torch.as_tensor(ids, dtype=torch.float32)[None, None]
    return F.interpolate(t, size=size, mode="nearest")[0, 0].to(torch.int64).numpy()


def _score_shift(result) -> int:
    """Offset from head class index to class id: 1 when a threshold background sits at id 0 but
    was not a class of the head, else 0."""
    return 1 if result.background.get("policy") == "threshold" else 0


def coarse_argmax(result) -> Image.Image:
    """The CLIP evidence alone: each patch labelled with its best class, over the model-size
    image, with the overlay's legend. What the result would be without the head."""
    small = _model_image(result)
    ids = result.logits.float().argmax(0).cpu().numpy() + _score_shift(result)
    return outputs.overlay_image(small, _nearest(ids, small.shape[:2]), result.class_names,
                                 result.background_index)


def seeds(result) -> tuple[Image.Image, float] | None:
    """The NMS seeds the head started from (``result.seeds``, as the head computed them): each
    patch where a class survived NMS (and early rejection) in that class's colour; patches where
    none survived in grey. Returns the picture and the fraction of patches seeded; None for a
    result of a mode without the head."""
    if result.seeds is None:
        return None
    grid = tuple(result.grid)
    a = result.seeds.float().cpu()
    ids_of = torch.as_tensor(result.seed_class_ids, dtype=torch.int64)
    seeded = (a > 0).any(0)
    ids = ids_of[a.argmax(0)].where(seeded, torch.zeros_like(ids_of[:1]))
    small = _model_image(result)
    size = small.shape[:2]
    over = np.asarray(outputs.overlay_image(small, _nearest(ids.reshape(grid).cpu().numpy(), size),
                                            result.class_names, result.background_index, legend=False))
    mask = _nearest(seeded.reshape(grid).cpu().numpy().astype(np.int64), size).astype(bool)
    grey = (small.astype(np.float32).mean(2, keepdims=True) * NO_SEED_GREY).astype(np.uint8)
    pic = np.where(mask[..., None], over, grey)
    return Image.fromarray(pic), float(seeded.float().mean())


def heat_maps(result) -> list[tuple[Image.Image, str]]:
    """One picture per class the head kept: its score map (min–max scaled per class, the colour
    ramp over a grey copy of the image) with the class name as caption."""
    small = _model_image(result)
    grey = small.astype(np.float32).mean(2, keepdims=True)
    scores = result.scores.float().cpu()
    if tuple(scores.shape[1:]) != small.shape[:2]:
        scores = F.interpolate(scores[None], size=small.shape[:2], mode="bilinear",
                               align_corners=False)[0]
    out = []
    for s, cid in zip(scores, result.score_class_ids, strict=False):
        s = s.numpy()
        lo, hi = float(s.min()), float(s.max())
        x = (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)
        pic = 0.35 * grey + 0.65 * _ramp(x)
        out.append((Image.fromarray(np.clip(np.round(pic), 0, 255).astype(np.uint8)),
                    result.class_names[int(cid)]))
    return out


def _ramp(x: np.ndarray) -> np.ndarray:
    """``(H, W)`` values in [0, 1] → ``(H, W, 3)`` float colours of the ramp."""
    pos = np.clip(x, 0, 1) * (len(_RAMP) - 1)
    i = np.minimum(pos.astype(np.int64), len(_RAMP) - 2)
    f = (pos - i)[..., None]
    return _RAMP[i] * (1 - f) + _RAMP[i + 1] * f


def _model_image(result) -> np.ndarray:
    """The image as the models saw it (the segmenter's own downscaling), ``(h, w, 3)`` uint8."""
    return np.ascontiguousarray(resize_max_side(result.image, result.model.get("max_side")))

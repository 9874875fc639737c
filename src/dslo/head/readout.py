"""The head's readout: from discrepancy maps to per-class scores (SPEC §8, beyond the paper).

The paper's label is ``argmax_c JBU(D_c)`` over the classes that survive NMS ("pure" readout). On
clean evidence that loses to plain upsampling: NMS keeps one class per patch and the map of a
dropped class is gone. The **fused** readout keeps what the evidence knows and adds what the
attention knows:

    S_c = log P_c + λ · D̂_c,     P = softmax_c(s · L)  (the NMS class posterior, all K classes)

where ``D̂_c`` is the head's map of class c divided by its maximum (0 for a class with no map).
Each part is upsampled the way it is best upsampled, then summed: ``log P`` bilinearly from the
evidence grid (as plain upsampling, method (a); JBU of the evidence blurs thin classes: on clean
evidence it loses several mIoU to bilinear), ``D̂`` with the head's JBU (its maps follow the
attention grid). With λ = 0 the label map is exactly ``refine(mode="none")``'s.

λ is set per image from the image's own evidence (a :class:`FusionRule` of the
:func:`~dslo.head.evidence_margin`, each mode's in :data:`dslo.head.MODE_TABLE`): clean evidence
keeps its own posterior (λ = 0: exactly plain upsampling), noisy evidence hands the decision to
the attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._checks import TINY, as_float


@dataclass(frozen=True)
class FusionRule:
    """The fused readout's per-image λ rule: a step function of the evidence margin
    (:func:`dslo.head.evidence_margin`), clean to noisy.

    ``thresholds`` ascend; an image whose margin is below ``j`` of them is in step ``j`` (0: the
    cleanest) and gets λ = ``levels[j]`` (``levels[0] = 0``: clean evidence decides alone, plain
    upsampling; ``math.inf``: the head alone, the paper's readout); ``recover[j]``: whether the
    recovery seeds (``recover_threshold``) are used in step ``j``. Each mode of :data:`dslo.head.MODE_TABLE` carries its own (``Mode.fusion_rule``)."""

    thresholds: tuple[float, ...]
    levels: tuple[float, ...]
    recover: tuple[bool, ...]

    def __post_init__(self) -> None:
        check_fusion_rule(self.thresholds, self.levels)
        if len(self.recover) != len(self.levels) or not all(isinstance(x, bool) for x in self.recover):
            raise ValueError(f"fusion_recover needs one flag per fusion level (True/False): {len(self.levels)} levels, "
                             f"got {self.recover!r}")

    def step(self, margin: float) -> int:
        """The step an image whose evidence margin is ``margin`` falls in (:func:`fusion_step`)."""
        return fusion_step(margin, self.thresholds)

    def weight(self, margin: float) -> float:
        """λ of an image whose evidence margin is ``margin``."""
        return float(self.levels[self.step(margin)])

    def replace(self, thresholds: Sequence[float] | None = None, levels: Sequence[float] | None = None,
                recover: Sequence[bool] | None = None) -> FusionRule:
        """This rule with the parts given replaced (``None``: kept). Recovery flags not given follow
        new levels: cut to their number, or the last flag repeated for extra steps. A ValueError
        when the parts do not fit together."""
        lv = tuple(levels) if levels is not None else self.levels
        if recover is None:
            recover = self.recover[:len(lv)] + self.recover[-1:] * (len(lv) - len(self.recover))
        return FusionRule(tuple(thresholds) if thresholds is not None else self.thresholds, lv, tuple(recover))


def fusion_step(margin: float, thresholds: Sequence[float]) -> int:
    """The step of the rule an image falls in: the number of ``thresholds`` above its margin
    (0: the cleanest evidence)."""
    return sum(1 for t in thresholds if margin < t)


def fusion_weight(margin: float, thresholds: Sequence[float], levels: Sequence[float]) -> float:
    """λ for an image whose :func:`evidence_margin` is ``margin``: ``levels[j]`` with ``j`` the
    number of ``thresholds`` (ascending) above ``margin``. Clean evidence (a large margin) gets
    ``levels[0]``, the noisiest ``levels[-1]``."""
    check_fusion_rule(thresholds, levels)
    return float(levels[fusion_step(margin, thresholds)])


def check_fusion_rule(thresholds: Sequence[float], levels: Sequence[float]) -> None:
    """A ValueError unless ``thresholds`` ascend and ``levels`` are one more non-negative numbers."""
    t, lv = list(thresholds), list(levels)
    if len(lv) != len(t) + 1:
        raise ValueError(f"fusion levels need one more entry than thresholds: {len(t)} thresholds, {len(lv)} levels")
    if any(b <= a for a, b in zip(t, t[1:], strict=False)):
        raise ValueError(f"fusion thresholds must ascend, got {t}")
    if any(not x >= 0 for x in lv):
        raise ValueError(f"fusion levels must be >= 0, got {lv}")


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """``D̂``: each class's ``(K', N)`` map divided by its maximum over patches (zero maps stay 0)."""
    D = as_float(maps, "maps")
    return D / D.amax(dim=1, keepdim=True).clamp_min(TINY)


def fuse(log_post: torch.Tensor, maps: torch.Tensor, rows: torch.Tensor, weight: float,
         inplace: bool = False) -> torch.Tensor:
    """The fused score ``log P_c + weight · D̂_c``.

    Args:
        log_post: ``(K'', ...)`` evidence log-posterior of the candidate classes (any trailing
            shape, e.g. upsampled ``(K'', H, W)``).
        maps: ``(K', ...)`` normalised head maps (same trailing shape) of the classes at rows
            ``rows (K',)`` of ``log_post``; the other candidates get ``D̂ = 0``.
        weight: λ ≥ 0.
        inplace: add into ``log_post`` itself (no ``K'' × H × W`` copy) and return it.
    Returns: ``(K'', ...)``.
    """
    if weight < 0:
        raise ValueError(f"fusion weight must be >= 0, got {weight}")
    if maps.shape[0] != rows.numel() or maps.shape[1:] != log_post.shape[1:]:
        raise ValueError(f"maps {tuple(maps.shape)} must be ({rows.numel()}, {', '.join(map(str, log_post.shape[1:]))})")
    out = log_post if inplace else log_post.clone()
    if rows.numel() and weight:
        # class by class, in place: indexed `out[rows] += weight * maps` gathers, scales and
        # scatters whole K' x H x W copies (30 ms of the head's 160 at K = 21, 448², CPU; this: 4)
        for j, r in enumerate(rows.tolist()):
            out[r].add_(maps[j].to(out.dtype), alpha=weight)
    return out


def class_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``argmax`` over dim 0 of ``(K, ...)`` scores (the first class on ties, like
    ``Tensor.argmax``), by a running maximum over classes: on CPU ``argmax(0)`` of a
    ``(21, 448, 448)`` tensor reduces across a strided dimension and took 73 ms here, this 30 ms."""
    best = scores[0]
    idx = torch.zeros(best.shape, dtype=torch.int64, device=scores.device)
    for k in range(1, scores.shape[0]):
        better = scores[k] > best
        best = torch.where(better, scores[k], best)
        idx.masked_fill_(better, k)
    return idx


def possible_winners(scores: torch.Tensor) -> torch.Tensor:
    """For each class, the number of 2×2 windows of the grid in which it can win the arg-max of the
    bilinear upsampling of ``scores`` (at any output size; 0: it wins no pixel).

    In a window, every upsampled value of class c is a convex combination of its four corners, so
    it is at most their maximum, and the class with the best corner minimum scores at least that
    minimum: c can win there only if ``max_corners(c) ≥ max_d min_corners(d)``. The grid is padded
    by one replicated patch first: outside the outer patch centres the upsampling clamps to the
    border patches (``align_corners=False``). A superset of the winners, computed on the grid.

    Args: ``scores (K, h, w)``. Returns ``(K,)`` int64 counts."""
    S = as_float(scores, "scores")
    X = F.pad(S[None], (1, 1, 1, 1), mode="replicate")
    hi = F.max_pool2d(X, 2, stride=1)[0]  # (K, h+1, w+1)
    lo = -F.max_pool2d(-X, 2, stride=1)[0]
    # a small slack: interpolation rounds, and a class that ties by rounding must stay a candidate
    return (hi + 1e-4 >= lo.amax(dim=0, keepdim=True)).flatten(1).sum(1)


def candidate_classes(log_post: torch.Tensor, kept: torch.Tensor, limit: int | None = None) -> torch.Tensor:
    """Classes the fused readout scores: the head's ``kept`` classes plus every class that can win
    a pixel of plain upsampling of ``log_post`` (:func:`possible_winners`).

    This set is exact: a class without a head map keeps its score ``log P_c``, while the others'
    scores only grow (``λ·D̂ ≥ 0``), so it can win the fused arg-max only where it already wins
    ``log P``'s. The fused arg-max over these classes is therefore the one over all K (``refine``
    at λ → 0 is plain upsampling exactly). With ``limit``, the extra classes are cut to the
    ``limit`` that can win in the most windows (``kept`` always stays; memory is ``K'' × H × W``).

    Args: ``log_post (K, h, w)`` the evidence's log-posterior on its own grid; ``kept (K',)``.
    Returns: sorted ``(K'',)`` int64 indices."""
    area = possible_winners(log_post)
    extra = area > 0
    extra[kept] = False
    idx = torch.nonzero(extra).flatten()
    if limit is not None and idx.numel() > limit:
        idx = idx[torch.topk(area[idx], limit).indices]
    return torch.cat([kept.to(idx), idx]).unique(sorted=True)

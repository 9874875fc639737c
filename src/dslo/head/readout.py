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

λ is set per image from the image's own evidence (:func:`fusion_weight`): where the evidence is
ambiguous (many patches whose top class is not confident) the discrepancy gets more weight.
"""

from __future__ import annotations

import torch

from ._checks import as_float, check_finite

_TINY = 1e-30

# Gain of the per-image λ rule for each discrepancy, chosen on the even-index half of the real
# CamVid and COCO-Object images (benchmarks/select_readout.py; docs/benchmarks.md §1b).
FUSION_GAIN = {"mv": 8.0, "op": 4.0, "kl": 8.0}


def evidence_ambiguity(flat_logits: torch.Tensor, scale: float = 40.0) -> float:
    """Share of the image's patches whose evidence is ambiguous: ``1 − mean_i max_c P[c, i]`` with
    ``P = softmax_c(scale · L)``, in ``[0, 1 − 1/K]`` (0: every patch certain of one class).

    Args: ``flat_logits (K, N)``. Returns a Python float."""
    L = as_float(flat_logits, "logits")
    P = torch.softmax(scale * L.reshape(L.shape[0], -1), dim=0)
    return float(1.0 - P.amax(dim=0).mean())


def fusion_weight(ambiguity: float, gain: float, lo: float, hi: float) -> float:
    """λ for an image with the given :func:`evidence_ambiguity`: ``clamp(gain · ambiguity, lo, hi)``.

    Linear in the ambiguity: certain evidence keeps its own posterior (λ → lo), ambiguous evidence
    hands the decision to the attention (λ → hi). Bounds are part of the rule so that no image gets
    a negative or unbounded weight."""
    if not (0.0 <= lo <= hi):
        raise ValueError(f"fusion weight bounds must satisfy 0 <= lo <= hi, got lo={lo}, hi={hi}")
    return float(min(hi, max(lo, gain * ambiguity)))


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """``D̂``: each class's ``(K', N)`` map divided by its maximum over patches (zero maps stay 0)."""
    D = as_float(maps, "maps")
    return D / D.amax(dim=1, keepdim=True).clamp_min(_TINY)


def fuse(log_post: torch.Tensor, maps: torch.Tensor, rows: torch.Tensor, weight: float) -> torch.Tensor:
    """The fused score ``log P_c + weight · D̂_c``.

    Args:
        log_post: ``(K'', ...)`` evidence log-posterior of the candidate classes (any trailing
            shape, e.g. upsampled ``(K'', H, W)``).
        maps: ``(K', ...)`` normalised head maps (same trailing shape) of the classes at rows
            ``rows (K',)`` of ``log_post``; the other candidates get ``D̂ = 0``.
        weight: λ ≥ 0.
    Returns: ``(K'', ...)``.
    """
    if weight < 0:
        raise ValueError(f"fusion weight must be >= 0, got {weight}")
    if maps.shape[0] != rows.numel() or maps.shape[1:] != log_post.shape[1:]:
        raise ValueError(f"maps {tuple(maps.shape)} must be ({rows.numel()}, {', '.join(map(str, log_post.shape[1:]))})")
    out = log_post.clone()
    if rows.numel() and weight:
        out[rows] += weight * maps.to(out.dtype)
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


def candidate_classes(flat_logits: torch.Tensor, kept: torch.Tensor, limit: int | None = None) -> torch.Tensor:
    """Classes the fused readout scores: the head's ``kept`` classes plus every class that is the
    evidence's arg-max at one patch or more (a class that never tops a patch cannot win a pixel of
    ``log P`` alone). With ``limit``, the extra classes are cut to the ``limit`` with the largest
    arg-max area (``kept`` always stays). Returns sorted ``(K'',)`` int64 indices."""
    K = flat_logits.shape[0]
    top = flat_logits.argmax(dim=0)
    area = torch.bincount(top, minlength=K)
    extra = area > 0
    extra[kept] = False
    idx = torch.nonzero(extra).flatten()
    if limit is not None and idx.numel() > limit:
        idx = idx[torch.topk(area[idx], limit).indices]
    return torch.cat([kept.to(idx), idx]).unique(sorted=True)

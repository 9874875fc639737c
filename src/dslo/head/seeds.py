"""From class logits to per-class seed distributions: NMS, early rejection, patch softmax (SPEC §4)."""

from __future__ import annotations

import torch

from ._checks import as_float, check_finite
from .evidence import EVIDENCE_SCALE, evidence_posterior


def nms(
    logits: torch.Tensor, scale: float = EVIDENCE_SCALE, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-wise non-maximum suppression of patch logits.

    ``P = softmax_over_classes(scale · L)`` (:func:`~dslo.head.evidence_posterior`); where
    ``P[c, i] < threshold`` the logit is suppressed.
    With ``threshold >= 0.5`` at most one class survives at a patch.

    Args:
        logits: ``(K, ...)`` class logits (e.g. ``(K, N)`` or ``(K, h, w)``).
    Returns:
        ``masked``: logits of the same shape (working dtype), ``-inf`` where suppressed;
        ``keep``: bool mask of the same shape, True where the logit survived.
    """
    L = as_float(logits, "logits")
    check_finite(L, "logits")
    if L.ndim < 1 or L.shape[0] == 0:
        raise ValueError(f"logits must have at least one class, got shape {tuple(L.shape)}")
    prob = evidence_posterior(L, scale)
    keep = prob >= threshold
    masked = L.masked_fill(~keep, float("-inf"))
    return masked, keep


def recover_seeds(logits: torch.Tensor, keep: torch.Tensor, scale: float = EVIDENCE_SCALE,
                  threshold: float = 0.25) -> torch.Tensor:
    """Seeds for the classes NMS dropped entirely (thin and small classes rarely reach θ = 0.5).

    A class with no surviving patch is seeded where it is the arg-max class with probability
    ``P = softmax_c(scale · L) >= threshold``. Those patches have no NMS survivor (a survivor with
    θ >= 0.5 is the arg-max), so at most one class is seeded per patch as before.

    Args: ``logits (K, N)``, ``keep (K, N)`` bool from :func:`nms`. Returns the new ``keep``.
    """
    L = as_float(logits, "logits").reshape(keep.shape)
    prob = evidence_posterior(L, scale)
    top = prob == prob.amax(dim=0, keepdim=True)
    dropped = ~keep.any(dim=1)
    extra = top & (prob >= threshold) & dropped[:, None] & ~keep.any(dim=0, keepdim=True)
    return keep | extra


def class_confidence(logits: torch.Tensor, keep: torch.Tensor, scale: float = EVIDENCE_SCALE) -> torch.Tensor:
    """Confidence of each class: the soft area of its surviving patches, ``Σ_i P[c, i]·keep[c, i]``.

    Area rather than peak probability, so that a class with a single stray confident patch ranks
    below a class that covers a region.

    Args: ``logits (K, N)``, ``keep (K, N)`` bool. Returns ``(K,)``.
    """
    L = as_float(logits, "logits").reshape(logits.shape[0], -1)
    prob = evidence_posterior(L, scale)
    return (prob * keep.reshape(L.shape)).sum(dim=1)


def early_rejection(
    logits: torch.Tensor,
    keep: torch.Tensor,
    top_k: int | None = 10,
    top_k_above: int = 21,
    scale: float = EVIDENCE_SCALE,
) -> torch.Tensor:
    """Indices of the classes that go on to the discrepancy stage.

    Classes with no surviving patch are dropped. When ``K > top_k_above`` only the ``top_k`` most
    confident classes (:func:`class_confidence`) are kept.

    Args: ``logits (K, ...)``, ``keep`` bool of the same shape. Returns ``kept (K',)`` int64,
    ascending, on the logits' device.
    """
    K = logits.shape[0]
    keep2 = keep.reshape(K, -1)
    alive = keep2.any(dim=1)
    kept = torch.nonzero(alive).flatten()
    if top_k is not None and top_k_above < K and kept.numel() > top_k:
        conf = class_confidence(logits, keep2, scale)[kept]
        order = torch.topk(conf, top_k).indices
        kept = kept[order].sort().values
    return kept


def normalize(
    masked_logits: torch.Tensor, norm_scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class distribution over patches: ``a_c = softmax_i(norm_scale · L[c, i])`` over the
    patches that survived NMS (suppressed = ``-inf`` → probability 0).

    Args:
        masked_logits: ``(K, ...)``, ``-inf`` where suppressed (output of :func:`nms`).
        norm_scale: softmax temperature ``r`` (SPEC default 1: every survivor a near-equal seed).
    Returns:
        ``a``: ``(K, N)`` rows summing to 1 — all-zero rows for classes without a surviving
        patch (never NaN); ``valid``: ``(K,)`` bool, False for those classes.
    """
    L = as_float(masked_logits, "masked_logits")
    L = L.reshape(L.shape[0], -1)
    if torch.isnan(L).any() or torch.isposinf(L).any():
        raise ValueError("masked_logits contains NaN or +inf; only -inf (suppressed) is allowed")
    valid = torch.isfinite(L).any(dim=1)
    safe = torch.where(valid[:, None], L, torch.zeros_like(L))
    a = torch.softmax(norm_scale * safe, dim=1)
    a = torch.where(valid[:, None], a, torch.zeros_like(a))
    return a, valid

"""The evidence's class posterior ``P = softmax_c(s · L)`` and what the head reads from it.

One scale ``s`` for every reading of the evidence (SPEC §4: the NMS logit scale, 40): NMS and the
recovery seeds, early rejection's confidence, the fused readout's ``log P``, the evidence margin
the λ rule reads, and the segmenter's threshold background. ``HeadConfig.nms_scale`` defaults to
it; every function here takes the scale as an argument, so a config's scale reaches all of them.
"""

from __future__ import annotations

import torch

from ._checks import as_float

# s of SPEC §4 (the paper's logit scale): on CLIP's cosine logits (typically 0.1-0.35) a gap of
# 0.05 between two classes becomes log-odds 2, a posterior of 0.88 against 0.12.
EVIDENCE_SCALE = 40.0


def evidence_posterior(logits: torch.Tensor, scale: float = EVIDENCE_SCALE, *, log: bool = False) -> torch.Tensor:
    """The class posterior of the evidence, ``softmax`` over classes (dim 0) of ``scale · logits``.

    Args: ``logits (K, ...)`` (any trailing shape: ``(K, N)``, ``(K, h, w)``); ``log``: return
    ``log_softmax`` instead (exact, not the log of the probabilities).
    Returns: ``(K, ...)`` in the logits' working dtype (float32, or float64 for float64 input)."""
    L = as_float(logits, "logits")
    return torch.log_softmax(scale * L, dim=0) if log else torch.softmax(scale * L, dim=0)


def evidence_ambiguity(flat_logits: torch.Tensor, scale: float = EVIDENCE_SCALE) -> float:
    """Share of the image's patches whose evidence is ambiguous: ``1 − mean_i max_c P[c, i]`` with
    ``P`` :func:`evidence_posterior`, in ``[0, 1 − 1/K]`` (0: every patch certain of one class).

    Args: ``flat_logits (K, N)``. Returns a Python float."""
    L = as_float(flat_logits, "logits")
    P = evidence_posterior(L.reshape(L.shape[0], -1), scale)
    return float(1.0 - P.amax(dim=0).mean())


def evidence_margin(flat_logits: torch.Tensor, scale: float = EVIDENCE_SCALE) -> float:
    """How clean the image's evidence is: the median over patches of the log-odds of its top class
    over the runner-up, ``median_i scale·(L_(1),i − L_(2),i)`` (``+inf`` for one class).

    Unlike :func:`evidence_ambiguity` it does not grow with the number of absent classes (81 in
    COCO-Object, whose many low scores add posterior mass to every patch).

    Args: ``flat_logits (K, N)``. Returns a Python float."""
    L = as_float(flat_logits, "logits")
    L = L.reshape(L.shape[0], -1)
    if L.shape[0] < 2:
        return float("inf")
    top2 = L.topk(2, dim=0).values
    return float((scale * (top2[0] - top2[1])).median())

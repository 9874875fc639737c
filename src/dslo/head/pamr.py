"""PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), the optional
post-process of NACLIP's published numbers (10 steps, dilations 8 and 16).

Each step replaces every pixel's class scores by a weighted mean of its 8 neighbours at each
dilation; the weights are a softmax over those neighbours of ``−|I_p − I_q| / (0.1·σ_p)``
averaged over the image channels, ``σ_p`` the (unbiased) standard deviation of the image over the
3×3 neighbourhoods of all dilations taken together. Borders are replicated. Written from that description; a
naive per-pixel loop in the tests is the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["pamr", "PAMR_STEPS", "PAMR_DILATIONS"]

PAMR_STEPS = 10
PAMR_DILATIONS = (8, 16)
# the 8 neighbours (row, column offsets in units of the dilation), row-major, centre excluded
_OFFSETS = tuple((dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0))


def _shifted(x: torch.Tensor, d: int) -> list[torch.Tensor]:
    """``x (C, H, W)`` → the 8 neighbour maps at dilation ``d`` (replicate padding), each
    ``(C, H, W)``: ``out[j][:, r, c] = x[:, clamp(r + d·dr_j), clamp(c + d·dc_j)]``."""
    H, W = x.shape[-2:]
    xp = F.pad(x[None], [d, d, d, d], mode="replicate")[0]
    return [xp[:, d + dr * d: d + dr * d + H, d + dc * d: d + dc * d + W] for dr, dc in _OFFSETS]


def pamr(image: torch.Tensor, scores: torch.Tensor, steps: int = PAMR_STEPS,
         dilations: Sequence[int] = PAMR_DILATIONS) -> torch.Tensor:
    """Refine ``scores (K, H, W)`` guided by ``image (C, H, W)`` float (any per-channel affine
    normalisation gives the same result); returns ``(K, H, W)`` in the scores' dtype. Memory:
    a few ``K × H × W`` maps, one neighbour at a time."""
    if image.ndim != 3 or scores.ndim != 3 or image.shape[-2:] != scores.shape[-2:]:
        raise ValueError(f"image (C, H, W) and scores (K, H, W) must share H, W; got {tuple(image.shape)} "
                         f"and {tuple(scores.shape)}")
    if steps < 0 or not dilations or min(dilations) < 1:
        raise ValueError("steps must be >= 0 and dilations positive integers")
    img = image.to(device=scores.device, dtype=torch.float32)
    neighbours = [_shifted(img, int(d)) for d in dilations]
    # σ: one standard deviation over the 3×3 neighbourhoods of all dilations together (the centre
    # once per dilation), as the reference implementation concatenates them before taking it
    std = torch.stack([x for nb in neighbours for x in nb[:4] + [img] + nb[4:]]).std(0)  # (C, H, W)
    logits = [(-(img - q).abs() / (1e-8 + 0.1 * std)).mean(0) for nb in neighbours for q in nb]
    weights = torch.softmax(torch.stack(logits), 0)  # (8·D, H, W)
    m = scores.float()
    for _ in range(steps):
        acc = torch.zeros_like(m)
        j = 0
        for d in dilations:
            for q in _shifted(m, int(d)):
                acc += q * weights[j]
                j += 1
        m = acc
    return m.to(scores.dtype)

"""Coarse, noisy class evidence built from a ground-truth label map, standing in for CLIP logits.

No CLIP weights can be downloaded here, so the refinement benchmark replaces the logits model by a
seeded degradation of the ground truth that has the failure modes of CLIP dense logits:

1. **Coarse grid** — class area fractions per patch of a CLIP-B/16-like grid (short side 336 / 16
   = 21 patches): small objects become fractional, boundaries become mixed patches.
2. **Confusion between present classes** — with probability ``confusion_prob`` a present class
   leaks a fraction ``confusion_weight`` of its evidence into another present class (CLIP mixes
   up co-occurring classes: road / pavement, car / truck).
3. **Blur** — a Gaussian of ``blur_sigma`` patches (coarse localisation: evidence spills over
   boundaries).
4. **Distractor blobs** — ``distractors`` absent classes each get a weak Gaussian blob
   (``distractor_amp``, radius ``distractor_radius`` patches) somewhere in the image.
5. **Spatially correlated noise** — white noise blurred with ``noise_corr`` patches, scaled to a
   standard deviation of ``noise_amp`` (per class).
6. **Cosine range** — ``logit = cos_low + (cos_high - cos_low) · evidence``: a fully covered
   patch of its class lands at ``cos_high`` (0.30), an empty one at ``cos_low`` (0.15), which is
   where CLIP ViT-B/16 patch-text cosines live.

Every random draw comes from a generator seeded by ``(seed, key)`` (e.g. dataset and image stem),
so a given image gets the same evidence in every run, whatever the order or subset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["EvidenceConfig", "PRESETS", "logits_grid", "patch_fractions", "make_evidence", "stable_seed"]


@dataclass(frozen=True)
class EvidenceConfig:
    """Strength of the degradation (units: patches of the evidence grid, evidence units where a
    fully covered patch of the class is 1)."""

    blur_sigma: float = 1.0
    noise_amp: float = 0.2
    noise_corr: float = 1.5
    confusion_prob: float = 0.35
    confusion_weight: float = 0.5
    distractors: int = 2
    distractor_amp: float = 0.45
    distractor_radius: float = 2.0
    cos_low: float = 0.15
    cos_high: float = 0.30

    def replace(self, **kw) -> EvidenceConfig:
        return dataclasses.replace(self, **kw)


# Three documented strengths. "medium" is the one the expectation is stated on.
PRESETS: dict[str, EvidenceConfig] = {
    "easy": EvidenceConfig(blur_sigma=0.5, noise_amp=0.1, confusion_prob=0.2, confusion_weight=0.3,
                           distractors=1, distractor_amp=0.3),
    "medium": EvidenceConfig(),
    "hard": EvidenceConfig(blur_sigma=1.5, noise_amp=0.3, confusion_prob=0.5, confusion_weight=0.7,
                           distractors=3, distractor_amp=0.6),
}


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts, identical across processes and Python versions
    (``hash()`` of a string is salted per process, so it cannot be used)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def logits_grid(image_hw: tuple[int, int], short_side: int = 336, patch: int = 16) -> tuple[int, int]:
    """The patch grid ``(h, w)`` of a CLIP ViT with ``patch`` px patches run at ``short_side``
    (SPEC §2: B/16 at 336), aspect ratio kept. 360×480 → 21×28."""
    H, W = image_hw
    s = short_side / min(H, W)
    return max(1, round(H * s / patch)), max(1, round(W * s / patch))


def patch_fractions(label: np.ndarray, num_classes: int, grid: tuple[int, int], ignore_index: int = 255) -> np.ndarray:
    """Fraction of each patch's valid pixels that belong to each class.

    Every pixel ``(y, x)`` belongs to patch ``(⌊y·h/H⌋, ⌊x·w/W⌋)``; ignored pixels (and ids
    ``>= num_classes``) are left out. Patches with no valid pixel get all-zero fractions.

    Args: ``label (H, W)`` integer class ids. Returns ``(K, h, w)`` float32, each patch summing
    to 1 or 0.
    """
    if label.ndim != 2:
        raise ValueError(f"label must be (H, W), got shape {label.shape}")
    H, W = label.shape
    h, w = grid
    rows = (np.arange(H) * h) // H
    cols = (np.arange(W) * w) // W
    patch = rows[:, None] * w + cols[None, :]
    lab = label.astype(np.int64)
    valid = (lab >= 0) & (lab < num_classes) & (lab != ignore_index)
    counts = np.bincount(patch[valid] * num_classes + lab[valid], minlength=h * w * num_classes)
    counts = counts.reshape(h * w, num_classes).astype(np.float64)
    total = counts.sum(1, keepdims=True)
    frac = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    return frac.T.reshape(num_classes, h, w).astype(np.float32)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(K, h, w)`` with replicate padding (no dark border)."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    y = x[:, None]  # (K, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y[:, 0]


def make_evidence(
    label: np.ndarray,
    num_classes: int,
    grid: tuple[int, int],
    config: EvidenceConfig,
    seed: int,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Seeded coarse, noisy class evidence for one image (see the module docstring for the steps).

    Args:
        label: ``(H, W)`` ground-truth class ids (``ignore_index`` = unlabelled).
        num_classes: K, the size of the vocabulary (every class of the dataset).
        grid: ``(h, w)`` evidence grid, e.g. :func:`logits_grid`.
        config: degradation strength (:data:`PRESETS`).
        seed: e.g. ``stable_seed(base_seed, dataset, stem, preset)``.
    Returns:
        ``(K, h, w)`` float32 CPU tensor of cosine-like logits.
    """
    rng = np.random.default_rng(seed)
    cfg = config
    frac = torch.from_numpy(patch_fractions(label, num_classes, grid, ignore_index)).double()
    K, h, w = frac.shape
    lab = label[(label >= 0) & (label < num_classes) & (label != ignore_index)]
    present = np.unique(lab).astype(np.int64)
    absent = np.setdiff1d(np.arange(K), present)

    ev = frac.clone()
    if len(present) >= 2:
        for c in present:
            if rng.random() < cfg.confusion_prob:
                other = rng.choice(present[present != c])
                ev[other] += cfg.confusion_weight * frac[c]
    ev = _gaussian_blur(ev, cfg.blur_sigma)

    n_dis = min(cfg.distractors, len(absent))
    if n_dis > 0 and cfg.distractor_amp > 0:
        yy = torch.arange(h, dtype=ev.dtype)[:, None]
        xx = torch.arange(w, dtype=ev.dtype)[None, :]
        for c in rng.choice(absent, size=n_dis, replace=False):
            cy, cx = rng.uniform(0, h - 1), rng.uniform(0, w - 1)
            blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * cfg.distractor_radius**2))
            ev[c] += cfg.distractor_amp * blob

    if cfg.noise_amp > 0:
        noise = _gaussian_blur(torch.from_numpy(rng.standard_normal((K, h, w))), cfg.noise_corr)
        noise = noise / noise.flatten(1).std(dim=1, correction=0).clamp_min(1e-12)[:, None, None]
        ev = ev + cfg.noise_amp * noise

    logits = cfg.cos_low + (cfg.cos_high - cfg.cos_low) * ev
    return logits.float()

"""CLIP-like class evidence: a second synthetic family, built differently from ``benchmarks.evidence``.

``benchmarks.evidence`` degrades the ground truth step by step (leaks between present classes, a
Gaussian blur, blobs of absent classes, correlated noise) and maps it linearly to cosines 0.15-0.30.
This generator instead imitates how CLIP's dense cosines are made and what their errors look like:

1. **A text space with look-alikes.** A patch of class d raises d by ``signal``, d's look-alikes by
   ``rho · signal`` and every other class by ``rho_other · signal``. Look-alikes are the classes most
   often adjacent to d in the data set's annotations (road / pavement, car / truck), the pairs
   CLIP's text embeddings place close and its patches confuse.
2. **Class-prior bias.** CLIP scores some names higher everywhere (frequent words, stuff): a
   per-class offset ``N(0, bias_sd)``, the same in every image of the data set (seeded by it).
3. **Spatially correlated confusions between look-alikes**: patch-scale blobs (radius
   ``blob_radius`` patches) placed on the image's own regions, where the region's class loses
   ``blob_swap`` of its evidence to one of its look-alikes.
4. **Patch noise** at patch scale (correlation ``noise_corr`` patches), ``noise_sd``.
5. **CLIP's cosine range at CLIP's temperature**: cosines ``base + signal · evidence``, clipped to
   [0.1, 0.35]; ``signal`` is 0.10-0.14, so that at CLIP's logit scale (100) a correct patch wins by
   a few nats over its look-alikes and noise, as CLIP's dense predictions do (at the head's scale,
   40, the median top-two log-odds is 0.7-2, below the synthetic family's 1.7-4.4).

Every draw is seeded by ``(seed, dataset, image stem, strength)``; the class biases by the dataset.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.evidence import patch_fractions, stable_seed

__all__ = ["ClipLikeConfig", "CLIP_LIKE", "lookalikes", "clip_like_evidence"]


@dataclass(frozen=True)
class ClipLikeConfig:
    """Strength of the CLIP-like evidence (cosine units; lengths in patches of the evidence grid)."""

    base: float = 0.17  # cosine of a patch with a class it does not show
    signal: float = 0.12  # added to a class's cosine on a patch fully of that class
    rho: float = 0.5  # what a patch of a class adds to its look-alikes, as a share of signal
    rho_other: float = 0.0  # ... to every other class
    n_lookalikes: int = 2
    bias_sd: float = 0.012  # class-prior bias, per class, the same in every image of a data set
    blobs_per_100: float = 4.0  # look-alike confusion blobs per 100 patches
    blob_radius: float = 1.5
    blob_swap: float = 0.7  # share of the region's evidence that goes to the look-alike in a blob
    noise_sd: float = 0.012
    noise_corr: float = 0.7
    low: float = 0.10
    high: float = 0.35

    def replace(self, **kw) -> ClipLikeConfig:
        return dataclasses.replace(self, **kw)


# Patch accuracy of the arg-max (16 images each), mild / medium / hard: CamVid 0.87 / 0.71 / 0.51,
# COCO-Object 0.84 / 0.67 / 0.43; median evidence margin CamVid 2.0 / 1.2 / 0.8, COCO-Object
# 2.1 / 1.1 / 0.65 (the synthetic family's: easy 4.4, medium 2.5, hard 1.7).
CLIP_LIKE: dict[str, ClipLikeConfig] = {
    "mild": ClipLikeConfig(signal=0.14, rho=0.45, bias_sd=0.008, blobs_per_100=2.0, noise_sd=0.010),
    "medium": ClipLikeConfig(signal=0.12, rho=0.5, bias_sd=0.010, noise_sd=0.014),
    "hard": ClipLikeConfig(signal=0.10, rho=0.55, bias_sd=0.012, blobs_per_100=6.0, noise_sd=0.018),
}


def lookalikes(labels: list[np.ndarray], num_classes: int, n: int = 2, ignore_index: int = 255) -> np.ndarray:
    """``(K, n)`` int64: for each class the ``n`` classes most often next to it (4-neighbour pixel
    pairs across a boundary, summed over ``labels``); classes never adjacent to anything get the
    globally most frequent neighbours. Symmetric counts, so the relation is the data set's."""
    K = num_classes
    adj = np.zeros((K, K), dtype=np.int64)
    for lab in labels:
        lab = lab.astype(np.int64)
        for a, b in ((lab[:, 1:], lab[:, :-1]), (lab[1:], lab[:-1])):
            ok = (a != b) & (a < K) & (b < K) & (a != ignore_index) & (b != ignore_index)
            adj += np.bincount(a[ok] * K + b[ok], minlength=K * K).reshape(K, K)
    adj = adj + adj.T
    np.fill_diagonal(adj, -1)
    fallback = np.argsort(-adj.sum(0), kind="stable")
    out = np.zeros((K, n), dtype=np.int64)
    for c in range(K):
        order = [d for d in np.argsort(-adj[c], kind="stable") if d != c and adj[c, d] > 0]
        order += [d for d in fallback if d != c and d not in order]
        out[c] = order[:n]
    return out


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], corr: float) -> torch.Tensor:
    """White noise blurred by a Gaussian of ``corr`` patches, rescaled to unit standard deviation."""
    x = torch.from_numpy(rng.standard_normal(shape))
    if corr > 0:
        r = max(1, int(math.ceil(3 * corr)))
        t = torch.arange(-r, r + 1, dtype=x.dtype)
        k = torch.exp(-(t**2) / (2 * corr**2))
        k = k / k.sum()
        y = x.reshape(-1, 1, *shape[-2:])
        y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
        x = y.reshape(shape)
    return x / x.flatten(-2).std(dim=-1, correction=0).clamp_min(1e-12)[..., None, None]


def clip_like_evidence(label: np.ndarray, num_classes: int, grid: tuple[int, int], config: ClipLikeConfig,
                       look: np.ndarray, seed: int, dataset_seed: int, ignore_index: int = 255) -> torch.Tensor:
    """CLIP-like ``(K, h, w)`` float32 cosines for one image (the module docstring's five steps).

    Args: ``label (H, W)`` class ids; ``look (K, n)`` the look-alikes (:func:`lookalikes`);
    ``seed`` the image's (e.g. ``stable_seed(0, dataset, stem, strength)``), ``dataset_seed`` the
    data set's (the class biases)."""
    cfg = config
    K, (h, w) = num_classes, grid
    rng = np.random.default_rng(seed)
    frac = torch.from_numpy(patch_fractions(label, K, grid, ignore_index)).double()
    # 3. look-alike blobs: on a region of class d, part of d's evidence goes to a look-alike
    ev = frac.clone()
    present = [int(c) for c in np.unique(label) if c < K and c != ignore_index]
    n_blobs = rng.poisson(cfg.blobs_per_100 * h * w / 100)
    if present and n_blobs:
        yy = torch.arange(h, dtype=ev.dtype)[:, None]
        xx = torch.arange(w, dtype=ev.dtype)[None, :]
        area = frac[present].flatten(1).sum(1).numpy()
        for _ in range(n_blobs):
            d = present[rng.choice(len(present), p=area / area.sum())]
            cells = torch.nonzero(frac[d] > 0.5)
            if len(cells) == 0:
                continue
            cy, cx = cells[rng.integers(len(cells))].tolist()
            blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * cfg.blob_radius**2))
            moved = cfg.blob_swap * blob * frac[d]
            c = int(look[d, rng.integers(look.shape[1])])
            ev[d] -= moved
            ev[c] += moved
    # 1. the text space: a patch of class d raises each class c by S[d, c]
    S = np.full((K, K), cfg.rho_other)
    for d in range(K):  # a patch of class d raises d's look-alikes (not the reverse: a class that is
        S[d, look[d, :cfg.n_lookalikes]] = cfg.rho  # everyone's neighbour, like background, is no hub)
    np.fill_diagonal(S, 1.0)
    score = torch.einsum("dc,dhw->chw", torch.from_numpy(S), ev)
    # 2. class-prior bias, per data set
    bias = np.random.default_rng(dataset_seed).normal(0.0, cfg.bias_sd, K)
    # 4. patch-scale noise
    noise = _smooth_noise(rng, (K, h, w), cfg.noise_corr)
    cos = cfg.base + cfg.signal * score + torch.from_numpy(bias)[:, None, None] + cfg.noise_sd * noise
    return cos.clamp(cfg.low, cfg.high).float()


def dataset_seed(dataset: str, seed: int = 0) -> int:
    """The seed of a data set's class biases."""
    return stable_seed(seed, "clip-like bias", dataset)

"""Class evidence from a classical pixel classifier: colour and texture, a random forest.

A real model's errors that owe nothing to focus-s14 (whose attention the head walks on, and whose
features the linear probe of ``benchmarks.probe`` reads): hand-made colour and texture statistics
of each patch of the CLIP-B/16 evidence grid and a random forest (scikit-learn) fit on the patches
of one half of a data set's images (index parity) and applied to the other half, so no image's
evidence comes from a forest that saw it. Its mistakes are those of colour and texture: grey
road against grey building, green tree against green grass, small objects lost inside a patch.

Features per patch (pixels at the image's size): mean and standard deviation of the CIE-Lab-like
opponent colours (L, a, b from RGB), the mean gradient magnitude at two scales, the mean energy of
horizontal and vertical gradients, the local contrast (standard deviation of L in 5×5), and the
patch's position (row, column in [0, 1]). Class probabilities ``p`` become cosines like CLIP's
over its whole range: ``0.1 + 0.25 · p`` (a wider map than the probe's 0.15 + 0.15 · p, on purpose:
the evidence's scale differs between sources).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.evidence import logits_grid, patch_fractions

__all__ = ["ForestConfig", "patch_features", "PixelClassifierEvidence"]


@dataclass(frozen=True)
class ForestConfig:
    trees: int = 60
    max_depth: int = 14
    min_leaf: int = 4
    seed: int = 0
    low: float = 0.10
    high: float = 0.35


def _box(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over a ``k``×``k`` window (replicate border) of ``(C, H, W)``."""
    r = k // 2
    return F.avg_pool2d(F.pad(x[None], (r, r, r, r), mode="replicate"), k, stride=1)[0]


def patch_features(image: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``image (H, W, 3)`` uint8 → ``(h·w, 13)`` float32 features of each patch of ``grid``
    (patch of pixel (y, x): (⌊y·h/H⌋, ⌊x·w/W⌋), as :func:`benchmarks.evidence.patch_fractions`)."""
    rgb = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)
    r, g, b = rgb
    L = 0.299 * r + 0.587 * g + 0.114 * b
    A = r - g
    B = 0.5 * (r + g) - b
    gy1, gx1 = torch.gradient(L)
    Ls = _box(L[None], 5)[0]
    gy2, gx2 = torch.gradient(Ls)
    contrast = (_box((L * L)[None], 5)[0] - Ls**2).clamp_min(0).sqrt()
    maps = torch.stack([L, A, B, (gy1**2 + gx1**2).sqrt(), (gy2**2 + gx2**2).sqrt(), gx1.abs(), gy1.abs(), contrast])
    H, W = L.shape
    h, w = grid
    rows = (torch.arange(H) * h) // H
    cols = (torch.arange(W) * w) // W
    patch = (rows[:, None] * w + cols[None, :]).flatten()
    n = torch.bincount(patch, minlength=h * w).clamp_min(1).double()
    flat = maps.flatten(1).double()
    mean = torch.stack([torch.bincount(patch, weights=m, minlength=h * w) for m in flat]) / n
    sq = torch.stack([torch.bincount(patch, weights=m * m, minlength=h * w) for m in flat[:3]]) / n
    sd = (sq - mean[:3] ** 2).clamp_min(0).sqrt()
    yy, xx = torch.meshgrid(torch.arange(h) / max(1, h - 1), torch.arange(w) / max(1, w - 1), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()]).double()
    return torch.cat([mean, sd, pos]).T.float().numpy()


class PixelClassifierEvidence:
    """Forest evidence for every image of one data set, each fold fit lazily on first use.

    ``image(i)`` and ``label(i)`` give the data set's i-th image and annotation; ``evidence(i)`` is
    the ``(K, h, w)`` cosines of image i (on the CLIP-B/16 grid) from the forest fit on the images
    of the other index parity among ``pool``."""

    def __init__(self, n_images: int, num_classes: int, image: Callable, label: Callable,
                 cfg: ForestConfig = ForestConfig(), pool: Sequence[int] | None = None) -> None:
        self.n, self.K, self._image, self._label, self.cfg = n_images, num_classes, image, label, cfg
        self.pool = sorted(pool) if pool is not None else list(range(n_images))
        self._forest: dict[int, object] = {}

    def _fold(self, parity: int):
        if parity not in self._forest:
            from sklearn.ensemble import RandomForestClassifier

            X, y = [], []
            for i in (j for j in self.pool if j % 2 == parity):
                label = self._label(i)
                grid = logits_grid(label.shape)
                frac = patch_fractions(label, self.K, grid).reshape(self.K, -1)
                ok = frac.sum(0) > 0
                X.append(patch_features(self._image(i), grid)[ok])
                y.append(frac.argmax(0)[ok])
            if not X:
                raise ValueError(f"no image with index parity {parity} to fit the forest on")
            forest = RandomForestClassifier(n_estimators=self.cfg.trees, max_depth=self.cfg.max_depth,
                                            min_samples_leaf=self.cfg.min_leaf, random_state=self.cfg.seed, n_jobs=1)
            forest.fit(np.concatenate(X), np.concatenate(y))
            self._forest[parity] = forest
        return self._forest[parity]

    def evidence(self, i: int) -> torch.Tensor:
        forest = self._fold(1 - i % 2)
        label = self._label(i)
        grid = logits_grid(label.shape)
        proba = forest.predict_proba(patch_features(self._image(i), grid))  # (N, classes seen)
        p = np.zeros((self.K, grid[0] * grid[1]))
        p[forest.classes_] = proba.T
        cos = self.cfg.low + (self.cfg.high - self.cfg.low) * p
        return torch.from_numpy(cos.reshape(self.K, *grid)).float()

"""Real-model class evidence: a linear probe on ``focus-s14`` patch features ("probe" strength).

The synthetic strengths of :mod:`benchmarks.evidence` degrade the ground truth with a noise generator. This
one has the errors of a real model instead: a multinomial logistic regression on the final patch
tokens of the offline ViT-S/14 (the same forward that gives the affinity, cached beside it),
**fit on one half of a dataset's images and applied to the other half** (two folds by image index
parity, so every image's evidence comes from a probe that never saw it). Its mistakes are those
of a weak real classifier: look-alike classes confused, boundaries smooth, rare classes missed
(with 81 COCO-Object classes and 82 training images, some classes are seen once or never).

The class probabilities are resized to the CLIP-B/16 evidence grid (:func:`benchmarks.evidence.logits_grid`) and
mapped to CLIP's cosine range like the synthetic strengths: ``logit = 0.15 + 0.15 · p``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.evidence import EvidenceConfig, logits_grid, patch_fractions

__all__ = ["ProbeConfig", "fit_probe", "LinearProbeEvidence"]

DEFAULT_EVIDENCE = EvidenceConfig()  # its cosine range (0.15, 0.30) maps the probabilities


@dataclass(frozen=True)
class ProbeConfig:
    weight_decay: float = 1e-3  # L2 on the weights (features standardised), per sample
    iters: int = 60  # L-BFGS iterations
    seed: int = 0


def fit_probe(feats: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], num_classes: int,
              cfg: ProbeConfig = ProbeConfig()) -> Callable[[torch.Tensor], torch.Tensor]:
    """Fit ``softmax(W·standardise(f) + b)`` to soft patch targets by L-BFGS (cross-entropy + L2).

    Args:
        feats: per image ``(N_i, C)`` patch features.
        targets: per image ``(K, N_i)`` class fractions of each patch (all-zero: unlabelled patch,
            left out).
    Returns:
        ``predict(F (N, C)) -> (K, N)`` class probabilities.
    """
    X = torch.cat([f.float() for f in feats])
    Y = torch.cat([t.float().T for t in targets])  # (M, K)
    ok = Y.sum(1) > 0
    X, Y = X[ok], Y[ok] / Y[ok].sum(1, keepdim=True)
    mu, sd = X.mean(0), X.std(0).clamp_min(1e-6)
    Xs = (X - mu) / sd
    g = torch.Generator().manual_seed(cfg.seed)
    W = (0.01 * torch.randn(X.shape[1], num_classes, generator=g)).requires_grad_()
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=cfg.iters, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -(Y * torch.log_softmax(Xs @ W + b, dim=1)).sum(1).mean() + cfg.weight_decay * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    W, b = W.detach(), b.detach()

    def predict(f: torch.Tensor) -> torch.Tensor:
        return torch.softmax(((f.float() - mu) / sd) @ W + b, dim=1).T

    return predict


class LinearProbeEvidence:
    """Probe evidence for every image of one dataset, fit lazily on first use.

    ``features(i) -> (F (N, C), (h, w))`` and ``label(i) -> (H, W)`` give the dataset's i-th image;
    ``evidence(i)`` is the ``(K, h_c, w_c)`` logits of image i from the probe fit on the images
    of the other index parity (those in ``pool``)."""

    def __init__(self, n_images: int, num_classes: int, features: Callable, label: Callable,
                 cfg: ProbeConfig = ProbeConfig(), evidence: EvidenceConfig = DEFAULT_EVIDENCE,
                 pool: Sequence[int] | None = None) -> None:
        self.n, self.K, self._features, self._label = n_images, num_classes, features, label
        # the images a fold may be fit on (default all; a subset run fits on its own images only)
        self.pool = sorted(pool) if pool is not None else list(range(n_images))
        self.cfg, self.ev = cfg, evidence
        self._predict: dict[int, Callable] = {}

    def _fold(self, parity: int) -> Callable:
        """The probe fit on the images whose index parity is ``parity``."""
        if parity not in self._predict:
            feats, targets = [], []
            for i in (j for j in self.pool if j % 2 == parity):
                f, grid = self._features(i)
                feats.append(f)
                targets.append(torch.from_numpy(patch_fractions(self._label(i), self.K, grid)).reshape(self.K, -1))
            if not feats:
                raise ValueError(f"no image with index parity {parity} to fit the probe on; a probe run needs "
                                 "images of both parities (e.g. --images 4 or more)")
            self._predict[parity] = fit_probe(feats, targets, self.K, self.cfg)
        return self._predict[parity]

    def evidence(self, i: int) -> torch.Tensor:
        f, grid = self._features(i)
        p = self._fold(1 - i % 2)(f).reshape(self.K, *grid)
        label = self._label(i)
        p = F.interpolate(p[None], size=logits_grid(label.shape), mode="bilinear", antialias=True,
                          align_corners=False)[0]
        return (self.ev.cos_low + (self.ev.cos_high - self.ev.cos_low) * p).float()


def probe_accuracy(ev: torch.Tensor, label: np.ndarray, num_classes: int) -> float:
    """Patch accuracy of the evidence's arg-max against the majority class of each patch (a sanity
    number for the docs)."""
    frac = patch_fractions(label, num_classes, tuple(ev.shape[1:]))
    ok = frac.sum(0) > 0
    return float((ev.argmax(0).numpy() == frac.argmax(0))[ok].mean())

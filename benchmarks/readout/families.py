"""The evidence families the readout is chosen on and held out from (issue 26), in one table.

Each family is built differently, so a rule that holds on all of them does not hold because of one
generator's quirks:

- ``synthetic``: ``benchmarks.evidence``'s seeded degradations of the ground truth (easy, medium,
  hard); easy is the clean-evidence cell.
- ``probe``: a linear probe on the real focus-s14 patch features (``benchmarks.probe``), fit on the
  other index parity: a real model's errors, from the same ViT forward as the attention.
- ``clip``: CLIP-like cosines (``benchmarks.readout.clip_like``): a text space with look-alikes,
  class-prior bias, look-alike confusion blobs, patch noise, CLIP's narrow cosine range (mild,
  medium, hard).
- ``forest``: a random forest on colour and texture patch statistics
  (``benchmarks.readout.pixel_classifier``), fit on the other index parity: a real model's errors
  that owe nothing to focus-s14.
- ``affine``: the synthetic strengths under an affine rescaling of the logits within CLIP's
  plausible range, ``c + a·(L − c) + b`` with ``c = 0.225``, ``a`` log-uniform in [0.7, 1.4] and
  ``b`` uniform in [−0.05, 0.05] per image: a rule that reads the logits' scale sees another
  evidence strength, the head the same evidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from benchmarks.common import AttentionCache
from benchmarks.evidence import logits_grid, stable_seed
from benchmarks.readout.clip_like import CLIP_LIKE, clip_like_evidence, dataset_seed, lookalikes
from benchmarks.readout.pixel_classifier import PixelClassifierEvidence
from benchmarks.refine_real import Item, evidence_for, make_probe

# family -> its strengths, in order of increasing noise (a cell is a family, a strength, a data set)
FAMILIES: dict[str, tuple[str, ...]] = {
    "synthetic": ("easy", "medium", "hard"),
    "probe": ("probe",),
    "clip": ("mild", "medium", "hard"),
    "forest": ("forest",),
    "affine": ("easy", "medium", "hard"),
}
CLEAN = ("synthetic", "easy")  # the clean-evidence cell: the default must be plain upsampling there
AFFINE_CENTRE, AFFINE_SCALE, AFFINE_SHIFT = 0.225, (0.7, 1.4), 0.05


def strengths() -> list[tuple[str, str]]:
    """Every (family, strength), in table order."""
    return [(f, s) for f, ss in FAMILIES.items() for s in ss]


def affine_parameters(dataset: str, stem: str, strength: str, seed: int = 0) -> tuple[float, float]:
    """The image's ``(a, b)`` of the affine family (seeded by the image and strength)."""
    rng = np.random.default_rng(stable_seed(seed, "affine", dataset, stem, strength))
    lo, hi = AFFINE_SCALE
    a = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return a, float(rng.uniform(-AFFINE_SHIFT, AFFINE_SHIFT))


class FamilyEvidence:
    """The evidence of every family for the images of one data set.

    ``pool``: the image indices of the run (the probe and the forest of each half are fit on the
    other half's images among them). The probe reads focus-s14 features from ``cache``."""

    def __init__(self, dset: Any, cache: AttentionCache, pool: Sequence[int], look_every: int = 1) -> None:
        self.name = dset.name
        self.num_classes = dset.num_classes
        self.probe = make_probe(dset, cache, pool=pool)
        self.forest = PixelClassifierEvidence(len(dset), dset.num_classes, lambda i: dset[i].load_image(),
                                              lambda i: dset[i].load_label(), pool=pool)
        # the look-alikes are the data set's (every annotation of it), like CLIP's fixed text space
        self.look = lookalikes([dset[i].load_label() for i in range(0, len(dset), look_every)], dset.num_classes)

    def evidence(self, it: Item, family: str, strength: str, seed: int = 0) -> torch.Tensor:
        """``(K, h, w)`` evidence of ``it`` on the CLIP-B/16 grid."""
        if family == "synthetic":
            return evidence_for(it, strength, seed)
        if family == "probe":
            return self.probe.evidence(it.index)
        if family == "forest":
            return self.forest.evidence(it.index)
        if family == "clip":
            return clip_like_evidence(it.label, it.num_classes, logits_grid(it.label.shape), CLIP_LIKE[strength],
                                      self.look, stable_seed(seed, it.dataset, it.stem, "clip", strength),
                                      dataset_seed(it.dataset, seed))
        if family == "affine":
            a, b = affine_parameters(it.dataset, it.stem, strength, seed)
            L = evidence_for(it, strength, seed)
            return (AFFINE_CENTRE + a * (L.double() - AFFINE_CENTRE) + b).float()
        raise ValueError(f"unknown evidence family {family!r}; choose from {list(FAMILIES)}")

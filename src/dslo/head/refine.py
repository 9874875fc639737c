"""The whole head: logits + affinity + image → label map (SPEC §1, §4)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ._checks import as_float, check_finite, check_square
from .config import HeadConfig
from .evidence import evidence_margin, evidence_posterior
from .modes import MODES, discrepancy, fusion_rule, get_mode, transport_matrix
from .readout import candidate_classes, class_argmax, fuse, normalize_maps
from .seeds import early_rejection, nms, normalize, recover_seeds
from .upsample import guide_image, joint_bilateral_upsample, upsample_argmax

__all__ = ["HeadConfig", "MODES", "RefineResult", "discrepancy", "image_config", "image_fusion", "image_fusion_weight", "infer_grid", "read_out",
           "refine", "resize_to_grid", "seed_classes", "transport_matrix", "upsample_maps"]

@dataclass
class RefineResult:
    """``labels (H, W)`` int64 indices into the K given classes; ``scores (K', H, W)`` the
    upsampled per-class scores (the discrepancy maps with ``fusion="none"``, the fused
    ``log P + λ·D̂`` otherwise); ``kept (K',)`` the class index of each score row; ``weight`` the
    fused readout's λ for this image (None without fusion); ``seeds (K'', N)`` the class
    distributions the head starts from (NMS seeds, zero where suppressed; with λ = 0 the readout does
    not read them) and ``seed_kept (K'',)`` their class indices, None for a mode without the head,
    so a front end shows the head's steps without running it again."""

    labels: torch.Tensor
    scores: torch.Tensor
    kept: torch.Tensor
    grid: tuple[int, int] = field(default=(0, 0))
    weight: float | None = None
    seeds: torch.Tensor | None = None
    seed_kept: torch.Tensor | None = None


def infer_grid(n: int, like: tuple[int, int]) -> tuple[int, int]:
    """The ``(h, w)`` with ``h·w = n`` whose aspect ratio is closest to ``like``'s (within a factor
    of 2; otherwise the shapes cannot belong together and a ValueError names both)."""
    target = like[0] / like[1]
    best = None
    for h in range(1, int(math.isqrt(n)) + 1):
        if n % h:
            continue
        for hh, ww in ((h, n // h), (n // h, h)):
            err = abs(math.log((hh / ww) / target))
            if best is None or err < best[0]:
                best = (err, (hh, ww))
    assert best is not None
    if best[0] > math.log(2.0):
        raise ValueError(
            f"cannot match logits grid {tuple(like)} with an affinity over N = {n} patches "
            f"(closest grid {best[1]}); pass grid=(h, w) explicitly"
        )
    return best[1]


def seed_classes(flat: torch.Tensor, cfg: HeadConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K, N)`` patch logits → ``(a (K', N), kept (K',))``: NMS seeds, early rejection of
    classes, and each kept class's distribution over patches; ``kept`` are its class indices."""
    masked, keep = nms(flat, cfg.nms_scale, cfg.nms_threshold)
    if cfg.recover_threshold is not None:
        keep = recover_seeds(flat, keep, cfg.nms_scale, cfg.recover_threshold)
        masked = flat.masked_fill(~keep, float("-inf"))
    if not keep.any():
        # Possible only when θ > 1/K and every patch is ambiguous: seed each patch's arg-max class
        # instead, so the head always returns a segmentation.
        keep = flat == flat.amax(dim=0, keepdim=True)
        masked = flat.masked_fill(~keep, float("-inf"))
    kept = early_rejection(flat, keep, cfg.top_k, cfg.top_k_above, cfg.nms_scale)
    a, _ = normalize(masked[kept], cfg.norm_scale)
    return a, kept


def resize_to_grid(logits: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(K, h, w)`` → ``(K, *grid)``: bilinear when the grids differ, unchanged otherwise."""
    if tuple(logits.shape[1:]) == tuple(grid):
        return logits
    return F.interpolate(logits[None], size=tuple(grid), mode="bilinear", align_corners=False)[0]


def upsample_maps(maps: torch.Tensor, image: torch.Tensor, cfg: HeadConfig) -> torch.Tensor:
    """``(K', h, w)`` → ``(K', H, W)`` with the configured upsampler."""
    H, W = image.shape[:2]
    if cfg.upsample == "bilinear":
        return F.interpolate(maps[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    guide = image
    if cfg.jbu_max_side and max(H, W) > cfg.jbu_max_side:
        s = cfg.jbu_max_side / max(H, W)
        size = (max(1, round(H * s)), max(1, round(W * s)))
        guide = F.interpolate(image.permute(2, 0, 1)[None], size=size, mode="bilinear", antialias=True)[0]
        guide = guide.permute(1, 2, 0)
    out = joint_bilateral_upsample(maps, guide, cfg.sigma_spatial, cfg.sigma_range, cfg.jbu_radius)
    if out.shape[1:] != (H, W):
        out = F.interpolate(out[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    return out


def refine(
    logits: torch.Tensor,
    affinity: torch.Tensor,
    image: Any,
    mode: str = "mv",
    *,
    grid: tuple[int, int] | None = None,
    config: HeadConfig | None = None,
    **settings: Any,
) -> RefineResult:
    """Segment from coarse class logits and patch affinities (the DSLO head).

    Args:
        logits: ``(K, h, w)`` class logits (CLIP cosine similarities). Resized bilinearly to the
            affinity grid when that grid differs.
        affinity: ``(N, N)`` row-stochastic patch affinity on the grid ``grid`` (``N = h_a·w_a``);
            without ``grid``, the logits' grid when ``N = h·w``, otherwise the factorisation of N
            closest to the logits' aspect ratio.
        image: ``(H, W, 3)`` uint8 numpy / PIL, or a float tensor in [0, 1] (``(H, W, 3)`` or
            ``(3, H, W)``): the output size and the JBU guide.
        mode: a key of :data:`dslo.head.modes.MODE_TABLE`: ``"mv"`` maximum velocity, ``"op"``
            optimal path, ``"kl"`` KL ablation, ``"none"`` bilinear upsampling of the logits and
            arg-max (no head).
        config / settings: :class:`HeadConfig` and/or its fields as keywords.
    Returns:
        :class:`RefineResult` on the logits' device.
    """
    cfg = (config or HeadConfig()).replace(**settings)
    head_mode = get_mode(mode)
    L = as_float(logits, "logits")
    if L.ndim != 3 or L.shape[0] == 0:
        raise ValueError(f"logits must be (K, h, w) with K >= 1, got shape {tuple(L.shape)}")
    check_finite(L, "logits")
    A = as_float(affinity, "affinity").to(device=L.device, dtype=L.dtype)
    check_square(A, "affinity")
    check_finite(A, "affinity")
    img = guide_image(image, device=L.device, dtype=L.dtype)
    K = L.shape[0]

    if not head_mode.runs_head:
        up = F.interpolate(L[None], size=img.shape[:2], mode="bilinear", align_corners=False)[0]
        kept = torch.arange(K, device=L.device)
        return RefineResult(up.argmax(0), up, kept, tuple(L.shape[1:]))

    N = A.shape[0]
    if grid is None:
        grid = tuple(L.shape[1:]) if L.shape[1] * L.shape[2] == N else infer_grid(N, tuple(L.shape[1:]))
    if grid[0] * grid[1] != N:
        raise ValueError(f"grid {tuple(grid)} does not match affinity of shape {tuple(A.shape)}")
    L = resize_to_grid(L, grid)

    flat = L.reshape(K, N)
    lam, seed_cfg = image_fusion(flat, cfg, mode)
    a, kept = seed_classes(flat, seed_cfg)  # O(K·N): kept for the result even when unread
    if lam == 0:  # clean evidence decides alone: the head's maps would not be read, so skip them
        res = read_out(logits, flat, None, None, tuple(grid), img, cfg, mode, weight=lam)
    else:
        D = discrepancy(a, A, mode, cfg, matrix=transport_matrix(A, mode, cfg))
        res = read_out(logits, flat, D, kept, tuple(grid), img, cfg, mode, weight=lam)
    res.seeds, res.seed_kept = a, kept
    return res


def read_out(logits: torch.Tensor, flat: torch.Tensor, maps: torch.Tensor | None, kept: torch.Tensor | None,
             grid: tuple[int, int], image: torch.Tensor, cfg: HeadConfig, mode: str = "mv",
             weight: float | None = None) -> RefineResult:
    """The readout stage of :func:`refine`: discrepancy maps → upsampled scores → labels.

    Args:
        logits: ``(K, h, w)`` the evidence as given (its own grid; the fused readout upsamples its
            log-posterior from there, as plain upsampling does).
        flat: ``(K, N)`` the evidence on the head's grid ``grid``.
        maps: ``(K', N)`` discrepancy maps of the classes ``kept (K',)``; unused (may be None)
            when the fused readout's λ is 0. λ = ∞ (a rule's level) is the paper's readout,
            ``argmax_c JBU(D_c)`` over the kept classes, as with ``fusion="none"``.
        image: ``(H, W, 3)`` float guide (:func:`dslo.head.guide_image`).
        mode: the discrepancy that made ``maps`` (picks the default λ rule).
        weight: λ when already computed (:func:`image_fusion_weight`); None: computed here.
    Returns: :class:`RefineResult`.
    """
    lam = None
    if cfg.fusion != "none":
        lam = image_fusion_weight(flat, cfg, mode) if weight is None else weight
        if lam is None:
            raise ValueError(f"mode {mode!r} has no fusion rule: pass weight= or use fusion='none'")
    if lam is None or math.isinf(lam):  # the paper's readout (λ = ∞: the head's maps alone decide)
        scores = upsample_maps(maps.reshape(len(kept), *grid), image, cfg)
        return RefineResult(kept[class_argmax(scores)], scores, kept, tuple(grid), lam)
    log_post = evidence_posterior(as_float(logits, "logits").to(flat), cfg.nms_scale, log=True)
    if lam == 0:
        # Clean evidence decides alone: every class competes, as in plain upsampling, whose labels
        # these are (bilinear interpolation is linear, so the arg-max of the upsampled log-posterior
        # is the arg-max of the upsampled logits); the maps need no upsampling. Scores are kept
        # for the classes that win a pixel only (K x H x W would be 1.2 GB at K = 150, 2048 x 1024).
        labels = upsample_argmax(log_post, image.shape[:2])
        cand = labels.unique(sorted=True)
        scores = F.interpolate(log_post[cand][None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]
        return RefineResult(labels, scores, cand, tuple(grid), lam)
    cand = candidate_classes(log_post, kept, cfg.fusion_extra)
    log_post = F.interpolate(log_post[cand][None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    up = upsample_maps(normalize_maps(maps).reshape(len(kept), *grid), image, cfg)
    scores = fuse(log_post, up, torch.searchsorted(cand, kept), lam, inplace=True)  # log_post: ours
    return RefineResult(cand[class_argmax(scores)], scores, cand, tuple(grid), lam)


def image_fusion(flat: torch.Tensor, cfg: HeadConfig, mode: str = "mv") -> tuple[float | None, HeadConfig]:
    """How the head treats one image's ``(K, N)`` evidence: the fused readout's λ and the settings
    it seeds with, both from the same step of the per-image rule.

    λ: ``cfg.fusion_weight`` when set, otherwise the step of the mode's rule
    (:func:`dslo.head.modes.fusion_rule`: ``Mode.fusion_rule`` with the ``fusion_*`` settings of
    ``cfg``) that the evidence's :func:`~dslo.head.evidence_margin` falls in; None with
    ``fusion="none"`` or a mode without a rule. Settings: ``cfg``, with the recovery seeds switched
    off when that step's recovery flag is off; ``cfg`` unchanged with ``fusion="none"`` or a fixed
    ``fusion_weight``."""
    if cfg.fusion == "none":
        return None, cfg
    lam, step, rule = _weight_and_step(flat, cfg, mode)
    if rule is None or step is None or cfg.recover_threshold is None or rule.recover[step]:
        return lam, cfg
    return lam, cfg.replace(recover_threshold=None)


def image_fusion_weight(flat: torch.Tensor, cfg: HeadConfig, mode: str = "mv") -> float | None:
    """λ of the fused readout for one image's ``(K, N)`` evidence (:func:`image_fusion`; computed
    by the rule even with ``fusion="none"``, which does not read it; None for a mode without a
    rule)."""
    return _weight_and_step(flat, cfg, mode)[0]


def image_config(flat: torch.Tensor, cfg: HeadConfig, mode: str = "mv") -> HeadConfig:
    """The settings the head seeds one image's ``(K, N)`` evidence with (:func:`image_fusion`)."""
    return image_fusion(flat, cfg, mode)[1]


def _weight_and_step(flat: torch.Tensor, cfg: HeadConfig, mode: str):
    """λ, the rule's step (None for a fixed ``fusion_weight``) and the rule, from one evidence margin."""
    if cfg.fusion_weight is not None:
        return float(cfg.fusion_weight), None, None
    rule = fusion_rule(cfg, mode)
    if rule is None:
        return None, None, None
    step = rule.step(evidence_margin(flat, cfg.nms_scale))
    return float(rule.levels[step]), step, rule

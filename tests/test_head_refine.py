"""The whole head (`refine`): edge cases with clear outcomes and a semantic test on a synthetic
image where the raw arg-max fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dslo.head import MODE_TABLE, MODES, HeadConfig, refine, seed_classes


def row_stochastic(n: int, seed: int = 0) -> torch.Tensor:
    A = torch.rand(n, n, generator=torch.Generator().manual_seed(seed)) + 0.01
    return A / A.sum(1, keepdim=True)


def local_affinity(h: int, w: int, sigma: float = 1.0) -> torch.Tensor:
    """Patches attend to their grid neighbours (a Gaussian of the grid distance), rows sum to 1."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    p = torch.stack([yy.flatten(), xx.flatten()], 1).float()
    A = torch.exp(-torch.cdist(p, p) ** 2 / (2 * sigma**2))
    return A / A.sum(1, keepdim=True)


def test_one_class_labels_everything_with_it():
    for mode in MODES:
        r = refine(torch.rand(1, 4, 4), row_stochastic(16), np.zeros((9, 11, 3), np.uint8), mode=mode)
        assert r.labels.shape == (9, 11) and (r.labels == 0).all() and r.kept.tolist() == [0]


def test_class_with_every_patch_suppressed_never_wins():
    L = torch.rand(3, 5, 5) * 0.05 + 0.2
    L[1] -= 0.2  # class 1 loses everywhere
    for mode in (m for m, spec in MODE_TABLE.items() if spec.runs_head):
        r = refine(L, row_stochastic(25), np.zeros((20, 20, 3), np.uint8), mode=mode)
        assert 1 not in r.kept.tolist() and not (r.labels == 1).any()
        assert r.scores.shape == (len(r.kept), 20, 20)


def test_patch_with_all_classes_suppressed_still_gets_a_label():
    # With θ = 0.9, the ambiguous middle column has no survivor: it is labelled from its neighbours.
    L = torch.zeros(2, 3, 3)
    L[0, :, 0] = 0.3
    L[1, :, 2] = 0.3
    L[:, :, 1] = 0.25
    r = refine(L, row_stochastic(9), np.zeros((3, 3, 3), np.uint8), mode="mv", nms_threshold=0.9,
               upsample="bilinear")  # same size: the labels are the patches' own
    assert r.labels.shape == (3, 3) and set(r.labels.unique().tolist()) <= {0, 1}
    assert (r.labels[:, 0] == 0).all() and (r.labels[:, 2] == 1).all()  # the seeds keep their class


def test_every_patch_ambiguous_falls_back_to_argmax_seeds():
    L = torch.full((4, 3, 3), 0.2)
    L[2, 1, 1] = 0.21
    cfg = HeadConfig(nms_threshold=0.9, upsample="bilinear")
    a, kept = seed_classes(L.reshape(4, 9), cfg)
    # The fallback seeds each patch's arg-max class(es): only class 2 at the centre patch (4), all
    # four tied classes elsewhere; never every class everywhere.
    assert kept.tolist() == [0, 1, 2, 3]
    assert (a[:, 4] > 0).tolist() == [False, False, True, False]
    assert (a[:, [0, 1, 2, 3, 5, 6, 7, 8]] > 0).all()
    r = refine(L, row_stochastic(9), np.zeros((3, 3, 3), np.uint8), mode="mv", config=cfg)
    assert torch.isfinite(r.scores).all() and r.labels.shape == (3, 3)
    assert r.labels[1, 1] == 2  # seeding every class at the centre too would tie it to class 0


def test_single_patch():
    for mode in MODES:
        r = refine(torch.tensor([[[0.2]], [[0.3]]]), torch.ones(1, 1), np.zeros((5, 7, 3), np.uint8), mode=mode)
        assert (r.labels == 1).all()


@pytest.mark.parametrize("mode", MODES)
def test_non_square_grid_and_odd_image_sizes(mode):
    L = 0.2 + 0.01 * torch.rand(3, 5, 9)
    for c in range(3):  # class c leads in columns 3c..3c+2
        L[c, :, 3 * c : 3 * c + 3] += 0.1
    r = refine(L, local_affinity(5, 9), np.zeros((37, 71, 3), np.uint8), mode=mode)
    assert r.labels.shape == (37, 71) and r.labels.dtype == torch.int64
    centres = [r.labels[18, round((3 * c + 1.5) * 71 / 9)].item() for c in range(3)]
    assert centres == [0, 1, 2], centres


def test_logits_on_another_grid_are_resized_to_the_affinity_grid():
    r = refine(torch.rand(3, 6, 10), row_stochastic(12 * 20), np.zeros((24, 40, 3), np.uint8))
    assert r.grid == (12, 20)
    r = refine(torch.rand(3, 6, 10), row_stochastic(15), np.zeros((24, 40, 3), np.uint8), grid=(3, 5))
    assert r.grid == (3, 5)


def test_mismatched_shapes_name_both_shapes():
    with pytest.raises(ValueError, match=r"\(6, 10\).*13"):
        refine(torch.rand(3, 6, 10), row_stochastic(13), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(16, 16\)"):
        refine(torch.rand(3, 4, 4), row_stochastic(16), np.zeros((8, 8, 3), np.uint8), grid=(2, 2))
    with pytest.raises(ValueError, match="square"):
        refine(torch.rand(3, 4, 4), torch.rand(16, 15), np.zeros((8, 8, 3), np.uint8))
    from dslo.head import optimal_path

    with pytest.raises(ValueError, match=r"\(2, 5\).*\(4, 4\)"):
        optimal_path(torch.rand(2, 5), torch.rand(4, 4))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_raise_clear_errors(bad):
    L = torch.rand(2, 4, 4)
    L[0, 1, 1] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        refine(L, row_stochastic(16), np.zeros((8, 8, 3), np.uint8))
    A = row_stochastic(16)
    A[3, 3] = bad
    with pytest.raises(ValueError, match="affinity.*NaN or infinite"):
        refine(torch.rand(2, 4, 4), A, np.zeros((8, 8, 3), np.uint8))


def test_unknown_settings_and_modes_are_rejected():
    with pytest.raises(TypeError, match="unknown head setting"):
        refine(torch.rand(2, 2, 2), row_stochastic(4), np.zeros((4, 4, 3), np.uint8), dleta=0.3)
    with pytest.raises(ValueError, match="unknown mode"):
        refine(torch.rand(2, 2, 2), row_stochastic(4), np.zeros((4, 4, 3), np.uint8), mode="xx")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_inputs(dtype):
    L = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    A = row_stochastic(16)
    ref = refine(L, A, np.zeros((8, 8, 3), np.uint8), mode="mv")
    r = refine(L.to(dtype), A.to(dtype), np.zeros((8, 8, 3), np.uint8), mode="mv")
    want = torch.float64 if dtype == torch.float64 else torch.float32
    assert r.scores.dtype == want and torch.isfinite(r.scores).all()
    if dtype == torch.float64:
        assert torch.equal(r.labels, ref.labels)


def test_image_forms_agree():
    img = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    L, A = torch.rand(2, 3, 3), row_stochastic(9)
    base = refine(L, A, img).scores
    for form in (Image.fromarray(img), torch.from_numpy(img).float() / 255, torch.from_numpy(img).permute(2, 0, 1).float() / 255):
        assert torch.allclose(refine(L, A, form).scores, base, atol=1e-5)


def test_config_object_and_keyword_overrides():
    L, A, img = torch.rand(2, 3, 3), row_stochastic(9), np.zeros((6, 6, 3), np.uint8)
    cfg = HeadConfig(delta=0.5)
    assert torch.equal(refine(L, A, img, config=cfg).scores, refine(L, A, img, delta=0.5).scores)


# ---------------------------------------------------------------- semantic test
def _synthetic_scene(seed: int = 0):
    """A 96×96 image with three regions (sky band, a disc, ground), a 16×16 patch grid, coarse noisy
    logits in the CLIP cosine range and a block-structured affinity."""
    rng = np.random.default_rng(seed)
    H = W = 96
    yy, xx = np.mgrid[:H, :W]
    gt = np.full((H, W), 2)
    gt[yy < 30] = 0
    gt[(yy - 60) ** 2 + (xx - 45) ** 2 < 20**2] = 1
    colours = np.array([[90, 150, 230], [200, 60, 40], [70, 120, 50]], dtype=np.float64)
    image = np.clip(colours[gt] + rng.normal(0, 8, (H, W, 3)), 0, 255).astype(np.uint8)

    h = w = 16
    s = H // h
    patch_gt = gt.reshape(h, s, w, s).transpose(0, 2, 1, 3).reshape(h, w, -1)
    frac = np.stack([(patch_gt == c).mean(-1) for c in range(3)])  # (3, h, w) area fractions
    # Coarse localisation: blur the evidence, then add strong spatially-correlated noise.
    t = torch.from_numpy(frac)[None].float()
    t = torch.nn.functional.avg_pool2d(t, 5, 1, 2, count_include_pad=False)[0]
    noise = torch.nn.functional.avg_pool2d(torch.from_numpy(rng.normal(0, 1, (1, 3, h, w))).float(), 3, 1, 1)[0]
    logits = 0.15 + 0.1 * t + 0.08 * noise
    # Block-structured affinity: patches attend to patches of the same region.
    lab = patch_gt.reshape(h * w, -1)
    dominant = np.array([np.bincount(x, minlength=3).argmax() for x in lab])
    A = np.where(dominant[:, None] == dominant[None, :], 1.0, 0.02) + rng.uniform(0, 0.05, (h * w, h * w))
    A = torch.from_numpy(A / A.sum(1, keepdims=True)).float()
    return image, gt, logits, A


def _miou(pred, gt, k=3):
    ious = []
    for c in range(k):
        inter = ((pred == c) & (gt == c)).sum()
        union = ((pred == c) | (gt == c)).sum()
        ious.append(inter / union)
    return float(np.mean(ious))


def test_head_recovers_regions_where_raw_argmax_fails():
    image, gt, logits, A = _synthetic_scene()
    raw = _miou(refine(logits, A, image, mode="none").labels.numpy(), gt)
    assert raw < 0.8, raw
    for mode in ("mv", "op"):
        # the paper's readout: the head alone decides
        paper = _miou(refine(logits, A, image, mode=mode, fusion="none").labels.numpy(), gt)
        assert paper >= 0.9, (mode, paper, raw)
        # the default fused readout keeps part of the evidence (λ from its margin, 2.6 here: the
        # middle step, λ = 6 / 4; this noise is spatially correlated, so the evidence looks
        # confident where it is wrong)
        fused = _miou(refine(logits, A, image, mode=mode).labels.numpy(), gt)
        assert fused > raw + 0.05, (mode, fused, raw)


def test_head_config_is_frozen_and_checked_at_construction():
    import dataclasses

    from dslo.errors import SettingsError

    assert issubclass(SettingsError, TypeError) and issubclass(SettingsError, ValueError)
    cfg = HeadConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.eps = 0.2
    bad = [dict(nms_threshold=1.0), dict(nms_threshold=0.0), dict(delta=0.0), dict(eps=-0.1),
           dict(eps="0.1"), dict(sigma_range=float("nan")), dict(top_k=0), dict(max_steps=0),
           dict(upsample="bicubic"), dict(readout="primal"), dict(op_cost="cosine"), dict(interpolate=1),
           dict(fusion="posterior"), dict(fusion_weight=-1.0), dict(fusion_levels=(0.0, -1.0, 2.0)),
           dict(fusion_thresholds=(3.0, 1.0)), dict(fusion_thresholds=(1.0,), fusion_levels=(0.0, 1.0, 2.0)),
           dict(fusion_levels="many"), dict(fusion_extra=-1), dict(recover_threshold=0.0),
           dict(recover_threshold=1.0)]
    for settings in bad:
        with pytest.raises(SettingsError):
            HeadConfig(**settings)
        with pytest.raises(SettingsError):
            refine(torch.rand(2, 3, 3), row_stochastic(9), np.zeros((3, 3, 3), np.uint8), **settings)
    with pytest.raises(SettingsError, match="did you mean bilinear"):
        cfg.replace(upsample="bilnear")
    assert cfg.replace(top_k=None, eps=1).changed() == {"top_k": None, "eps": 1}
    # the paper's head: the fused readout and the recovery seeds switched off
    assert cfg.replace(fusion="none", recover_threshold=None).changed() == {"fusion": "none", "recover_threshold": None}

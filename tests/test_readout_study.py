"""The readout study of issue 26 (benchmarks/readout/): each evidence family does what it says,
the records are what refine() returns, the statistics called scale-free are, and the design search
finds what a naive loop over every rule finds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.evidence import patch_fractions
from benchmarks.readout import leave_one_out as loo
from benchmarks.readout.clip_like import CLIP_LIKE, ClipLikeConfig, clip_like_evidence, lookalikes
from benchmarks.readout.families import AFFINE_SCALE, AFFINE_SHIFT, affine_parameters
from benchmarks.readout.pixel_classifier import ForestConfig, PixelClassifierEvidence, patch_features
from benchmarks.readout.records import LAMBDAS, jbu_candidates, record, statistics
from benchmarks.readout.select_readout import confusion, dense
from benchmarks.refine_real import Item
from dslo.head import HeadConfig, joint_bilateral_upsample, refine, resize_to_grid


def _label(seed: int = 0, shape=(48, 64), K: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, K - 1, size=(4, 4))
    lab = np.kron(coarse, np.ones((12, 16), dtype=np.int64))[: shape[0], : shape[1]]
    lab[20:22] = 255
    return lab


def _affinity(n: int, seed: int = 0) -> torch.Tensor:
    A = torch.rand(n, n, generator=torch.Generator().manual_seed(seed)) + 0.05
    return A / A.sum(1, keepdim=True)


# ---------------------------------------------------------------- the CLIP-like family
def test_lookalikes_are_the_most_adjacent_classes_by_a_naive_count():
    labs = [_label(s) for s in range(3)]
    K = 5
    got = lookalikes(labs, K, n=2)
    count = np.zeros((K, K))
    for lab in labs:
        H, W = lab.shape
        for y in range(H):
            for x in range(W):
                for dy, dx in ((0, 1), (1, 0)):
                    if y + dy < H and x + dx < W:
                        a, b = lab[y, x], lab[y + dy, x + dx]
                        if a != b and a < K and b < K:
                            count[a, b] += 1
                            count[b, a] += 1
    for c in range(K):
        if count[c].max() > 0:
            assert got[c, 0] == int(np.argmax(count[c]))  # the most frequent neighbour first
        assert c not in got[c]


def test_clip_like_evidence_is_seeded_in_clips_cosine_range_and_favours_the_true_class():
    lab, K, grid = _label(), 5, (6, 8)
    look = lookalikes([lab], K)
    cfg = CLIP_LIKE["mild"]
    a = clip_like_evidence(lab, K, grid, cfg, look, seed=1, dataset_seed=7)
    b = clip_like_evidence(lab, K, grid, cfg, look, seed=1, dataset_seed=7)
    assert torch.equal(a, b) and not torch.equal(a, clip_like_evidence(lab, K, grid, cfg, look, 2, 7))
    assert a.shape == (K, *grid) and float(a.min()) >= cfg.low and float(a.max()) <= cfg.high
    frac = patch_fractions(lab, K, grid)
    pure = frac.max(0) == 1
    assert (a.numpy().argmax(0) == frac.argmax(0))[pure].mean() > 0.8


def test_clip_like_without_noise_raises_exactly_the_look_alikes():
    lab, K, grid = np.zeros((32, 32), np.int64), 4, (4, 4)  # every patch class 0
    look = np.array([[2, 3], [0, 2], [0, 1], [0, 1]])
    cfg = ClipLikeConfig(bias_sd=0.0, noise_sd=0.0, blobs_per_100=0.0, n_lookalikes=1)
    L = clip_like_evidence(lab, K, grid, cfg, look, seed=0, dataset_seed=0)
    want = [cfg.base + cfg.signal, cfg.base, cfg.base + cfg.rho * cfg.signal, cfg.base]  # class 0 raises 2 only
    torch.testing.assert_close(L[:, 0, 0], torch.tensor(want, dtype=torch.float32))


def test_clip_like_class_bias_is_the_data_sets_not_the_images():
    lab, K, grid = _label(), 5, (6, 8)
    look = lookalikes([lab], K)
    cfg = ClipLikeConfig(noise_sd=0.0, blobs_per_100=0.0, bias_sd=0.02)
    d1 = clip_like_evidence(lab, K, grid, cfg, look, seed=1, dataset_seed=7) - \
        clip_like_evidence(lab, K, grid, cfg.replace(bias_sd=0.0), look, seed=1, dataset_seed=7)
    d2 = clip_like_evidence(lab, K, grid, cfg, look, seed=5, dataset_seed=7) - \
        clip_like_evidence(lab, K, grid, cfg.replace(bias_sd=0.0), look, seed=5, dataset_seed=7)
    torch.testing.assert_close(d1, d2)  # same offsets in every image of the data set
    assert float(d1.std()) > 0


# ---------------------------------------------------------------- the forest family
def test_patch_features_are_patch_means_by_a_naive_loop():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    f = patch_features(img, (4, 5))
    assert f.shape == (20, 13)  # 8 channel means, 3 colour standard deviations, 2 positions
    L = (0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]) / 255.0
    for p in range(20):
        py, px = divmod(p, 5)
        ys = [y for y in range(20) if y * 4 // 20 == py]
        xs = [x for x in range(30) if x * 5 // 30 == px]
        assert f[p, 0] == pytest.approx(L[np.ix_(ys, xs)].mean(), abs=1e-5)
    assert f[:, -2].min() == 0.0 and f[:, -2].max() == 1.0  # the row position


def test_forest_evidence_of_an_image_never_sees_its_own_label():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    labels = [np.where(im[..., 0] > 127, 1, 0) for im in images]
    small = ForestConfig(trees=5, max_depth=4)
    ev = PixelClassifierEvidence(6, 2, lambda i: images[i], lambda i: labels[i], small)
    a = ev.evidence(3)
    changed = list(labels)
    changed[3] = 1 - labels[3]  # image 3's own label: not read by the forest that scores it
    ev2 = PixelClassifierEvidence(6, 2, lambda i: images[i], lambda i: changed[i], small)
    torch.testing.assert_close(a, ev2.evidence(3))
    assert float(a.min()) >= 0.1 and float(a.max()) <= 0.35


# ---------------------------------------------------------------- the affine family and the statistics
def test_affine_parameters_stay_in_clips_plausible_range():
    ab = [affine_parameters("camvid", f"img{i}", "medium") for i in range(200)]
    a, b = np.array(ab).T
    assert a.min() >= AFFINE_SCALE[0] and a.max() <= AFFINE_SCALE[1] and np.abs(b).max() <= AFFINE_SHIFT
    assert a.min() < 0.8 and a.max() > 1.25  # the range is used
    assert affine_parameters("camvid", "img0", "medium") == ab[0]


def test_scale_free_statistics_do_not_move_under_an_affine_map_and_the_margin_does():
    L = 0.15 + 0.15 * torch.rand(5, 6, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    A = _affinity(48).double()
    grid = (6, 8)
    base = statistics(L, L.reshape(5, -1), A, grid, 40.0)
    moved = 0.225 + 1.3 * (L - 0.225) - 0.04
    st = statistics(moved, moved.reshape(5, -1), A, grid, 40.0)
    for name in loo.SCALE_FREE:
        assert st[name] == pytest.approx(base[name], rel=1e-9), name
    assert st["margin"] == pytest.approx(1.3 * base["margin"], rel=1e-9)


# ---------------------------------------------------------------- records
def test_jbu_candidates_keep_every_winner():
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        S = torch.softmax(8 * torch.rand(9, 5, 7, generator=g), 0)
        img = torch.rand(40, 56, 3, generator=g)
        full = joint_bilateral_upsample(S, img).argmax(0)
        cand = jbu_candidates(S, 3)
        assert set(full.unique().tolist()) <= set(cand.tolist())


def test_a_record_is_what_refine_returns():
    lab, K, grid = _label(1), 5, (6, 8)
    img = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    L = 0.15 + 0.15 * torch.from_numpy(patch_fractions(lab, K, (6, 8))) + 0.03 * torch.rand(K, 6, 8)
    A = _affinity(48, 1)
    it = Item("toy", "x", img, lab, K, 0)
    r = record(it, L, A, grid, HeadConfig())

    def same(key, labels):
        assert np.array_equal(dense(r["conf"][key]), dense(confusion(labels.numpy(), lab, K))), key

    same("bilinear", refine(L, A, img, mode="none").labels)
    same(("mv", "paper"), refine(L, A, img, config=HeadConfig.paper()).labels)
    for lam in (LAMBDAS[0], 6.0, 1e6):
        same(("mv", "norec", lam), refine(L, A, img, fusion_weight=lam, recover_threshold=None).labels)
        same(("mv", "rec", lam), refine(L, A, img, fusion_weight=lam).labels)
    X = torch.softmax(40 * resize_to_grid(L, grid), 0)
    same("jbu", joint_bilateral_upsample(X, img).argmax(0))


# ---------------------------------------------------------------- the design search
def _toy_cells(seed: int = 0, n: int = 6, K: int = 3) -> list:
    """Cells of two families: per image a statistic and confusions of plain, JBU, the paper and the
    fused variants, each better or worse by an image-specific amount that follows the statistic."""
    rng = np.random.default_rng(seed)
    cells = []
    for fam, s in (("synthetic", "easy"), ("synthetic", "hard"), ("probe", "probe")):
        parts = {v: [] for v in [loo.PLAIN, "jbu", loo.PAPER, *loo.FUSED, *loo.KAPPA]}
        stats = []
        for _ in range(n):
            x = rng.uniform(0, 1)
            label = rng.integers(0, K, size=(8, 8))

            def noisy(p, label=label):
                flip = rng.random(label.shape) < np.clip(p, 0.0, 1.0)
                return loo._parts(confusion(np.where(flip, (label + 1) % K, label), label, K))

            parts[loo.PLAIN].append(noisy(0.5 - 0.4 * x))
            parts["jbu"].append(noisy(0.45 - 0.3 * x))
            parts[loo.PAPER].append(noisy(0.3))
            for v in loo.FUSED + loo.KAPPA:
                parts[v].append(noisy(0.35 - 0.2 * x + 0.01 * np.log1p(min(v[-1], 100))))
            stats.append(x)
        cells.append(loo.Cell(fam, s, "toy", np.arange(n), {v: np.stack(p) for v, p in parts.items()},
                              {name: np.array(stats) for name in loo.STATISTICS}))
    return cells


def _naive(rule: loo.Rule, cells) -> tuple[float, float]:
    m = loo.margins(rule, cells)
    return min(v["vs_target"] for v in m.values()), float(np.mean([v["miou"] for v in m.values()]))


@pytest.mark.parametrize("steps", [2, 3])
def test_fit_finds_the_best_rule_of_a_naive_loop(steps):
    cells = _toy_cells()
    design = loo.Design("t", "gap_ratio", steps, [loo.PAPER] + loo.FUSED[:: 6] + loo.KAPPA[:: 7])
    rule = loo.fit(design, cells)
    worst, mean = _naive(rule, cells)
    ths = loo._thresholds(cells, "gap_ratio", 0.025 if steps == 2 else 0.05)
    import itertools

    best = max((float(loo._rank(np.array(w), np.array(m))) for w, m in (
        _naive(loo.Rule("gap_ratio", th, (loo.PLAIN, *vs)), cells)
        for th in itertools.combinations(ths, steps - 1)
        for vs in itertools.product(design.options, repeat=steps - 1))))
    assert float(loo._rank(np.array(worst), np.array(mean))) == pytest.approx(best, abs=1e-9)


def test_leave_one_out_never_fits_on_the_held_out_family():
    cells = _toy_cells()
    seen = []
    real_fit = loo.fit

    def spy(design, train):
        seen.append({c.family for c in train})
        return real_fit(design, train)

    loo.fit = spy
    try:
        out = loo.leave_one_out(loo.Design("t", "gap_ratio", 2, [loo.PAPER]), cells)
    finally:
        loo.fit = real_fit
    assert set(out) == {"synthetic", "probe"}
    assert seen == [{"probe"}, {"synthetic"}]

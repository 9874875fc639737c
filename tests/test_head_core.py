"""Parity tests of the head's building blocks against independent references: POT's Sinkhorn and
naive per-class, per-patch loops written here."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch

from dslo.head import (
    early_rejection,
    ipf,
    joint_bilateral_upsample,
    kl_map,
    maximum_velocity,
    nms,
    normalize,
    optimal_path,
    sinkhorn,
)


def random_affinity(n: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(n, n, generator=g, dtype=dtype) ** 4
    return A / A.sum(1, keepdim=True)


def random_dist(k: int, n: int, seed: int = 1, zeros: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(k, n, generator=g, dtype=torch.float64)
    if zeros:
        a = a * (torch.rand(k, n, generator=g, dtype=torch.float64) > 0.5)
        a[:, 0] += 0.1  # every class keeps at least one patch
    return a / a.sum(1, keepdim=True)


# ---------------------------------------------------------------- IPF
def test_ipf_is_doubly_stochastic():
    T = ipf(random_affinity(64), n_iter=15)
    assert torch.allclose(T.sum(1), torch.ones(64, dtype=T.dtype), atol=1e-4)
    assert torch.allclose(T.sum(0), torch.ones(64, dtype=T.dtype), atol=1e-4)
    assert (T >= 0).all()


def test_ipf_equals_naive_matrix_rescaling():
    A = random_affinity(20, seed=3)
    T_ref = A.clone()
    for _ in range(7):
        T_ref = T_ref / T_ref.sum(0, keepdim=True)  # each column by its sum
        T_ref = T_ref / T_ref.sum(1, keepdim=True)  # then each row by its sum
    assert torch.allclose(ipf(A, n_iter=7), T_ref, atol=1e-12)


def test_ipf_zero_iterations_is_identity():
    A = random_affinity(8)
    assert torch.allclose(ipf(A, n_iter=0), A)


# ---------------------------------------------------------------- Sinkhorn / O.P.
@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")
@pytest.mark.parametrize("cost_kind", ["ipf", "attention"])
def test_sinkhorn_matches_pot(cost_kind):
    N = 48
    A = random_affinity(N, seed=5)
    C = ipf(A) if cost_kind == "ipf" else A
    a = random_dist(1, N, seed=6)[0]
    b = torch.full((N,), 1.0 / N, dtype=torch.float64)
    plan = sinkhorn(a, b, C, eps=0.1, n_iter=50)
    ref = ot.sinkhorn(a.numpy(), b.numpy(), C.numpy(), reg=0.1, numItermax=50, stopThr=0.0)
    assert np.allclose(plan.numpy(), ref, atol=1e-5)
    assert torch.allclose(plan.sum(1), a, atol=1e-5)  # marginals hold
    assert torch.allclose(plan.sum(0), b, atol=1e-12)


def _naive_optimal_path(a, C, eps, n_iter, readout, normalize_max):
    """Per class, per patch: Sinkhorn with explicit sums, then the readout."""
    a, C = a.numpy(), C.numpy()
    K, N = a.shape
    Kg = np.exp(-C / eps)
    out = np.zeros((K, N))
    for c in range(K):
        v = np.ones(N)
        u = np.zeros(N)
        for _ in range(n_iter):
            for i in range(N):
                u[i] = a[c, i] / sum(Kg[i, j] * v[j] for j in range(N))
            for j in range(N):
                v[j] = (1.0 / N) / sum(Kg[i, j] * u[i] for i in range(N))
        for j in range(N):
            if readout == "cost":
                out[c, j] = N * sum(u[i] * Kg[i, j] * v[j] * C[i, j] for i in range(N))
            else:
                out[c, j] = eps * math.log(v[j])
        if readout == "dual":
            out[c] -= out[c].min()
        if normalize_max:
            out[c] /= out[c].max()
    return out


@pytest.mark.parametrize("readout", ["cost", "dual"])
@pytest.mark.parametrize("normalize_max", [True, False])
def test_optimal_path_batched_equals_naive_loop(readout, normalize_max):
    N, K = 12, 3
    C = ipf(random_affinity(N, seed=7))
    a = random_dist(K, N, seed=8)
    got = optimal_path(a, C, eps=0.1, n_iter=20, readout=readout, normalize_max=normalize_max)
    ref = _naive_optimal_path(a, C, 0.1, 20, readout, normalize_max)
    assert np.allclose(got.numpy(), ref, atol=1e-9)


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")
def test_optimal_path_cost_readout_equals_pot_plan():
    N = 40
    C = ipf(random_affinity(N, seed=9))
    a = random_dist(2, N, seed=10)
    D = optimal_path(a, C, eps=0.1, n_iter=200, normalize_max=False)
    b = np.full(N, 1.0 / N)
    for c in range(2):
        plan = ot.sinkhorn(a[c].numpy(), b, C.numpy(), reg=0.1, numItermax=200, stopThr=0.0)
        assert np.allclose(D[c].numpy(), N * (plan * C.numpy()).sum(0), atol=1e-6)


# ---------------------------------------------------------------- M.V.
def _naive_velocity(a, T, delta, max_steps, interpolate):
    a, T = a.numpy(), T.numpy()
    K, N = a.shape
    out = np.zeros((K, N))
    for c in range(K):
        f = a[c] / a[c].max()
        arrival = [0.0 if f[i] > delta else None for i in range(N)]
        step = 0
        while any(x is None for x in arrival) and step < max_steps:
            step += 1
            g = np.array([sum(f[i] * T[i, j] for i in range(N)) for j in range(N)])
            g = g / g.max()
            for j in range(N):
                if arrival[j] is None and g[j] > delta:
                    arrival[j] = (step - 1 + (delta - f[j]) / (g[j] - f[j])) if interpolate else step
            f = g
        out[c] = [1.0 / (1.0 + (max_steps if x is None else x)) for x in arrival]
    return out


@pytest.mark.parametrize("interpolate", [True, False])
def test_maximum_velocity_batched_equals_naive_loop(interpolate):
    N, K = 16, 3
    T = ipf(random_affinity(N, seed=11) ** 3)
    a = random_dist(K, N, seed=12)
    got = maximum_velocity(a, T, delta=0.3, max_steps=1000, interpolate=interpolate)
    ref = _naive_velocity(a, T, 0.3, 1000, interpolate)
    assert np.allclose(got.numpy(), ref, atol=1e-9)


def test_maximum_velocity_unreached_patches_get_max_steps():
    # Two disconnected blocks: a class seeded in block 0 never reaches block 1.
    T = torch.zeros(4, 4, dtype=torch.float64)
    T[:2, :2] = 0.5
    T[2:, 2:] = 0.5
    a = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    V = maximum_velocity(a, T, delta=0.3, max_steps=50)
    assert V[0, 0] == 1.0
    assert 0.5 <= V[0, 1] < 1.0
    assert torch.allclose(V[0, 2:], torch.full((2,), 1.0 / 51, dtype=torch.float64))


def test_maximum_velocity_empty_class_does_not_block_others():
    T = ipf(random_affinity(10, seed=2))
    a = torch.zeros(2, 10, dtype=torch.float64)
    a[0, 3] = 1.0
    V = maximum_velocity(a, T, max_steps=1000)
    assert torch.all(V[1] == 1.0 / 1001)
    assert torch.all(V[0] > 1.0 / 1001)


# ---------------------------------------------------------------- KL
def test_kl_map_matches_formula_and_sums_to_kl():
    a = random_dist(2, 30, seed=4)
    D = kl_map(a)
    N = 30
    for c in range(2):
        kl = sum(float(x) * math.log(N * float(x)) for x in a[c] if x > 0)
        assert math.isclose(float(D[c].sum()), kl, rel_tol=1e-9)
    assert (D[a == 0] == 0).all()


# ---------------------------------------------------------------- NMS / normalisation / rejection
def test_nms_keeps_only_the_winner_above_half():
    L = torch.tensor([[0.30, 0.20, 0.25], [0.20, 0.30, 0.25]])
    masked, keep = nms(L, scale=40.0, threshold=0.5)
    # column 2 is a tie: both probabilities are exactly 0.5 and both survive (P >= θ).
    assert keep.tolist() == [[True, False, True], [False, True, True]]
    assert torch.isinf(masked[~keep]).all() and (masked[keep] == L[keep]).all()


def test_normalize_reports_empty_classes_without_nan():
    masked = torch.tensor([[0.3, float("-inf")], [float("-inf"), float("-inf")]])
    a, valid = normalize(masked)
    assert valid.tolist() == [True, False]
    assert torch.equal(a, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


def test_early_rejection_top_k_keeps_the_most_confident_classes():
    g = torch.Generator().manual_seed(0)
    K, N = 30, 200
    L = 0.15 + 0.02 * torch.rand(K, N, generator=g)
    L[[4, 9, 17], :] += torch.tensor([0.1, 0.1, 0.1])[:, None] * (torch.rand(3, N, generator=g) > 0.5)
    L[25, :5] += 0.2  # a small, stray class
    _, keep = nms(L)
    kept = early_rejection(L, keep, top_k=3, top_k_above=21)
    assert kept.tolist() == [4, 9, 17]
    assert early_rejection(L, keep, top_k=None).numel() == int(keep.any(1).sum())
    # Not above the size threshold: no top-k.
    assert early_rejection(L[:21], keep[:21], top_k=3, top_k_above=21).numel() == int(keep[:21].any(1).sum())


# ---------------------------------------------------------------- JBU
def _naive_jbu(maps, image, sigma_s, sigma_r, R):
    maps = maps.numpy().astype(np.float64)
    I = image.astype(np.float64) / 255.0
    K, h, w = maps.shape
    H, W = I.shape[:2]
    low = torch.nn.functional.interpolate(
        torch.from_numpy(I).permute(2, 0, 1)[None], size=(h, w), mode="bilinear", antialias=True
    )[0].permute(1, 2, 0).numpy()
    out = np.zeros((K, H, W))
    for y in range(H):
        for x in range(W):
            py, px = (y + 0.5) * h / H - 0.5, (x + 0.5) * w / W - 0.5
            cy = min(max(math.floor(py + 0.5), 0), h - 1)
            cx = min(max(math.floor(px + 0.5), 0), w - 1)
            num, den = np.zeros(K), 0.0
            for qy in range(cy - R, cy + R + 1):
                for qx in range(cx - R, cx + R + 1):
                    if not (0 <= qy < h and 0 <= qx < w):
                        continue
                    f = math.exp(-((qy - py) ** 2 + (qx - px) ** 2) / (2 * sigma_s**2))
                    g = math.exp(-float(((I[y, x] - low[qy, qx]) ** 2).sum()) / (2 * sigma_r**2))
                    num += f * g * maps[:, qy, qx]
                    den += f * g
            out[:, y, x] = num / den
    return out


@pytest.mark.parametrize("size", [(13, 17), (8, 10), (3, 4)])  # upsampling, exact multiple, downsampling
def test_jbu_equals_naive_double_loop(size):
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 4, 5, generator=g, dtype=torch.float64)
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    got = joint_bilateral_upsample(maps, image, sigma_spatial=1.0, sigma_range=0.3)
    ref = _naive_jbu(maps, image, 1.0, 0.3, 3)
    assert got.shape == (2, *size)
    assert np.allclose(got.numpy(), ref, atol=1e-10)


def test_jbu_small_chunks_equal_one_chunk():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(3, 6, 7, generator=g)
    image = np.random.default_rng(1).integers(0, 256, (45, 51, 3), dtype=np.uint8)
    one = joint_bilateral_upsample(maps, image)
    many = joint_bilateral_upsample(maps, image, chunk_elements=1)
    assert torch.allclose(one, many, atol=1e-6)


def test_jbu_constant_map_stays_constant_even_with_extreme_colours():
    maps = torch.full((2, 5, 6), 0.7)
    image = np.zeros((31, 40, 3), dtype=np.uint8)
    image[::2, ::3] = 255  # every range weight underflows for some pixels at sigma_range=0.01
    out = joint_bilateral_upsample(maps, image, sigma_range=0.01)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.full_like(out, 0.7), atol=1e-6)


def test_jbu_follows_image_edges():
    # A vertical colour edge inside a low-res cell: JBU puts the class boundary on the edge.
    H, W, h, w = 64, 64, 4, 4
    image = np.zeros((H, W, 3), dtype=np.uint8)
    image[:, 27:] = 255
    maps = torch.zeros(2, h, w)
    maps[0, :, :2] = 1.0
    maps[1, :, 2:] = 1.0
    labels = joint_bilateral_upsample(maps, image).argmax(0)
    assert (labels[:, :27] == 0).float().mean() > 0.98
    assert (labels[:, 27:] == 1).float().mean() > 0.98

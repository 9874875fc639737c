"""Doubly stochastic affinity (IPF) and the optimal-path discrepancy (entropic OT, SPEC §4)."""

from __future__ import annotations

import torch

from ._checks import TINY, as_float, check_finite, check_square, class_maps_and_matrix


def ipf(affinity: torch.Tensor, n_iter: int = 15) -> torch.Tensor:
    """Iterative proportional fitting toward a doubly stochastic matrix.

    ``n_iter`` rounds of "divide each column by its sum, then each row by its sum", starting from
    ``affinity``. Computed as ``diag(r) A diag(c)`` with only matrix-vector products per round
    (mathematically identical to rescaling the full matrix, N times cheaper), materialised once.

    Args: ``affinity (N, N)`` non-negative. Returns ``T (N, N)``: rows sum to 1 exactly (the last
    step), columns to 1 up to the IPF convergence.
    """
    A = as_float(affinity, "affinity")
    check_square(A, "affinity")
    check_finite(A, "affinity")
    if (A < 0).any():
        raise ValueError("affinity must be non-negative (an attention / transition matrix)")
    r = torch.ones(A.shape[0], dtype=A.dtype, device=A.device)
    c = torch.ones_like(r)
    for _ in range(n_iter):
        c = 1.0 / (r @ A).clamp_min(TINY)  # column sums of diag(r) A diag(c) become 1
        r = 1.0 / (A @ c).clamp_min(TINY)  # then row sums become 1
    return r[:, None] * A * c[None, :]


def sinkhorn(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, eps: float = 0.1, n_iter: int = 50
) -> torch.Tensor:
    """Entropic optimal transport plan (Sinkhorn), POT-style reference API.

    ``π = diag(u) K diag(v)``, ``K = exp(-C / eps)``, ``v⁰ = 1``, then ``n_iter`` rounds of
    ``u ← a ⊘ (K v)``, ``v ← b ⊘ (Kᵀ u)``.

    Args: ``a (N,)``, ``b (M,)`` non-negative with equal sums, ``cost (N, M)``.
    Returns: ``plan (N, M)``.
    """
    C = as_float(cost, "cost")
    u, v, K = _sinkhorn_scalings(a.to(C.dtype)[None], b.to(C.dtype), C, eps, n_iter)
    return u[0][:, None] * K * v[0][None, :]


def _sinkhorn_scalings(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, eps: float, n_iter: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched Sinkhorn scalings. ``a (B, N)``, ``b (M,)``, ``cost (N, M)`` → ``u (B, N)``,
    ``v (B, M)``, ``K (N, M)``; class b's plan is ``diag(u_b) K diag(v_b)``."""
    K = torch.exp(-cost / eps)
    v = torch.ones(a.shape[0], cost.shape[1], dtype=cost.dtype, device=cost.device)
    u = torch.zeros_like(a)
    for _ in range(n_iter):
        u = a / (v @ K.T).clamp_min(TINY)
        v = b / (u @ K).clamp_min(TINY)
    return u, v, K


def optimal_path(
    a: torch.Tensor,
    cost: torch.Tensor,
    eps: float = 0.1,
    n_iter: int = 50,
    readout: str = "cost",
    normalize_max: bool = True,
) -> torch.Tensor:
    """Optimal-path discrepancy of each class distribution toward the uniform distribution.

    Solves, for every class at once, ``π*_c = argmin ⟨C, π⟩ − eps·H(π)`` with marginals
    ``π 1 = a_c`` and ``πᵀ 1 = 1/N`` by Sinkhorn (:func:`sinkhorn`), then reads out per patch:

    - ``readout="cost"`` (SPEC default): the cost patch j pays to receive its mass,
      ``D_c[j] = N · Σ_i π*_c[i, j] C[i, j]`` (computed as ``N v_j (u @ (K∘C))_j`` — the
      ``(K', N, N)`` plans are never materialised).
    - ``readout="dual"``: the target-side dual potential ``g_c = eps · log v_c`` shifted to a
      minimum of 0 (higher where reaching the patch from the class's seeds costs more).

    With ``normalize_max`` each class's map is divided by its maximum over patches, so classes
    are compared on the same scale.

    Args:
        a: ``(K, N)`` class distributions (rows sum to 1; zero rows give zero maps).
        cost: ``(N, N)`` cost matrix (SPEC default: the doubly stochastic affinity ``ipf(A)``).
    Returns:
        ``(K, N)`` discrepancy maps (larger = more of that class).
    """
    A, C = class_maps_and_matrix(a, cost, "cost")
    if readout not in ("cost", "dual"):
        raise ValueError(f"readout must be 'cost' or 'dual', got {readout!r}")
    N = C.shape[0]
    b = torch.full((N,), 1.0 / N, dtype=C.dtype, device=C.device)
    u, v, K = _sinkhorn_scalings(A, b, C, eps, n_iter)
    if readout == "cost":
        D = N * v * (u @ (K * C))
    else:
        g = eps * torch.log(v.clamp_min(TINY))
        D = g - g.min(dim=1, keepdim=True).values
    empty = A.sum(dim=1) <= 0
    D = torch.where(empty[:, None], torch.zeros_like(D), D)
    if normalize_max:
        D = D / D.amax(dim=1, keepdim=True).clamp_min(TINY)
    return D

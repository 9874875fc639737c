"""Input validation shared by the head's functions. Errors name the offending shapes and values."""

from __future__ import annotations

import torch

# The floor of every division and logarithm in the head (a maximum, a column sum, a Sinkhorn
# marginal): far below any value the head divides by, far above float32's smallest normal (1e-38).
TINY = 1e-30


def working_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other dtype (float16, bfloat16, ints) computes in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def as_float(t: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t.to(working_dtype(t))


def check_finite(t: torch.Tensor, name: str) -> None:
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{name} contains {bad} NaN or infinite value(s) (shape {tuple(t.shape)}); "
            "the head needs finite inputs — check the model that produced them"
        )


def check_square(t: torch.Tensor, name: str) -> None:
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise ValueError(f"{name} must be a square (N, N) matrix, got shape {tuple(t.shape)}")


def check_same_n(a: torch.Tensor, a_name: str, m: torch.Tensor, m_name: str) -> None:
    if a.shape[-1] != m.shape[0]:
        raise ValueError(
            f"{a_name} of shape {tuple(a.shape)} does not match {m_name} of shape {tuple(m.shape)}: "
            f"the last dimension of {a_name} must equal N = {m.shape[0]}"
        )


def class_maps_and_matrix(a: torch.Tensor, m: torch.Tensor, m_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``a`` ``(K, N)`` (or ``(N,)``) against a square ``(N, N)`` matrix ``m``; both
    returned finite, in ``a``'s working dtype, ``a`` always 2-D."""
    A = as_float(a, "a")
    M = as_float(m, m_name).to(A.dtype)
    if A.ndim == 1:
        A = A[None]
    check_square(M, m_name)
    check_same_n(A, "a", M, m_name)
    check_finite(A, "a")
    check_finite(M, m_name)
    return A, M

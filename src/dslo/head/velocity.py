"""Maximum-velocity discrepancy (Markov chain toward the uniform distribution) and the KL ablation
(SPEC §4)."""

from __future__ import annotations

import torch

from ._checks import TINY, as_float, check_finite, class_maps_and_matrix


def maximum_velocity(
    a: torch.Tensor,
    transition: torch.Tensor,
    delta: float = 0.3,
    max_steps: int = 1000,
    interpolate: bool = True,
) -> torch.Tensor:
    """Velocity at which each patch is reached by a class's Markov chain.

    For every class at once: ``f⁰ = a_c / max(a_c)``, ``f^{l+1} = (f^l T) / max(f^l T)``. Patch
    i's arrival step ``l_i`` is the first step at which ``f_i > delta`` (0 for patches already
    above ``delta``), linearly interpolated between the two steps that bracket the crossing when
    ``interpolate``. The chain stops as soon as every patch of every class has arrived, or after
    ``max_steps`` (unreached patches get ``l = max_steps``). Velocity ``V_c[i] = 1 / (1 + l_i)``.

    Args:
        a: ``(K, N)`` class distributions (zero rows: the class never arrives anywhere).
        transition: ``(N, N)`` row-stochastic transition matrix (SPEC: ``ipf(A)``).
    Returns:
        ``(K, N)`` velocities in ``[1/(1+max_steps), 1]``.
    """
    A, T = class_maps_and_matrix(a, transition, "transition")

    f = A / A.amax(dim=1, keepdim=True).clamp_min(TINY)
    live = A.amax(dim=1) > 0  # classes with mass; empty classes never arrive and are not waited for
    arrival = torch.full_like(f, float(max_steps))
    arrived = f > delta
    arrival[arrived] = 0.0
    arrived |= ~live[:, None]
    # On an accelerator every ".all()" is a host sync: check for completion every few steps only.
    check_every = 1 if f.device.type == "cpu" else 8
    for step in range(1, max_steps + 1):
        g = f @ T
        g = g / g.amax(dim=1, keepdim=True).clamp_min(TINY)
        crossed = (g > delta) & ~arrived
        if interpolate:
            frac = ((delta - f) / (g - f).clamp_min(TINY)).clamp(0.0, 1.0)
            when = (step - 1) + frac
        else:
            when = torch.full_like(f, float(step))
        arrival = torch.where(crossed, when, arrival)
        arrived |= crossed
        f = g
        if step % check_every == 0 and bool(arrived.all()):
            break
    return 1.0 / (1.0 + arrival)


def kl_map(a: torch.Tensor) -> torch.Tensor:
    """KL-divergence contribution of each patch toward the uniform distribution (ablation).

    ``D_c[i] = a_c[i] · log(N · a_c[i])`` (0 where ``a_c[i] = 0``).

    Args: ``a (K, N)``. Returns ``(K, N)``.
    """
    A = as_float(a, "a")
    check_finite(A, "a")
    N = A.shape[-1]
    return torch.where(A > 0, A * torch.log((N * A).clamp_min(TINY)), torch.zeros_like(A))

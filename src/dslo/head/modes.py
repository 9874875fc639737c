"""The head's modes: one table from mode name to its two stages (SPEC §4).

Each mode that runs the head has a *matrix* stage (what the discrepancy walks on: the IPF-balanced
affinity, the raw affinity, or nothing) and a *discrepancy* stage ``(a (K', N), matrix) → (K', N)``.
:func:`dslo.head.refine`, the segmenter, the CLI's ``--mode`` choices and the benchmarks all read
this table, so a new mode is one entry here (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import check_choice
from ._checks import as_float
from .config import HeadConfig
from .transport import ipf, optimal_path
from .velocity import kl_map, maximum_velocity

MatrixFn = Callable[[torch.Tensor, HeadConfig], torch.Tensor | None]
DiscrepancyFn = Callable[[torch.Tensor, torch.Tensor | None, HeadConfig], torch.Tensor]


@dataclass(frozen=True)
class Mode:
    """One head mode. ``matrix(affinity (N, N), cfg) -> (N, N) | None`` and
    ``discrepancy(a (K', N), matrix, cfg) -> (K', N)`` (larger = more of the class); both None
    for ``"none"`` (bilinear upsampling of the logits and arg-max, no head)."""

    name: str
    description: str
    matrix: MatrixFn | None
    discrepancy: DiscrepancyFn | None

    @property
    def runs_head(self) -> bool:
        return self.discrepancy is not None


def _ipf_matrix(affinity: torch.Tensor, cfg: HeadConfig) -> torch.Tensor:
    return ipf(affinity, cfg.ipf_iters)


def _op_matrix(affinity: torch.Tensor, cfg: HeadConfig) -> torch.Tensor:
    return ipf(affinity, cfg.ipf_iters) if cfg.op_cost == "ipf" else as_float(affinity, "affinity")


def _no_matrix(affinity: torch.Tensor, cfg: HeadConfig) -> None:
    return None


def _mv(a: torch.Tensor, T: torch.Tensor | None, cfg: HeadConfig) -> torch.Tensor:
    return maximum_velocity(a, T, cfg.delta, cfg.max_steps, cfg.interpolate)


def _op(a: torch.Tensor, C: torch.Tensor | None, cfg: HeadConfig) -> torch.Tensor:
    return optimal_path(a, C, cfg.eps, cfg.sinkhorn_iters, cfg.readout, cfg.normalize_max)


def _kl(a: torch.Tensor, _: torch.Tensor | None, cfg: HeadConfig) -> torch.Tensor:
    return kl_map(a)


MODE_TABLE: dict[str, Mode] = {
    "mv": Mode("mv", "maximum velocity (Markov chain on the IPF-balanced affinity)", _ipf_matrix, _mv),
    "op": Mode("op", "optimal path (entropic OT; cost = IPF-balanced or raw affinity, op_cost)", _op_matrix, _op),
    "kl": Mode("kl", "KL ablation (no affinity)", _no_matrix, _kl),
    "none": Mode("none", "no head: the logits upsampled bilinearly, arg-max", None, None),
}

MODES: tuple[str, ...] = tuple(MODE_TABLE)  # the names, for choices and messages


def get_mode(mode: str) -> Mode:
    """The table entry of ``mode``; an unknown name is a :class:`dslo.errors.SettingsError`."""
    check_choice("mode", mode, MODES)
    return MODE_TABLE[mode]


def transport_matrix(affinity: torch.Tensor, mode: str, cfg: HeadConfig) -> torch.Tensor | None:
    """The matrix stage of ``mode``: ``(N, N)`` affinity → what its discrepancy walks on
    (``ipf(affinity)`` for M.V. and the default O.P.; None for ``kl``)."""
    m = get_mode(mode)
    if m.matrix is None:
        raise ValueError(f"mode {mode!r} runs no head: it has no transport matrix")
    return m.matrix(affinity, cfg)


def discrepancy(a: torch.Tensor, affinity: torch.Tensor, mode: str, cfg: HeadConfig, *,
                matrix: torch.Tensor | None = None) -> torch.Tensor:
    """``(K', N)`` class distributions → ``(K', N)`` discrepancy maps (larger = more of the class).

    ``matrix``: the output of :func:`transport_matrix` when already computed (the benchmarks time
    the two stages apart); otherwise it is computed from ``affinity``."""
    m = get_mode(mode)
    if m.discrepancy is None:
        raise ValueError(f"mode {mode!r} runs no head: it has no discrepancy")
    if matrix is None:
        matrix = m.matrix(affinity, cfg)
    return m.discrepancy(a, matrix, cfg)

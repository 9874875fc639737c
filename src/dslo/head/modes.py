"""The head's modes: one table from mode name to its two stages (SPEC §4).

Each mode that runs the head has a *matrix* stage (what the discrepancy walks on: the IPF-balanced
affinity, the raw affinity, or nothing), a *discrepancy* stage ``(a (K', N), matrix) → (K', N)``
and the default per-image rule of the fused readout (:class:`~dslo.head.readout.FusionRule`).
:func:`dslo.head.refine`, the segmenter, the CLI's ``--mode`` choices and the benchmarks all read
this table, so a new mode is one entry here (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import check_choice
from ._checks import as_float
from .readout import FusionRule
from .transport import ipf, optimal_path
from .velocity import kl_map, maximum_velocity

if TYPE_CHECKING:  # config.py reads this table to check a custom rule: no import back at run time
    from .config import HeadConfig

MatrixFn = Callable[[torch.Tensor, "HeadConfig"], torch.Tensor | None]
DiscrepancyFn = Callable[[torch.Tensor, torch.Tensor | None, "HeadConfig"], torch.Tensor]


@dataclass(frozen=True)
class Mode:
    """One head mode. ``matrix(affinity (N, N), cfg) -> (N, N) | None`` and
    ``discrepancy(a (K', N), matrix, cfg) -> (K', N)`` (larger = more of the class); both None
    for ``"none"`` (bilinear upsampling of the logits and arg-max, no head). ``fusion_rule``: the
    fused readout's default λ rule for this discrepancy (None for ``"none"``)."""

    name: str
    description: str
    matrix: MatrixFn | None
    discrepancy: DiscrepancyFn | None
    fusion_rule: FusionRule | None = None

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


# The fused readout's per-image rule of each discrepancy: a step function of the evidence's median
# top-two log-odds (evidence_margin), (thresholds, levels, recovery seeds per step): λ = 0 at or
# above the upper threshold (clean evidence decides alone: plain upsampling), levels[1] between,
# levels[2] below the lower one. Chosen on the even-index half of all 233 CamVid and 164
# COCO-Object images, four evidence strengths (benchmarks/readout/select_readout.py: the rule with
# the best worst-case margin over max(bilinear, JBU, paper M.V. − 0.5) per cell and over bilinear's
# thin-class IoU; thresholds shared by the modes; docs/benchmarks.md §1b). One cell stays below
# that target: CamVid probe by 0.003 (M.V.) / 0.004 (O.P.) mIoU, from one held-out image at margin
# 2.76 where every λ > 0 loses. Recovery seeds off in the middle step, where the re-seeded classes
# are mostly the noise's (CamVid medium, M.V.: 53.0 without them against 52.0 with, best λ each),
# on in the noisiest (where they recover classes the NMS of such evidence drops: COCO-Object
# probe); the clean step's λ = 0 never reads them.
MV_RULE = FusionRule((2.14, 2.86), (0.0, 6.0, 24.0), (True, False, True))
OP_RULE = FusionRule((2.14, 2.86), (0.0, 4.0, 12.0), (True, False, True))

MODE_TABLE: dict[str, Mode] = {
    "mv": Mode("mv", "maximum velocity (Markov chain on the IPF-balanced affinity)", _ipf_matrix, _mv, MV_RULE),
    "op": Mode("op", "optimal path (entropic OT; cost = IPF-balanced or raw affinity, op_cost)", _op_matrix, _op,
               OP_RULE),
    # an ablation: no rule was chosen for it; M.V.'s
    "kl": Mode("kl", "KL ablation (no affinity)", _no_matrix, _kl, MV_RULE),
    "none": Mode("none", "no head: the logits upsampled bilinearly, arg-max", None, None),
}

MODES: tuple[str, ...] = tuple(MODE_TABLE)  # the names, for choices and messages


def get_mode(mode: str) -> Mode:
    """The table entry of ``mode``; an unknown name is a :class:`dslo.errors.SettingsError`."""
    check_choice("mode", mode, MODES)
    return MODE_TABLE[mode]


def fusion_rule(cfg: HeadConfig, mode: str) -> FusionRule | None:
    """The λ rule the fused readout applies in ``mode``: the mode's own (``Mode.fusion_rule``) with
    the parts ``cfg`` sets (``fusion_thresholds``, ``fusion_levels``, ``fusion_recover``) replaced;
    None for a mode without a rule (``"none"``). HeadConfig checked at construction that the parts
    it sets fit every mode's rule."""
    rule = get_mode(mode).fusion_rule
    if rule is None:
        return None
    return rule.replace(cfg.fusion_thresholds, cfg.fusion_levels, cfg.fusion_recover)


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

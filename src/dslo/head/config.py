"""Every setting of the head in one frozen, validated record (SPEC §4 defaults)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import SettingsError, check_choice, check_known

UPSAMPLERS = ("jbu", "bilinear")
OP_COSTS = ("ipf", "attention")
READOUTS = ("cost", "dual")


@dataclass(frozen=True)
class HeadConfig:
    """Every setting of the head, with the SPEC defaults. Frozen: derive a variant with
    :meth:`replace`. Every value is checked here, at construction, so a typo or an out-of-range
    value fails before any tensor is touched (a :class:`dslo.errors.SettingsError`).

    >>> HeadConfig().replace(nms_threshold=0.6).nms_threshold
    0.6
    >>> HeadConfig(upsample="bilnear")
    Traceback (most recent call last):
    ...
    dslo.errors.SettingsError: unknown upsample 'bilnear': choose one of 'jbu', 'bilinear'; did you mean bilinear?
    """

    nms_scale: float = 40.0  # logit scale s of the class softmax used by NMS
    nms_threshold: float = 0.5  # θ: class probability below which a patch logit is suppressed
    norm_scale: float = 1.0  # r: temperature of the per-class softmax over patches (SPEC: measured best)
    top_k: int | None = 10  # early rejection: classes kept when K > top_k_above (None: no limit)
    top_k_above: int = 21
    ipf_iters: int = 15  # rounds of IPF making the affinity doubly stochastic
    op_cost: str = "ipf"  # O.P. cost: "ipf" (doubly stochastic affinity, default) or "attention" (raw A)
    eps: float = 0.1  # O.P. entropic regularisation
    sinkhorn_iters: int = 50
    readout: str = "cost"  # O.P. readout: "cost" or "dual"
    normalize_max: bool = True  # O.P.: divide each class map by its maximum
    delta: float = 0.3  # M.V. arrival threshold on the max-normalised chain
    max_steps: int = 1000
    interpolate: bool = True  # M.V.: interpolate arrival steps linearly
    upsample: str = "jbu"  # "jbu" or "bilinear"
    sigma_spatial: float = 1.0
    sigma_range: float = 0.1
    jbu_radius: int | None = None  # default ceil(3 σ_s)
    jbu_max_side: int | None = None  # JBU at most at this size, then bilinear to the image size

    def __post_init__(self) -> None:
        check_choice("upsample", self.upsample, UPSAMPLERS)
        check_choice("op_cost", self.op_cost, OP_COSTS)
        check_choice("readout", self.readout, READOUTS)
        _number("nms_threshold", self.nms_threshold, low=0.0, high=1.0, what="a probability in (0, 1)")
        for name in ("nms_scale", "norm_scale", "eps", "delta", "sigma_spatial", "sigma_range"):
            _number(name, getattr(self, name), low=0.0, what="> 0")
        _integer("top_k", self.top_k, 1, none_ok=True)
        _integer("top_k_above", self.top_k_above, 0)
        _integer("ipf_iters", self.ipf_iters, 0)
        _integer("sinkhorn_iters", self.sinkhorn_iters, 1)
        _integer("max_steps", self.max_steps, 1)
        _integer("jbu_radius", self.jbu_radius, 0, none_ok=True)
        _integer("jbu_max_side", self.jbu_max_side, 0, none_ok=True)  # 0 or None: no limit
        for name in ("normalize_max", "interpolate"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The setting names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **settings: Any) -> "HeadConfig":
        """A copy with ``settings`` changed; an unknown name is a :class:`SettingsError` that
        suggests the closest one."""
        check_known("head", settings, self.fields())
        return dataclasses.replace(self, **settings) if settings else self

    def changed(self) -> dict[str, Any]:
        """The settings that differ from the defaults (name → value)."""
        default = HeadConfig()
        return {k: getattr(self, k) for k in self.fields() if getattr(self, k) != getattr(default, k)}

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _number(name: str, value: object, *, low: float, high: float | None = None, what: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value <= low or (high is not None and value >= high):
        raise SettingsError(f"{name} must be {what}, got {value!r}")


def _integer(name: str, value: object, low: int, *, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        extra = " or None" if none_ok else ""
        raise SettingsError(f"{name} must be an integer >= {low}{extra}, got {value!r}")

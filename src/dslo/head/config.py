"""Every setting of the head in one frozen, validated record (SPEC §4 defaults)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import SettingsError, check_choice, check_known
from .evidence import EVIDENCE_SCALE

UPSAMPLERS = ("jbu", "bilinear")
OP_COSTS = ("ipf", "attention")
READOUTS = ("cost", "dual")
FUSIONS = ("evidence", "none")


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

    nms_scale: float = EVIDENCE_SCALE  # s of the evidence posterior softmax_c(s·L) (NMS, seeds, readout, λ rule)
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
    # Beyond the paper (SPEC §8, docs/head.md). Label readout: "evidence" fuses the head's maps with
    # the evidence's class posterior (log P_c + λ·D̂_c); "none" is the paper's argmax_c JBU(D_c).
    fusion: str = "evidence"
    fusion_weight: float | None = None  # λ; None: per image, a step function of the evidence's margin
    # the per-image rule (readout.FusionRule): ascending margin thresholds (top-two log-odds) and
    # one more λ levels, clean to noisy; None: the mode's rule (Mode.fusion_rule of MODE_TABLE)
    fusion_thresholds: tuple[float, ...] | None = None
    fusion_levels: tuple[float, ...] | None = None
    # per step of the rule, whether the recovery seeds (recover_threshold) are used there; None:
    # the mode's rule's flags (a rule with more steps repeats its last flag for the extra ones)
    fusion_recover: tuple[bool, ...] | None = None
    fusion_extra: int | None = 10  # at most this many classes beyond the head's (readout.candidate_classes)
    # Classes NMS drops entirely are re-seeded at the patches where they are the evidence's arg-max
    # with probability >= this (None: off, the paper).
    recover_threshold: float | None = 0.25

    def __post_init__(self) -> None:
        check_choice("upsample", self.upsample, UPSAMPLERS)
        check_choice("op_cost", self.op_cost, OP_COSTS)
        check_choice("readout", self.readout, READOUTS)
        check_choice("fusion", self.fusion, FUSIONS)
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
        _non_negative("fusion_weight", self.fusion_weight, none_ok=True)
        self._check_fusion_rule()
        _integer("fusion_extra", self.fusion_extra, 0, none_ok=True)
        if self.recover_threshold is not None:
            _number("recover_threshold", self.recover_threshold, low=0.0, high=1.0,
                    what="a probability in (0, 1) or None")
        for name in ("normalize_max", "interpolate"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def _check_fusion_rule(self) -> None:
        """Typed values only (text such as "0,4,16" becomes a tuple in dslo.setting_text.read_setting);
        numbers become a tuple of floats. The parts given must fit the rule of every mode."""
        for name in ("fusion_thresholds", "fusion_levels"):
            v = getattr(self, name)
            if v is None:
                continue
            ok = _is_level if name == "fusion_levels" else _is_number  # a level may be ∞: the paper's readout
            if ok(v):
                v = (v,)
            if isinstance(v, (str, bytes)) or not isinstance(v, (tuple, list)) or not all(ok(x) for x in v):
                raise SettingsError(f"{name} must be a tuple of numbers such as (2.1, 2.9), got {v!r}")
            object.__setattr__(self, name, tuple(float(x) for x in v))
        v = self.fusion_recover
        if v is not None:
            if isinstance(v, (str, bytes)) or not isinstance(v, (tuple, list)) or not all(isinstance(x, bool) for x in v):
                raise SettingsError(f"fusion_recover must be a tuple of True/False such as (True, False, True), one per "
                                    f"fusion level, got {v!r}")
            object.__setattr__(self, "fusion_recover", tuple(v))
        if self.fusion_thresholds is None and self.fusion_levels is None and self.fusion_recover is None:
            return
        from .modes import MODE_TABLE  # the modes' rules; modes.py imports this module

        for mode in MODE_TABLE.values():
            if mode.fusion_rule is None:
                continue
            try:
                mode.fusion_rule.replace(self.fusion_thresholds, self.fusion_levels, self.fusion_recover)
            except ValueError as e:
                raise SettingsError(f"{e} (with the {mode.name!r} mode's rule "
                                    f"{mode.fusion_rule.thresholds} → {mode.fusion_rule.levels})") from None

    @classmethod
    def paper(cls, **settings: Any) -> HeadConfig:
        """The paper's head exactly (SPEC §4): label ``argmax_c JBU(D_c)`` over the classes that
        survive NMS (``fusion="none"``), NMS seeds only (``recover_threshold=None``), every other
        setting the SPEC default; ``settings`` change others (a Table 2-style ablation).

        >>> HeadConfig.paper().paper_readout, HeadConfig().paper_readout
        (True, False)
        """
        return cls(fusion="none", recover_threshold=None).replace(**settings)

    @property
    def paper_readout(self) -> bool:
        """Whether the label readout is the paper's: no fusion with the evidence, no recovery seeds."""
        return self.fusion == "none" and self.recover_threshold is None

    def describe_readout(self) -> str:
        """Which label readout runs, in words, for the records beside every result."""
        if self.paper_readout:
            return "paper: argmax_c JBU(D_c) over the NMS classes (SPEC §4)"
        if self.fusion == "none":
            return f"paper's argmax_c JBU(D_c), with recovery seeds at {self.recover_threshold} (SPEC §8)"
        rule = ("fixed λ = " + str(self.fusion_weight)) if self.fusion_weight is not None else \
            "per-image λ rule of the mode" + ("" if self.fusion_thresholds is None and self.fusion_levels is None
                                              and self.fusion_recover is None else ", changed by the settings")
        return f"fused: argmax_c log P_c + λ·D̂_c, {rule} (SPEC §8)"

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The setting names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **settings: Any) -> HeadConfig:
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


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_level(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (math.isfinite(v) or v == math.inf)


def _number(name: str, value: object, *, low: float, high: float | None = None, what: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value <= low or (high is not None and value >= high):
        raise SettingsError(f"{name} must be {what}, got {value!r}")


def _non_negative(name: str, value: object, *, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0:
        extra = " or None" if none_ok else ""
        raise SettingsError(f"{name} must be a finite number >= 0{extra}, got {value!r}")


def _integer(name: str, value: object, low: int, *, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        extra = " or None" if none_ok else ""
        raise SettingsError(f"{name} must be an integer >= {low}{extra}, got {value!r}")

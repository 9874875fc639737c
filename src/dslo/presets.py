"""Named segmenter settings: which logits model, which attention model, which head mode, and any
head settings or model options that go with them (a typed :class:`Preset`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dslo.errors import SettingsError, did_you_mean
from dslo.head import HeadConfig, get_mode

__all__ = ["PAPER_HEAD", "Preset", "PRESETS", "OFFLINE_FALLBACK_LOGITS", "get_preset", "list_presets",
           "resolve_preset"]

# What a preset without a logits model of its own (the offline one) uses when the user names none
# and these weights are on the machine.
OFFLINE_FALLBACK_LOGITS = "clip-b16"


@dataclass(frozen=True)
class Preset:
    """A named composition. ``logits`` None = "the CLIP the user passes" (the offline preset),
    falling back to ``clip-b16`` when its weights are local. ``head``: the head settings;
    ``logits_options`` / ``attention_options``: settings passed to the model constructors."""

    name: str
    logits: str | None
    attention: str
    mode: str = "mv"
    description: str = ""
    head: HeadConfig = field(default_factory=HeadConfig)
    logits_options: Mapping[str, Any] = field(default_factory=dict)
    attention_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        get_mode(self.mode)
        if not isinstance(self.head, HeadConfig):
            raise SettingsError(f"preset {self.name!r}: head must be a dslo.head.HeadConfig, got {self.head!r}")
        object.__setattr__(self, "logits_options", MappingProxyType(dict(self.logits_options)))
        object.__setattr__(self, "attention_options", MappingProxyType(dict(self.attention_options)))

    def logits_model(self, override: str | os.PathLike | None = None) -> str:
        """The logits model this preset loads: ``override``, else its own, else (the offline
        preset) :data:`OFFLINE_FALLBACK_LOGITS` when its weights are local; otherwise a
        ``WeightsNotFoundError`` saying how to pass one. Never touches the network."""
        if override is not None:
            return os.fspath(override)
        if self.logits is not None:
            return self.logits
        from dslo.models import weights_available

        if not weights_available(OFFLINE_FALLBACK_LOGITS):
            raise _no_logits_error(self.name)
        return OFFLINE_FALLBACK_LOGITS

    def summary(self) -> dict:
        """``{"logits", "attention", "mode", "description"}``: what :func:`list_presets` lists."""
        return {"logits": self.logits, "attention": self.attention, "mode": self.mode,
                "description": self.description}

    def __getitem__(self, key: str) -> Any:
        # Presets were plain dicts before; ``PRESETS[name]["mode"]`` keeps working.
        return self.summary()[key]


# The paper's presets run the paper's head exactly (SPEC §8, "names keep their promise"): the
# label readout argmax_c JBU(D_c) over the NMS classes, no fusion, no recovery seeds; they are what
# reproduces Table 1. The product's presets (default, default-l14, offline) run the product's
# head, HeadConfig(): the readout chosen on evidence it was then held out from (docs/benchmarks.md §1b).
PAPER_HEAD = HeadConfig.paper()

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("default", "clip-b16", "dinov2-reg-b14", "mv",
           "CLIP B/16 (k-k) + DINOv2-reg B/14 attention + M.V.: the paper's best attention source, "
           "far cheaper than SD2; the product's readout"),
    Preset("default-l14", "clip-l14", "dinov2-reg-b14", "mv", "the default preset with CLIP L/14"),
    Preset("paper-mv", "clip-b16", "sd2", "mv",
           "the paper's main setting, its head exactly: CLIP B/16 (k-k) + SD2 attention + maximum velocity",
           head=PAPER_HEAD),
    Preset("paper-op", "clip-b16", "sd2", "op", "the paper's CLIP B/16 (k-k) + SD2 attention + optimal path",
           head=PAPER_HEAD),
    Preset("paper-mv-l14", "clip-l14", "sd2", "mv", "paper-mv with CLIP L/14", head=PAPER_HEAD),
    Preset("paper-op-l14", "clip-l14", "sd2", "op", "paper-op with CLIP L/14", head=PAPER_HEAD),
    Preset("offline", None, "focus-s14", "mv",
           "any CLIP you pass (--logits DIR) + the bundled focus-s14 ViT-S/14 attention: runs with no "
           "download; the product's readout"),
)}


def _no_logits_error(preset: str) -> RuntimeError:
    from dslo.models import WeightsNotFoundError

    return WeightsNotFoundError(
        f"the {preset} preset needs a CLIP for the class evidence and {OFFLINE_FALLBACK_LOGITS} weights "
        f"are not on this machine. Pass one: `dslo segment ... --model {preset} --logits DIR` or "
        f"`create_segmenter('{preset}', logits='DIR')`, where DIR is a CLIP, MetaCLIP, SigLIP or SigLIP 2 "
        "folder in transformers format (written by save_pretrained, e.g. a download of "
        "openai/clip-vit-base-patch16) or an OpenCLIP folder (open_clip_config.json, e.g. "
        "laion/CLIP-ViT-B-16-laion2B-s34B-b88K); dslo.testing.make_tiny_clip(DIR) writes a tiny random "
        "one for trying the pipeline"
    )


def list_presets() -> dict[str, dict]:
    """Preset name → ``{"logits", "attention", "mode", "description"}`` (copies)."""
    return {name: p.summary() for name, p in PRESETS.items()}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name suggests the closest."""
    if name not in PRESETS:
        raise SettingsError(
            f"unknown preset {name!r}{did_you_mean(name, PRESETS) or '.'} Presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def _is_path_like(name: object) -> bool:
    return isinstance(name, os.PathLike) or (isinstance(name, str) and os.path.isdir(name))


def resolve_preset(name_or_preset: str | os.PathLike | Preset) -> tuple[Preset, dict]:
    """→ (preset, implied overrides). A logits registry name or a CLIP folder in place of a preset
    means the default preset with that logits model."""
    if isinstance(name_or_preset, Preset):
        return name_or_preset, {}
    if isinstance(name_or_preset, str) and name_or_preset in PRESETS:
        return PRESETS[name_or_preset], {}
    if _is_path_like(name_or_preset):
        return PRESETS["default"], {"logits": os.fspath(name_or_preset)}
    from dslo.models import list_models

    logits_names = list_models().get("logits", [])
    if name_or_preset in logits_names:
        return PRESETS["default"], {"logits": name_or_preset}
    raise SettingsError(
        f"unknown preset {name_or_preset!r}{did_you_mean(name_or_preset, list(PRESETS) + logits_names) or '.'} "
        f"Presets: {', '.join(PRESETS)}; a logits model name or a local CLIP, SigLIP or OpenCLIP folder also works "
        "(`dslo models` lists them)"
    )

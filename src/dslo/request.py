"""The typed request of a segmentation run: which models (a preset and its overrides), which
classes and background, where the outputs go. Every front end (the command line, the web app,
the Label Studio backend, the exporters) builds one, every engine takes one, and the outputs carry
its provenance record (:mod:`dslo.provenance`).

Everything is checked when the request is built, before any model loads: a typo in a head setting
or a model option fails in a second, not after the weights were read.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dslo import remote
from dslo.classes import BackgroundPolicy, normalize_classes, parse_background
from dslo.errors import SettingsError, check_choice
from dslo.imageio import DEFAULT_MAX_SIDE
from dslo.outputs import OUTPUT_KINDS

if TYPE_CHECKING:
    from dslo.presets import Preset
    from dslo.segmenter import Segmenter

__all__ = ["ModelChoice", "OutputOptions", "SegmentRequest", "DEFAULT_SAVE", "FORMATS"]

DEFAULT_SAVE = ("mask", "overlay", "json")
FORMATS = ("files", "parquet", "label-studio")


def _copy(d: Mapping[str, Any] | Sequence[tuple[str, Any]] | None) -> dict[str, Any]:
    # plain dicts (copied), not read-only views: a request travels to Ray workers by pickle
    return dict(d or {})


@dataclass(frozen=True)
class ModelChoice:
    """The segmenter a run builds: a preset (a name of :data:`dslo.presets.PRESETS`, a logits model
    name or a CLIP folder) and what replaces its choices. ``settings``: head settings (fields of
    :class:`dslo.head.HeadConfig`) plus the segmenter's ``post`` and ``mode``; ``max_side`` None
    never downscales; ``accel`` ``"none"`` | ``"int8"`` (:mod:`dslo.models.accel`)."""

    preset: str = "default"
    logits: str | None = None
    attention: str | None = None
    mode: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    logits_options: Mapping[str, Any] = field(default_factory=dict)
    attention_options: Mapping[str, Any] = field(default_factory=dict)
    device: str = "auto"
    dtype: str = "auto"
    max_side: int | None = DEFAULT_MAX_SIDE
    accel: str = "none"

    def __post_init__(self) -> None:
        from dslo.models.accel import check_accel

        for name in ("settings", "logits_options", "attention_options"):
            object.__setattr__(self, name, _copy(getattr(self, name)))
        object.__setattr__(self, "accel", check_accel(self.accel))
        if self.max_side is not None and (not isinstance(self.max_side, int) or self.max_side < 16):
            raise SettingsError(f"max_side must be an integer >= 16 or None (never downscale); got {self.max_side!r}")

    def replace(self, **changes: Any) -> ModelChoice:
        return dataclasses.replace(self, **changes)

    @property
    def named_preset(self) -> Preset | None:
        """The preset when ``preset`` names one (None for a logits name or a CLIP folder)."""
        from dslo.presets import PRESETS

        return PRESETS.get(self.preset)

    def resolved_mode(self) -> str:
        p = self.named_preset
        return self.mode or self.settings.get("mode") or (p.mode if p else None) or "mv"

    def head_settings(self) -> dict[str, Any]:
        """The head's effective settings (the preset's head with ``settings`` applied), checked
        by :class:`dslo.head.HeadConfig`; the model options are checked against the models'
        settings; all before any model loads. A bad value is a one-line ``SettingsError``."""
        from dslo.head import HeadConfig
        from dslo.models.accel import check_accel
        from dslo.models.options import check_model_options
        from dslo.models.weights import resolve_device
        from dslo.segmenter import POST_PROCESSES

        if self.accel != "none":  # int8 on a GPU is refused before any model loads
            check_accel(self.accel, resolve_device("auto") if self.device == "auto" else self.device)

        settings = dict(self.settings)
        settings.pop("mode", None)  # --set mode=op is --mode op
        post = settings.pop("post", None)  # the segmenter's post-process, not a head setting
        if post is not None:
            check_choice("post", post, POST_PROCESSES)
        p = self.named_preset
        try:
            head = (p.head if p is not None else HeadConfig()).replace(**settings).as_dict()
        except SettingsError as exc:
            raise SettingsError(f"--set: {exc}") from exc
        logits = self.logits or (p.logits if p else None)
        check_model_options("logits", logits or _fallback_logits(), dict(self.logits_options))
        check_model_options("attention", self.attention or (p.attention if p else None),
                            dict(self.attention_options))
        return head

    def segmenter_kwargs(self, background: object = None) -> dict[str, Any]:
        """``create_segmenter(self.preset, **kwargs)``'s keyword arguments."""
        overrides: dict[str, Any] = dict(self.settings)
        for key in ("logits", "attention", "mode"):
            if getattr(self, key):
                overrides[key] = getattr(self, key)
        if self.logits_options:
            overrides["logits_options"] = dict(self.logits_options)
        if self.attention_options:
            overrides["attention_options"] = dict(self.attention_options)
        if self.accel != "none":
            overrides["accel"] = self.accel
        return dict(device=self.device, dtype=self.dtype, max_side=self.max_side, background=background,
                    **overrides)

    def create_segmenter(self, background: object = None) -> Segmenter:
        from dslo.segmenter import create_segmenter

        return create_segmenter(self.preset, **self.segmenter_kwargs(background))

    def logits_model(self) -> tuple[str, dict[str, Any]]:
        """The logits model the segmenter loads: ``(name, options)`` (the preset's choice, the
        override, or the offline fallback; the options with the dtype)."""
        from dslo.presets import resolve_preset

        preset, implied = resolve_preset(self.preset)
        name = preset.logits_model(self.logits or implied.get("logits"))
        options = {**preset.logits_options, **dict(self.logits_options)}
        if self.dtype not in (None, "auto"):
            options["dtype"] = self.dtype
        return name, options


def _fallback_logits() -> str:
    from dslo.presets import OFFLINE_FALLBACK_LOGITS

    return OFFLINE_FALLBACK_LOGITS


@dataclass(frozen=True)
class OutputOptions:
    """Where and what a run writes: ``location`` a folder (``Path``) or a URI (``str``);
    ``kinds`` from :data:`dslo.outputs.OUTPUT_KINDS`; ``overwrite`` redoes images whose outputs
    exist; ``format`` ``files`` (the per-image files), ``parquet`` (rows; the Ray engine) or
    ``label-studio`` (the per-image files, then a Label Studio import file made from them:
    :mod:`dslo.labelling.export`)."""

    location: Path | str
    kinds: tuple[str, ...] = DEFAULT_SAVE
    overwrite: bool = False
    format: str = "files"

    def __post_init__(self) -> None:
        kinds = tuple(dict.fromkeys(self.kinds))
        bad = [k for k in kinds if k not in OUTPUT_KINDS]
        if bad or not kinds:
            raise SettingsError(f"unknown output kind {bad[0] if bad else ''!r}; choose from "
                                f"{', '.join(OUTPUT_KINDS)}")
        object.__setattr__(self, "kinds", kinds)
        check_choice("format", self.format, FORMATS)
        if not remote.is_uri(self.location):  # a folder, however given, is a Path
            object.__setattr__(self, "location", Path(os.fspath(self.location)).expanduser())

    @property
    def writes_files(self) -> bool:
        """Whether the engine writes the per-image files (every format but ``parquet``)."""
        return self.format != "parquet"


@dataclass(frozen=True)
class SegmentRequest:
    """One segmentation run: ``classes`` (synonym lists), ``background`` (a
    :class:`dslo.classes.BackgroundPolicy`), the models, and the outputs (None: results are
    returned, not written: the app, servers). Build with :meth:`create`."""

    classes: tuple[tuple[str, ...], ...]
    background: BackgroundPolicy
    models: ModelChoice = field(default_factory=ModelChoice)
    output: OutputOptions | None = None
    batch_size: int = 1
    head: Mapping[str, Any] = field(default_factory=dict)  # the checked effective head settings

    @classmethod
    def create(cls, classes: Any, background: object = None, models: ModelChoice | None = None,
               output: OutputOptions | None = None, batch_size: int = 1) -> SegmentRequest:
        """Check everything (classes, background, head settings, model options) and build."""
        models = models or ModelChoice()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise SettingsError(f"batch_size must be a positive integer, got {batch_size!r}")
        policy = background if isinstance(background, BackgroundPolicy) else parse_background(background)
        groups = tuple(tuple(g) for g in normalize_classes(classes))
        return cls(groups, policy, models, output, batch_size, _copy(models.head_settings()))

    def replace(self, **changes: Any) -> SegmentRequest:
        """A copy with fields changed; a new ``models`` or ``classes`` is checked again."""
        if "models" in changes or "classes" in changes or "background" in changes:
            merged = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "head"}
            merged.update(changes)
            return SegmentRequest.create(**merged)
        return dataclasses.replace(self, **changes)

    @property
    def class_lists(self) -> list[list[str]]:
        return [list(c) for c in self.classes]

    def record(self) -> dict[str, Any]:
        """What the outputs carry (:mod:`dslo.provenance`): everything that changes them, with the
        preset's choices filled in, so equal requests compare equal."""
        m = self.models
        p = m.named_preset
        return {
            "command": "segment",
            "classes": self.class_lists,
            "background": self.background.describe(),
            "preset": m.preset,
            "logits": m.logits or (p.logits if p else None),
            "attention": m.attention or (p.attention if p else None),
            "mode": m.mode or m.settings.get("mode") or (p.mode if p else None),
            "head": dict(self.head),
            "post": m.settings.get("post"),
            "logits_options": dict(sorted(m.logits_options.items())),
            "attention_options": dict(sorted(m.attention_options.items())),
            "max_side": m.max_side,
            "dtype": m.dtype,
            # only when on: outputs of float runs keep the record they had before accel existed
            **({"accel": m.accel} if m.accel != "none" else {}),
        }

    def create_segmenter(self) -> Segmenter:
        return self.models.create_segmenter(self.background)

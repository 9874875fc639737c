"""Segment your own images: a logits model (CLIP) + an attention model + the DSLO head.

    >>> import dslo
    >>> seg = dslo.create_segmenter("default")  # CLIP B/16 + DINOv2-reg + M.V.  # doctest: +SKIP
    >>> result = seg.predict("street.jpg", ["car", "person", "road"], background="stuff")  # doctest: +SKIP
    >>> result.save_mask("street.png"); result.overlay().save("street.overlay.png")  # doctest: +SKIP

(skipped here: they need the CLIP and DINOv2 weights). Settings are checked before any model loads:

    >>> dslo.create_segmenter("default", mode="op", nms_treshold=0.6)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dslo.errors.SettingsError: unknown segmenter setting(s) ['nms_treshold']; did you mean nms_threshold or ...? ...

Presets (:mod:`dslo.presets`) name a logits model, an attention model and a head mode; every
setting can be overridden (``create_segmenter("default", mode="op", nms_threshold=0.6,
logits="path/to/clip")``). Images larger than ``max_side`` are downscaled for the models and the
head; the label map always comes back at the original size (the head's scores are upsampled
bilinearly, then the argmax is taken). The pieces live apart: presets in :mod:`dslo.presets`, the
result in :mod:`dslo.result`, the head math in :mod:`dslo.head`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dslo.classes import (
    BACKGROUND_NAME,
    BackgroundPolicy,
    ClassesLike,
    normalize_classes,
    parse_background,
)
from dslo.classes import (
    class_names as _class_names,
)
from dslo.errors import SettingsError, check_known
from dslo.head import HeadConfig, evidence_posterior, get_mode, upsample_argmax
from dslo.head import refine as _head_refine
from dslo.head.pamr import pamr
from dslo.imageio import DEFAULT_MAX_SIDE, ImageLike, resize_max_side, to_rgb_array
from dslo.models.contracts import AttentionSource, BatchedAffinity, DenseFeatures, LogitsModel
from dslo.models.registry import check_model_name
from dslo.models.weights import resolve_device
from dslo.presets import PRESETS, Preset, get_preset, list_presets, resolve_preset
from dslo.result import SegmentationResult

__all__ = [
    "DEFAULT_MAX_SIDE",
    "Encoding",
    "PRESETS",
    "Preset",
    "Segmenter",
    "SegmentationResult",
    "create_segmenter",
    "get_preset",
    "list_presets",
    "check_model_name",
    "resolve_device",
    "upsample_argmax",
]

# Settings of the segmenter itself; every other override must be a field of dslo.head.HeadConfig.
OWN_SETTINGS = ("logits", "attention", "mode", "max_side", "dtype", "background", "head",
                "logits_options", "attention_options", "post", "accel")
POST_PROCESSES = ("none", "pamr")


@dataclass
class Encoding:
    """What the model passes computed for one image (:meth:`Segmenter.encode`); decoding it with
    any classes, head mode or head settings runs no model layer.

    image: the ``(H, W, 3)`` uint8 image; small: as the models saw it (``max_side``);
    features: the logits model's ``(h, w, D)`` dense features (None for a logits model without
    :class:`dslo.models.DenseFeatures`, whose logits are then computed at decode time);
    affinity: ``(N, N)`` and its grid (None when the segmenter has no attention model)."""

    image: np.ndarray = field(repr=False)
    small: np.ndarray = field(repr=False)
    image_name: str | None = None
    features: torch.Tensor | None = field(default=None, repr=False)
    affinity: torch.Tensor | None = field(default=None, repr=False)
    grid: tuple[int, int] | None = None


class Segmenter:
    """Composes a logits model, an attention model and the head. Build with :func:`create_segmenter`.

    The models follow :class:`dslo.models.LogitsModel` (``logits(image, classes) -> (K, h, w)``)
    and :class:`dslo.models.AttentionSource` (``affinity(image) -> (A (N, N), (h_a, w_a))``).
    ``head``: the head's settings; ``head_settings``: field overrides applied on top of it.
    ``accel``: ``"none"`` or ``"int8"`` (:mod:`dslo.models.accel`: the models' image towers are
    quantized **in place**, on the CPU; the text tower stays float).

    As segment-anything splits ``set_image`` and ``predict``: :meth:`encode` runs the model passes
    once, :meth:`decode` turns them into a segmentation for any class list, head mode or head
    setting; :meth:`predict` is ``decode(encode(image), classes)``.
    """

    def __init__(self, logits_model: LogitsModel | None, attention_model: AttentionSource | None, *,
                 mode: str = "mv", head: HeadConfig | None = None, head_settings: dict | None = None,
                 max_side: int | None = DEFAULT_MAX_SIDE, background: object = None, info: dict | None = None,
                 post: str | None = None, accel: str | None = "none") -> None:
        from dslo.models.accel import accelerate, check_accel

        get_mode(mode)
        accel = check_accel(accel)
        if post is not None and post not in POST_PROCESSES:
            raise SettingsError(f"post={post!r}; use one of {POST_PROCESSES} (pamr: pixel-adaptive mask "
                                "refinement, 10 steps, dilations 8 and 16, as NACLIP's published numbers)")
        if max_side is not None and (not isinstance(max_side, int) or max_side < 16):
            raise SettingsError(f"max_side must be an integer >= 16 or None; got {max_side!r}")
        if head is not None and not isinstance(head, HeadConfig):
            raise SettingsError(f"head must be a dslo.head.HeadConfig, got {type(head).__name__}")
        self.logits_model = logits_model
        self.attention_model = attention_model
        self.mode = mode
        self.head = (head or HeadConfig()).replace(**dict(head_settings or {}))
        self.max_side = max_side
        self.background = parse_background(background)
        self.info = dict(info or {})
        self.post = None if post in (None, "none") else post
        self.accel = accel
        for model in (logits_model, attention_model):  # CLIP attention shares the logits model's towers
            accelerate(model, accel)

    @property
    def head_settings(self) -> dict:
        """The head settings that differ from the defaults."""
        return self.head.changed()

    def __repr__(self) -> str:
        return (f"Segmenter(preset={self.info.get('preset')!r}, logits={self.info.get('logits')!r}, "
                f"attention={self.info.get('attention')!r}, mode={self.mode!r})")

    def settings(self, background: BackgroundPolicy | None = None, mode: str | None = None,
                 head: HeadConfig | None = None) -> dict:
        """The record of every setting, stored in each output's ``model`` field."""
        from dslo import __version__

        rec = dict(self.info)
        rec.update({
            "mode": mode or self.mode,
            "head": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                     for k, v in (head or self.head).as_dict().items()},
            "max_side": self.max_side,
            "post": self.post or "none",
            "accel": self.accel,
            "background": (background or self.background).describe(),
            "dslo_version": __version__,
        })
        return rec

    # ---- encode once ------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, image: ImageLike) -> Encoding:
        """Run the model passes on one image: the logits model's dense features and the
        attention affinity. ``image``: a path, PIL image, ``(H, W, 3)`` uint8 array or
        ``(3, H, W)`` tensor."""
        return self.encode_batch([image])[0]

    @torch.no_grad()
    def encode_batch(self, images: Sequence[ImageLike], batch_size: int | None = None) -> list[Encoding]:
        """:meth:`encode` for several images, in input order: images whose model input has the
        same size share one pass of each model (mixed sizes form several groups), at most
        ``batch_size`` per pass (None: a whole group). Models without batched passes
        (:class:`dslo.models.BatchedLogits` / ``BatchedAffinity``) run one image at a time."""
        self._need_logits_model()
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None; got {batch_size}")
        loaded = [self._load(im) for im in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (_, small, _) in enumerate(loaded):
            groups.setdefault(tuple(small.shape[:2]), []).append(i)
        out: list[Encoding | None] = [None] * len(loaded)
        for members in groups.values():
            step = batch_size or len(members)
            for s in range(0, len(members), step):
                chunk = members[s:s + step]
                smalls = [loaded[i][1] for i in chunk]
                features = self._features(smalls)
                affinities, grid = self._affinities(smalls)
                for j, i in enumerate(chunk):
                    rgb, small, name = loaded[i]
                    out[i] = Encoding(rgb, small, name, None if features is None else features[j],
                                      None if affinities is None else affinities[j], grid)
        return out  # type: ignore[return-value]

    def _features(self, smalls: list[np.ndarray]) -> torch.Tensor | None:
        m = self.logits_model
        if not isinstance(m, DenseFeatures):
            return None
        if len(smalls) == 1:
            return m.dense_features(smalls[0])[None]
        return m.dense_features_batch(smalls)

    def _affinities(self, smalls: list[np.ndarray]) -> tuple[torch.Tensor | None, tuple[int, int] | None]:
        m = self.attention_model
        if m is None:
            return None, None
        if len(smalls) > 1 and isinstance(m, BatchedAffinity):
            A, (h, w) = m.affinity_batch(smalls)
            return A, (int(h), int(w))
        outs = [m.affinity(s) for s in smalls]
        h, w = outs[0][1]
        return torch.stack([a for a, _ in outs]), (int(h), int(w))

    # ---- decode many ------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, encoding: Encoding, classes: ClassesLike, background: object = None, *,
               mode: str | None = None, **head_settings: Any) -> SegmentationResult:
        """Segment an encoded image into ``classes``: the class scores (the text side alone when
        the logits model has :class:`dslo.models.DenseFeatures`) and the head. ``mode`` and
        ``head_settings`` (fields of :class:`dslo.head.HeadConfig`) replace the segmenter's for this
        call only; no model layer runs for them. ``background``: as for :meth:`predict`."""
        self._need_logits_model()
        policy = self.background if background is None else parse_background(background)
        user = normalize_classes(classes)
        head_classes = ([policy.stuff_class(user)] + user) if policy.kind == "stuff" else user
        if encoding.features is not None:
            logits = self.logits_model.class_scores(encoding.features, head_classes)  # type: ignore[union-attr]
        else:  # a logits model that cannot score apart from the image
            logits = self.logits_model.logits(encoding.small, head_classes)  # type: ignore[union-attr]
        affinity = None if encoding.affinity is None else (encoding.affinity, encoding.grid)
        return self._refine(logits, encoding.image, encoding.small, encoding.image_name, user, head_classes,
                            policy, affinity=affinity, mode=mode, head=self.head.replace(**head_settings))

    @torch.no_grad()
    def predict(self, image: ImageLike, classes: ClassesLike,
                background: object = None) -> SegmentationResult:
        """Segment one image into the given classes: ``decode(encode(image), classes)``.

        image: a path, PIL image, ``(H, W, 3)`` uint8 numpy array or ``(3, H, W)`` torch tensor.
        classes: ``"cat, dog"``, a list of names / synonym lists, or a ``Path`` to a classes file.
        background: ``None`` (the segmenter's default, "none" unless set at creation), ``"none"``,
            ``"stuff"`` or a list of stuff words (a ``background`` class, id 0), or a float
            threshold in (0, 1) on the CLIP class probability (low-confidence pixels → id 0).
        """
        return self.decode(self.encode(image), classes, background)

    @torch.no_grad()
    def predict_batch(self, images: Sequence[ImageLike], classes: ClassesLike, background: object = None,
                      batch_size: int | None = None) -> list[SegmentationResult]:
        """:meth:`predict` for several images, in input order, with the model passes batched
        (:meth:`encode_batch`); the head runs per image. Labels are those of :meth:`predict`;
        scores agree to float rounding (a batched matrix product may sum in another order)."""
        return [self.decode(e, classes, background) for e in self.encode_batch(images, batch_size)]

    @torch.no_grad()
    def refine(self, logits: torch.Tensor, image: ImageLike, classes: ClassesLike,
               background: object = None) -> SegmentationResult:
        """The head as a plug-in on logits from any method (``dslo refine``).

        logits: ``(K, h, w)`` class scores for the K ``classes`` on any grid (resized to the
        attention grid by the head). background: ``"none"`` or a probability threshold (the
        threshold reads ``softmax(40 · logits)``, so it is meaningful for cosine-similarity logits);
        a stuff-word class cannot be added to logits computed elsewhere.
        """
        policy = self.background if background is None else parse_background(background)
        if policy.kind == "stuff":
            raise ValueError(
                "the stuff-word background needs the logits model; with external logits, include a "
                "background class in your logits or use a probability threshold"
            )
        user = normalize_classes(classes)
        logits = torch.as_tensor(logits)
        rgb, small, image_name = self._load(image)
        return self._refine(logits, rgb, small, image_name, user, user, policy)

    def _need_logits_model(self) -> None:
        if self.logits_model is None:
            raise RuntimeError("this segmenter has no logits model; use refine(logits, ...) instead")

    def _load(self, image: ImageLike) -> tuple[np.ndarray, np.ndarray, str | None]:
        image_name = str(image) if isinstance(image, (str, os.PathLike)) else None
        rgb = to_rgb_array(image)
        small = resize_max_side(rgb, self.max_side)
        if not small.flags.writeable:  # PIL-backed arrays are read-only; torch warns on those
            small = small.copy()
        return rgb, small, image_name

    def _refine(self, logits: torch.Tensor, rgb: np.ndarray, small: np.ndarray, image_name: str | None,
                user: list[list[str]], head_classes: list[list[str]], policy: BackgroundPolicy,
                affinity: tuple | None = None, mode: str | None = None,
                head: HeadConfig | None = None) -> SegmentationResult:
        mode = mode or self.mode
        head = head or self.head
        head_mode = get_mode(mode)
        if logits.ndim != 3 or logits.shape[0] != len(head_classes):
            raise ValueError(
                f"logits of shape {tuple(logits.shape)} do not fit {len(head_classes)} classes: "
                f"expected ({len(head_classes)}, h, w), one map per class in class order"
            )
        names = _class_names(user)
        if policy.has_background:
            if any(n.casefold() == BACKGROUND_NAME for n in names):
                raise ValueError(
                    f"a class is named {BACKGROUND_NAME!r} and a background policy is on; "
                    "drop that class or use background='none'"
                )
            names = [BACKGROUND_NAME] + names
        all_classes = ([[BACKGROUND_NAME]] + user) if policy.kind == "threshold" else head_classes

        if affinity is not None:  # computed by encode
            A, grid = affinity
        elif not head_mode.runs_head:  # the logits alone: no affinity is read
            A, grid = torch.ones(1, 1), tuple(logits.shape[1:])
        elif self.attention_model is None:
            raise RuntimeError(f"mode {mode!r} needs an attention model; this segmenter has none")
        else:
            A, grid = self.attention_model.affinity(small)
        res = _head_refine(logits, A, small, mode=mode, grid=tuple(grid), config=head)
        scores, labels_small = res.scores, res.labels
        if self.post == "pamr":  # the peers' optional post-process, on the maps the arg-max reads
            guide = torch.as_tensor(small, device=scores.device).permute(2, 0, 1).float() / 255.0
            scores = pamr(guide, scores)
            labels_small = torch.as_tensor(res.kept, device=scores.device)[scores.argmax(0)]

        kept = torch.as_tensor(res.kept, dtype=torch.int64).cpu()
        H, W = rgb.shape[:2]
        if small.shape[:2] == (H, W):
            labels = torch.as_tensor(labels_small).to("cpu", torch.int64)
        else:
            labels = kept[upsample_argmax(scores, (H, W)).cpu()]
        shift = 1 if policy.kind == "threshold" else 0
        labels = labels + shift
        if policy.kind == "threshold":
            conf = evidence_posterior(logits, policy.scale).amax(0)  # (h, w): the class probability NMS reads
            conf = torch.nn.functional.interpolate(conf[None, None], size=(H, W), mode="bilinear",
                                                   align_corners=False)[0, 0].cpu()
            labels[conf < policy.threshold] = 0
        seed_ids = None if res.seed_kept is None else (res.seed_kept.cpu() + shift).numpy()
        return SegmentationResult(
            labels=labels.numpy().astype(np.int64, copy=False),
            scores=scores.detach(),
            score_class_ids=(kept + shift).numpy(),
            class_names=names,
            classes=[list(c) for c in all_classes],
            background=policy.describe(),
            model=self.settings(policy, mode, head) | _input_record(small.shape[:2]),
            image=rgb,
            image_name=image_name,
            logits=logits.detach(),
            grid=(int(res.grid[0]), int(res.grid[1])),
            seeds=None if res.seeds is None else res.seeds.detach(),
            seed_class_ids=seed_ids,
        )


def _input_record(small_hw: tuple[int, int]) -> dict:
    """What the models saw: ``input_size`` (after ``max_side``) and whether the image was
    processed at reduced resolution because its aspect ratio exceeds what bounds the patch count."""
    from dslo.models.common import MAX_ASPECT, input_is_reduced

    h, w = int(small_hw[0]), int(small_hw[1])
    rec: dict = {"input_size": [h, w], "reduced_resolution": input_is_reduced((h, w))}
    if rec["reduced_resolution"]:
        rec["reduced_resolution_reason"] = (
            f"aspect ratio {max(h, w) / min(h, w):.1f}:1 exceeds {MAX_ASPECT}:1; the models' inputs "
            f"were capped at {MAX_ASPECT}x their short side to bound memory, so the short side got "
            "fewer pixels than the model's short_side")
    return rec


def create_segmenter(name_or_preset: str | os.PathLike | Preset = "default", device: str = "auto",
                     **overrides: Any) -> Segmenter:
    """Build a :class:`Segmenter` from a preset (a name from :func:`list_presets`, or a
    :class:`dslo.presets.Preset`) and overrides.

    Overrides: ``logits`` / ``attention`` (registry name or local folder, replacing the preset's),
    ``mode`` (a key of ``dslo.head.MODE_TABLE``), ``max_side`` (int or None), ``dtype`` (passed to
    both models), ``background`` (the default policy of :meth:`Segmenter.predict`),
    ``logits_options`` / ``attention_options`` (dicts of model settings, on top of the preset's),
    ``head`` (a :class:`dslo.head.HeadConfig` replacing the preset's), ``post`` ("none" |
    "pamr": PAMR on the score maps the arg-max reads), ``accel`` ("none" | "int8": dynamic int8
    image towers on the CPU, :mod:`dslo.models.accel`) and any field of ``HeadConfig``. Unknown settings raise :class:`dslo.errors.SettingsError`; missing weights
    raise ``dslo.models.WeightsNotFoundError`` saying how to get them.
    """
    from dslo.models import create_attention_model, create_logits_model
    from dslo.models.accel import check_accel

    preset, implied = resolve_preset(name_or_preset)
    overrides = {**implied, **overrides}
    check_known("segmenter", overrides, OWN_SETTINGS + HeadConfig.fields())
    head = overrides.get("head") or preset.head
    if not isinstance(head, HeadConfig):
        raise SettingsError(f"head must be a dslo.head.HeadConfig, got {type(head).__name__}")
    head = head.replace(**{k: v for k, v in overrides.items() if k in HeadConfig.fields()})
    mode = overrides.get("mode") or preset.mode
    get_mode(mode)
    dev = resolve_device(device)
    accel = check_accel(overrides.get("accel"), dev)  # refused before any weights load

    logits_name = preset.logits_model(overrides.get("logits"))
    attention_name = overrides.get("attention") or preset.attention
    check_model_name("logits", logits_name)
    check_model_name("attention", attention_name)
    model_kw: dict[str, Any] = {}
    if overrides.get("dtype") not in (None, "auto"):
        model_kw["dtype"] = overrides["dtype"]
    logits_options = {**preset.logits_options, **dict(overrides.get("logits_options") or {})}
    logits_model = create_logits_model(os.fspath(logits_name), device=str(dev), **model_kw, **logits_options)
    attention_options = {**preset.attention_options, **dict(overrides.get("attention_options") or {})}
    if os.fspath(attention_name) == "clip" and "clip" not in attention_options:
        # CLIP's own attention: reuse the logits model (one tower in memory, one forward shared)
        # instead of loading a second CLIP.
        attention_options["clip"] = logits_model
    if not get_mode(mode).runs_head and not overrides.get("attention_options"):
        attention_model = None  # the logits alone: no attention is computed, none is loaded
    else:
        attention_model = create_attention_model(os.fspath(attention_name), device=str(dev),
                                                 **model_kw, **attention_options)
        from dslo.models.clip import ClipLogitsModel

        if isinstance(logits_model, ClipLogitsModel) and logits_model.settings.proxy == os.fspath(attention_name):
            # ProxyCLIP's proxy is the attention source: load it once
            logits_model.proxy_source = attention_model
    info = {
        "preset": preset.name,
        "logits": os.fspath(logits_name),
        "attention": os.fspath(attention_name) if attention_model is not None else None,
        "device": str(dev),
        "dtype": overrides.get("dtype") or "auto",
    }
    return Segmenter(
        logits_model,
        attention_model,
        mode=mode,
        head=head,
        max_side=overrides.get("max_side", DEFAULT_MAX_SIDE),
        background=overrides.get("background"),
        info=info,
        post=overrides.get("post"),
        accel=accel,
    )

"""Segment your own images: a logits model (CLIP) + an attention model + the DSLO head.

    >>> import dslo
    >>> seg = dslo.create_segmenter("default")                   # CLIP B/16 + DINOv2-reg + M.V.
    >>> result = seg.predict("street.jpg", ["car", "person", "road"], background="stuff")
    >>> result.save_mask("street.png"); result.overlay().save("street.overlay.png")

Presets name a logits model, an attention model and a head mode; every setting can be overridden
(``create_segmenter("default", mode="op", theta=0.6, logits="path/to/clip")``). Images larger than
``max_side`` are downscaled for the models and the head; the label map always comes back at the
original size (the head's scores are upsampled bilinearly, then the argmax is taken).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dslo import outputs
from dslo.classes import (
    BACKGROUND_NAME,
    BackgroundPolicy,
    ClassesLike,
    class_names as _class_names,
    normalize_classes,
    parse_background,
)
from dslo.imageio import ImageLike, resize_max_side, to_rgb_array
from dslo.models.weights import resolve_device

__all__ = [
    "PRESETS",
    "Segmenter",
    "SegmentationResult",
    "create_segmenter",
    "list_presets",
    "check_model_name",
    "resolve_device",
    "upsample_argmax",
]

DEFAULT_MAX_SIDE = 1024

# logits None = "the CLIP the user passes" (offline preset), falling back to clip-b16 when local.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "logits": "clip-b16", "attention": "dinov2-reg-b14", "mode": "mv",
        "description": "CLIP B/16 (k-k) + DINOv2-reg B/14 attention + M.V.: the paper's best "
                       "attention source, far cheaper than SD2",
    },
    "default-l14": {
        "logits": "clip-l14", "attention": "dinov2-reg-b14", "mode": "mv",
        "description": "the default preset with CLIP L/14",
    },
    "paper-mv": {
        "logits": "clip-b16", "attention": "sd2", "mode": "mv",
        "description": "the paper's main setting: CLIP B/16 (k-k) + SD2 attention + maximum velocity",
    },
    "paper-op": {
        "logits": "clip-b16", "attention": "sd2", "mode": "op",
        "description": "CLIP B/16 (k-k) + SD2 attention + optimal path",
    },
    "paper-mv-l14": {
        "logits": "clip-l14", "attention": "sd2", "mode": "mv",
        "description": "paper-mv with CLIP L/14",
    },
    "paper-op-l14": {
        "logits": "clip-l14", "attention": "sd2", "mode": "op",
        "description": "paper-op with CLIP L/14",
    },
    "offline": {
        "logits": None, "attention": "focus-s14", "mode": "mv",
        "description": "any CLIP you pass (--logits DIR) + the bundled focus-s14 ViT-S/14 "
                       "attention: runs with no download",
    },
}

# Settings of the segmenter itself; every other override must be a field of dslo.head.HeadConfig.
_OWN_SETTINGS = ("logits", "attention", "mode", "max_side", "dtype", "background",
                 "logits_options", "attention_options")


def list_presets() -> dict[str, dict]:
    """Preset name → ``{"logits", "attention", "mode", "description"}`` (copies)."""
    return {name: dict(p) for name, p in PRESETS.items()}


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.4)
    return f"; did you mean {' or '.join(close)}?" if close else "."


def _is_path_like(name: object) -> bool:
    return isinstance(name, os.PathLike) or (isinstance(name, str) and os.path.isdir(name))


def check_model_name(kind: str, name: str | os.PathLike) -> None:
    """Fail early, with the closest registry names, on a name that is neither a registry key, an
    existing path nor a Hub id (``org/name``): most likely a typo."""
    from dslo.models import list_models

    name = os.fspath(name)
    keys = list_models().get(kind, [])
    if name in keys or os.path.exists(os.path.expanduser(name)) or "/" in name or os.sep in name:
        return
    other = "attention" if kind == "logits" else "logits"
    hint = ""
    if name in list_models().get(other, []):
        hint = f" ({name!r} is a{'n' if other == 'attention' else ''} {other} model)"
    raise ValueError(
        f"unknown {kind} model {name!r}{hint}{_suggest(name, keys)} {kind.capitalize()} models: "
        f"{', '.join(keys)}; or pass a local folder or a Hugging Face id 'org/name'"
    )


def _head_config_type():
    from dslo.head import HeadConfig

    return HeadConfig


def _head_refine(*args, **kwargs):
    from dslo.head import refine

    return refine(*args, **kwargs)


def upsample_argmax(scores: torch.Tensor, size: tuple[int, int], band: int = 256) -> torch.Tensor:
    """Argmax over classes of the bilinear upsampling of ``scores``, without materialising it.

    scores: ``(K, h, w)`` float; size: ``(H, W)``. Returns ``(H, W)`` int64 indices into K, equal
    (up to float rounding on near-ties) to ``F.interpolate(scores[None], size, mode="bilinear",
    align_corners=False)[0].argmax(0)``. Bilinear resampling is separable: columns are
    interpolated once (``K × h × W``), then rows band by band, so memory is ``K × band × W``
    instead of ``K × H × W`` (a 12-megapixel photo with 10 classes would otherwise need ~0.5 GB).
    """
    if scores.ndim != 3:
        raise ValueError(f"scores must be (K, h, w); got shape {tuple(scores.shape)}")
    k, h, w = scores.shape
    H, W = int(size[0]), int(size[1])
    dtype = scores.dtype if scores.dtype == torch.float64 else torch.float32
    s = scores.to(dtype)
    c0, c1, cf = _linear_taps(W, w, s.device, dtype)
    cols = torch.lerp(s[:, :, c0], s[:, :, c1], cf)  # (K, h, W)
    r0, r1, rf = _linear_taps(H, h, s.device, dtype)
    out = torch.empty((H, W), dtype=torch.int64, device=s.device)
    for y0 in range(0, H, band):
        sl = slice(y0, y0 + band)
        rows = torch.lerp(cols[:, r0[sl]], cols[:, r1[sl]], rf[sl, None])  # (K, b, W)
        out[sl] = rows.argmax(0)
    return out


def _linear_taps(out_n: int, in_n: int, device: torch.device, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two source indices and the weight of the second, for each of ``out_n`` outputs of 1-D
    linear resampling with ``align_corners=False`` (PyTorch's convention: clamp at the border)."""
    x = ((torch.arange(out_n, dtype=torch.float64) + 0.5) * (in_n / out_n) - 0.5).clamp(min=0)
    i0 = x.floor().long().clamp(max=in_n - 1)
    i1 = (i0 + 1).clamp(max=in_n - 1)
    frac = (x - i0).to(dtype)
    return i0.to(device), i1.to(device), frac.to(device)


@dataclass
class SegmentationResult:
    """What :meth:`Segmenter.predict` returns.

    labels: ``(H, W)`` int64 numpy array at the original image size, indices into ``class_names``.
    scores: ``(K', h, w)`` float32 tensor, the head's per-class scores at the size the models saw
        (``h, w`` ≤ ``max_side``) for the classes that survived early rejection;
        ``score_class_ids[i]`` is the class id (index into ``class_names``) of ``scores[i]``.
    class_names: display names; with a background policy, ``class_names[0] == "background"``.
    classes: the synonym lists behind each class (the background's stuff words included).
    background: the policy record (``BackgroundPolicy.describe()``).
    model: the settings that produced the result (preset, models, mode, head settings...).
    image: the ``(H, W, 3)`` uint8 image (for :meth:`overlay`).
    image_name: the path the image came from, when it came from a file.
    """

    labels: np.ndarray
    scores: torch.Tensor
    score_class_ids: np.ndarray
    class_names: list[str]
    classes: list[list[str]]
    background: dict
    model: dict
    image: np.ndarray = field(repr=False)
    image_name: str | None = None

    @property
    def background_index(self) -> int | None:
        return 0 if self.background.get("policy", "none") != "none" else None

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the original image."""
        return tuple(self.labels.shape)  # type: ignore[return-value]

    def areas(self) -> dict[str, int]:
        """Class name → number of pixels, for the classes present."""
        counts = np.bincount(self.labels.reshape(-1), minlength=len(self.class_names))
        return {self.class_names[c]: int(counts[c]) for c in np.flatnonzero(counts)}

    def save_mask(self, path: str | os.PathLike) -> Path:
        """P-mode palette PNG, pixel value = class id (written atomically)."""
        return outputs.save_mask(path, self.labels, len(self.class_names), self.background_index)

    def overlay(self, alpha: float = 0.5, legend: bool = True):
        """A PIL RGB image: class colours over the image, plus a legend of the classes present."""
        return outputs.overlay_image(self.image, self.labels, self.class_names,
                                     self.background_index, alpha=alpha, legend=legend)

    def save_overlay(self, path: str | os.PathLike, alpha: float = 0.5) -> Path:
        return outputs.atomic_save_image(path, self.overlay(alpha=alpha))

    def to_dict(self, image_name: str | None = None) -> dict:
        """The JSON document as a dict (see docs/outputs.md)."""
        name = image_name if image_name is not None else self.image_name
        return outputs.result_json(name, self.labels, self.class_names, self.model, self.classes)

    def to_json(self, image_name: str | None = None, indent: int | None = 1) -> str:
        """``{"image", "width", "height", "classes", "model", "segments": [...]}`` as text;
        one segment per class present with its pixel ``area`` and COCO ``rle``."""
        return json.dumps(self.to_dict(image_name), indent=indent, ensure_ascii=False)

    def save_json(self, path: str | os.PathLike, image_name: str | None = None) -> Path:
        return outputs.save_json(path, self.to_dict(image_name))

    def scores_record(self) -> dict:
        """What ``STEM.scores.pt`` holds: the score tensor and how to read it."""
        return {
            "scores": self.scores.detach().to("cpu", torch.float32).contiguous(),
            "class_ids": torch.as_tensor(self.score_class_ids, dtype=torch.int64),
            "class_names": list(self.class_names),
            "image_size": list(self.size),
            "mode": self.model.get("mode"),
        }

    def save_scores(self, path: str | os.PathLike) -> Path:
        return outputs.atomic_torch_save(path, self.scores_record())


class Segmenter:
    """Composes a logits model, an attention model and the head. Build with :func:`create_segmenter`.

    ``logits_model.logits(image, classes) -> (K, h, w)`` and
    ``attention_model.affinity(image) -> (A (N, N), (h_a, w_a))`` follow dslo.models' contract.
    """

    def __init__(self, logits_model, attention_model, *, mode: str = "mv",
                 head_settings: dict | None = None, max_side: int | None = DEFAULT_MAX_SIDE,
                 background: object = None, info: dict | None = None) -> None:
        if mode not in ("mv", "op", "kl", "none"):
            raise ValueError(
                f"unknown mode {mode!r}; use mv (maximum velocity) or op (optimal path) "
                "(kl: the ablation; none: CLIP logits upsampled, no head)"
            )
        if max_side is not None and (not isinstance(max_side, int) or max_side < 16):
            raise ValueError(f"max_side must be an integer >= 16 or None; got {max_side!r}")
        self.logits_model = logits_model
        self.attention_model = attention_model
        self.mode = mode
        self.head_settings = dict(head_settings or {})
        self.max_side = max_side
        self.background = parse_background(background)
        self.info = dict(info or {})

    def __repr__(self) -> str:
        return (f"Segmenter(preset={self.info.get('preset')!r}, logits={self.info.get('logits')!r}, "
                f"attention={self.info.get('attention')!r}, mode={self.mode!r})")

    def settings(self, background: BackgroundPolicy | None = None) -> dict:
        """The record of every setting, stored in each output's ``model`` field."""
        from dslo import __version__

        head = self.head_settings
        try:
            head = dataclasses.asdict(_head_config_type()(**self.head_settings))
        except ImportError:  # pragma: no cover - the head ships with the package
            pass
        rec = dict(self.info)
        rec.update({
            "mode": self.mode,
            "head": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                     for k, v in head.items()},
            "max_side": self.max_side,
            "background": (background or self.background).describe(),
            "dslo_version": __version__,
        })
        return rec

    @torch.no_grad()
    def predict(self, image: ImageLike, classes: ClassesLike,
                background: object = None) -> SegmentationResult:
        """Segment one image into the given classes.

        image: a path, PIL image, ``(H, W, 3)`` uint8 numpy array or ``(3, H, W)`` torch tensor.
        classes: ``"cat, dog"``, a list of names / synonym lists, or a ``Path`` to a classes file.
        background: ``None`` (the segmenter's default, "none" unless set at creation), ``"none"``,
            ``"stuff"`` or a list of stuff words (a ``background`` class, id 0), or a float
            threshold in (0, 1) on the CLIP class probability (low-confidence pixels → id 0).
        """
        if self.logits_model is None:
            raise RuntimeError("this segmenter has no logits model; use refine(logits, ...) instead")
        policy = self.background if background is None else parse_background(background)
        user = normalize_classes(classes)
        head_classes = ([policy.stuff_class(user)] + user) if policy.kind == "stuff" else user
        rgb, small, image_name = self._load(image)
        logits = self.logits_model.logits(small, head_classes)
        return self._refine(logits, rgb, small, image_name, user, head_classes, policy)

    @torch.no_grad()
    def predict_batch(self, images: Sequence[ImageLike], classes: ClassesLike, background: object = None,
                      batch_size: int | None = None) -> list[SegmentationResult]:
        """:meth:`predict` for several images, in input order, with the CLIP and attention passes
        run over several images at once: images whose model input has the same size are batched
        together (mixed sizes form several groups), at most ``batch_size`` per pass (None: a whole
        group). The head runs per image. Labels are those of :meth:`predict`; scores agree to
        float rounding (a batched matrix product may sum in another order).

        Models without ``logits_batch`` / ``affinity_batch`` are called one image at a time."""
        if self.logits_model is None:
            raise RuntimeError("this segmenter has no logits model; use refine(logits, ...) instead")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None; got {batch_size}")
        policy = self.background if background is None else parse_background(background)
        user = normalize_classes(classes)
        head_classes = ([policy.stuff_class(user)] + user) if policy.kind == "stuff" else user
        loaded = [self._load(im) for im in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (_, small, _) in enumerate(loaded):
            groups.setdefault(tuple(small.shape[:2]), []).append(i)
        results: list[SegmentationResult | None] = [None] * len(loaded)
        for members in groups.values():
            step = batch_size or len(members)
            for s in range(0, len(members), step):
                chunk = members[s:s + step]
                smalls = [loaded[i][1] for i in chunk]
                logits = _batched(self.logits_model, "logits_batch", "logits", smalls, head_classes)
                affinities = _batched(self.attention_model, "affinity_batch", "affinity", smalls)
                for j, i in enumerate(chunk):
                    rgb, small, name = loaded[i]
                    results[i] = self._refine(logits[j], rgb, small, name, user, head_classes, policy,
                                              affinity=(affinities[0][j], affinities[1]))
        return results  # type: ignore[return-value]

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

    def _load(self, image: ImageLike) -> tuple[np.ndarray, np.ndarray, str | None]:
        image_name = str(image) if isinstance(image, (str, os.PathLike)) else None
        rgb = to_rgb_array(image)
        small = resize_max_side(rgb, self.max_side)
        if not small.flags.writeable:  # PIL-backed arrays are read-only; torch warns on those
            small = small.copy()
        return rgb, small, image_name

    def _refine(self, logits: torch.Tensor, rgb: np.ndarray, small: np.ndarray, image_name: str | None,
                user: list[list[str]], head_classes: list[list[str]],
                policy: BackgroundPolicy, affinity: tuple | None = None) -> SegmentationResult:
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

        affinity, grid = affinity if affinity is not None else self.attention_model.affinity(small)
        res = _head_refine(logits, affinity, small, mode=self.mode, grid=tuple(grid), **self.head_settings)

        kept = torch.as_tensor(res.kept, dtype=torch.int64).cpu()
        H, W = rgb.shape[:2]
        if small.shape[:2] == (H, W):
            labels = torch.as_tensor(res.labels).to("cpu", torch.int64)
        else:
            labels = kept[upsample_argmax(res.scores, (H, W)).cpu()]
        shift = 1 if policy.kind == "threshold" else 0
        labels = labels + shift
        if policy.kind == "threshold":
            conf = torch.softmax(policy.scale * logits.float(), dim=0).amax(0)  # (h, w)
            conf = torch.nn.functional.interpolate(conf[None, None], size=(H, W), mode="bilinear",
                                                   align_corners=False)[0, 0].cpu()
            labels[conf < policy.threshold] = 0
        return SegmentationResult(
            labels=labels.numpy().astype(np.int64, copy=False),
            scores=res.scores.detach(),
            score_class_ids=(kept + shift).numpy(),
            class_names=names,
            classes=[list(c) for c in all_classes],
            background=policy.describe(),
            model=self.settings(policy) | {"input_size": [int(small.shape[0]), int(small.shape[1])]},
            image=rgb,
            image_name=image_name,
        )


def _batched(model: Any, batch_method: str, method: str, smalls: list[np.ndarray], *args: Any) -> Any:
    """``model.<batch_method>(smalls, *args)`` when the model has it, else the per-image method
    stacked: logits → ``(B, K, h, w)``; affinity → ``((B, N, N), grid)``."""
    fn = getattr(model, batch_method, None)
    if fn is not None:
        return fn(smalls, *args)
    outs = [getattr(model, method)(s, *args) for s in smalls]
    if method == "affinity":
        return torch.stack([a for a, _ in outs]), outs[0][1]
    return torch.stack(outs)


def _resolve_preset(name_or_preset: str | os.PathLike) -> tuple[str, dict, dict]:
    """→ (preset name, preset, implied overrides). A logits registry name or a CLIP folder in
    place of a preset means the default preset with that logits model."""
    if isinstance(name_or_preset, str) and name_or_preset in PRESETS:
        return name_or_preset, dict(PRESETS[name_or_preset]), {}
    if _is_path_like(name_or_preset):
        return "default", dict(PRESETS["default"]), {"logits": os.fspath(name_or_preset)}
    from dslo.models import list_models

    logits_names = list_models().get("logits", [])
    if name_or_preset in logits_names:
        return "default", dict(PRESETS["default"]), {"logits": name_or_preset}
    raise ValueError(
        f"unknown preset {name_or_preset!r}{_suggest(str(name_or_preset), list(PRESETS) + logits_names)} "
        f"Presets: {', '.join(PRESETS)}; a logits model name or a local CLIP folder also works "
        "(`dslo models` lists them)"
    )


def _offline_logits_error() -> RuntimeError:
    from dslo.models import WeightsNotFoundError

    return WeightsNotFoundError(
        "the offline preset needs a CLIP for the class evidence and clip-b16 weights are not on "
        "this machine. Pass one: `dslo segment ... --model offline --logits DIR` or "
        "`create_segmenter('offline', logits='DIR')`, where DIR is a CLIP in transformers format "
        "(a folder written by CLIPModel.save_pretrained, e.g. a download of openai/clip-vit-base-patch16; "
        "dslo.testing.make_tiny_clip(DIR) writes a tiny random one for trying the pipeline)"
    )


def create_segmenter(name_or_preset: str | os.PathLike = "default", device: str = "auto",
                     **overrides: Any) -> Segmenter:
    """Build a :class:`Segmenter` from a preset (see :func:`list_presets`) and overrides.

    Overrides: ``logits`` / ``attention`` (registry name or local folder, replacing the preset's),
    ``mode`` ("mv" | "op"), ``max_side`` (int or None), ``dtype`` (passed to both models),
    ``background`` (the default policy of :meth:`Segmenter.predict`), ``logits_options`` /
    ``attention_options`` (dicts of model overrides) and any field of ``dslo.head.HeadConfig``.
    Missing weights raise ``dslo.models.WeightsNotFoundError`` saying how to get them.
    """
    from dslo.models import create_attention_model, create_logits_model, weights_available

    preset_name, preset, implied = _resolve_preset(name_or_preset)
    overrides = {**implied, **overrides}
    head_fields = {f.name for f in dataclasses.fields(_head_config_type())}
    unknown = [k for k in overrides if k not in _OWN_SETTINGS and k not in head_fields]
    if unknown:
        choices = list(_OWN_SETTINGS) + sorted(head_fields)
        raise ValueError(
            f"unknown setting {unknown[0]!r}{_suggest(unknown[0], choices)} "
            f"Settings: {', '.join(choices)}"
        )
    head_settings = {k: v for k, v in overrides.items() if k in head_fields}
    if "mode" in head_settings:  # the head's own name for it, if it has one, wins over the preset
        overrides.setdefault("mode", head_settings.pop("mode"))
    dev = resolve_device(device)

    logits_name = overrides.get("logits") or preset["logits"]
    if logits_name is None:  # offline preset with no CLIP given
        if not weights_available("clip-b16"):
            raise _offline_logits_error()
        logits_name = "clip-b16"
    attention_name = overrides.get("attention") or preset["attention"]
    check_model_name("logits", logits_name)
    check_model_name("attention", attention_name)
    model_kw: dict[str, Any] = {}
    if overrides.get("dtype") not in (None, "auto"):
        model_kw["dtype"] = overrides["dtype"]
    logits_model = create_logits_model(os.fspath(logits_name), device=str(dev),
                                       **model_kw, **dict(overrides.get("logits_options") or {}))
    attention_options = dict(overrides.get("attention_options") or {})
    if os.fspath(attention_name) == "clip" and "clip" not in attention_options:
        # CLIP's own attention: reuse the logits model (one tower in memory, one forward shared)
        # instead of loading a second CLIP.
        attention_options["clip"] = logits_model
    attention_model = create_attention_model(os.fspath(attention_name), device=str(dev),
                                             **model_kw, **attention_options)
    info = {
        "preset": preset_name,
        "logits": os.fspath(logits_name),
        "attention": os.fspath(attention_name),
        "device": str(dev),
        "dtype": overrides.get("dtype") or "auto",
    }
    return Segmenter(
        logits_model,
        attention_model,
        mode=overrides.get("mode") or preset["mode"],
        head_settings=head_settings,
        max_side=overrides.get("max_side", DEFAULT_MAX_SIDE),
        background=overrides.get("background"),
        info=info,
    )

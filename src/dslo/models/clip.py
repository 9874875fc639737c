"""CLIP dense logits (SPEC §2) and CLIP's own last-layer attention (SPEC §3).

Dense features: the vision tower runs unchanged up to its last block; that block's attention is
recomputed as ``softmax(a bᵀ/√d) v`` with ``(a, b)`` = (k, k) by default (NACLIP), (q, q)
(ClearCLIP) or (q, k) (vanilla), its residual and MLP dropped by default; then the final layer norm
and the visual projection; CLS dropped; L2-normalised. Text: each query in the 80 ImageNet
templates, embeddings normalised, averaged, re-normalised, cached per query.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Sequence

import numpy as np
import torch

from dslo.classes import normalize_classes  # the one meaning of a class list
from dslo.errors import SettingsError
from dslo.imageio import to_rgb_array
from dslo.models.common import (
    CLIP_MEAN,
    CLIP_STD,
    aspect_size,
    check_settings,
    one_image_memo,
    patch_affinity,
    pixel_tensor,
)
from dslo.models.templates import IMAGENET_TEMPLATES
from dslo.models.weights import locate, read_json, resolve_dtype, weights_error

__all__ = ["ClipSettings", "ClipLogitsModel", "ClipAttentionSource", "load_clip", "load_clip_attention",
           "normalize_classes"]

ATTENTION_VARIANTS = ("kk", "qq", "qk")


@dataclass(frozen=True)
class ClipSettings:
    """Settings of the CLIP logits model (every default from SPEC §2)."""

    attention: str = "kk"  # last-block attention: kk (default) | qq | qk (vanilla)
    keep_residual: bool = False  # keep the last block's residual connection
    keep_mlp: bool = False  # keep the last block's MLP
    short_side: int = 336  # input short side in pixels (aspect ratio kept)
    templates: tuple[str, ...] = field(default=IMAGENET_TEMPLATES)
    text_batch_size: int = 256
    dtype: str = "auto"  # auto: float32 everywhere (CLIP is cheap; fp16 saves little)

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_VARIANTS:
            raise SettingsError(f"attention={self.attention!r}; use one of {ATTENTION_VARIANTS}")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise SettingsError("templates must be a non-empty list of strings each containing '{}'")
        object.__setattr__(self, "templates", tuple(self.templates))


def _no_masks(layer: torch.nn.Module) -> tuple[None, ...]:
    """The mask arguments of an unmasked CLIP encoder layer call: 4.x layers also take a causal
    mask, 5.x layers do not (4.x layers return a tuple, see the caller)."""
    import inspect

    return (None, None) if "causal_attention_mask" in inspect.signature(layer.forward).parameters else (None,)


class ClipLogitsModel:
    """``logits(image, classes) -> (K, h, w)`` cosine similarities from a transformers CLIPModel."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, settings: ClipSettings,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.settings = settings
        self.mean, self.std = tuple(mean), tuple(std)
        self.patch_size = int(model.config.vision_config.patch_size)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self._text_cache: dict[str, torch.Tensor] = {}
        self.texts_encoded = 0  # names this model's text tower has embedded (cache misses)
        max_pos = int(model.config.text_config.max_position_embeddings)
        self._max_len = min(int(getattr(tokenizer, "model_max_length", max_pos) or max_pos), max_pos)

    def __repr__(self) -> str:
        s = self.settings
        return (f"ClipLogitsModel({self.name!r}, attention={s.attention!r}, keep_residual={s.keep_residual}, "
                f"keep_mlp={s.keep_mlp}, short_side={s.short_side}, device={self.device}, dtype={self.dtype})")

    def with_settings(self, **overrides: Any) -> "ClipLogitsModel":
        """A model sharing these weights with some settings changed (no reload), for ablations."""
        check_settings(f"logits model '{self.name}'", overrides, CLIP_SETTINGS)
        if "dtype" in overrides:
            raise SettingsError("dtype cannot change without a reload; use create_logits_model(..., dtype=...)")
        settings = replace(self.settings, **overrides)
        return ClipLogitsModel(self.model, self.tokenizer, name=self.name, settings=settings,
                               mean=self.mean, std=self.std)

    # ---- image side -------------------------------------------------------------------------
    def input_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Model input ``(H', W')`` for an image of size ``image_hw``."""
        return aspect_size(image_hw, self.settings.short_side, self.patch_size)

    def grid_for(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Patch grid ``(h, w)`` of the logits for an image of size ``image_hw``."""
        H, W = self.input_size(image_hw)
        return H // self.patch_size, W // self.patch_size

    @one_image_memo()
    def _last_block_input(self, arr: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """Tokens entering the last block, ``(1, 1 + h*w, C)``, and the grid ``(h, w)``."""
        size = self.input_size(arr.shape[:2])
        x = pixel_tensor(arr, size, self.mean, self.std, device=self.device, dtype=self.dtype)
        vm = self.model.vision_model
        with torch.inference_mode():
            h = vm.pre_layrnorm(vm.embeddings(x, interpolate_pos_encoding=True))
            masks = _no_masks(vm.encoder.layers[0])  # every layer has the same signature
            for layer in vm.encoder.layers[:-1]:
                h = layer(h, *masks)
                h = h[0] if isinstance(h, tuple) else h
        return h, (size[0] // self.patch_size, size[1] // self.patch_size)

    def _last_block(self, x: torch.Tensor, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Recompute the last block with ``variant`` attention. ``x (1, T, C)`` →
        (block output ``(1, T, C)`` per the residual/MLP settings, attention ``(heads, T, T)``)."""
        blk = self.model.vision_model.encoder.layers[-1]
        sa = blk.self_attn
        B, T, C = x.shape
        nh = sa.num_heads
        y = blk.layer_norm1(x)
        q, k, v = (proj(y).view(B, T, nh, C // nh).transpose(1, 2) for proj in (sa.q_proj, sa.k_proj, sa.v_proj))
        a, b = {"kk": (k, k), "qq": (q, q), "qk": (q, k)}[variant]
        attn = torch.softmax((a @ b.transpose(-1, -2)).float() * sa.scale, dim=-1)
        out = sa.out_proj((attn.to(v.dtype) @ v).transpose(1, 2).reshape(B, T, C))
        if self.settings.keep_residual:
            out = out + x
        if self.settings.keep_mlp:
            out = out + blk.mlp(blk.layer_norm2(out))
        return out, attn[0]

    def dense_features(self, image: Any) -> torch.Tensor:
        """``(h, w, D)`` float32 L2-normalised patch embeddings in CLIP's joint space."""
        x, (gh, gw) = self._last_block_input(to_rgb_array(image))
        with torch.inference_mode():
            out, _ = self._last_block(x, self.settings.attention)
            vm = self.model.vision_model
            f = self.model.visual_projection(vm.post_layernorm(out[:, 1:])).float()[0]
            f = torch.nn.functional.normalize(f, dim=-1)
        return f.reshape(gh, gw, -1)

    def last_attention(self, image: Any, variant: str = "qk") -> tuple[torch.Tensor, tuple[int, int]]:
        """Last-block attention ``(heads, 1 + N, 1 + N)`` (CLS first) with ``variant`` and the grid."""
        if variant not in ATTENTION_VARIANTS:
            raise SettingsError(f"variant={variant!r}; use one of {ATTENTION_VARIANTS}")
        x, grid = self._last_block_input(to_rgb_array(image))
        with torch.inference_mode():
            _, attn = self._last_block(x, variant)
        return attn, grid

    # ---- text side --------------------------------------------------------------------------
    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        """``(T, D)`` float32 L2-normalised text embeddings."""
        out = []
        bs = max(1, int(self.settings.text_batch_size))
        with torch.inference_mode():
            for i in range(0, len(texts), bs):
                tok = self.tokenizer(texts[i:i + bs], padding=True, truncation=True,
                                     max_length=self._max_len, return_tensors="pt")
                ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
                pooled = self.model.text_model(input_ids=ids, attention_mask=mask).pooler_output
                out.append(torch.nn.functional.normalize(self.model.text_projection(pooled).float(), dim=-1))
        return torch.cat(out)

    def text_embeddings(self, names: Sequence[str]) -> torch.Tensor:
        """``(Q, D)`` float32: per name, the normalised mean of its normalised template
        embeddings. Cached per name for the life of the model."""
        todo = [n for n in dict.fromkeys(names) if n not in self._text_cache]
        if todo:
            self.texts_encoded += len(todo)
            t = self.settings.templates
            emb = self._encode_texts([tpl.format(n) for n in todo for tpl in t]).view(len(todo), len(t), -1)
            for n, e in zip(todo, torch.nn.functional.normalize(emb.mean(1), dim=-1)):
                self._text_cache[n] = e
        return torch.stack([self._text_cache[n] for n in names])

    def add_text_embeddings(self, embeddings: dict[str, torch.Tensor]) -> None:
        """Seed the per-name cache with embeddings computed elsewhere: ``name -> (D,)`` float32,
        rows of :meth:`text_embeddings` of the same CLIP and templates. Lets a driver embed a
        vocabulary once and share it with many workers, whose text towers then stay idle."""
        dim = int(self.model.config.projection_dim)
        for name, emb in embeddings.items():
            emb = torch.as_tensor(emb)
            if emb.shape != (dim,):
                raise ValueError(f"text embedding of {name!r} has shape {tuple(emb.shape)}; "
                                 f"this CLIP's are ({dim},)")
            self._text_cache[name] = emb.to(self.device, torch.float32)

    # ---- the contract -----------------------------------------------------------------------
    def logits(self, image: Any, classes: Sequence[str | Sequence[str]]) -> torch.Tensor:
        """``(K, h, w)`` float32 cosine similarities; a class's score is the max over its synonyms.

        ``image``: path, PIL, ``(H, W, 3)`` uint8 array or tensor. ``classes``: K names or lists of
        synonyms, read by :func:`dslo.classes.normalize_classes` (in a name, commas separate
        synonyms)."""
        if isinstance(classes, (str, bytes)):  # the model takes a list; "a, b" strings are the CLI's form
            raise ValueError(f"classes must be a list of class names or synonym lists, got the string "
                             f"{classes!r}; dslo.classes.normalize_classes reads comma-separated strings")
        groups = normalize_classes(classes)
        names = list(dict.fromkeys(n for g in groups for n in g))
        index = {n: i for i, n in enumerate(names)}
        text = self.text_embeddings(names)  # (Q, D)
        feats = self.dense_features(image)  # (h, w, D)
        per_query = torch.einsum("qd,hwd->qhw", text, feats)
        return torch.stack([per_query[[index[n] for n in g]].amax(0) for g in groups])


class ClipAttentionSource:
    """CLIP's own last-layer attention as the affinity (SPEC §3), vanilla q-k by default — the
    paper's "original CLIP self-attention" row. Shares the logits model (and its forward pass)."""

    def __init__(self, clip: ClipLogitsModel, *, variant: str = "qk") -> None:
        if variant not in ATTENTION_VARIANTS:
            raise SettingsError(f"variant={variant!r}; use one of {ATTENTION_VARIANTS}")
        self.clip, self.variant, self.name = clip, variant, "clip"
        self.device = clip.device

    def __repr__(self) -> str:
        return f"ClipAttentionSource(clip={self.clip.name!r}, variant={self.variant!r})"

    def grid_for(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        return self.clip.grid_for(image_hw)

    def affinity(self, image: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(A (N, N) float32 row-stochastic, (h, w))``: heads averaged, CLS dropped, rows
        renormalised."""
        attn, grid = self.clip.last_attention(image, self.variant)
        return patch_affinity(attn, num_prefix=1), grid


CLIP_SETTINGS = tuple(f.name for f in fields(ClipSettings))


def load_clip(name: str, source: str, *, device: torch.device, **overrides: Any) -> ClipLogitsModel:
    """Load a transformers-format CLIP checkpoint (Hub id or local directory) as a logits model."""
    check_settings(f"logits model '{name}'", overrides, CLIP_SETTINGS)
    settings = ClipSettings(**overrides)
    dtype = resolve_dtype(settings.dtype, device)
    src, local_only = locate(name, source, offline_alternative=False)
    from transformers import AutoTokenizer, CLIPModel

    try:
        model = CLIPModel.from_pretrained(src, local_files_only=local_only, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=local_only)
    except OSError as exc:
        raise weights_error(name, source, f"loading failed ({str(exc).splitlines()[0]})",
                            offline_alternative=False) from exc
    pre = read_json(src, "preprocessor_config.json", local_only) or {}  # optional: CLIP statistics
    model = model.to(device)
    return ClipLogitsModel(model, tokenizer, name=name, settings=settings,
                           mean=pre.get("image_mean", CLIP_MEAN), std=pre.get("image_std", CLIP_STD))


def load_clip_attention(name: str, source: str | None, *, device: torch.device, clip: Any = None,
                        variant: str = "qk", **overrides: Any) -> "ClipAttentionSource":
    """CLIP's own attention as an attention source. ``clip``: a loaded :class:`ClipLogitsModel`
    (shared as it is: one tower in memory), or a registry key / directory / Hub id of a CLIP
    (default: ``source``, else ``clip-b16``) loaded with ``overrides``."""
    from dslo.models.registry import create_logits_model

    if clip is None:
        clip = source or "clip-b16"
    if not isinstance(clip, ClipLogitsModel):
        clip = create_logits_model(clip, device=device, **overrides)
    else:
        # A loaded model is shared as it is; a dtype that agrees with it is accepted, so callers
        # can pass the same settings to both models.
        if "dtype" in overrides and resolve_dtype(overrides["dtype"], clip.device) == clip.dtype:
            overrides.pop("dtype")
        if overrides:
            raise SettingsError(f"settings {sorted(overrides)} would need a new CLIP model; the one passed as "
                                "clip= is shared as loaded (create it with those settings instead)")
    return ClipAttentionSource(clip, variant=variant)

"""CLIP dense logits (SPEC §2) and CLIP's own last-layer attention (SPEC §3).

Dense features: the vision tower runs unchanged up to its last block; that block's attention is
recomputed as ``softmax(a bᵀ/√d) v`` with ``(a, b)`` = (k, k) by default (NACLIP), (q, q)
(ClearCLIP) or (q, k) (vanilla), its residual and MLP dropped by default; then the final layer norm
and the visual projection; CLS dropped; L2-normalised. Text: each query in the 80 ImageNet
templates, embeddings normalised, averaged, re-normalised, cached per query in memory and on disk
(:mod:`dslo.models.text_cache`); prompts are deduplicated and encoded in batches sorted by token
length, so a batch carries little padding.
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
    image_key,
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
    dtype: str = "auto"  # auto: float16 on an accelerator (as the paper), float32 on the CPU

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
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 identity: str | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.settings = settings
        self.mean, self.std = tuple(mean), tuple(std)
        self.patch_size = int(model.config.vision_config.patch_size)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self._text_cache: dict[str, torch.Tensor] = {}
        self.identity = identity  # what the weights are (text_cache.identity_of_source); None: hash them
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
                               mean=self.mean, std=self.std, identity=self.identity)

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
        return self._last_block_input_batch([arr])

    def _last_block_input_batch(self, arrs: Sequence[np.ndarray]) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(B, 1 + h*w, C)`` for images of one input size, and the grid; the last batch is
        memoised by content (the CLIP attention source reuses the logits' forward)."""
        key = tuple(image_key(a) for a in arrs)
        memo = self.__dict__.get("_memo_batch")
        if memo is not None and None not in key and memo[0] == key:
            return memo[1]
        sizes = {self.input_size(a.shape[:2]) for a in arrs}
        if len(sizes) != 1:
            raise ValueError(f"a batch needs images of one input size; got {sorted(sizes)}")
        size = sizes.pop()
        x = torch.cat([pixel_tensor(a, size, self.mean, self.std, device=self.device, dtype=self.dtype)
                       for a in arrs])
        vm = self.model.vision_model
        with torch.inference_mode():
            h = vm.pre_layrnorm(vm.embeddings(x, interpolate_pos_encoding=True))
            masks = _no_masks(vm.encoder.layers[0])  # every layer has the same signature
            for layer in vm.encoder.layers[:-1]:
                h = layer(h, *masks)
                h = h[0] if isinstance(h, tuple) else h
        out = h, (size[0] // self.patch_size, size[1] // self.patch_size)
        self.__dict__["_memo_batch"] = (key, out)
        return out

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
        return self.dense_features_batch([image])[0]

    def dense_features_batch(self, images: Sequence[Any]) -> torch.Tensor:
        """``(B, h, w, D)``: :meth:`dense_features` of images of one input size, one forward."""
        x, (gh, gw) = self._last_block_input_batch([to_rgb_array(im) for im in images])
        with torch.inference_mode():
            out, _ = self._last_block(x, self.settings.attention)
            vm = self.model.vision_model
            f = self.model.visual_projection(vm.post_layernorm(out[:, 1:])).float()
            f = torch.nn.functional.normalize(f, dim=-1)
        return f.reshape(len(images), gh, gw, -1)

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
        """``(T, D)`` float32 L2-normalised text embeddings, row i for ``texts[i]``.

        Each distinct prompt is encoded once; prompts are sorted by token length and batched, so
        a batch is padded to (nearly) its own length instead of the longest prompt's."""
        unique = list(dict.fromkeys(texts))
        ids = self.tokenizer(unique, truncation=True, max_length=self._max_len)["input_ids"]
        order = sorted(range(len(unique)), key=lambda i: len(ids[i]))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = torch.empty(len(unique), self.model.config.projection_dim, dtype=torch.float32, device=self.device)
        bs = max(1, int(self.settings.text_batch_size))
        with torch.inference_mode():
            for s in range(0, len(order), bs):
                batch = order[s:s + bs]
                width = max(len(ids[i]) for i in batch)
                tok = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for r, i in enumerate(batch):
                    tok[r, :len(ids[i])] = torch.as_tensor(ids[i])
                    mask[r, :len(ids[i])] = 1
                pooled = self.model.text_model(input_ids=tok.to(self.device),
                                               attention_mask=mask.to(self.device)).pooler_output
                out[batch] = torch.nn.functional.normalize(self.model.text_projection(pooled).float(), dim=-1)
        row = {t: i for i, t in enumerate(unique)}
        return out[[row[t] for t in texts]]

    def _embed_names(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Per name, the normalised mean of its normalised template embeddings (computed)."""
        t = self.settings.templates
        emb = self._encode_texts([tpl.format(n) for n in names for tpl in t]).view(len(names), len(t), -1)
        return dict(zip(names, torch.nn.functional.normalize(emb.mean(1), dim=-1)))

    def text_key(self) -> str:
        """The identity of this model's text embeddings: weights (Hub id@commit, a digest of the
        local files, or of the parameters for a model built in memory), dtype, context length;
        templates apart (see :mod:`dslo.models.text_cache`)."""
        if self.identity is None:
            from dslo.models.text_cache import parameters_identity

            self.identity = parameters_identity([self.model.text_model, self.model.text_projection])
        return f"{self.identity}|dtype={str(self.dtype).replace('torch.', '')}|max_len={self._max_len}"

    def _disk_cache(self):
        from dslo.models.text_cache import TextEmbeddingCache, cache_enabled

        return TextEmbeddingCache(self.text_key(), self.settings.templates) if cache_enabled() else None

    def text_embeddings(self, names: Sequence[str]) -> torch.Tensor:
        """``(Q, D)`` float32: per name, the normalised mean of its normalised template
        embeddings. Kept per name for the life of the model and in the on-disk cache."""
        todo = [n for n in dict.fromkeys(names) if n not in self._text_cache]
        if todo:
            disk = self._disk_cache()
            dim = int(self.model.config.projection_dim)
            found = disk.get_many(todo, dim) if disk is not None else {}
            self._text_cache.update({n: v.to(self.device) for n, v in found.items()})
            missing = [n for n in todo if n not in found]
            if missing:
                new = self._embed_names(missing)
                self._text_cache.update(new)
                if disk is not None:
                    disk.put_many(new)
        return torch.stack([self._text_cache[n] for n in names])

    def export_text_embeddings(self, names: Sequence[str]):
        """A :class:`dslo.models.text_cache.TextEmbeddings` of ``names`` (computed or cached), to
        hand to another process holding the same model (``.to_bytes()`` travels as safetensors)."""
        from dslo.models.text_cache import TextEmbeddings, templates_key

        names = list(dict.fromkeys(names))
        vectors = self.text_embeddings(names).to("cpu")
        return TextEmbeddings(f"{self.text_key()}|templates={templates_key(self.settings.templates)}",
                              tuple(names), vectors)

    def import_text_embeddings(self, embeddings) -> None:
        """Take embeddings computed elsewhere (:meth:`export_text_embeddings`); refused unless
        they come from the same weights, dtype and templates."""
        from dslo.models.text_cache import templates_key

        mine = f"{self.text_key()}|templates={templates_key(self.settings.templates)}"
        if embeddings.key != mine:
            raise ValueError(f"text embeddings for {embeddings.key!r} cannot be used by a model whose "
                             f"embeddings are {mine!r}; compute them with the same weights, dtype and templates")
        self._text_cache.update({n: v.to(self.device, torch.float32) for n, v in embeddings.as_dict().items()})

    # ---- the contract -----------------------------------------------------------------------
    def logits(self, image: Any, classes: Sequence[str | Sequence[str]]) -> torch.Tensor:
        """``(K, h, w)`` float32 cosine similarities; a class's score is the max over its synonyms.

        ``image``: path, PIL, ``(H, W, 3)`` uint8 array or tensor. ``classes``: K names or lists of
        synonyms, read by :func:`dslo.classes.normalize_classes` (in a name, commas separate
        synonyms)."""
        return self.logits_batch([image], classes)[0]

    def logits_batch(self, images: Sequence[Any], classes: Sequence[str | Sequence[str]]) -> torch.Tensor:
        """``(B, K, h, w)``: :meth:`logits` of images of one input size, one vision forward."""
        if isinstance(classes, (str, bytes)):  # the model takes a list; "a, b" strings are the CLI's form
            raise ValueError(f"classes must be a list of class names or synonym lists, got the string "
                             f"{classes!r}; dslo.classes.normalize_classes reads comma-separated strings")
        groups = normalize_classes(classes)
        names = list(dict.fromkeys(n for g in groups for n in g))
        index = {n: i for i, n in enumerate(names)}
        text = self.text_embeddings(names)  # (Q, D)
        feats = self.dense_features_batch(images)  # (B, h, w, D)
        per_query = torch.einsum("qd,bhwd->bqhw", text, feats)
        return torch.stack([per_query[:, [index[n] for n in g]].amax(1) for g in groups], dim=1)


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
        A, grid = self.affinity_batch([image])
        return A[0], grid

    def affinity_batch(self, images: Sequence[Any]) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(A (B, N, N), (h, w))`` for images of one input size. Only the last block's
        attention probabilities are computed (not its output, MLP or projection); the blocks
        before it come from the logits model's memoised forward when it saw the same images."""
        x, grid = self.clip._last_block_input_batch([to_rgb_array(im) for im in images])
        blk = self.clip.model.vision_model.encoder.layers[-1]
        sa = blk.self_attn
        with torch.inference_mode():
            y = blk.layer_norm1(x)
            B, T, C = y.shape
            q, k = (proj(y).view(B, T, sa.num_heads, C // sa.num_heads).transpose(1, 2)
                    for proj in (sa.q_proj, sa.k_proj))
            a, b = {"kk": (k, k), "qq": (q, q), "qk": (q, k)}[self.variant]
            attn = torch.softmax((a @ b.transpose(-1, -2)).float() * sa.scale, dim=-1)
        return torch.stack([patch_affinity(h, num_prefix=1) for h in attn]), grid


CLIP_SETTINGS = tuple(f.name for f in fields(ClipSettings))


def load_clip(name: str, source: str, *, device: torch.device, **overrides: Any) -> ClipLogitsModel:
    """Load a transformers-format CLIP checkpoint (Hub id or local directory) as a logits model."""
    check_settings(f"logits model '{name}'", overrides, CLIP_SETTINGS)
    settings = ClipSettings(**overrides)
    dtype = resolve_dtype(settings.dtype, device, accelerator_default=torch.float16)
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
    from dslo.models.text_cache import identity_of_source

    return ClipLogitsModel(model, tokenizer, name=name, settings=settings,
                           mean=pre.get("image_mean", CLIP_MEAN), std=pre.get("image_std", CLIP_STD),
                           identity=identity_of_source(src))


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

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

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from dslo.classes import normalize_classes  # re-exported: the one meaning of a class list
from dslo.errors import SettingsError
from dslo.imageio import to_rgb_array
from dslo.models.clip_methods import (
    POS_INTERP,
    SPECS,
    check_method,
    compute_proxy_features,
    interpolate_positions,
    last_block,
)
from dslo.models.common import (
    CLIP_MEAN,
    CLIP_STD,
    check_settings,
    image_key,
    one_image_memo,
    patch_affinity,
    pixel_tensor,
)
from dslo.models.templates import IMAGENET_TEMPLATES
from dslo.models.vision_language import VisionLanguageLogits
from dslo.models.weights import (
    WeightsNotFoundError,
    check_model_folder,
    locate,
    read_json,
    resolve_dtype,
    weights_error,
)

__all__ = ["ClipSettings", "ClipLogitsModel", "ClipAttentionSource", "load_clip", "load_clip_attention",
           "normalize_classes"]

ATTENTION_VARIANTS = ("kk", "qq", "qk")


@dataclass(frozen=True)
class ClipSettings:
    """Settings of the CLIP logits model (every default from SPEC §2; the peer methods' knobs
    default to their papers' values)."""

    method: str = "dslo"  # last block: dslo | vanilla | naclip | naclip_kk | clearclip | maskclip | sclip | proxyclip
    attention: str = "kk"  # method dslo: last-block attention kk (default) | qq | qk (vanilla)
    keep_residual: bool = False  # method dslo: keep the last block's residual connection
    keep_mlp: bool = False  # method dslo: keep the last block's MLP
    pos_interp: str = "exact"  # position table resize: exact (size-based bicubic) | peer ((n + 0.1)/14 scale)
    short_side: int = 336  # input short side in pixels (aspect ratio kept)
    window_std: float = 5.0  # naclip: std of the Gaussian neighbourhood window, in patches
    proxy: str = "dino-b8"  # proxyclip: attention source whose patch features build the attention
    proxy_beta: float = 1.2  # proxyclip: β, shift of the similarity by β·mean
    proxy_gamma: float = 3.0  # proxyclip: γ, scale of the shifted similarity
    proxy_grid: str = "clip"  # proxyclip: clip (the proxy runs on CLIP's patch grid) | proxy (ProxyCLIP's own)
    templates: tuple[str, ...] = field(default=IMAGENET_TEMPLATES)
    text_batch_size: int = 256
    dtype: str = "auto"  # auto: float16 on an accelerator (as the paper), float32 on the CPU

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_VARIANTS:
            raise SettingsError(f"attention={self.attention!r}; use one of {ATTENTION_VARIANTS}")
        check_method(self.method, self.attention, self.keep_residual, self.keep_mlp)
        if self.pos_interp not in POS_INTERP:
            raise SettingsError(f"pos_interp={self.pos_interp!r}; use one of {POS_INTERP}")
        if self.proxy_grid not in ("clip", "proxy"):
            raise SettingsError(f"proxy_grid={self.proxy_grid!r}; use 'clip' or 'proxy'")
        if not self.window_std > 0 or not self.proxy_gamma > 0:
            raise SettingsError("window_std and proxy_gamma must be positive")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise SettingsError("templates must be a non-empty list of strings each containing '{}'")
        object.__setattr__(self, "templates", tuple(self.templates))


def _no_masks(layer: torch.nn.Module) -> tuple[None, ...]:
    """The mask arguments of an unmasked CLIP encoder layer call: 4.x layers also take a causal
    mask, 5.x layers do not (4.x layers return a tuple, see the caller)."""
    import inspect

    return (None, None) if "causal_attention_mask" in inspect.signature(layer.forward).parameters else (None,)


class ClipLogitsModel(VisionLanguageLogits):
    """``logits(image, classes) -> (K, h, w)`` cosine similarities from a transformers CLIPModel
    (also MetaCLIP, and OpenCLIP checkpoints mapped onto one: :mod:`dslo.models.openclip`)."""

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
        self.embed_dim = int(model.config.projection_dim)
        self._init_text_side()
        self.identity = identity  # what the weights are (text_cache.identity_of_source); None: hash them
        max_pos = int(model.config.text_config.max_position_embeddings)
        self._max_len = min(int(getattr(tokenizer, "model_max_length", max_pos) or max_pos), max_pos)

    def __repr__(self) -> str:
        s = self.settings
        last = (f"attention={s.attention!r}, keep_residual={s.keep_residual}, keep_mlp={s.keep_mlp}"
                if s.method == "dslo" else f"method={s.method!r}")
        return (f"ClipLogitsModel({self.name!r}, {last}, pos_interp={s.pos_interp!r}, short_side={s.short_side}, "
                f"device={self.device}, dtype={self.dtype})")

    def with_settings(self, **overrides: Any) -> ClipLogitsModel:
        """A model sharing these weights with some settings changed (no reload), for ablations."""
        check_settings(f"logits model '{self.name}'", overrides, CLIP_SETTINGS)
        if "dtype" in overrides:
            raise SettingsError("dtype cannot change without a reload; use create_logits_model(..., dtype=...)")
        settings = replace(self.settings, **overrides)
        out = ClipLogitsModel(self.model, self.tokenizer, name=self.name, settings=settings,
                              mean=self.mean, std=self.std, identity=self.identity)
        if "proxy_source" in self.__dict__:
            out.proxy_source = self.proxy_source  # checked against settings.proxy at use
        return out

    # ---- image side -------------------------------------------------------------------------
    def _trunk(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Tokens entering the last block, ``(B, 1 + h*w, C)``, and the grid ``(h, w)``, for a
        normalised ``(B, 3, H, W)`` input (position table resized per ``pos_interp``)."""
        vm = self.model.vision_model
        emb = vm.embeddings
        with torch.inference_mode():
            patches = emb.patch_embedding(pixel_values.to(device=self.device, dtype=self.dtype))  # (B, C, h, w)
            grid = (int(patches.shape[-2]), int(patches.shape[-1]))
            cls = emb.class_embedding.view(1, 1, -1).to(patches.dtype).expand(patches.shape[0], -1, -1)
            pos = interpolate_positions(emb.position_embedding.weight, grid, self.settings.pos_interp)
            h = torch.cat([cls, patches.flatten(2).transpose(1, 2)], 1) + pos[None].to(patches.dtype)
            h = vm.pre_layrnorm(h)
            masks = _no_masks(vm.encoder.layers[0])  # every layer has the same signature
            for layer in vm.encoder.layers[:-1]:
                h = layer(h, *masks)
                h = h[0] if isinstance(h, tuple) else h
        return h, grid

    @one_image_memo()
    def _last_block_input(self, arr: np.ndarray) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor]:
        """:meth:`_trunk` of an image array, memoised, plus the pixel tensor it came from."""
        x = pixel_tensor(arr, self.input_size(arr.shape[:2]), self.mean, self.std, device=self.device,
                         dtype=self.dtype)
        h, grid = self._trunk(x)
        return h, grid, x

    def _block_settings(self) -> dict[str, Any]:
        s = self.settings
        spec = SPECS[s.method]
        if s.method == "dslo":
            return dict(attention=s.attention, keep_residual=s.keep_residual, keep_mlp=s.keep_mlp)
        return dict(attention=spec.attention, keep_residual=spec.keep_residual, keep_mlp=spec.keep_mlp)

    def proxy_model(self) -> Any:
        """The ``proxyclip`` proxy: the attention source named by ``settings.proxy``, created on
        first use (or the one assigned to ``self.proxy_source`` to share a loaded model)."""
        src = self.__dict__.get("proxy_source")
        if src is None or getattr(src, "name", None) != self.settings.proxy:
            from dslo.models.registry import create_attention_model

            src = create_attention_model(self.settings.proxy, device=self.device)
            if not all(hasattr(src, a) for a in ("model", "num_prefix", "patch_size", "mean", "std")):
                raise ValueError(f"proxy={self.settings.proxy!r} has no ViT patch features; use a DINO / DINOv2 "
                                 "source (dino-b8, dinov2-reg-b14, dinov2-b14, focus-s14 or such a folder)")
            self.proxy_source = src
        return src

    def proxy_features(self, pixel_values: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``(h', w', D')`` patch features of the proxy model (its last layer, after the final
        norm, prefix tokens dropped) for a CLIP-normalised ``(1, 3, H, W)`` input whose CLIP grid
        is ``grid``. The pixels are moved to the proxy's statistics, as ProxyCLIP does; with
        ``proxy_grid='clip'`` they are resized (bilinear) so the proxy's grid is ``grid``, with
        ``'proxy'`` the proxy sees them at CLIP's input size."""
        return compute_proxy_features(self.proxy_model(), pixel_values, self.mean, self.std,
                                      grid if self.settings.proxy_grid == "clip" else None)

    def _features(self, x: torch.Tensor, grid: tuple[int, int], pixel_values: torch.Tensor | None,
                  proxy: torch.Tensor | None) -> torch.Tensor:
        s = self.settings
        pgrid = None
        if s.method == "proxyclip":
            if proxy is None:
                if pixel_values is None:
                    raise ValueError("method 'proxyclip' needs the pixels (or proxy features) to attend with")
                proxy = self.proxy_features(pixel_values, grid)
            proxy = torch.as_tensor(proxy, device=self.device)
            if proxy.ndim == 3:  # (h', w', D') on any grid
                pgrid = (int(proxy.shape[0]), int(proxy.shape[1]))
                proxy = proxy.reshape(pgrid[0] * pgrid[1], -1)
        with torch.inference_mode():
            out, _, has_cls = last_block(
                self.model.vision_model.encoder.layers[-1], x, grid, **self._block_settings(),
                window_std=s.window_std, proxy=proxy, proxy_grid=pgrid, beta=s.proxy_beta, gamma=s.proxy_gamma)
            f = self.model.visual_projection(self.model.vision_model.post_layernorm(out)).float()[0]
            f = torch.nn.functional.normalize(f[1:] if has_cls else f, dim=-1)
        gh, gw = pgrid or grid
        return f.reshape(gh, gw, -1)

    def patch_features(self, pixel_values: torch.Tensor, proxy: torch.Tensor | None = None) -> torch.Tensor:
        """``(h, w, D)`` float32 L2-normalised patch embeddings in CLIP's joint space for an
        already-normalised ``(1, 3, H, W)`` input (``h, w = H // p, W // p``), with the configured
        method. ``proxy`` (``proxyclip`` only): ``(h·w, D')`` features on the same grid, or
        ``(h', w', D')`` on another grid (CLIP's values are then resized to it and the output is on
        that grid); default: computed by the configured proxy source."""
        if pixel_values.ndim != 4 or pixel_values.shape[:2] != (1, 3):
            raise ValueError(f"pixel_values must be (1, 3, H, W); got {tuple(pixel_values.shape)}")
        if proxy is not None and self.settings.method != "proxyclip":
            raise ValueError("proxy features are used by method 'proxyclip' only "
                             f"(this model: {self.settings.method!r})")
        x, grid = self._trunk(pixel_values)
        return self._features(x, grid, pixel_values, proxy)

    def _last_block_input_batch(self, arrs: Sequence[np.ndarray]) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor]:
        """``(B, 1 + h*w, C)`` tokens entering the last block for images of one input size, the
        grid and the ``(B, 3, H, W)`` pixels: one batched forward through every block but the
        last. Memoised for the last batch seen (and a batch of one shares the one-image memo), so
        the CLIP attention source reuses the logits' forward on the same images."""
        sizes = {self.input_size(a.shape[:2]) for a in arrs}
        if len(sizes) != 1:
            raise ValueError(f"a batch needs images of one input size; got {sorted(sizes)}")
        if len(arrs) == 1:
            return self._last_block_input(arrs[0])
        keys = tuple(image_key(a) for a in arrs)
        memo = self.__dict__.get("_batch_memo")
        if memo is not None and None not in keys and memo[0] == keys:
            return memo[1]
        size = sizes.pop()
        pixels = torch.cat([pixel_tensor(a, size, self.mean, self.std, device=self.device, dtype=self.dtype)
                            for a in arrs])
        x, grid = self._trunk(pixels)
        self._batch_memo = (keys, (x, grid, pixels))
        return x, grid, pixels

    def dense_features_batch(self, images: Sequence[Any]) -> torch.Tensor:
        """``(B, h, w, D)``: :meth:`dense_features` of images of one input size. The blocks before
        the last run once for the whole batch; the last block runs per image, because the peer
        methods' last blocks (:mod:`dslo.models.clip_methods`) are written, and parity-tested,
        for one image (the last block is 1/12 of a B/16 forward)."""
        x, grid, pixels = self._last_block_input_batch([to_rgb_array(im) for im in images])
        return torch.stack([self._features(x[j:j + 1], grid, pixels[j:j + 1], None) for j in range(x.shape[0])])

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` float32 global image embeddings, not normalised, of a normalised
        ``(B, 3, H, W)`` input, as CLIP computes them (every block unchanged, the class token
        through the final layer norm and the visual projection); positions resized per
        ``pos_interp`` when the grid is not the pretraining one."""
        x, _ = self._trunk(pixel_values)
        layer = self.model.vision_model.encoder.layers[-1]
        with torch.inference_mode():
            x = layer(x, *_no_masks(layer))
            x = x[0] if isinstance(x, tuple) else x
            cls = self.model.vision_model.post_layernorm(x[:, 0])
            return self.model.visual_projection(cls).float()

    # ---- text side --------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``(T, D)`` float32 text embeddings, not normalised, row i for ``texts[i]`` (the
        tokenizer's ids up to the context length, the text tower, the projection)."""
        return self._project_texts(list(texts))

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        """``(T, D)`` float32 L2-normalised text embeddings, row i for ``texts[i]``."""
        return torch.nn.functional.normalize(self._project_texts(texts), dim=-1)

    def _project_texts(self, texts: list[str]) -> torch.Tensor:
        """:meth:`encode_text`. Each distinct prompt is encoded once; prompts are sorted by token
        length and batched, so a batch is padded to (nearly) its own length instead of the
        longest prompt's (the attention mask and the causal mask keep padding out of the
        end-of-text token CLIP pools)."""
        unique = list(dict.fromkeys(texts))
        ids = self.tokenizer(unique, truncation=True, max_length=self._max_len)["input_ids"]
        order = sorted(range(len(unique)), key=lambda i: len(ids[i]))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = torch.empty(len(unique), self.embed_dim, dtype=torch.float32, device=self.device)
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
                out[batch] = self.model.text_projection(pooled).float()
        row = {t: i for i, t in enumerate(unique)}
        return out[[row[t] for t in texts]]

    def text_key(self) -> str:
        """The identity of this model's text embeddings: weights (Hub id@commit, a digest of the
        local files, or of the parameters for a model built in memory), dtype, context length;
        templates apart (see :mod:`dslo.models.text_cache`)."""
        if self.identity is None:
            from dslo.models.text_cache import parameters_identity

            self.identity = parameters_identity([self.model.text_model, self.model.text_projection])
        return f"{self.identity}|dtype={str(self.dtype).replace('torch.', '')}|max_len={self._max_len}"

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

    def image_towers(self) -> list[torch.nn.Module]:
        return self.clip.image_towers()  # the shared CLIP's vision tower

    def affinity(self, image: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(A (N, N) float32 row-stochastic, (h, w))``: heads averaged, CLS dropped, rows
        renormalised."""
        A, grid = self.affinity_batch([image])
        return A[0], grid

    def affinity_batch(self, images: Sequence[Any]) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(A (B, N, N), (h, w))`` for images of one input size. Only the last block's
        attention probabilities are computed (not its output, MLP or projection); the blocks
        before it come from the logits model's memoised forward when it saw the same images."""
        x, grid, _ = self.clip._last_block_input_batch([to_rgb_array(im) for im in images])
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


def check_tokenizer(name: str, src: str, tokenizer: Any) -> None:
    """A tokenizer that maps different words to the same ids makes every class alike (meaningless
    masks, no error): refuse it."""
    probe = ["cat", "dog"]  # one word each, of one length: an unknown-token fallback gives both the same ids
    ids = [list(tokenizer(t)["input_ids"]) for t in probe]
    if ids[0] == ids[1]:
        raise WeightsNotFoundError(
            f"the tokenizer of {name!r} ({src}) encodes different class names identically; the "
            "checkpoint's tokenizer files (tokenizer.json, or vocab.json + merges.txt) are missing "
            "or broken. Copy the whole checkpoint folder again"
        )


def load_clip(name: str, source: str, *, device: torch.device, **overrides: Any) -> ClipLogitsModel:
    """Load a transformers-format CLIP checkpoint (Hub id or local directory) as a logits model."""
    check_settings(f"logits model '{name}'", overrides, CLIP_SETTINGS)
    settings = ClipSettings(**overrides)
    dtype = resolve_dtype(settings.dtype, device, accelerator_default=torch.float16)
    src, local_only = locate(name, source, offline_alternative=False)
    check_model_folder(name, src, tokenizer=True)
    from transformers import AutoTokenizer, CLIPModel

    model: Any
    try:
        model = CLIPModel.from_pretrained(src, local_files_only=local_only, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=local_only)
    except OSError as exc:
        raise weights_error(name, source, f"loading failed ({str(exc).splitlines()[0]})",
                            offline_alternative=False) from exc
    check_tokenizer(name, src, tokenizer)
    pre = read_json(src, "preprocessor_config.json", local_only) or {}  # optional: CLIP statistics
    model = model.to(device)
    from dslo.models.text_cache import identity_of_source

    return ClipLogitsModel(model, tokenizer, name=name, settings=settings,
                           mean=pre.get("image_mean", CLIP_MEAN), std=pre.get("image_std", CLIP_STD),
                           identity=identity_of_source(src))


def load_clip_attention(name: str, source: str | None, *, device: torch.device, clip: Any = None,
                        variant: str = "qk", **overrides: Any) -> ClipAttentionSource:
    """CLIP's own attention as an attention source. ``clip``: a loaded :class:`ClipLogitsModel`
    (shared as it is: one tower in memory), or a registry key / directory / Hub id of a CLIP
    (default: ``source``, else ``clip-b16``) loaded with ``overrides``."""
    from dslo.models.registry import create_logits_model

    if clip is None:
        clip = source or "clip-b16"
    if not isinstance(clip, ClipLogitsModel) and not isinstance(clip, (str, os.PathLike)):
        raise SettingsError(f"the 'clip' attention source reads a CLIP's class-token attention; "
                            f"{type(clip).__name__} is not a CLIP-family logits model (CLIP, MetaCLIP, OpenCLIP). "
                            "Use another attention source (e.g. dinov2-reg-b14 or focus-s14)")
    if not isinstance(clip, ClipLogitsModel):
        clip = create_logits_model(clip, device=device, **overrides)
        if not isinstance(clip, ClipLogitsModel):
            raise SettingsError(f"the 'clip' attention source needs a CLIP-family model (CLIP, MetaCLIP, OpenCLIP); "
                                f"{clip!r} is not one. Use another attention source (e.g. dinov2-reg-b14 or focus-s14)")
    else:
        # A loaded model is shared as it is; a dtype that agrees with it is accepted, so callers
        # can pass the same settings to both models.
        if "dtype" in overrides and resolve_dtype(overrides["dtype"], clip.device) == clip.dtype:
            overrides.pop("dtype")
        if overrides:
            raise SettingsError(f"settings {sorted(overrides)} would need a new CLIP model; the one passed as "
                                "clip= is shared as loaded (create it with those settings instead)")
    return ClipAttentionSource(clip, variant=variant)

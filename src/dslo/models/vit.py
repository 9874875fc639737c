"""ViT attention sources through transformers: DINOv2 (with or without registers), DINO (ViT)
and anything else with the same structure (SPEC §3).

The affinity is ``A = Σ_l w_l · mean_h softmax(Q Kᵀ/√d)`` over the chosen layers (last by
default), with CLS and register rows/columns dropped and rows renormalised.

Only what is read is computed: models are loaded with fused scaled-dot-product attention (SDPA,
which never materialises the attention matrix); a forward pre-hook on each chosen block's attention
module computes ``softmax(Q Kᵀ/√d)`` explicitly from the block's normalised input (float32
softmax), and the forward stops right there after the last chosen block: its attention output,
its MLP and every later block are never run. On the default (last block only) that is the
eager-attention forward of every block replaced by SDPA, minus the last block's output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from dslo.errors import SettingsError
from dslo.imageio import to_rgb_array
from dslo.models.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    aspect_size,
    check_settings,
    patch_affinity,
    pixel_tensor,
)
from dslo.models.weights import check_model_folder, locate, read_json, resolve_dtype, weights_error

__all__ = ["VitAttentionSettings", "VitAttentionSource", "load_vit_attention", "VIT_SETTINGS"]


@dataclass(frozen=True)
class VitAttentionSettings:
    """Settings of a ViT attention source."""

    short_side: int = 448  # input short side in pixels, aspect kept: a 32-patch short side at /14
    layers: tuple[int, ...] = (-1,)  # which blocks' attention to combine (negative: from the end)
    layer_weights: tuple[float, ...] | None = None  # per chosen layer; None: equal (normalised to sum 1)
    head_weights: tuple[float, ...] | None = None  # per head; None: mean over heads
    dtype: str = "auto"  # auto: float32 on CPU, float16 on an accelerator

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        if not self.layers:
            raise SettingsError("layers must name at least one block")
        if self.layer_weights is not None:
            w = tuple(float(x) for x in self.layer_weights)
            if len(w) != len(self.layers) or sum(w) <= 0 or min(w) < 0:
                raise SettingsError(f"layer_weights {self.layer_weights} must be {len(self.layers)} non-negative "
                                 "numbers with a positive sum, one per entry of layers")
            object.__setattr__(self, "layer_weights", w)
        if self.head_weights is not None:
            object.__setattr__(self, "head_weights", tuple(float(x) for x in self.head_weights))


VIT_SETTINGS = tuple(f.name for f in fields(VitAttentionSettings))


class _StopForward(Exception):
    """Raised inside the model once the last chosen block's attention has been computed."""


def _attention_modules(model: Any) -> list[Any] | None:
    """Each block's attention module (input: the block's normalised hidden states), in order, for
    the DINOv2 / DINOv2-registers / ViT layouts of transformers 4.56+ and 5.x (the blocks sit in
    ``encoder.layer`` or ``layers``); None otherwise."""
    n = int(model.config.num_hidden_layers)
    for blocks in model.modules():
        if isinstance(blocks, torch.nn.ModuleList) and len(blocks) == n:
            mods: list[Any] = [getattr(block, "attention", None) for block in blocks]
            if all(m is not None and _qk_projections(m) is not None for m in mods):
                return mods
    return None


def _qk_projections(attention: Any) -> tuple[Any, Any] | None:
    """The query and key ``nn.Linear`` of an attention module: ``q_proj``/``k_proj``
    (transformers 5) or ``attention.query``/``attention.key`` (transformers 4)."""
    if hasattr(attention, "q_proj") and hasattr(attention, "k_proj"):
        return attention.q_proj, attention.k_proj
    inner = getattr(attention, "attention", None)
    if inner is not None and hasattr(inner, "query") and hasattr(inner, "key"):
        return inner.query, inner.key
    return None


def explicit_attention(x: torch.Tensor, q_proj: torch.nn.Module, k_proj: torch.nn.Module,
                       heads: int) -> torch.Tensor:
    """``softmax(Q Kᵀ/√d)`` of ``x (B, T, C)`` (a block's normalised input) → ``(B, heads, T, T)``
    float32. Projections run in the model's dtype; scores and softmax in float32 (a float16
    product of two 64-wide vectors can overflow; eager attention would form it in float16)."""
    B, T, _ = x.shape
    q = q_proj(x).view(B, T, heads, -1).transpose(1, 2).float()
    k = k_proj(x).view(B, T, heads, -1).transpose(1, 2).float()
    # softmax in place: the (B, heads, T, T) scores are the largest tensor of the pass (91 MB for
    # ViT-B at 1381 tokens), and torch.softmax would hold a second one beside them
    scores = q @ k.transpose(-1, -2)
    scores.mul_(q.shape[-1] ** -0.5)
    scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
    return scores.div_(scores.sum(dim=-1, keepdim=True))


class VitAttentionSource:
    """``affinity(image) -> (A (N, N), (h, w))`` from a transformers ViT-family model."""

    def __init__(self, model: Any, *, name: str, settings: VitAttentionSettings, num_prefix: int,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.model = model.eval()
        self.name, self.settings, self.num_prefix = name, settings, int(num_prefix)
        self.mean, self.std = tuple(mean), tuple(std)
        ps = model.config.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        n = int(model.config.num_hidden_layers)
        bad = [i for i in settings.layers if not -n <= i < n]
        if bad:
            raise SettingsError(f"layers {bad} out of range for a {n}-block model")
        self._layers = [i % n for i in settings.layers]
        heads = int(model.config.num_attention_heads)
        if settings.head_weights is not None and len(settings.head_weights) != heads:
            raise SettingsError(f"head_weights needs {heads} entries (one per head), got {len(settings.head_weights)}")
        self._attn_modules = _attention_modules(model)
        # ViTModel needs to be told to interpolate position embeddings; DINOv2 always does.
        self._kwargs = {"interpolate_pos_encoding": True} if model.config.model_type == "vit" else {}

    def __repr__(self) -> str:
        s = self.settings
        return (f"VitAttentionSource({self.name!r}, short_side={s.short_side}, layers={s.layers}, "
                f"prefix_tokens={self.num_prefix}, device={self.device}, dtype={self.dtype})")

    def image_towers(self) -> list[torch.nn.Module]:
        """The whole ViT (what ``accel`` quantizes); the pre-hook reads q/k through the projection
        modules at call time, so quantized projections are used as they are."""
        return [self.model]

    def input_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        return aspect_size(image_hw, self.settings.short_side, self.patch_size)

    def grid_for(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        H, W = self.input_size(image_hw)
        return H // self.patch_size, W // self.patch_size

    def pixel_values(self, image: Any) -> torch.Tensor:
        """``(1, 3, H', W')`` normalised input for ``image``."""
        arr = to_rgb_array(image)
        return pixel_tensor(arr, self.input_size(arr.shape[:2]), self.mean, self.std,
                            device=self.device, dtype=self.dtype)

    def _combine_heads(self, attn: torch.Tensor) -> torch.Tensor:
        """``(B, heads, T, T)`` → ``(B, T, T)`` float32 (head mean or the configured weights)."""
        if self.settings.head_weights is None:
            return attn.float().mean(1)
        w = torch.tensor(self.settings.head_weights, device=attn.device, dtype=torch.float32)
        return torch.einsum("h,bhij->bij", w / w.sum(), attn.float())

    def attention(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Head-combined attention ``(B, T, T)`` float32 of each chosen block, for a
        ``(B, 3, H, W)`` input, in the order of ``settings.layers``."""
        got: dict[int, torch.Tensor] = {}
        heads = int(self.model.config.num_attention_heads)
        with torch.inference_mode():
            if self._attn_modules is not None:
                last = max(self._layers)

                def hook(i):
                    q_proj, k_proj = _qk_projections(self._attn_modules[i])

                    def fn(_module, args, kwargs):
                        x = args[0] if args else kwargs["hidden_states"]
                        got[i] = self._combine_heads(explicit_attention(x, q_proj, k_proj, heads))
                        if i == last:  # nothing after this point is read
                            raise _StopForward
                    return fn

                handles = [self._attn_modules[i].register_forward_pre_hook(hook(i), with_kwargs=True)
                           for i in set(self._layers)]
                try:
                    self.model(pixel_values=pixel_values, **self._kwargs)
                except _StopForward:
                    pass
                finally:
                    for h in handles:
                        h.remove()
            else:  # an unknown layout: ask transformers for every block's attention (needs eager)
                out = self.model(pixel_values=pixel_values, output_attentions=True, **self._kwargs)
                if not out.attentions or out.attentions[0] is None:
                    raise RuntimeError("the model did not return attention weights; load it with "
                                       "attn_implementation='eager'")
                for i in set(self._layers):
                    got[i] = self._combine_heads(out.attentions[i])
        return [got[i] for i in self._layers]

    def affinity(self, image: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(A (N, N) float32 row-stochastic, (h, w))`` with N = h*w; CLS/register tokens dropped."""
        A, grid = self.affinity_batch([image])
        return A[0], grid

    def affinity_batch(self, images: Sequence[Any]) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(A (B, N, N) float32 row-stochastic, (h, w))`` for images that share one input size
        (one forward pass for all of them)."""
        x = torch.cat([self.pixel_values(im) for im in images])
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        per_layer = self.attention(x)
        lw = self.settings.layer_weights or (1.0,) * len(per_layer)
        total = sum(lw)
        combined = lw[0] / total * per_layer[0]  # summed in layer order, as sum() did
        for w, a in zip(lw[1:], per_layer[1:], strict=False):
            combined = combined + w / total * a
        A = torch.stack([patch_affinity(c[None], num_prefix=self.num_prefix) for c in combined])
        if A.shape[-1] != grid[0] * grid[1]:
            raise RuntimeError(f"attention has {A.shape[-1]} patch tokens but the grid is {grid}; "
                               f"prefix token count {self.num_prefix} is wrong for this model")
        return A, grid


def _preprocessor_stats(src: str, local_only: bool) -> tuple[Sequence[float], Sequence[float]]:
    cfg = read_json(src, "preprocessor_config.json", local_only) or {}  # optional: ImageNet statistics
    return cfg.get("image_mean", IMAGENET_MEAN), cfg.get("image_std", IMAGENET_STD)


def num_prefix_tokens(config: Any) -> int:
    """CLS plus register tokens."""
    return 1 + int(getattr(config, "num_register_tokens", 0) or 0)


def wrap_vit(model: Any, *, name: str, device: torch.device, dtype: torch.dtype, settings: VitAttentionSettings,
             mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> VitAttentionSource:
    model = model.to(device=device, dtype=dtype)
    return VitAttentionSource(model, name=name, settings=settings, num_prefix=num_prefix_tokens(model.config),
                              mean=mean, std=std)


def load_vit_attention(name: str, source: str, *, family: str, device: torch.device,
                       **overrides: Any) -> VitAttentionSource:
    """Load a DINOv2 / DINOv2-with-registers / DINO (ViT) checkpoint as an attention source."""
    check_settings(f"attention source '{name}'", overrides, VIT_SETTINGS)
    settings = VitAttentionSettings(**overrides)
    dtype = resolve_dtype(settings.dtype, device, accelerator_default=torch.float16)
    src, local_only = locate(name, source)
    check_model_folder(name, src)
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(src, local_files_only=local_only)
        kwargs = {"add_pooling_layer": False} if config.model_type == "vit" else {}
        model = AutoModel.from_pretrained(src, local_files_only=local_only, attn_implementation="sdpa",
                                          dtype=dtype, **kwargs)
    except OSError as exc:
        raise weights_error(name, source, f"loading failed ({str(exc).splitlines()[0]})") from exc
    mean, std = _preprocessor_stats(src, local_only)
    return wrap_vit(model, name=name, device=device, dtype=dtype, settings=settings, mean=mean, std=std)

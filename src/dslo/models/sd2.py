"""Stable Diffusion 2 self-attention as the affinity (SPEC §3, the paper's default source).

The image is resized to a square ``resolution`` (512), VAE-encoded without noise (latent mode ×
scaling factor; ``noise_seed`` adds the forward-diffusion noise of ``timestep`` for ablations), and
the UNet is called once at ``timestep`` 0 with the empty prompt. A diffusers
attention processor, installed only on the chosen ``attn1`` (self-attention) layers, records
``mean_h softmax(Q Kᵀ/√d)`` and computes the layer's usual output from the same probabilities, so
the UNet's output is unchanged. Default layers: ``up_blocks.3.attentions.0/1`` (64×64 grid at 512),
equal weights (0.5/0.5). Every other attention layer keeps diffusers' fused (SDPA) processor.
Once the last chosen layer's probabilities are recorded, the rest of the UNet — that layer's
attention output included — is skipped (``stop_early``).

The model id is a setting: the official ``stabilityai`` SD2 repositories were removed from the Hub
in November 2025. Default: :data:`dslo.models.registry.SD2_DEFAULT_MODEL` (a community mirror);
override with ``create_attention_model("sd2", model_id=...)`` or ``$DSLO_SD2_MODEL`` (a Hub id or
a local diffusers directory with ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dslo.errors import SettingsError
from dslo.imageio import to_rgb_array
from dslo.models.common import check_settings
from dslo.models.weights import locate, resolve_dtype, weights_error

__all__ = ["Sd2Settings", "AttentionStore", "StoringAttnProcessor", "install_store", "Sd2AttentionSource", "load_sd2"]


@dataclass(frozen=True)
class Sd2Settings:
    """Settings of the SD2 attention source (SPEC §3 defaults)."""

    resolution: int = 512  # square input side in pixels (the paper: higher is better; 768/1024 open)
    timestep: int = 0  # the single UNet call's timestep
    noise_seed: int | None = None  # None: noise-free latents (SPEC); a seed: noise them to `timestep`
    layers: tuple[str, ...] = ("up_blocks.3.attentions.0", "up_blocks.3.attentions.1")
    layer_weights: tuple[float, ...] | None = None  # one per entry of layers; None: equal (0.5/0.5)
    prompt: str = ""  # the conditioning prompt (empty: unconditional)
    stop_early: bool = True  # skip the UNet after the last chosen layer (its output is not used)
    dtype: str = "auto"  # auto: float16 on an accelerator (as the paper), float32 on the CPU

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        if not self.layers:
            raise SettingsError("layers must name at least one UNet attention layer")
        if self.layer_weights is not None:
            w = tuple(float(x) for x in self.layer_weights)
            if len(w) != len(self.layers) or min(w) < 0 or sum(w) <= 0:
                raise SettingsError(f"layer_weights {self.layer_weights} must be {len(self.layers)} non-negative "
                                 "numbers with a positive sum, one per entry of layers")
            object.__setattr__(self, "layer_weights", w)
        if not 0 <= self.timestep < 1000:
            raise SettingsError(f"timestep={self.timestep} must be in [0, 1000)")
        if self.resolution % 64:
            raise SettingsError(f"resolution={self.resolution} must be a multiple of 64 (VAE ×8, UNet ×8)")


SD2_SETTINGS = tuple(f.name for f in fields(Sd2Settings))


class _StopForward(Exception):
    """Raised inside the UNet once every chosen layer has been recorded."""


class AttentionStore:
    """Collects head-averaged self-attention ``(B, N, N)`` float32 per hooked module."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.maps: dict[str, torch.Tensor] = {}
        self.stop_when_full = False

    def put(self, key: str, probs: torch.Tensor) -> None:
        self.maps[key] = probs
        if self.stop_when_full and len(self.maps) >= self.expected:
            raise _StopForward

    def clear(self) -> None:
        self.maps = {}


class StoringAttnProcessor:
    """diffusers attention processor: classic attention with the softmax done in float32 and its
    head-averaged probabilities ``(B, N, N)`` handed to an :class:`AttentionStore` before the
    layer's output is computed (so a store that stops the forward skips that work too)."""

    def __init__(self, store: AttentionStore, key: str) -> None:
        self.store, self.key = store, key

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, seq, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        q, k, v = (attn.head_to_batch_dim(t) for t in (query, key, value))  # (B*heads, T, d)
        scores = torch.bmm(q.float(), k.float().transpose(1, 2)) * attn.scale
        if attention_mask is not None:
            scores = scores + attention_mask.float()
        probs = scores.softmax(dim=-1)
        del scores
        self.store.put(self.key, probs.view(-1, attn.heads, *probs.shape[1:]).mean(1))
        out = attn.batch_to_head_dim(torch.bmm(probs.to(v.dtype), v))
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _self_attentions(unet: torch.nn.Module, path: str) -> list[tuple[str, torch.nn.Module]]:
    """The self-attention (``attn1``) modules at or under ``path`` of the UNet."""
    try:
        root = unet.get_submodule(path)
    except AttributeError as exc:
        raise ValueError(f"UNet has no module {path!r} (e.g. 'up_blocks.3.attentions.0')") from exc
    if hasattr(root, "to_q") and hasattr(root, "heads"):
        return [(path, root)]
    found = [(f"{path}.{n}", m) for n, m in root.named_modules() if n.split(".")[-1] == "attn1"]
    if not found:
        raise ValueError(f"no self-attention (attn1) layer under UNet module {path!r}")
    return found


def install_store(unet: torch.nn.Module, layers: tuple[str, ...]) -> tuple[AttentionStore, dict[str, list[str]]]:
    """Install :class:`StoringAttnProcessor` on the ``attn1`` modules of each path in ``layers``
    (only there; every other layer keeps its processor). Returns the store and, per path, the
    keys its modules record under."""
    groups = {p: _self_attentions(unet, p) for p in layers}
    store = AttentionStore(expected=sum(len(g) for g in groups.values()))
    for mods in groups.values():
        for key, mod in mods:
            mod.set_processor(StoringAttnProcessor(store, key))
    return store, {p: [k for k, _ in mods] for p, mods in groups.items()}


def _upsample_attention(a: torch.Tensor, side: int) -> torch.Tensor:
    """``(n, n)`` attention on an ``s×s`` grid → ``(side², side²)``: key maps bilinear, query rows
    repeated (nearest), then rows renormalised."""
    s = int(round(a.shape[0] ** 0.5))
    if s == side:
        return a
    keys = F.interpolate(a.view(-1, 1, s, s), size=(side, side), mode="bilinear", align_corners=False)
    rows = keys.view(s, s, side * side)
    r = side // s
    rows = rows.repeat_interleave(r, 0).repeat_interleave(r, 1).reshape(side * side, side * side)
    return rows / rows.sum(-1, keepdim=True)


class Sd2AttentionSource:
    """``affinity(image) -> (A (N, N), (h, w))`` from SD2's UNet self-attention."""

    def __init__(self, unet: Any, vae: Any, prompt_embeds: torch.Tensor, *, name: str, settings: Sd2Settings,
                 scheduler: Any = None) -> None:
        self.unet, self.vae = unet.eval(), vae.eval()
        self.scheduler = scheduler  # only used to noise latents when settings.noise_seed is set
        self.prompt_embeds = prompt_embeds
        self.name, self.settings = name, settings
        p = next(unet.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.store, self.keys = install_store(unet, settings.layers)
        w = settings.layer_weights or (1.0,) * len(settings.layers)
        self._weights = [x / sum(w) for x in w]

    def __repr__(self) -> str:
        s = self.settings
        return (f"Sd2AttentionSource({self.name!r}, resolution={s.resolution}, timestep={s.timestep}, "
                f"layers={s.layers}, device={self.device}, dtype={self.dtype})")

    def image_towers(self) -> list[torch.nn.Module]:
        """UNet and VAE (what ``accel`` quantizes: their linear layers; convolutions stay float)."""
        return [self.unet, self.vae]

    def latents(self, image: Any) -> torch.Tensor:
        """``(1, 4, R/8, R/8)`` latents of the image squashed to ``R×R``: the VAE posterior's mode ×
        scaling factor; with ``noise_seed`` set, forward-diffused to ``timestep`` by the scheduler."""
        return self.latents_batch([image])

    def latents_batch(self, images: Sequence[Any]) -> torch.Tensor:
        """``(B, 4, R/8, R/8)``: :meth:`latents` of several images in one VAE pass (each image
        gets the same noise draw with ``noise_seed``, as it would alone)."""
        R = self.settings.resolution
        xs = []
        for image in images:
            arr = to_rgb_array(image)
            if arr.shape[:2] != (R, R):
                arr = np.asarray(Image.fromarray(arr).resize((R, R), Image.BICUBIC))
            xs.append(torch.from_numpy(np.array(arr)).to(self.device).permute(2, 0, 1)[None].float() / 127.5 - 1.0)
        x = torch.cat(xs)
        with torch.inference_mode():
            lat = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mode() * self.vae.config.scaling_factor
            if self.settings.noise_seed is not None:
                g = torch.Generator(device="cpu").manual_seed(self.settings.noise_seed)
                noise = torch.randn((1, *lat.shape[1:]), generator=g, dtype=torch.float32).to(lat).expand_as(lat)
                t = torch.tensor([self.settings.timestep], device=lat.device)
                lat = self._scheduler().add_noise(lat, noise, t)
        return lat

    def _scheduler(self) -> Any:
        if self.scheduler is None:  # Stable Diffusion's training schedule (scaled linear betas)
            from diffusers import DDPMScheduler

            self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                           beta_start=0.00085, beta_end=0.012)
        return self.scheduler

    def attention_maps(self, image: Any) -> dict[str, torch.Tensor]:
        """Head-averaged ``(n, n)`` float32 attention of every hooked module (key: module path)."""
        return {k: m[0] for k, m in self.attention_maps_batch([image]).items()}

    def attention_maps_batch(self, images: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Head-averaged ``(B, n, n)`` float32 attention of every hooked module, one UNet pass."""
        lat = self.latents_batch(images)
        t = torch.tensor([self.settings.timestep], device=self.device)
        prompt = self.prompt_embeds.expand(lat.shape[0], *self.prompt_embeds.shape[1:])
        self.store.clear()
        self.store.stop_when_full = self.settings.stop_early
        try:
            with torch.inference_mode():
                self.unet(lat.to(self.dtype), t, encoder_hidden_states=prompt)
        except _StopForward:
            pass
        finally:
            self.store.stop_when_full = False
        return dict(self.store.maps)

    def affinity(self, image: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(A (N, N) float32 row-stochastic, (h, w))``; the grid is square (the image is squashed
        to ``resolution``²), e.g. 64×64 at 512 for the default layers."""
        A, grid = self.affinity_batch([image])
        return A[0], grid

    def affinity_batch(self, images: Sequence[Any]) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(A (B, N, N), (h, w))``: :meth:`affinity` of several images in one VAE + UNet pass."""
        maps = self.attention_maps_batch(images)
        side = max(int(round(m.shape[-1] ** 0.5)) for m in maps.values())
        out = []
        for b in range(len(images)):
            A = None
            for path, w in zip(self.settings.layers, self._weights, strict=False):
                group = [_upsample_attention(maps[k][b], side) for k in self.keys[path]]
                part = w * torch.stack(group).mean(0)
                A = part if A is None else A + part
            out.append(A / A.sum(-1, keepdim=True))
        return torch.stack(out), (side, side)

    def _layer_side(self, path: str) -> int:
        """Grid side of a UNet path: down_blocks.i at latent/2^i, up_blocks mirrored, mid lowest."""
        base = self.settings.resolution // 8
        head, *rest = path.split(".")
        if head == "down_blocks" and rest:
            return base >> int(rest[0])
        if head == "up_blocks" and rest:
            return base >> (len(self.unet.up_blocks) - 1 - int(rest[0]))
        if head == "mid_block":
            return base >> (len(self.unet.down_blocks) - 1)
        return base

    def grid_for(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """The affinity grid (independent of the image size: the image is squashed to a square)."""
        side = max(self._layer_side(p) for p in self.settings.layers)
        return side, side


def load_sd2(name: str, source: str | None, *, device: torch.device, model_id: str | None = None,
             **overrides: Any) -> Sd2AttentionSource:
    """Load UNet + VAE (+ text encoder once, for the prompt embedding) from a diffusers checkpoint:
    ``model_id``, else ``source``, else ``$DSLO_SD2_MODEL`` or the default mirror."""
    from dslo.models.registry import sd2_model_id

    source = model_id or source or sd2_model_id()
    check_settings(f"attention source '{name}'", overrides, SD2_SETTINGS)
    settings = Sd2Settings(**overrides)
    dtype = resolve_dtype(settings.dtype, device, accelerator_default=torch.float16)
    extra = ("point at a mirror or local copy with create_attention_model('sd2', model_id=...) "
             "or the DSLO_SD2_MODEL environment variable")
    src, local_only = locate(name, source, probe_files=("model_index.json", "unet/config.json"), extra_fix=extra)
    try:
        from diffusers import AutoencoderKL, UNet2DConditionModel
    except ImportError as exc:
        raise ImportError("the 'sd2' attention source needs diffusers: pip install 'dslo[sd2]'") from exc
    import importlib.util

    from transformers import AutoTokenizer, CLIPTextModel

    # Without accelerate diffusers warns on every load; ask for what it would fall back to anyway.
    low_mem = importlib.util.find_spec("accelerate") is not None
    kw = dict(local_files_only=local_only)
    try:
        unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", torch_dtype=dtype,
                                                    low_cpu_mem_usage=low_mem, **kw).to(device)
        vae = AutoencoderKL.from_pretrained(src, subfolder="vae", torch_dtype=dtype,
                                            low_cpu_mem_usage=low_mem, **kw).to(device)
        tokenizer = AutoTokenizer.from_pretrained(src, subfolder="tokenizer", **kw)
        text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", dtype=dtype, **kw).to(device)
    except OSError as exc:
        raise weights_error(name, source, f"loading failed ({str(exc).splitlines()[0]})", extra_fix=extra) from exc
    ids = tokenizer([settings.prompt], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids.to(device)
    with torch.inference_mode():
        embeds = text_encoder(ids)[0]
    del text_encoder  # only the prompt embedding is needed from here on
    scheduler = None
    if settings.noise_seed is not None:
        from diffusers import DDPMScheduler

        try:  # the checkpoint's own training schedule when it ships one
            scheduler = DDPMScheduler.from_pretrained(src, subfolder="scheduler", **kw)
        except (OSError, ValueError):
            scheduler = None  # Stable Diffusion's schedule is used (see Sd2AttentionSource._scheduler)
    return Sd2AttentionSource(unet, vae, embeds, name=name, settings=settings, scheduler=scheduler)

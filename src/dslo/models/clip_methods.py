"""The last CLIP block of every training-free dense-CLIP method, as pure tensor functions.

Every method runs CLIP's vision tower unchanged up to its last block and recomputes that block
(``h = LN_1(x)``; ``q, k, v`` = heads of ``h W + b``; ``s = d^-1/2``):

=========  ==========================================================  ==========================
method     last-block attention ``A`` (per head)                       residual / MLP of the block
=========  ==========================================================  ==========================
dslo       ``softmax(s·a bᵀ)``, (a, b) = settings.attention (k-k)      settings (dropped)
vanilla    ``softmax(s·q kᵀ)`` (plain CLIP)                            kept / kept
naclip     ``softmax(s·k kᵀ + Ω)``, Ω a Gaussian window on the grid     dropped / dropped
naclip_kk  ``softmax(s·k kᵀ)``                                         dropped / dropped
clearclip  ``softmax(s·q qᵀ)``                                         dropped / dropped
maskclip   ``I`` (value path and out-projection only)                  dropped / dropped
sclip      ``softmax(s·q qᵀ) + softmax(s·k kᵀ)`` (rows sum to 2)        kept / kept
proxyclip  ``softmax(γ·(S − β·mean S))``, masked where < 0, ``S`` the   dropped / dropped
           cosine similarity of a vision foundation model's patch
           features; the same for all heads; CLS dropped before it
=========  ==========================================================  ==========================

Sources (the fixtures in ``shared/data/peer_logits`` were computed by these files, unmodified):
NACLIP ``sinahmr/NACLIP@0cac3a6:clip/model.py``, SCLIP ``wangf3014/SCLIP@b56bd30:clip/model.py``,
ClearCLIP/MaskCLIP ``mc-lan/ClearCLIP@ad68a40:open_clip/transformer.py``, ProxyCLIP
``mc-lan/ProxyCLIP@e7b767f:open_clip/transformer.py``. The published evaluation protocols (input
size, sliding window, PAMR) are in :data:`PROTOCOLS`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dslo.errors import SettingsError, did_you_mean

__all__ = [
    "METHODS",
    "MethodSpec",
    "SPECS",
    "PROTOCOLS",
    "POS_INTERP",
    "method_protocol",
    "interpolate_positions",
    "gaussian_window",
    "proxy_attention",
    "resize_values",
    "last_block",
    "check_method",
    "compute_proxy_features",
]

POS_INTERP = ("exact", "peer")


@dataclass(frozen=True)
class MethodSpec:
    """What a method does to CLIP's last block."""

    attention: str  # qk | kk | qq | window | identity | csa | proxy | settings (dslo: from ClipSettings)
    keep_residual: bool
    keep_mlp: bool
    source: str  # where the method's published code defines it


SPECS: dict[str, MethodSpec] = {
    "dslo": MethodSpec("settings", False, False, "SPEC §2 (k-k, residual and MLP dropped by default)"),
    "vanilla": MethodSpec("qk", True, True, "OpenAI CLIP, unmodified"),
    "naclip": MethodSpec("window", False, False, "sinahmr/NACLIP@0cac3a6 clip/model.py, arch=reduced attn=naclip"),
    "naclip_kk": MethodSpec("kk", False, False, "sinahmr/NACLIP@0cac3a6 clip/model.py, arch=reduced attn=kk"),
    "clearclip": MethodSpec("qq", False, False,
                            "mc-lan/ClearCLIP@ad68a40 open_clip/transformer.py, model_type=ClearCLIP"),
    "maskclip": MethodSpec("identity", False, False,
                           "mc-lan/ClearCLIP@ad68a40 open_clip/transformer.py, model_type=MaskCLIP"),
    "sclip": MethodSpec("csa", True, True, "wangf3014/SCLIP@b56bd30 clip/model.py, csa=True"),
    "proxyclip": MethodSpec("proxy", False, False, "mc-lan/ProxyCLIP@e7b767f open_clip/transformer.py custom_attn"),
}
METHODS = tuple(SPECS)


# The published evaluation protocol of each method (read from its repository's configs at the
# commits above): CLIP input short side per benchmark, sliding window (crop, stride) or None for
# whole-image inference, and PAMR. dslo always runs whole-image without PAMR; these records say
# what the published numbers used, and ``short_side`` is what `dslo eval` uses by default.
_B = ("voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k")


def _per(default: Any, **special: Any) -> dict[str, Any]:
    return {b: special.get(b, default) for b in _B}


PROTOCOLS: dict[str, dict[str, Any]] = {
    "dslo": {"short_side": _per(336, cityscapes=560), "slide": _per(None), "pamr": False,
             "source": "SPEC §2: whole image, short side 336 (Cityscapes 560)"},
    "vanilla": {"short_side": _per(336, cityscapes=560), "slide": _per(None), "pamr": False,
                "source": "dslo's protocol (no published dense protocol of its own)"},
    "naclip": {"short_side": _per(336, cityscapes=560),
               "slide": _per((224, 112), voc21=None, voc20=None), "pamr": True,
               "source": "sinahmr/NACLIP@0cac3a6 configs/cfg_*.py, naclip.py defaults; README main result "
                         "`test_all.sh reduced naclip 5 on` (PAMR 10 steps, dilations (8, 16))"},
    "naclip_kk": {"short_side": _per(336, cityscapes=560),
                  "slide": _per((224, 112), voc21=None, voc20=None), "pamr": True,
                  "source": "as naclip (NACLIP's ablation of the window)"},
    "clearclip": {"short_side": _per(448), "slide": _per((448, 224), cityscapes=(224, 224)), "pamr": False,
                  "source": "mc-lan/ClearCLIP@ad68a40 configs/cfg_*.py, clearclip_segmentor.py defaults"},
    "maskclip": {"short_side": _per(448), "slide": _per((448, 224), cityscapes=(224, 224)), "pamr": False,
                 "source": "ClearCLIP's MaskCLIP baseline (mc-lan/ClearCLIP@ad68a40, model_type=MaskCLIP)"},
    "sclip": {"short_side": _per(336, cityscapes=560, coco_stuff=448), "slide": _per((224, 112)), "pamr": False,
              "source": "wangf3014/SCLIP@b56bd30 configs/cfg_*.py, clip_segmentor.py defaults (pamr_steps=0)"},
    "proxyclip": {"short_side": _per(336, cityscapes=448, ade20k=448), "slide": _per((336, 112), cityscapes=(224, 112)),
                  "pamr": False,
                  "source": "mc-lan/ProxyCLIP@e7b767f configs/cfg_*.py, proxyclip_segmentor.py defaults "
                            "(vfm dino ViT-B/8, beta 1.2, gamma 3.0)"},
}


def method_protocol(method: str, dataset: str | None = None) -> dict[str, Any]:
    """The published protocol of ``method`` (on ``dataset`` when given): short side, sliding
    window, PAMR and where it was read. JSON-ready."""
    if method not in PROTOCOLS:
        raise SettingsError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    p = PROTOCOLS[method]
    if dataset is None or dataset not in p["short_side"]:
        return {"method": method, "short_side": dict(p["short_side"]),
                "sliding_window": {k: (list(v) if v else None) for k, v in p["slide"].items()},
                "pamr": p["pamr"], "source": p["source"]}
    slide = p["slide"][dataset]
    return {"method": method, "short_side": p["short_side"][dataset],
            "sliding_window": None if slide is None else {"crop": slide[0], "stride": slide[1]},
            "pamr": p["pamr"], "source": p["source"]}


# ---- embeddings --------------------------------------------------------------------------------
def interpolate_positions(pos: torch.Tensor, grid: tuple[int, int], mode: str = "exact") -> torch.Tensor:
    """CLIP's position table ``(1 + g², C)`` (CLS first, a g×g grid) → ``(1 + h·w, C)`` for the
    patch grid ``grid = (h, w)``; the CLS position is kept.

    ``exact``: bicubic resize to the size (h, w), as transformers does (identity at h = w = g).
    ``peer``: the DINO-style call of the SCLIP-family code, bicubic with scale factors
    ``((h + 0.1)/g, (w + 0.1)/g)``; the table is used as it is only when h = w = g. Both use
    ``align_corners=False``. The two differ even at h = g (the peer call resamples every row when
    the grid is not square)."""
    if mode not in POS_INTERP:
        raise SettingsError(f"pos_interp={mode!r}; use one of {POS_INTERP}")
    h, w = int(grid[0]), int(grid[1])
    g = int(round(math.sqrt(pos.shape[0] - 1)))
    if g * g != pos.shape[0] - 1:
        raise ValueError(f"position table of {pos.shape[0]} rows is not CLS + a square grid")
    if h == w == g:
        return pos
    table = pos[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
    if mode == "exact":
        out = F.interpolate(table, size=(h, w), mode="bicubic", align_corners=False)
    else:
        out = F.interpolate(table, scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode="bicubic",
                            align_corners=False, recompute_scale_factor=False)
        if tuple(out.shape[-2:]) != (h, w):  # cannot happen for the +0.1 offset; guards a silent shift
            raise RuntimeError(f"peer position interpolation gave {tuple(out.shape[-2:])}, expected {(h, w)}")
    out = out.to(pos.dtype).permute(0, 2, 3, 1).reshape(h * w, -1)
    return torch.cat([pos[:1], out], 0)


# ---- attention ---------------------------------------------------------------------------------
def gaussian_window(grid: tuple[int, int], std: float, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """NACLIP's additive window ``Ω (N, N)``, N = h·w patches in row-major order:
    ``Ω[p, q] = exp(-|p - q|² / (2 std²))`` in grid coordinates (rows and columns)."""
    if std <= 0:
        raise SettingsError(f"window_std must be positive, got {std}")
    r, c = torch.meshgrid(torch.arange(grid[0], device=device), torch.arange(grid[1], device=device), indexing="ij")
    r, c = r.reshape(-1).to(dtype), c.reshape(-1).to(dtype)
    d2 = (r[:, None] - r[None]) ** 2 + (c[:, None] - c[None]) ** 2
    return torch.exp(-d2 / (2.0 * std * std))


def proxy_attention(proxy: torch.Tensor, beta: float = 1.2, gamma: float = 3.0) -> torch.Tensor:
    """ProxyCLIP's proxy attention ``(M, M)`` from proxy features ``(M, D')``:
    ``S = ẑ ẑᵀ`` (cosine), ``S' = γ (S − β mean(S))`` with the mean over all M² entries,
    ``S' < 0 → −∞`` (never on the diagonal, see below), row softmax. Float32."""
    z = F.normalize(proxy.float(), dim=-1)
    s = z @ z.T
    s = (s - s.mean() * beta) * gamma
    # The diagonal is γ(1 − β·mean S); when mean S > 1/β (near-uniform features, e.g. a flat
    # image) it is negative too, every key of every row is masked and the published code returns
    # NaN. Never masking the diagonal changes nothing otherwise and attends to itself there.
    mask = s < 0
    mask.fill_diagonal_(False)
    return torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1)


def resize_values(v: torch.Tensor, grid: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """Patch values ``(heads, h·w, d)`` on ``grid`` → ``(heads, h'·w', d)`` on ``target``
    (bilinear, ``align_corners=False``, as ProxyCLIP resizes CLIP's values to the proxy grid;
    the identity when the grids agree)."""
    if tuple(grid) == tuple(target):
        return v
    nh, n, d = v.shape
    x = v.reshape(nh, grid[0], grid[1], d).permute(0, 3, 1, 2)
    x = F.interpolate(x.float(), size=tuple(target), mode="bilinear", align_corners=False).to(v.dtype)
    return x.permute(0, 2, 3, 1).reshape(nh, target[0] * target[1], d)


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=-1)


def last_block(
    layer: Any,
    x: torch.Tensor,
    grid: tuple[int, int],
    *,
    attention: str,
    keep_residual: bool,
    keep_mlp: bool,
    window_std: float = 5.0,
    proxy: torch.Tensor | None = None,
    proxy_grid: tuple[int, int] | None = None,
    beta: float = 1.2,
    gamma: float = 3.0,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Recompute a transformers ``CLIPEncoderLayer`` on tokens ``x (1, 1 + h·w, C)`` (CLS first).

    attention: ``qk | kk | qq | window | identity | csa | proxy`` (see the module table).
    proxy: ``(M, D')`` features on ``proxy_grid`` (M = h'·w'; default ``grid``) for ``proxy``.
    Returns (block output ``(1, T', C)``, attention ``(heads, T', T')`` float32, has_cls):
    ``T' = 1 + h·w`` with the CLS token first, except for ``proxy``, which drops CLS before
    attending and returns the ``M`` proxy-grid tokens (``has_cls`` False)."""
    sa = layer.self_attn
    B, T, C = x.shape
    nh = sa.num_heads
    d = C // nh
    scale = d ** -0.5
    y = layer.layer_norm1(x)
    q, k, v = (p(y).view(B, T, nh, d).transpose(1, 2)[0] for p in (sa.q_proj, sa.k_proj, sa.v_proj))  # (nh, T, d)
    has_cls = True
    if attention == "qk":
        attn = _softmax(q @ k.transpose(-1, -2) * scale)
    elif attention == "kk":
        attn = _softmax(k @ k.transpose(-1, -2) * scale)
    elif attention == "qq":
        attn = _softmax(q @ q.transpose(-1, -2) * scale)
    elif attention == "window":
        # NACLIP adds the window after the 1/√d scale; the CLS row and column get 0.
        omega = torch.zeros(T, T, device=x.device, dtype=torch.float32)
        omega[1:, 1:] = gaussian_window(grid, window_std, device=x.device)
        attn = _softmax((k @ k.transpose(-1, -2)).float() * scale + omega)
    elif attention == "identity":
        attn = torch.eye(T, device=x.device, dtype=torch.float32).expand(nh, T, T)
    elif attention == "csa":
        attn = _softmax(q @ q.transpose(-1, -2) * scale) + _softmax(k @ k.transpose(-1, -2) * scale)
    elif attention == "proxy":
        if proxy is None:
            raise ValueError("method 'proxyclip' needs proxy features (M, D') on the proxy grid")
        pg = proxy_grid or grid
        if proxy.ndim != 2 or proxy.shape[0] != pg[0] * pg[1]:
            raise ValueError(f"proxy features must be ({pg[0] * pg[1]}, D') for the grid {pg}; "
                             f"got {tuple(proxy.shape)}")
        has_cls = False
        attn = proxy_attention(proxy.to(x.device), beta, gamma).expand(nh, -1, -1)
        v = resize_values(v[:, 1:], grid, pg)
    else:
        raise ValueError(f"unknown last-block attention {attention!r}")
    out = (attn.to(v.dtype) @ v).transpose(0, 1).reshape(1, -1, C)
    out = sa.out_proj(out)
    if keep_residual:
        if not has_cls:
            raise ValueError("proxyclip drops CLS and may change the grid: it cannot keep the residual")
        out = out + x
    if keep_mlp:
        out = out + layer.mlp(layer.layer_norm2(out))
    return out, attn, has_cls


def check_method(method: str, attention: str, keep_residual: bool, keep_mlp: bool,
                 defaults: Sequence[Any] = ("kk", False, False)) -> None:
    """``attention`` / ``keep_residual`` / ``keep_mlp`` configure ``method='dslo'`` only; another
    method with one of them changed is a contradiction, refused with the fix."""
    if method not in SPECS:
        raise SettingsError(f"method={method!r}{did_you_mean(method, METHODS)}; use one of {', '.join(METHODS)}")
    if method != "dslo" and (attention, keep_residual, keep_mlp) != tuple(defaults):
        raise SettingsError(f"attention/keep_residual/keep_mlp configure method='dslo' only; method={method!r} "
                         "fixes its own last block. Drop those settings or use method='dslo'")


# ---- proxy features ----------------------------------------------------------------------------
def compute_proxy_features(source: Any, pixel_values: torch.Tensor, clip_mean: Sequence[float],
                           clip_std: Sequence[float], grid: tuple[int, int] | None = None) -> torch.Tensor:
    """``(h', w', D')`` last-layer patch features (after the final norm, CLS/registers dropped) of
    a ViT attention source (``.model``, ``.mean``, ``.std``, ``.patch_size``, ``.num_prefix``:
    DINO, DINOv2, focus-s14) for a CLIP-normalised ``(1, 3, H, W)`` input.

    The pixels are moved from CLIP's to the source's statistics, as ProxyCLIP's
    ``forward_feature`` does. ``grid`` given: they are resized (bilinear) to ``grid × patch`` so
    the proxy's grid is ``grid``; None: the proxy sees them at ``H × W`` (ProxyCLIP's own)."""
    model = source.model
    p = int(source.patch_size)
    dev = next(model.parameters()).device
    x = pixel_values.to(dev, torch.float32)
    cm, cs = (torch.tensor(v, device=dev, dtype=torch.float32).view(1, 3, 1, 1) for v in (clip_mean, clip_std))
    sm, ss = (torch.tensor(v, device=dev, dtype=torch.float32).view(1, 3, 1, 1) for v in (source.mean, source.std))
    x = ((x * cs + cm) - sm) / ss
    size = (grid[0] * p, grid[1] * p) if grid is not None else (x.shape[-2] // p * p, x.shape[-1] // p * p)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    kwargs = {"interpolate_pos_encoding": True} if model.config.model_type == "vit" else {}
    with torch.inference_mode():
        out = model(pixel_values=x.to(next(model.parameters()).dtype), **kwargs).last_hidden_state
    feats = out[0, int(source.num_prefix):].float()
    h, w = size[0] // p, size[1] // p
    if feats.shape[0] != h * w:
        raise RuntimeError(f"proxy {getattr(source, 'name', '?')!r} gave {feats.shape[0]} patch tokens for a "
                           f"{h}×{w} grid")
    return feats.reshape(h, w, -1)

"""Joint bilateral upsampling (Kopf et al. 2007) of low-resolution class maps, guided by the image.

Vectorised as one batched matrix product per chunk of low-resolution rows: every high-resolution
pixel p belongs to the low-resolution cell ``round(p↓)``; all pixels of a cell share the same
(2R+1)² neighbour values, so a cell's output is ``weights (pixels × neighbours) @ values
(neighbours × K)``. Memory is bounded by ``chunk_elements`` regardless of the image size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._checks import as_float, check_finite
from .readout import class_argmax


def guide_image(image: Any, device: torch.device | str | None = None, dtype=torch.float32) -> torch.Tensor:
    """An image as an ``(H, W, 3)`` float tensor in [0, 1] on ``device``.

    Accepts ``(H, W, 3)`` uint8 numpy / PIL, or a tensor ``(H, W, 3)`` / ``(3, H, W)`` (uint8, or
    float in [0, 1]). Greyscale ``(H, W)`` is repeated to 3 channels.
    """
    if not isinstance(image, torch.Tensor):
        arr = np.asarray(image)
        if arr.dtype == object:
            raise TypeError(f"unsupported image type {type(image).__name__}")
        image = torch.from_numpy(np.array(arr, copy=True))
    t = image
    if t.ndim == 2:
        t = t[..., None].expand(*t.shape, 3)
    if t.ndim != 3:
        raise ValueError(f"image must be (H, W, 3) or (3, H, W), got shape {tuple(image.shape)}")
    if t.shape[-1] not in (1, 3, 4) and t.shape[0] in (1, 3, 4):
        t = t.permute(1, 2, 0)
    if t.shape[-1] == 1:
        t = t.expand(*t.shape[:2], 3)
    elif t.shape[-1] == 4:
        t = t[..., :3]
    elif t.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3) or (3, H, W), got shape {tuple(image.shape)}")
    if t.dtype == torch.uint8:
        t = t.to(device=device, dtype=dtype) / 255.0
    else:
        t = t.to(device=device, dtype=dtype)
        check_finite(t, "image")
    return t


def _cell_table(n_high: int, n_low: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group high-res coordinates by their nearest low-res cell along one axis.

    Returns ``pos (n_high,)`` the low-res position of every high-res pixel centre,
    ``table (n_low, m)`` the high-res indices in each cell padded with -1, and the cell of each."""
    pos = (torch.arange(n_high, device=device, dtype=torch.float64) + 0.5) * (n_low / n_high) - 0.5
    cell = torch.floor(pos + 0.5).clamp(0, n_low - 1).long()
    counts = torch.bincount(cell, minlength=n_low)
    m = max(int(counts.max()), 1)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(m, device=device)
    table = start[:, None] + slot[None, :]
    table = torch.where(slot[None, :] < counts[:, None], table, torch.full_like(table, -1))
    return pos, table, cell


def _log_spatial(pos: torch.Tensor, table: torch.Tensor, n_low: int, radius: int, sigma: float, dtype):
    """Log spatial weight along one axis: ``(n_low, m, 2R+1)``, -inf for neighbours off the grid
    and for padding slots."""
    offsets = torch.arange(-radius, radius + 1, device=pos.device)
    q = torch.arange(n_low, device=pos.device)[:, None, None] + offsets[None, None, :]  # (n_low, 1, P1)
    p = pos[table.clamp_min(0)][:, :, None]  # (n_low, m, 1)
    logw = -((q - p) ** 2) / (2.0 * sigma**2)
    ok = (q >= 0) & (q < n_low) & (table >= 0)[:, :, None]
    return torch.where(ok, logw, torch.full_like(logw, float("-inf"))).to(dtype)


def joint_bilateral_upsample(
    maps: torch.Tensor,
    image: Any,
    sigma_spatial: float = 1.0,
    sigma_range: float = 0.1,
    radius: int | None = None,
    chunk_elements: int = 1 << 20,
) -> torch.Tensor:
    """Joint bilateral upsampling of ``maps`` to the image's size.

    ``S̃_p = Σ_q S_q f(‖p↓ − q‖) g(‖I_p − I↓_q‖) / Σ_q f g`` where ``p↓`` is the high-res pixel
    centre in low-res coordinates (``(y + 0.5)·h/H − 0.5``), q runs over the low-res grid points
    ``round(p↓) + (dy, dx)``, ``|dy|, |dx| ≤ R`` inside the grid, ``f`` and ``g`` are Gaussians with
    ``sigma_spatial`` (low-res pixels) and ``sigma_range`` (RGB in [0, 1]), and ``I↓`` is the
    guide image area-resized to the low-res grid. ``R = ceil(3·sigma_spatial)`` by default.
    Weights are computed in log space and shifted per pixel, so no pixel gets a 0/0 even where
    every range weight would underflow.

    Args:
        maps: ``(K, h, w)`` low-resolution maps.
        image: ``(H, W, 3)`` guide (see :func:`guide_image`), any H, W.
        chunk_elements: bound on the size of the per-chunk weight tensor (pixels × neighbours).
    Returns:
        ``(K, H, W)`` on the maps' device.
    """
    S = as_float(maps, "maps")
    if S.ndim != 3:
        raise ValueError(f"maps must be (K, h, w), got shape {tuple(S.shape)}")
    check_finite(S, "maps")
    dtype, device = S.dtype, S.device
    I = guide_image(image, device=device, dtype=dtype)
    K, h, w = S.shape
    H, W = I.shape[:2]
    R = int(math.ceil(3.0 * sigma_spatial)) if radius is None else int(radius)
    P1 = 2 * R + 1
    P = P1 * P1

    pos_y, rows, _ = _cell_table(H, h, device)
    pos_x, cols, _ = _cell_table(W, w, device)
    my, mx = rows.shape[1], cols.shape[1]
    ly = _log_spatial(pos_y, rows, h, R, sigma_spatial, dtype)  # (h, my, P1)
    lx = _log_spatial(pos_x, cols, w, R, sigma_spatial, dtype)  # (w, mx, P1)

    I_chw = I.permute(2, 0, 1)[None]
    I_low = F.interpolate(I_chw, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    # Neighbour values per cell: (h, w, P, K) and (h, w, P, 3).
    nb_val = F.unfold(S[None], P1, padding=R).view(K, P, h, w).permute(2, 3, 1, 0)
    nb_img = F.unfold(I_low, P1, padding=R).view(3, P, h, w).permute(2, 3, 1, 0)
    Ihi = I[rows.clamp_min(0)][:, :, cols.clamp_min(0)]  # (h, my, w, mx, 3)
    Ihi = Ihi.permute(0, 2, 1, 3, 4)  # (h, w, my, mx, 3)

    # log g(p, q) = -‖I_p − I_q‖² / (2σ_r²) = const(p) + (2 I_p·I_q − ‖I_q‖²) / (2σ_r²): the
    # per-pixel constant cancels in the normalisation, so the range term is one small matmul.
    inv_r = 1.0 / (2.0 * sigma_range**2)
    ones = torch.ones(*Ihi.shape[:-1], 1, dtype=dtype, device=device)
    Ihi_aug = torch.cat([Ihi, ones], dim=-1)  # (h, w, my, mx, 4)
    nb_img_aug = torch.cat([2.0 * inv_r * nb_img, -inv_r * (nb_img * nb_img).sum(-1, keepdim=True)], dim=-1)

    out = torch.empty(K, H, W, dtype=dtype, device=device)
    valid_cols = cols.flatten() >= 0
    per_row = w * my * mx * P
    step = max(1, chunk_elements // per_row)
    for r0 in range(0, h, step):
        r1 = min(h, r0 + step)
        hc = r1 - r0
        cells = hc * w
        logw = torch.bmm(Ihi_aug[r0:r1].reshape(cells, my * mx, 4), nb_img_aug[r0:r1].reshape(cells, P, 4).transpose(1, 2))
        view = logw.view(hc, w, my, mx, P1, P1)
        view.add_(ly[r0:r1, None, :, None, :, None]).add_(lx[None, :, None, :, None, :])
        logw.sub_(logw.amax(dim=-1, keepdim=True)).exp_()  # shift per pixel: no 0/0 on underflow
        num = torch.bmm(logw, nb_val[r0:r1].reshape(cells, P, K))  # (cells, m, K)
        num.div_(logw.sum(-1, keepdim=True))
        res = num.view(hc, w, my, mx, K).permute(4, 0, 2, 1, 3).reshape(K, hc * my, w * mx)
        row_ids = rows[r0:r1].flatten()
        keep_rows = row_ids >= 0
        if keep_rows.any():
            res = res[:, keep_rows][:, :, valid_cols]
            y0 = int(row_ids[keep_rows][0])
            out[:, y0 : y0 + res.shape[1]] = res
    return out


def upsample_argmax(scores: torch.Tensor, size: tuple[int, int], band: int = 256) -> torch.Tensor:
    """Argmax over classes of the bilinear upsampling of ``scores``, without materialising it.

    scores: ``(K, h, w)`` float; size: ``(H, W)``. Returns ``(H, W)`` int64 indices into K, equal
    (up to float rounding on near-ties) to ``F.interpolate(scores[None], size, mode="bilinear",
    align_corners=False)[0].argmax(0)``. Bilinear resampling is separable: columns are
    interpolated once (``K × h × W``), then rows band by band, so memory is ``K × band × W``
    instead of ``K × H × W`` (a 12-megapixel photo with 10 classes would otherwise need ~0.5 GB).
    """
    if scores.ndim != 3:
        raise ValueError(f"scores must be (K, h, w); got shape {tuple(scores.shape)}")
    k, h, w = scores.shape
    H, W = int(size[0]), int(size[1])
    dtype = scores.dtype if scores.dtype == torch.float64 else torch.float32
    s = scores.to(dtype)
    c0, c1, cf = _linear_taps(W, w, s.device, dtype)
    cols = torch.lerp(s[:, :, c0], s[:, :, c1], cf)  # (K, h, W)
    r0, r1, rf = _linear_taps(H, h, s.device, dtype)
    out = torch.empty((H, W), dtype=torch.int64, device=s.device)
    for y0 in range(0, H, band):
        sl = slice(y0, y0 + band)
        rows = torch.lerp(cols[:, r0[sl]], cols[:, r1[sl]], rf[sl, None])  # (K, b, W)
        out[sl] = class_argmax(rows)  # 3x faster than rows.argmax(0) on CPU (21 x 448², 1 thread)
    return out


def _linear_taps(out_n: int, in_n: int, device: torch.device, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two source indices and the weight of the second, for each of ``out_n`` outputs of 1-D
    linear resampling with ``align_corners=False`` (PyTorch's convention: clamp at the border)."""
    x = ((torch.arange(out_n, dtype=torch.float64) + 0.5) * (in_n / out_n) - 0.5).clamp(min=0)
    i0 = x.floor().long().clamp(max=in_n - 1)
    i1 = (i0 + 1).clamp(max=in_n - 1)
    frac = (x - i0).to(dtype)
    return i0.to(device), i1.to(device), frac.to(device)

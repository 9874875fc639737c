"""Small pieces shared by every backbone: input sizing, pixel normalisation, turning raw attention
into a row-stochastic patch affinity, and a one-image memo so two consumers of the same forward
pass (CLIP logits and CLIP attention) run it once."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from dslo.errors import check_known
from dslo.imageio import to_rgb_array

__all__ = [
    "aspect_size",
    "input_is_reduced",
    "MAX_ASPECT",
    "pixel_tensor",
    "patch_affinity",
    "image_key",
    "check_settings",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CLIP_MEAN",
    "CLIP_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# The longest input side, in multiples of the short side, that keeps full resolution. Attention
# costs O(N²) in the patch count N: an 8000×300 panorama at short side 448 would be a 12 073-px
# input of 27 585 patches (an 18 GB attention matrix). Capping the long side at 3× the short side
# bounds N at 3·(short_side / patch)² whatever the aspect ratio (3072 patches at 448 / 14,
# 1.7× a 16:9 photo's 1824).
MAX_ASPECT = 3


def aspect_size(image_hw: tuple[int, int], short_side: int, multiple: int) -> tuple[int, int]:
    """Model input size ``(H', W')`` for an image of size ``image_hw``: short side ``short_side``,
    aspect ratio kept, both sides rounded to a multiple of the patch size (so no pixels are
    silently cropped by the patch convolution; the aspect error is below half a patch).

    Every model's input sizing goes through here, so the patch count is bounded for all of them:
    the long side is at most ``MAX_ASPECT * short_side`` (a more elongated image is scaled so that
    its long side fits, its short side then falls below ``short_side``; see
    :func:`input_is_reduced`), hence ``N = H'·W' / multiple² <= MAX_ASPECT · (short_side / multiple)²``
    (plus rounding)."""
    h, w = int(image_hw[0]), int(image_hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {image_hw}")
    if short_side < multiple:
        raise ValueError(f"short_side={short_side} is smaller than the patch size {multiple}")
    s = min(short_side / min(h, w), MAX_ASPECT * short_side / max(h, w))
    return (max(multiple, round(h * s / multiple) * multiple), max(multiple, round(w * s / multiple) * multiple))


def input_is_reduced(image_hw: tuple[int, int]) -> bool:
    """Whether :func:`aspect_size` gives this image less than the model's ``short_side`` on its
    short side (an aspect ratio beyond ``MAX_ASPECT``: the models see it at reduced resolution)."""
    h, w = int(image_hw[0]), int(image_hw[1])
    return max(h, w) > MAX_ASPECT * min(h, w)


def pixel_tensor(
    image: Any,
    size_hw: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Image (path / PIL / ``(H, W, 3)`` uint8 / tensor) → ``(1, 3, H', W')`` normalised tensor.

    Bicubic PIL resize on uint8, as the CLIP and DINO image processors do."""
    arr = to_rgb_array(image)
    if arr.shape[:2] != tuple(size_hw):
        arr = np.asarray(Image.fromarray(arr).resize((size_hw[1], size_hw[0]), Image.Resampling.BICUBIC))
    if not arr.flags.writeable:  # PIL-backed arrays are read-only; torch wants to own writable memory
        arr = arr.copy()
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(device=device, dtype=torch.float32)
    x = x.permute(2, 0, 1).unsqueeze(0) / 255.0
    m = torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).to(dtype)


def patch_affinity(
    attn: torch.Tensor,
    num_prefix: int,
    head_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Raw attention ``(H, T, T)`` (heads, tokens incl. ``num_prefix`` CLS/register tokens) →
    ``(N, N)`` float32 patch-to-patch affinity, rows summing to 1.

    Heads are averaged (or weighted by ``head_weights`` ``(H,)``) *before* dropping the prefix
    tokens; dropping them removes mass from each row, hence the renormalisation."""
    if attn.ndim != 3 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attention must be (heads, T, T); got {tuple(attn.shape)}")
    a = attn.float()
    a = a.mean(0) if head_weights is None else torch.einsum("h,hij->ij", head_weights.to(a), a)
    a = a[num_prefix:, num_prefix:]
    # clamp: a row whose mass sat entirely on CLS/registers would otherwise divide by zero
    return a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


def image_key(image: Any) -> tuple | None:
    """A cheap identity for an image's pixels (shape + blake2b digest), or None when the input is
    not an array we can hash cheaply."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        return image.shape, hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest()
    return None


def check_settings(kind: str, given: dict, allowed: Sequence[str]) -> None:
    """Unknown overrides are a :class:`dslo.errors.SettingsError` naming the closest and the valid
    ones (a typo must not be ignored)."""
    check_known(kind, given, allowed)


def one_image_memo() -> Callable:
    """Decorator factory: memoise a method of one image argument on :func:`image_key` (last call
    only), so repeated forwards on the same pixels are free."""

    def deco(fn):
        def wrapped(self, arr: np.ndarray, *args):
            key = (image_key(arr), args)
            memo = self.__dict__.setdefault("_memo_" + fn.__name__, [None, None])
            if key[0] is not None and memo[0] == key:
                return memo[1]
            out = fn(self, arr, *args)
            memo[0], memo[1] = key, out
            return out

        wrapped.__name__ = fn.__name__
        wrapped.__doc__ = fn.__doc__
        return wrapped

    return deco

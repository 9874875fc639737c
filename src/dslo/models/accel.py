"""Opt-in acceleration of the image side of the models (``accel=``): dynamic int8 ``nn.Linear``
layers on the CPU.

``accel="int8"`` replaces every ``nn.Linear`` of a model's image towers (:class:`ImageTowers`:
CLIP's vision tower, a ViT attention source, SD2's UNet and VAE) by a dynamically quantized
one: weights int8 per output channel, activations quantized per tensor at each call, int32
accumulation, float32 out. Everything else stays float32: the attention products and the
softmax the affinity is read from (:func:`dslo.models.vit.explicit_attention`, CLIP's last block
in :mod:`dslo.models.clip_methods`, SD2's storing processor: they call the projections as modules,
so the quantized ones slot in), layer norms, convolutions, and the **text tower**. The text tower
is left float on purpose: it runs once per vocabulary (its embeddings are cached in memory and on
disk), so int8 would save nothing per image, and float text embeddings keep one text cache valid
for float32 and int8 runs alike (``text_key`` does not change with ``accel``).

Activations use the full 8 bits where the CPU has an int8 dot-product instruction (VNNI), whose
int32 accumulation cannot saturate; elsewhere torch's default 7-bit range (``reduce_range``),
which avoids the int16 saturation of the AVX2 kernel. On focus-s14 the full range lifts the
affinity rows' cosine to float32 from 0.985 to 0.996 (docs/benchmarks.md, the speed section).

torchao (0.18) supports this torch, but its dynamic int8 path ran slower than float32 eagerly on
this CPU (505 vs 333 ms on a stack of MLP blocks) and needs ``torch.compile`` (20 s first call) to
help; ``torch.ao.quantization``'s dynamic API, deprecated but fast eagerly (2.3x), is used, and
only from :func:`quantize_linear_int8`, so replacing it is a change to one function.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from dslo.errors import SettingsError, did_you_mean
from dslo.models.contracts import ImageTowers

__all__ = ["ACCEL_CHOICES", "check_accel", "int8_unsupported_reason", "quantize_linear_int8", "accelerate",
           "full_range_activations", "count_int8_layers", "affinity_cosine", "logits_cosine"]

ACCEL_CHOICES = ("none", "int8")


def check_accel(accel: str | None, device: torch.device | str | None = None) -> str:
    """``accel`` normalised (None → ``"none"``); a name not in :data:`ACCEL_CHOICES`, or int8 on a
    device that cannot run it, is a :class:`SettingsError` saying what to do instead."""
    accel = "none" if accel is None else str(accel)
    if accel not in ACCEL_CHOICES:
        raise SettingsError(f"accel={accel!r}{did_you_mean(accel, ACCEL_CHOICES)}; use one of "
                            f"{', '.join(ACCEL_CHOICES)}")
    if accel == "int8" and device is not None:
        reason = int8_unsupported_reason(torch.device(device))
        if reason:
            raise SettingsError(f"accel='int8' is not available here: {reason}")
    return accel


def int8_unsupported_reason(device: torch.device) -> str | None:
    """Why dynamic int8 cannot run on ``device`` (None: it can)."""
    if device.type != "cpu":
        return (f"it runs on the CPU only and the models are on {device} (its kernels are CPU "
                "kernels; on a GPU use the default float16 weights, or pass --device cpu)")
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if not engines:
        return "this torch build has no quantized CPU engine (fbgemm, x86, qnnpack); use accel='none'"
    return None


def full_range_activations() -> bool:
    """Whether activations may use all 8 bits: the CPU has VNNI (int32 accumulation) and torch
    runs the x86 / fbgemm engine. Elsewhere torch's 7-bit default is kept."""
    vnni = getattr(torch.cpu, "_is_vnni_supported", None)  # private; absent: keep the safe default
    return bool(vnni is not None and vnni()) and torch.backends.quantized.engine in ("x86", "fbgemm")


class _Int8Linear(torch.ao.nn.quantized.dynamic.Linear):
    """torch.ao's dynamic int8 ``Linear``, with two changes: the input is quantized over the full
    8 bits when :attr:`full_range` (set only where :func:`full_range_activations` holds), and a
    batch ``(B, ..., C)`` with ``B > 1`` is quantized per image (per leading index), not with one
    scale for the whole batch, so each image gets exactly the result it gets alone (batched
    passes, ``Segmenter.predict_batch``, stay equal to one image at a time)."""

    full_range = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim >= 3 and x.shape[0] > 1:
            return torch.cat([self._one(x[i:i + 1]) for i in range(x.shape[0])])
        return self._one(x)

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        if not self.full_range:
            return super().forward(x)
        packed = self._packed_params._packed_params
        return torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False).to(x.dtype)


def quantize_linear_int8(module: torch.nn.Module) -> int:
    """Replace, in place, every ``nn.Linear`` below ``module`` (exactly that type: the
    ``out_proj`` of an ``nn.MultiheadAttention``, whose weight the functional attention reads,
    stays float) by a dynamic int8 one, weights per output channel. Returns how many were
    replaced. ``module`` itself, when a ``Linear``, is not replaced (quantize its parent).
    The one call of the deprecated ``torch.ao.quantization`` dynamic API in dslo."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    full = full_range_activations()
    before = count_int8_layers(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*")  # quantize_per_channel's UserWarning
        quantize_dynamic(module, {torch.nn.Linear: per_channel_dynamic_qconfig},
                         mapping={torch.nn.Linear: _Int8Linear}, inplace=True)
    for m in module.modules():
        if isinstance(m, _Int8Linear):
            m.full_range = full
    return count_int8_layers(module) - before


def count_int8_layers(module: torch.nn.Module) -> int:
    """Dynamic int8 linear layers below ``module``."""
    return sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in module.modules())


def accelerate(model: Any, accel: str) -> int:
    """Apply ``accel`` to a model's image towers, in place (idempotent: a layer already int8 is
    left as it is); returns the number of linear layers converted. A model without
    :class:`ImageTowers` (a stand-in, your own) is refused for int8 rather than silently left
    float; its towers must hold float32 weights on the CPU."""
    accel = check_accel(accel)
    if accel == "none" or model is None:
        return 0
    if not isinstance(model, ImageTowers):
        raise SettingsError(f"accel={accel!r}: {type(model).__name__} does not say which modules run per image "
                            "(no image_towers()); use accel='none' with it")
    converted = 0
    for tower in model.image_towers():
        p = next(tower.parameters(), None)
        if p is not None:
            check_accel(accel, p.device)
            if p.dtype != torch.float32:
                raise SettingsError(f"accel='int8' quantizes float32 weights; these are {p.dtype}. Use "
                                    "dtype='auto' or 'float32' with it")
        converted += quantize_linear_int8(tower)
    return converted


# ---- how far an accelerated model is from float32 (dslo check-accel, benchmarks/speed.py) --------
def affinity_cosine(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Mean over rows of the cosine between two affinities' rows, ``(..., N, N)`` each: 1 when
    every patch attends to the same patches in the same proportions."""
    a, b = reference.float().flatten(0, -2), other.float().flatten(0, -2)
    return float(torch.nn.functional.cosine_similarity(a, b.to(a.device), dim=-1).mean())


def logits_cosine(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Mean over patches of the cosine between two ``(K, h, w)`` logits' class-score vectors, each
    centred over its K classes first (the common offset of cosine scores, ~0.2, would make any two
    vectors look alike; what orders the classes is what is left). NaN for K < 2."""
    if reference.shape[0] < 2:
        return float("nan")
    a, b = (t.float().flatten(1).T for t in (reference, other.to(reference.device)))  # (h·w, K)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12).mean())

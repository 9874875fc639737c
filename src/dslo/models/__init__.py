"""Backbones: dense logits of vision-language models (CLIP, MetaCLIP, OpenCLIP, SigLIP, SigLIP 2)
and attention sources (SD2, DINOv2, DINO, CLIP, focus-s14), created by name. Knows nothing of the head, the CLI or datasets (see docs/architecture.md).

    logits = create_logits_model("clip-b16").logits(image, ["sky", ["person", "man"]])  # (K, h, w)
    A, (h, w) = create_attention_model("dinov2-reg-b14").affinity(image)  # (h*w, h*w), rows sum to 1
"""

from __future__ import annotations

from dslo.models.contracts import (
    AttentionSource,
    BatchedAffinity,
    BatchedLogits,
    DenseFeatures,
    ImageTowers,
    LogitsModel,
    TextEmbeddings,
)
from dslo.models.registry import (
    Entry,
    check_model_name,
    create_attention_model,
    create_logits_model,
    get_entry,
    list_models,
    register,
    register_attention,
    register_logits,
    weights_available,
)
from dslo.models.weights import WeightsNotFoundError, cache_dir

__all__ = [
    "AttentionSource",
    "BatchedAffinity",
    "BatchedLogits",
    "DenseFeatures",
    "Entry",
    "ImageTowers",
    "LogitsModel",
    "TextEmbeddings",
    "WeightsNotFoundError",
    "check_model_name",
    "get_entry",
    "register",
    "register_attention",
    "register_logits",
    "cache_dir",
    "create_attention_model",
    "create_logits_model",
    "list_models",
    "weights_available",
]

"""The model contracts the segmenter composes, as :class:`typing.Protocol` s.

Anything with these methods plugs in (duck typing; ``isinstance`` works, the protocols are
runtime-checkable): the registry's models, the colour stand-ins of the tests, your own.

Two required contracts (:class:`LogitsModel`, :class:`AttentionSource`) and optional abilities,
each its own protocol, so the segmenter and the engines ask ``isinstance(model, Ability)`` instead
of probing attribute names:

- :class:`BatchedLogits` / :class:`BatchedAffinity`: one pass over several same-size images.
- :class:`DenseFeatures`: the image side and the class side of the logits apart (encode once,
  score many class lists: ``logits(image, classes) == class_scores(dense_features(image), classes)``).
- :class:`TextEmbeddings`: text embeddings computed once and handed to other processes.
- :class:`ImageTowers`: the modules that run per image, which ``accel=`` acts on
  (:mod:`dslo.models.accel`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "LogitsModel",
    "AttentionSource",
    "BatchedLogits",
    "BatchedAffinity",
    "DenseFeatures",
    "TextEmbeddings",
    "ImageTowers",
]

Classes = Sequence[str | Sequence[str]]


@runtime_checkable
class LogitsModel(Protocol):
    """Coarse class evidence: patch-level class scores (CLIP cosine similarities).

    Optional: ``grid_for(image_hw) -> (h, w)``, the grid :meth:`logits` returns for an image size.
    """

    def logits(self, image: Any, classes: Classes) -> torch.Tensor:
        """``image``: path, PIL image, ``(H, W, 3)`` uint8 array or tensor; ``classes``: K names or
        synonym lists (:func:`dslo.classes.normalize_classes`). Returns ``(K, h, w)`` float32
        scores on the model's device; a class's score is the max over its synonyms."""
        ...


@runtime_checkable
class AttentionSource(Protocol):
    """Patch affinities from a vision model's self-attention."""

    def affinity(self, image: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        """``image`` as for :meth:`LogitsModel.logits`. Returns ``(A, (h, w))``: ``A`` ``(N, N)``
        float32, non-negative, rows summing to 1, ``N = h·w`` patches in row-major order."""
        ...


@runtime_checkable
class BatchedLogits(Protocol):
    """:meth:`LogitsModel.logits` over several images whose model input has one size."""

    def logits_batch(self, images: Sequence[Any], classes: Classes) -> torch.Tensor:
        """``(B, K, h, w)``, row b equal to ``logits(images[b], classes)`` up to float rounding."""
        ...


@runtime_checkable
class BatchedAffinity(Protocol):
    """:meth:`AttentionSource.affinity` over several images whose model input has one size."""

    def affinity_batch(self, images: Sequence[Any]) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(A (B, N, N), (h, w))``, ``A[b]`` equal to ``affinity(images[b])[0]``."""
        ...


@runtime_checkable
class DenseFeatures(Protocol):
    """A logits model whose image side and class side run apart (``Segmenter.encode`` keeps the
    image side; ``Segmenter.decode`` scores any class list against it without a vision pass)."""

    def dense_features(self, image: Any) -> torch.Tensor:
        """``(h, w, D)`` float32 patch features of one image (what :meth:`class_scores` reads)."""
        ...

    def dense_features_batch(self, images: Sequence[Any]) -> torch.Tensor:
        """``(B, h, w, D)``: :meth:`dense_features` of images of one input size."""
        ...

    def class_scores(self, features: torch.Tensor, classes: Classes) -> torch.Tensor:
        """``features (..., h, w, D)`` → ``(..., K, h, w)`` class scores, so that
        ``logits(image, classes) == class_scores(dense_features(image), classes)``."""
        ...


@runtime_checkable
class TextEmbeddings(Protocol):
    """Text embeddings that can be computed once (on a driver) and handed to other processes."""

    texts_encoded: int  # names this model embedded itself (not handed in): progress and reports

    def text_embeddings(self, names: Sequence[str]) -> torch.Tensor:
        """``(Q, D)`` float32 embeddings, row i for ``names[i]``."""
        ...

    def add_text_embeddings(self, embeddings: Mapping[str, torch.Tensor]) -> None:
        """Use these ``name -> (D,)`` embeddings instead of computing them (same weights only)."""
        ...


@runtime_checkable
class ImageTowers(Protocol):
    """A model that names the torch modules it runs per image (not its text tower), so
    ``accel="int8"`` (:func:`dslo.models.accel.accelerate`) can quantize them in place."""

    def image_towers(self) -> list[torch.nn.Module]:
        """The per-image modules (each not itself an ``nn.Linear``; shared ones may repeat)."""
        ...

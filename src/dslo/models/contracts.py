"""The two model contracts the segmenter composes, as :class:`typing.Protocol` s.

Anything with these methods plugs in (duck typing; ``isinstance`` works, the protocols are
runtime-checkable): the registry's models, the colour stand-ins of the tests, your own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["LogitsModel", "AttentionSource"]


@runtime_checkable
class LogitsModel(Protocol):
    """Coarse class evidence: patch-level class scores (CLIP cosine similarities).

    Optional: ``grid_for(image_hw) -> (h, w)``, the grid :meth:`logits` returns for an image size.
    """

    def logits(self, image: Any, classes: Sequence[str | Sequence[str]]) -> torch.Tensor:
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

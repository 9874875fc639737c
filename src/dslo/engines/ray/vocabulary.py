"""The vocabulary's text embeddings, computed once on the driver and handed to every worker (a
worker's text tower then stays idle)."""

from __future__ import annotations

import torch

from dslo.request import SegmentRequest

__all__ = ["query_names", "vocabulary_embeddings"]


def query_names(request: SegmentRequest) -> list[str]:
    """Every name the logits model embeds for this request: the class synonyms, with the
    stuff-word background class first when that policy is on (:meth:`Segmenter.decode`'s rule)."""
    user = request.class_lists
    groups = ([request.background.stuff_class(user)] + user) if request.background.kind == "stuff" else user
    return list(dict.fromkeys(n for g in groups for n in g))


def vocabulary_embeddings(request: SegmentRequest) -> dict[str, torch.Tensor] | None:
    """``name -> (D,)`` float32 CPU text embeddings of every name the workers' logits model will
    embed, computed here once (the same model, dtype, templates and call as a worker's first
    image, so the numbers are the same); None when the logits model takes no precomputed
    embeddings (:class:`dslo.models.TextEmbeddings`)."""
    from dslo.models import TextEmbeddings, create_logits_model

    name, options = request.models.logits_model()
    model = create_logits_model(name, device="auto", **options)
    if not isinstance(model, TextEmbeddings):
        return None
    names = query_names(request)
    return dict(zip(names, model.text_embeddings(names).cpu(), strict=True))

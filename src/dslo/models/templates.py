"""Prompt templates. CLIP: the 80 ImageNet templates of OpenAI's CLIP (its "Prompt Engineering for
ImageNet" notebook), used verbatim: every query is embedded in each template and the text
embeddings are averaged (SPEC §2). SigLIP / SigLIP 2: the templates of their own zero-shot
evaluation (big_vision ``evaluators/proj/image_text/prompt_engineering.py``, ``clip_paper``): the
same 80 plus ``"{}"``, canonicalised as big_vision does (:func:`canonical_text`)."""

from __future__ import annotations

import re
import string

__all__ = ["IMAGENET_TEMPLATES", "SIGLIP_TEMPLATES", "canonical_text"]

IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80


def canonical_text(text: str, keep: str | None = None) -> str:
    """big_vision's ``_canonicalize`` (google-research/big_vision@0127fb6
    ``evaluators/proj/image_text/prompt_engineering.py``): underscores become spaces, punctuation
    is removed (except the exact string ``keep``, e.g. ``"{}"``), lower case, runs of whitespace
    collapsed. SigLIP was trained and evaluated on text written this way."""
    text = text.replace("_", " ")
    drop = str.maketrans("", "", string.punctuation)
    text = keep.join(part.translate(drop) for part in text.split(keep)) if keep else text.translate(drop)
    return re.sub(r"\s+", " ", text.lower()).strip()


SIGLIP_TEMPLATES: tuple[str, ...] = tuple(canonical_text(t, keep="{}") for t in (*IMAGENET_TEMPLATES, "{}"))

assert len(SIGLIP_TEMPLATES) == 81 and len(set(SIGLIP_TEMPLATES)) == 81

"""The class side shared by every vision-language logits model (CLIP, OpenCLIP, SigLIP, SigLIP 2):
prompt ensembles, the per-name text cache (in memory and on disk), embeddings handed between
processes, and the class scores read from dense patch features.

A model class supplies the image side (``dense_features`` / ``dense_features_batch``), how prompts
are written and embedded (:meth:`VisionLanguageLogits.prompt`, ``_encode_texts``), what its
text embeddings are keyed on (``text_key``) and the constant its scores are shifted by
(``score_offset``: 0 for cosine-scored CLIP, ``b / t`` for SigLIP's sigmoid bias, see
docs/methods.md). Everything else (the :class:`dslo.models.LogitsModel`, :class:`BatchedLogits`,
:class:`DenseFeatures` and :class:`TextEmbeddings` contracts) is written once here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from dslo.classes import normalize_classes  # the one meaning of a class list
from dslo.models.common import aspect_size

__all__ = ["VisionLanguageLogits"]


class VisionLanguageLogits:
    """Base of the logits models: ``logits(image, classes) -> (K, h, w)``.

    Subclasses set ``settings`` (with ``templates`` and ``text_batch_size``), ``device``, ``dtype``,
    ``identity`` (see :func:`dslo.models.text_cache.identity_of_source`; None: hashed from the
    parameters), ``embed_dim`` and call :meth:`_init_text_side`."""

    settings: Any
    model: Any
    device: torch.device
    dtype: torch.dtype
    identity: str | None
    embed_dim: int
    patch_size: int
    score_offset: float = 0.0  # added to every cosine score (a constant: the head's softmaxes ignore it)

    def _init_text_side(self) -> None:
        self._text_cache: dict[str, torch.Tensor] = {}
        self.texts_encoded = 0  # names this model's text tower has embedded (cache misses)

    # ---- the image grid (subclasses set ``patch_size`` and ``settings.short_side``) ------------
    def input_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Model input ``(H', W')`` for an image of size ``image_hw``."""
        return aspect_size(image_hw, self.settings.short_side, self.patch_size)

    def grid_for(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Patch grid ``(h, w)`` of the logits for an image of size ``image_hw``."""
        H, W = self.input_size(image_hw)
        return H // self.patch_size, W // self.patch_size

    def image_towers(self) -> list[torch.nn.Module]:
        """The vision tower (SigLIP: with its pooling head, whose ``nn.MultiheadAttention`` keeps
        its float projections): what ``accel`` quantizes (:mod:`dslo.models.accel`). The text
        tower runs once per vocabulary and stays float, and so does CLIP's one-layer visual
        projection (0.5 % of a B/16's FLOPs). Subclasses set ``model``."""
        return [self.model.vision_model]

    # ---- what a subclass provides -----------------------------------------------------------
    def dense_features_batch(self, images: Sequence[Any]) -> torch.Tensor:
        raise NotImplementedError

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        """``(T, D)`` float32 L2-normalised text embeddings, row i for ``texts[i]``."""
        raise NotImplementedError

    def text_key(self) -> str:
        """The identity of this model's text embeddings (weights, dtype, tokenisation), templates
        apart (:mod:`dslo.models.text_cache`)."""
        raise NotImplementedError

    def prompt(self, template: str, name: str) -> str:
        """The text a class name becomes in one template."""
        return template.format(name)

    # ---- text side --------------------------------------------------------------------------
    def _embed_names(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Per name, the normalised mean of its normalised template embeddings (computed)."""
        t = self.settings.templates
        emb = self._encode_texts([self.prompt(tpl, n) for n in names for tpl in t]).view(len(names), len(t), -1)
        return dict(zip(names, torch.nn.functional.normalize(emb.mean(1), dim=-1), strict=True))

    def _disk_cache(self):
        from dslo.models.text_cache import TextEmbeddingCache, cache_enabled

        return TextEmbeddingCache(self.text_key(), self.settings.templates) if cache_enabled() else None

    def text_embeddings(self, names: Sequence[str]) -> torch.Tensor:
        """``(Q, D)`` float32: per name, the normalised mean of its normalised template
        embeddings. Kept per name for the life of the model and in the on-disk cache."""
        todo = [n for n in dict.fromkeys(names) if n not in self._text_cache]
        if todo:
            disk = self._disk_cache()
            found = disk.get_many(todo, self.embed_dim) if disk is not None else {}
            self._text_cache.update({n: v.to(self.device) for n, v in found.items()})
            missing = [n for n in todo if n not in found]
            if missing:
                self.texts_encoded += len(missing)
                new = self._embed_names(missing)
                self._text_cache.update(new)
                if disk is not None:
                    disk.put_many(new)
        return torch.stack([self._text_cache[n] for n in names])

    def add_text_embeddings(self, embeddings: Mapping[str, torch.Tensor]) -> None:
        """Seed the per-name cache with embeddings computed elsewhere: ``name -> (D,)`` float32,
        rows of :meth:`text_embeddings` of the same model and templates. Lets a driver embed a
        vocabulary once and share it with many workers, whose text towers then stay idle."""
        for name, emb in embeddings.items():
            emb = torch.as_tensor(emb)
            if emb.shape != (self.embed_dim,):
                raise ValueError(f"text embedding of {name!r} has shape {tuple(emb.shape)}; "
                                 f"this model's are ({self.embed_dim},)")
            self._text_cache[name] = emb.to(self.device, torch.float32)

    def _exchange_key(self) -> str:
        from dslo.models.text_cache import templates_key

        return f"{self.text_key()}|templates={templates_key(self.settings.templates)}"

    def export_text_embeddings(self, names: Sequence[str]):
        """A :class:`dslo.models.text_cache.TextEmbeddings` of ``names`` (computed or cached), to
        hand to another process holding the same model (``.to_bytes()`` travels as safetensors)."""
        from dslo.models.text_cache import TextEmbeddings

        names = list(dict.fromkeys(names))
        return TextEmbeddings(self._exchange_key(), tuple(names), self.text_embeddings(names).to("cpu"))

    def import_text_embeddings(self, embeddings) -> None:
        """Take embeddings computed elsewhere (:meth:`export_text_embeddings`); refused unless
        they come from the same weights, dtype and templates."""
        mine = self._exchange_key()
        if embeddings.key != mine:
            raise ValueError(f"text embeddings for {embeddings.key!r} cannot be used by a model whose "
                             f"embeddings are {mine!r}; compute them with the same weights, dtype and templates")
        self._text_cache.update({n: v.to(self.device, torch.float32) for n, v in embeddings.as_dict().items()})

    # ---- the contract -----------------------------------------------------------------------
    def dense_features(self, image: Any) -> torch.Tensor:
        """``(h, w, D)`` float32 L2-normalised patch embeddings of an image."""
        return self.dense_features_batch([image])[0]

    def logits(self, image: Any, classes: Sequence[str | Sequence[str]]) -> torch.Tensor:
        """``(K, h, w)`` float32 class scores; a class's score is the max over its synonyms.

        ``image``: path, PIL, ``(H, W, 3)`` uint8 array or tensor. ``classes``: K names or lists of
        synonyms, read by :func:`dslo.classes.normalize_classes` (in a name, commas separate
        synonyms)."""
        return self.logits_batch([image], classes)[0]

    def logits_batch(self, images: Sequence[Any], classes: Sequence[str | Sequence[str]]) -> torch.Tensor:
        """``(B, K, h, w)``: :meth:`logits` of images of one input size, one vision forward."""
        self._check_classes(classes)
        return self.class_scores(self.dense_features_batch(images), classes)

    def class_scores(self, features: torch.Tensor, classes: Sequence[str | Sequence[str]]) -> torch.Tensor:
        """``features (..., h, w, D)`` from :meth:`dense_features` → ``(..., K, h, w)``: cosine
        similarities plus :attr:`score_offset`, a class's score the max over its synonyms. The
        text side alone: no vision layer runs, so one encoding is scored against any number of
        class lists."""
        self._check_classes(classes)
        groups = normalize_classes(classes)
        names = list(dict.fromkeys(n for g in groups for n in g))
        index = {n: i for i, n in enumerate(names)}
        text = self.text_embeddings(names)  # (Q, D)
        per_query = torch.einsum("qd,...hwd->...qhw", text, features.to(text.device, text.dtype))
        if self.score_offset:
            per_query = per_query + self.score_offset
        return torch.stack([per_query[..., [index[n] for n in g], :, :].amax(-3) for g in groups], dim=-3)

    @staticmethod
    def _check_classes(classes: object) -> None:
        if isinstance(classes, (str, bytes)):  # the model takes a list; "a, b" strings are the CLI's form
            raise ValueError(f"classes must be a list of class names or synonym lists, got the string "
                             f"{classes!r}; dslo.classes.normalize_classes reads comma-separated strings")

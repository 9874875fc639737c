"""SigLIP and SigLIP 2 dense logits (transformers ``SiglipModel`` / ``Siglip2Model``).

SigLIP has no class token: its image embedding is pooled by a multi-head attention-pooling head
(a learned probe query attending over the patch tokens, then the head's layer norm and MLP on a
residual). The dense path treats that head as MaskCLIP treats CLIP's attention pool: every token
goes through the head's value and output projections on its own (an attention with one key,
whose weight is 1), then the head's ``x + MLP(LN(x))``; so a patch's feature is what the head
would pool from an image made of that patch alone, in the space of the image embedding. Before
it, the tower runs as for CLIP (SPEC §2): unchanged up to its last block, which is recomputed
with k-k attention and its residual and MLP dropped by default (``attention``, ``keep_residual``,
``keep_mlp``), then the final layer norm. Patch features are L2-normalised.

Class scores (docs/methods.md): SigLIP is trained with a sigmoid loss on ``t·cos + b``, so a
class's probability is ``sigmoid(t·cos + b)``. The logits are returned at cosine scale, as
CLIP's, plus the constant ``b / t``: ``L = cos + b/t``, so ``sigmoid(t·L)`` is SigLIP's own
probability, while the head (whose NMS reads ``softmax(40·L)`` over classes and whose seeds read
``softmax(r·L)`` over patches) sees cosine differences exactly as with CLIP (a constant shift
changes neither softmax).

Text: SigLIP's own templates and writing (:data:`dslo.models.templates.SIGLIP_TEMPLATES`, every
prompt canonicalised: lower case, no punctuation), its tokenizer from the checkpoint (SigLIP:
SentencePiece, SigLIP 2: Gemma), ids padded to the text tower's length with the pad token and no
attention mask (as big_vision trains it), the last token pooled by the tower.

SigLIP 2 comes in two layouts: fixed-resolution checkpoints are ``SiglipModel`` s (model_type
``siglip``) with a Gemma tokenizer; NaFlex checkpoints are ``Siglip2Model`` s, which take flattened
patches and resize their position table (bilinear, antialiased) to each image's grid. Both run
here at any aspect ratio; the fixed-resolution ones resize their position table bicubically
(transformers' ``interpolate_pos_encoding``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F

from dslo.errors import SettingsError
from dslo.imageio import to_rgb_array
from dslo.models.clip import check_tokenizer
from dslo.models.clip_methods import last_block
from dslo.models.common import check_settings, pixel_tensor
from dslo.models.templates import SIGLIP_TEMPLATES, canonical_text
from dslo.models.vision_language import VisionLanguageLogits
from dslo.models.weights import check_model_folder, locate, read_json, resolve_dtype, weights_error

__all__ = ["SiglipSettings", "SiglipLogitsModel", "load_siglip", "SIGLIP_SETTINGS", "SIGLIP_MEAN",
           "SIGLIP_STD", "SIGLIP_TOKENIZER_FILES", "patchify"]

SIGLIP_MEAN = (0.5, 0.5, 0.5)  # SigLIP's pixels are scaled to [-1, 1]
SIGLIP_STD = (0.5, 0.5, 0.5)
# SigLIP: SentencePiece (spiece.model); SigLIP 2: Gemma (tokenizer.json and/or tokenizer.model)
SIGLIP_TOKENIZER_FILES = (("tokenizer.json",), ("spiece.model",), ("tokenizer.model",))
_LAST_BLOCK = ("kk", "qq", "qk")


@dataclass(frozen=True)
class SiglipSettings:
    """Settings of a SigLIP / SigLIP 2 logits model (the last block as SPEC §2's CLIP default)."""

    attention: str = "kk"  # last block: kk (default) | qq | qk (vanilla)
    keep_residual: bool = False  # keep the last block's residual connection
    keep_mlp: bool = False  # keep the last block's MLP
    short_side: int = 336  # input short side in pixels (aspect ratio kept), as CLIP's
    templates: tuple[str, ...] = field(default=SIGLIP_TEMPLATES)
    text_batch_size: int = 256
    dtype: str = "auto"  # auto: float16 on an accelerator, float32 on the CPU

    def __post_init__(self) -> None:
        if self.attention not in _LAST_BLOCK:
            raise SettingsError(f"attention={self.attention!r}; use one of {_LAST_BLOCK}")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise SettingsError("templates must be a non-empty list of strings each containing '{}'")
        object.__setattr__(self, "templates", tuple(self.templates))


SIGLIP_SETTINGS = tuple(f.name for f in fields(SiglipSettings))


def patchify(pixel_values: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, 3, H, W)`` → ``(B, (H/p)·(W/p), p·p·3)``: patches in row-major order, each flattened
    (row, column, channel), as SigLIP 2's image processor (``convert_image_to_patches``) does."""
    B, C, H, W = pixel_values.shape
    x = pixel_values.reshape(B, C, H // patch, patch, W // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // patch) * (W // patch), patch * patch * C)


def _run(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An encoder layer without a mask (transformers 4.x layers return a tuple)."""
    out = layer(x, None)
    return out[0] if isinstance(out, tuple) else out


def head_per_token(head: Any, y: torch.Tensor) -> torch.Tensor:
    """The attention-pooling head applied to every token on its own: ``o = W_o (W_v y + b_v) + b_o``
    (the head's attention with a single key), then ``o + MLP(LN(o))``. ``y (..., N, C)`` →
    ``(..., N, C)``; equal to ``head`` run on each one-token sequence."""
    mha = head.attention
    C = y.shape[-1]
    if mha.in_proj_weight is not None:
        w_v, b_v = mha.in_proj_weight[2 * C:], mha.in_proj_bias[2 * C:]
    else:  # separate projections (kdim / vdim differ from the width)
        w_v, b_v = mha.v_proj_weight, mha.in_proj_bias[2 * C:]
    o = mha.out_proj(F.linear(y, w_v, b_v))
    return o + head.mlp(head.layernorm(o))


class SiglipLogitsModel(VisionLanguageLogits):
    """``logits(image, classes) -> (K, h, w)``: ``cos + b/t`` from a SigLIP or SigLIP 2 model."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, settings: SiglipSettings,
                 mean: Sequence[float] = SIGLIP_MEAN, std: Sequence[float] = SIGLIP_STD,
                 identity: str | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name, self.settings = name, settings
        self.mean, self.std = tuple(mean), tuple(std)
        self.family = str(model.config.model_type)  # siglip | siglip2 (NaFlex)
        vc = model.config.vision_config
        self.patch_size = int(vc.patch_size)
        self.embed_dim = int(vc.hidden_size)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.logit_scale = float(model.logit_scale.detach().float().exp())  # t
        self.logit_bias = float(model.logit_bias.detach().float())  # b
        self.score_offset = self.logit_bias / self.logit_scale
        self._max_len = int(model.config.text_config.max_position_embeddings)
        self.identity = identity
        self._init_text_side()

    def __repr__(self) -> str:
        s = self.settings
        return (f"SiglipLogitsModel({self.name!r}, {self.family}, attention={s.attention!r}, "
                f"keep_residual={s.keep_residual}, keep_mlp={s.keep_mlp}, short_side={s.short_side}, "
                f"device={self.device}, dtype={self.dtype})")

    # ---- image side -------------------------------------------------------------------------
    def _trunk(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Tokens entering the last block ``(B, h·w, C)`` and the grid, for a normalised
        ``(B, 3, H, W)`` input (positions resized to the grid as the checkpoint's library does)."""
        vm = self.model.vision_model
        x = pixel_values.to(device=self.device, dtype=self.dtype)
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        with torch.inference_mode():
            if self.family == "siglip2":
                shapes = torch.tensor([grid] * x.shape[0], device=self.device)
                h = vm.embeddings(patchify(x, self.patch_size), shapes)
            else:
                h = vm.embeddings(x, interpolate_pos_encoding=True)
            for layer in vm.encoder.layers[:-1]:
                h = _run(layer, h)
        return h, grid

    def _pixels(self, images: Sequence[Any]) -> torch.Tensor:
        arrs = [to_rgb_array(im) for im in images]
        sizes = {self.input_size(a.shape[:2]) for a in arrs}
        if len(sizes) != 1:
            raise ValueError(f"a batch needs images of one input size; got {sorted(sizes)}")
        size = sizes.pop()
        return torch.cat([pixel_tensor(a, size, self.mean, self.std, device=self.device, dtype=self.dtype)
                          for a in arrs])

    def patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, h, w, D)`` float32 L2-normalised patch features of a normalised ``(B, 3, H, W)``
        input (the dense path of the module docstring)."""
        x, grid = self._trunk(pixel_values)
        s = self.settings
        layer = self.model.vision_model.encoder.layers[-1]
        with torch.inference_mode():
            if (s.attention, s.keep_residual, s.keep_mlp) == ("qk", True, True):
                out = _run(layer, x)  # the block unchanged
            else:
                out = torch.cat([last_block(layer, x[j:j + 1], grid, attention=s.attention,
                                            keep_residual=s.keep_residual, keep_mlp=s.keep_mlp)[0]
                                 for j in range(x.shape[0])])
            y = self.model.vision_model.post_layernorm(out)
            f = F.normalize(head_per_token(self.model.vision_model.head, y).float(), dim=-1)
        return f.reshape(x.shape[0], grid[0], grid[1], -1)

    def dense_features_batch(self, images: Sequence[Any]) -> torch.Tensor:
        """``(B, h, w, D)``: :meth:`dense_features` of images of one input size (resized to
        :meth:`input_size` and normalised first), one forward for the batch."""
        return self.patch_features(self._pixels(images))

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` float32 image embeddings, not normalised, of a normalised ``(B, 3, H, W)``
        input: the tower unchanged, the final layer norm, the attention-pooling head (as
        ``get_image_features``)."""
        x, _ = self._trunk(pixel_values)
        vm = self.model.vision_model
        with torch.inference_mode():
            y = vm.post_layernorm(_run(vm.encoder.layers[-1], x))
            return vm.head(y).float()

    # ---- text side --------------------------------------------------------------------------
    def prompt(self, template: str, name: str) -> str:
        """SigLIP's writing of a prompt: :func:`dslo.models.templates.canonical_text`."""
        return canonical_text(template.format(name))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``(T, D)`` float32 text embeddings, not normalised, row i for ``texts[i]`` as given
        (ids padded to the tower's length, no attention mask, the last token pooled)."""
        return self._project_texts(list(texts))

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(self._project_texts(texts), dim=-1)

    def _project_texts(self, texts: list[str]) -> torch.Tensor:
        unique = list(dict.fromkeys(texts))
        ids = torch.as_tensor(self.tokenizer(unique, padding="max_length", max_length=self._max_len,
                                             truncation=True)["input_ids"], dtype=torch.long)
        out = torch.empty(len(unique), self.embed_dim, dtype=torch.float32, device=self.device)
        bs = max(1, int(self.settings.text_batch_size))
        with torch.inference_mode():
            for s in range(0, len(unique), bs):
                out[s:s + bs] = self.model.text_model(input_ids=ids[s:s + bs].to(self.device)).pooler_output.float()
        row = {t: i for i, t in enumerate(unique)}
        return out[[row[t] for t in texts]]

    def text_key(self) -> str:
        """Family, weights (see :func:`dslo.models.text_cache.identity_of_source`; the text
        tower's parameters for a model built in memory), dtype and text length."""
        if self.identity is None:
            from dslo.models.text_cache import parameters_identity

            self.identity = parameters_identity([self.model.text_model])
        return f"{self.family}:{self.identity}|dtype={str(self.dtype).replace('torch.', '')}|max_len={self._max_len}"


def _load_tokenizer(name: str, src: str, local_only: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(src, local_files_only=local_only)
    except ImportError as exc:  # SigLIP's SentencePiece tokenizer
        raise ImportError(f"the tokenizer of {name!r} needs a package that is not installed ({exc}). "
                          "Fix: pip install 'dslo[siglip]' (sentencepiece)") from exc


def load_siglip(name: str, source: str, *, device: torch.device, **overrides: Any) -> SiglipLogitsModel:
    """Load a transformers SigLIP / SigLIP 2 checkpoint (Hub id or folder) as a logits model."""
    check_settings(f"logits model '{name}'", overrides, SIGLIP_SETTINGS)
    settings = SiglipSettings(**overrides)
    dtype = resolve_dtype(settings.dtype, device, accelerator_default=torch.float16)
    src, local_only = locate(name, source, offline_alternative=False)
    check_model_folder(name, src, tokenizer_files=SIGLIP_TOKENIZER_FILES)
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(src, local_files_only=local_only, dtype=dtype)
        tokenizer = _load_tokenizer(name, src, local_only)
    except OSError as exc:
        raise weights_error(name, source, f"loading failed ({str(exc).splitlines()[0]})",
                            offline_alternative=False) from exc
    if model.config.model_type not in ("siglip", "siglip2"):
        raise SettingsError(f"{name!r} is a {model.config.model_type!r} model, not SigLIP / SigLIP 2")
    check_tokenizer(name, src, tokenizer)
    pre = read_json(src, "preprocessor_config.json", local_only) or {}
    from dslo.models.text_cache import identity_of_source

    return SiglipLogitsModel(model.to(device), tokenizer, name=name, settings=settings,
                             mean=pre.get("image_mean", SIGLIP_MEAN), std=pre.get("image_std", SIGLIP_STD),
                             identity=identity_of_source(src))

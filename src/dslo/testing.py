"""Tiny random models saved to a directory, for tests and timing.

Every builder writes a directory that the real loaders read (``from_pretrained``), so tests
exercise the same code path as a downloaded checkpoint, offline and in well under a second each.
The weights are random (seeded): outputs are meaningless, shapes and code paths are real.

    >>> from dslo.testing import make_tiny_clip
    >>> from dslo.models import create_logits_model
    >>> model = create_logits_model(make_tiny_clip(tmp_path / "clip"), device="cpu", short_side=64)
    >>> tuple(model.logits(np.zeros((32, 32, 3), np.uint8), ["cat", ["dog", "puppy"]]).shape)
    (2, 4, 4)

Signatures are stable: ``make_tiny_*(path, **small_overrides) -> Path`` (the directory written).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = [
    "make_tiny_clip",
    "make_tiny_clip_tokenizer",
    "make_tiny_dinov2",
    "make_tiny_dino",
    "make_tiny_sd2",
]

# A few BPE merges so the tiny tokenizer exercises real merging, not only single bytes.
_TINY_MERGES = ("t h", "th e</w>", "o f</w>", "p h", "ph o", "pho t", "phot o</w>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte → printable unicode character table (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=False))


def make_tiny_clip_tokenizer(path: str | os.PathLike) -> Path:
    """Write a working CLIP byte-level BPE tokenizer (``vocab.json``, ``merges.txt`` and the
    files ``save_pretrained`` adds) to ``path``; no network. Vocabulary: the 256 byte symbols, the
    same with the end-of-word suffix, a handful of merges, then ``<|startoftext|>`` and
    ``<|endoftext|>`` last, as in OpenAI's CLIP. Returns ``path``."""
    from transformers import CLIPTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    tokens += ["".join(m.split(" ")) for m in _TINY_MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_TINY_MERGES) + "\n", encoding="utf-8")
    # from the two files (every transformers version reads them), then save_pretrained adds the rest
    tok = CLIPTokenizer.from_pretrained(path, model_max_length=77)
    tok.save_pretrained(path)
    return path


def make_tiny_clip(
    path: str | os.PathLike,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    patch_size: int = 16,
    image_size: int = 64,
    projection_dim: int = 16,
    seed: int = 0,
) -> Path:
    """Save a tiny random ``CLIPModel`` (transformers format) plus its tokenizer and
    ``preprocessor_config.json`` to ``path``; loadable by ``dslo.create_logits_model(path)``.

    Vision tower: ``image_size / patch_size`` squared positions (interpolated to any grid at run
    time); text tower: 77 positions, the tiny byte-level vocabulary. Returns ``path``."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    path = Path(path)
    make_tiny_clip_tokenizer(path)
    vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    common = dict(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
    )
    config = CLIPConfig(
        text_config=dict(
            common,
            vocab_size=len(vocab),
            max_position_embeddings=77,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
        ),
        vision_config=dict(common, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "crop_size": {"height": image_size, "width": image_size},
        "size": {"shortest_edge": image_size},
    }
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2), encoding="utf-8")
    return path


def _save_preprocessor(path: Path, mean: tuple, std: tuple, size: int) -> None:
    cfg = {"image_mean": list(mean), "image_std": list(std), "size": {"shortest_edge": size}}
    (path / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")


def make_tiny_dinov2(
    path: str | os.PathLike,
    *,
    registers: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    patch_size: int = 14,
    image_size: int = 56,
    seed: int = 0,
) -> Path:
    """Save a tiny random DINOv2 (``registers > 0``: DINOv2 with registers) to ``path``; loadable
    by ``dslo.create_attention_model(path)``. Returns ``path``."""
    import torch
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    path = Path(path)
    common = dict(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                  patch_size=patch_size, image_size=image_size)
    torch.manual_seed(seed)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **common))
    else:
        model = Dinov2Model(Dinov2Config(**common))
    model.eval().save_pretrained(path, safe_serialization=True)
    _save_preprocessor(path, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), image_size)
    return path


def make_tiny_dino(
    path: str | os.PathLike,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    patch_size: int = 8,
    image_size: int = 32,
    seed: int = 0,
) -> Path:
    """Save a tiny random DINO-style ``ViTModel`` (no pooler, as facebook/dino-*) to ``path``."""
    import torch
    from transformers import ViTConfig, ViTModel

    path = Path(path)
    torch.manual_seed(seed)
    config = ViTConfig(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                       intermediate_size=2 * hidden_size, patch_size=patch_size, image_size=image_size)
    ViTModel(config, add_pooling_layer=False).eval().save_pretrained(path, safe_serialization=True)
    _save_preprocessor(path, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), image_size)
    return path


def make_tiny_sd2(path: str | os.PathLike, *, seed: int = 0) -> Path:
    """Save a tiny random Stable-Diffusion-2-shaped diffusers checkpoint to ``path``: ``unet/``
    (4 blocks, linear projections, ``up_blocks.3.attentions.0/1`` present), ``vae/`` (×8
    downsampling), ``text_encoder/`` + ``tokenizer/`` (tiny CLIP text tower) and
    ``model_index.json``. Loadable by ``create_attention_model("sd2", model_id=path)``."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    tok_dir = make_tiny_clip_tokenizer(path / "tokenizer")
    vocab = json.loads((tok_dir / "vocab.json").read_text(encoding="utf-8"))
    torch.manual_seed(seed)
    text_dim = 32
    CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=text_dim, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
    )).eval().save_pretrained(path / "text_encoder", safe_serialization=True)
    UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16, 16, 16), norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=(2, 4, 4, 4), cross_attention_dim=text_dim, use_linear_projection=True,
    ).eval().save_pretrained(path / "unet", safe_serialization=True)
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64,
    ).eval().save_pretrained(path / "vae", safe_serialization=True)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.30.0",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return path

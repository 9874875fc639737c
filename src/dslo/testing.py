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
from typing import Any

__all__ = [
    "make_tiny_clip",
    "make_tiny_clip_tokenizer",
    "make_tiny_openclip",
    "make_tiny_siglip",
    "make_tiny_siglip_tokenizer",
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


def make_tiny_openclip(
    path: str | os.PathLike,
    *,
    quick_gelu: bool = False,
    width: int = 32,
    layers: int = 2,
    heads: int = 4,
    patch_size: int = 16,
    image_size: int = 64,
    embed_dim: int = 16,
    seed: int = 0,
) -> Path:
    """Save a tiny random OpenCLIP model the way open_clip's ``save_for_hf`` lays out a Hub repo
    (``open_clip_config.json`` + ``open_clip_model.safetensors`` with open_clip's tensor names)
    plus the tiny CLIP tokenizer; loadable by ``dslo.create_logits_model(path)``.

    The tensors are those of a random transformers ``CLIPModel`` renamed back through
    :func:`dslo.models.openclip.openclip_names` (open_clip itself is not needed; the loader's
    parity with open_clip is tested on fixtures open_clip wrote). Returns ``path``."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPModel

    from dslo.models.openclip import _clip_config, openclip_names

    path = Path(path)
    make_tiny_clip_tokenizer(path)
    vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
    model_cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": layers, "width": width, "patch_size": patch_size,
                       "head_width": width // heads},
        "text_cfg": {"context_length": 77, "vocab_size": len(vocab), "width": width, "heads": heads, "layers": layers},
        "quick_gelu": quick_gelu,
    }
    config = _clip_config(model_cfg, vocab["<|endoftext|>"], vocab["<|startoftext|>"], vocab["<|endoftext|>"])
    torch.manual_seed(seed)
    clip = CLIPModel(config).state_dict()
    state = {}
    for key, (target, how) in openclip_names(config).items():
        if how == "split":
            state[key] = torch.cat([clip[target.replace("{q,k,v}", p)] for p in "qkv"]).contiguous()
        elif how == "transpose":
            state[key] = clip[target].T.contiguous()
        else:
            state[key] = clip[target].contiguous()
    save_file(state, str(path / "open_clip_model.safetensors"))
    config_file = {"model_cfg": model_cfg,
                   "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                      "std": [0.26862954, 0.26130258, 0.27577711]}}
    (path / "open_clip_config.json").write_text(json.dumps(config_file, indent=2), encoding="utf-8")
    return path


# Words for the tiny SigLIP tokenizers' training text (the CLIP templates around them).
_TINY_WORDS = ("cat", "dog", "road", "sky", "tree", "person", "car", "building", "grass", "water", "red",
               "green", "blue", "mug", "light", "traffic", "ceramic", "shadow")


def make_tiny_siglip_tokenizer(path: str | os.PathLike, *, vocab_size: int = 300, gemma: bool = False) -> Path:
    """Write a working offline SigLIP tokenizer to ``path`` and return ``path``.

    ``gemma=False``: SigLIP's SentencePiece tokenizer (``spiece.model`` trained here on the CLIP
    templates around a few words; ``</s>`` ends and pads, as in SigLIP). ``gemma=True``: a
    Gemma-style tokenizer as SigLIP 2 ships (``tokenizer.json``: byte-fallback BPE over ``▁``-joined
    words, ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``<mask>`` 4, the 256 byte tokens,
    then merges learned here). ``vocab_size``: the size asked of the trainer (an upper bound)."""
    from dslo.models.templates import IMAGENET_TEMPLATES

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    corpus = [t.format(w) for t in IMAGENET_TEMPLATES for w in _TINY_WORDS]
    if not gemma:
        import io

        import sentencepiece as spm
        from transformers import SiglipTokenizer

        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=buf, vocab_size=vocab_size,
                                       model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                       hard_vocab_limit=False, minloglevel=2)
        (path / "spiece.model").write_bytes(buf.getvalue())
        SiglipTokenizer(str(path / "spiece.model"), model_max_length=64).save_pretrained(path)
        return path
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    trainer_tok.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=max(vocab_size - len(specials) - 256, 64), show_progress=False)
    trainer_tok.train_from_iterator(corpus, trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials + byte_tokens)}
    for t in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(t, len(vocab))
    merges: Any = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=64).save_pretrained(path)
    return path


def make_tiny_siglip(
    path: str | os.PathLike,
    *,
    variant: str = "siglip",
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    patch_size: int = 16,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Save a tiny random SigLIP-family model (transformers format) with its tokenizer and
    ``preprocessor_config.json`` to ``path``; loadable by ``dslo.create_logits_model(path)``.

    ``variant``: ``siglip`` (``SiglipModel`` + SentencePiece), ``siglip2`` (SigLIP 2 fixed
    resolution: ``SiglipModel`` + Gemma tokenizer) or ``siglip2-naflex`` (``Siglip2Model`` +
    Gemma tokenizer). Text tower: 64 positions. Returns ``path``."""
    import torch
    from transformers import AutoTokenizer, Siglip2Config, Siglip2Model, SiglipConfig, SiglipModel

    if variant not in ("siglip", "siglip2", "siglip2-naflex"):
        raise ValueError(f"variant={variant!r}; use siglip, siglip2 or siglip2-naflex")
    path = Path(path)
    tok = AutoTokenizer.from_pretrained(make_tiny_siglip_tokenizer(path, gemma=variant != "siglip"))
    common = dict(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
                  num_attention_heads=num_heads)
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.pad_token_id  # SigLIP's has none
    text = dict(common, vocab_size=len(tok), max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, bos_token_id=bos)
    torch.manual_seed(seed)
    model: Any
    if variant == "siglip2-naflex":
        vision = dict(common, patch_size=patch_size, num_patches=(image_size // patch_size) ** 2)
        model = Siglip2Model(Siglip2Config(text_config=text, vision_config=vision))
    else:
        vision = dict(common, patch_size=patch_size, image_size=image_size)
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    with torch.no_grad():  # SigLIP's trained temperature and bias, not the random init's
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-10.0)
    model.eval().save_pretrained(path, safe_serialization=True)
    _save_preprocessor(path, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), image_size)
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
    common: dict[str, Any] = dict(hidden_size=hidden_size, num_hidden_layers=num_layers,
                                  num_attention_heads=num_heads, patch_size=patch_size, image_size=image_size)
    torch.manual_seed(seed)
    model: Any
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
    unet: Any = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16, 16, 16), norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=(2, 4, 4, 4), cross_attention_dim=text_dim, use_linear_projection=True,
    )
    unet.eval().save_pretrained(path / "unet", safe_serialization=True)
    vae: Any = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64,
    )
    vae.eval().save_pretrained(path / "vae", safe_serialization=True)
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

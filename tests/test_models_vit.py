"""DINOv2 (with and without registers) and DINO attention sources on tiny random models saved and
loaded through the real loader (transformers, SDPA attention; the chosen blocks' attention computed
explicitly), checked against transformers' own eager attention maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dslo.models import create_attention_model
from dslo.testing import make_tiny_dino, make_tiny_dinov2

KINDS = {
    "dinov2": (lambda p: make_tiny_dinov2(p), 1),
    "dinov2-reg": (lambda p: make_tiny_dinov2(p, registers=4), 5),
    "dino": (lambda p: make_tiny_dino(p), 1),
}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit")
    return {k: make(root / k) for k, (make, _) in KINDS.items()}


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(1).integers(0, 256, size=(70, 120, 3), dtype=np.uint8)


def eager_attentions(model, x):
    """transformers' own attention maps of every block (eager attention, output_attentions)."""
    kw = {"interpolate_pos_encoding": True} if model.config.model_type == "vit" else {}
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(pixel_values=x, output_attentions=True, **kw).attentions
    finally:
        model.set_attn_implementation(before)


def reference_affinity(src, image, layers=(-1,), layer_weights=None, head_weights=None):
    """transformers' own attentions (eager, output_attentions) combined by hand."""
    att = eager_attentions(src.model, src.pixel_values(image))
    lw = layer_weights or [1.0] * len(layers)
    total = 0
    for w, i in zip(lw, layers, strict=False):
        a = att[i][0]
        if head_weights is None:
            a = a.mean(0)
        else:
            a = torch.einsum("h,hij->ij", torch.tensor(head_weights) / sum(head_weights), a)
        total = total + w / sum(lw) * a
    p = src.num_prefix
    A = total[p:, p:]
    return A / A.sum(1, keepdim=True)


@pytest.mark.parametrize("kind", list(KINDS))
def test_rows_sum_to_one_grid_and_no_prefix_tokens(dirs, image, kind):
    src = create_attention_model(dirs[kind], device="cpu", short_side=56)
    assert src.model.config._attn_implementation == "sdpa"
    assert src.num_prefix == KINDS[kind][1]
    A, (h, w) = src.affinity(image)
    p = src.patch_size
    assert (h, w) == src.grid_for(image.shape[:2]) == (56 // p, round(120 * 56 / 70 / p))
    assert h != w and A.shape == (h * w, h * w) and A.dtype == torch.float32
    torch.testing.assert_close(A.sum(1), torch.ones(h * w), atol=1e-5, rtol=0)
    assert (A >= 0).all()
    torch.testing.assert_close(A, reference_affinity(src, image), atol=1e-6, rtol=1e-5)


def test_hand_computed_last_layer_attention(dirs, image):
    """softmax(Q Kᵀ/√d) of the last block written out from its input and weights."""
    src = create_attention_model(dirs["dinov2-reg"], device="cpu", short_side=56)
    x = src.pixel_values(image)
    with torch.no_grad():
        hs = src.model(pixel_values=x, output_hidden_states=True).hidden_states[-2][0]  # input of the last block
        blk = src.model.encoder.layer[-1]
        y = blk.norm1(hs)
        att = blk.attention
        q_lin = getattr(att, "q_proj", None) or att.attention.query
        k_lin = getattr(att, "k_proj", None) or att.attention.key
        nh = src.model.config.num_attention_heads
        q = q_lin(y).view(len(y), nh, -1).transpose(0, 1)
        k = k_lin(y).view(len(y), nh, -1).transpose(0, 1)
        probs = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1).mean(0)
    ref = probs[5:, 5:]  # CLS + 4 registers
    A, _ = src.affinity(image)
    torch.testing.assert_close(A, ref / ref.sum(1, keepdim=True), atol=1e-6, rtol=1e-5)


def test_layer_and_head_weights(dirs, image):
    src = create_attention_model(dirs["dinov2"], device="cpu", short_side=56, layers=(0, -1),
                                 layer_weights=(0.25, 0.75), head_weights=(1, 0, 0, 3))
    A, _ = src.affinity(image)
    ref = reference_affinity(src, image, layers=(0, -1), layer_weights=(0.25, 0.75), head_weights=(1, 0, 0, 3))
    torch.testing.assert_close(A, ref, atol=1e-6, rtol=1e-5)
    plain = create_attention_model(dirs["dinov2"], device="cpu", short_side=56).affinity(image)[0]
    assert not torch.allclose(A, plain)  # the settings do change the result


def test_fallback_without_hooks_gives_the_same_affinity(dirs, image):
    src = create_attention_model(dirs["dino"], device="cpu", short_side=48, layers=(0, 1))
    A_hooks, _ = src.affinity(image)
    src._attn_modules = None  # an unknown layout: every block's attention from transformers
    with pytest.raises(RuntimeError, match="eager"):  # SDPA cannot return attention maps
        src.affinity(image)
    src.model.set_attn_implementation("eager")
    A_all, _ = src.affinity(image)
    torch.testing.assert_close(A_hooks, A_all)


def test_default_resolution_and_grid(dirs):
    src = create_attention_model(dirs["dinov2"], device="cpu")
    assert src.settings.short_side == 448 and src.settings.layers == (-1,)
    assert src.grid_for((360, 480)) == (32, 43)
    assert src.grid_for((1024, 2048)) == (32, 64)


def test_bad_settings(dirs):
    with pytest.raises(ValueError, match="out of range"):
        create_attention_model(dirs["dinov2"], device="cpu", layers=(5,))
    with pytest.raises(ValueError, match="head_weights"):
        create_attention_model(dirs["dinov2"], device="cpu", head_weights=(1, 1))
    with pytest.raises(ValueError, match="layer_weights"):
        create_attention_model(dirs["dinov2"], device="cpu", layers=(0, 1), layer_weights=(1,))
    with pytest.raises(TypeError, match="valid settings"):
        create_attention_model(dirs["dinov2"], device="cpu", resolution=512)


def test_vit_directory_is_not_a_logits_model(dirs):
    from dslo.models import create_logits_model

    with pytest.raises(ValueError, match="not a vision-language checkpoint"):
        create_logits_model(dirs["dinov2"], device="cpu")

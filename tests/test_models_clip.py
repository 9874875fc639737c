"""CLIP dense logits and CLIP attention on a tiny random CLIP saved and loaded through the real
loader. References are written from the raw weights here, independently of dslo.models.clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dslo.models import create_attention_model, create_logits_model
from dslo.models.templates import IMAGENET_TEMPLATES


@pytest.fixture(scope="module")
def small(clip_dir):
    """The tiny CLIP loaded once, at a small input (7×12 patches for the test image) for speed."""
    return create_logits_model(clip_dir, device="cpu", short_side=112)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(90, 150, 3), dtype=np.uint8)  # non-square on purpose


def _ln(x, sd, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps)


def _lin(x, sd, prefix):
    return F.linear(x, sd[prefix + ".weight"], sd[prefix + ".bias"])


def _heads(t, nh):
    B, T, C = t.shape
    return t.view(B, T, nh, C // nh).transpose(1, 2)


def reference_dense(model, pixels, variant, keep_residual, keep_mlp):
    """CLIP vision tower written out from the state dict (quick-GELU, pre-LN blocks), last block
    with ``variant`` attention. Returns ``(N, D)`` L2-normalised features and the last attention."""
    cfg = model.config.vision_config
    sd = {k: v.float() for k, v in model.state_dict().items()}
    v = "vision_model."
    p, C, nh, eps = cfg.patch_size, cfg.hidden_size, cfg.num_attention_heads, cfg.layer_norm_eps
    x = F.conv2d(pixels, sd[v + "embeddings.patch_embedding.weight"], stride=p)
    gh, gw = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    pos = sd[v + "embeddings.position_embedding.weight"]
    g = int(round((pos.shape[0] - 1) ** 0.5))
    pp = F.interpolate(pos[1:].reshape(1, g, g, C).permute(0, 3, 1, 2), size=(gh, gw), mode="bicubic",
                       align_corners=False).permute(0, 2, 3, 1).reshape(1, gh * gw, C)
    x = torch.cat([sd[v + "embeddings.class_embedding"].view(1, 1, C), x], 1) + torch.cat([pos[None, :1], pp], 1)
    x = _ln(x, sd, v + "pre_layrnorm", eps)
    quick_gelu = lambda t: t * torch.sigmoid(1.702 * t)  # noqa: E731
    L = cfg.num_hidden_layers
    for i in range(L):
        pre = f"{v}encoder.layers.{i}."
        y = _ln(x, sd, pre + "layer_norm1", eps)
        q, k, val = (_heads(_lin(y, sd, pre + f"self_attn.{n}_proj"), nh) for n in "qkv")
        a, b = (q, k) if i < L - 1 else {"qk": (q, k), "kk": (k, k), "qq": (q, q)}[variant]
        attn = torch.softmax(a @ b.transpose(-1, -2) / (C // nh) ** 0.5, -1)
        o = _lin((attn @ val).transpose(1, 2).reshape(x.shape), sd, pre + "self_attn.out_proj")

        def mlp(t, pre=pre):
            hidden = quick_gelu(_lin(_ln(t, sd, pre + "layer_norm2", eps), sd, pre + "mlp.fc1"))
            return _lin(hidden, sd, pre + "mlp.fc2")

        if i < L - 1:
            x = x + o
            x = x + mlp(x)
        else:
            x = o + x if keep_residual else o
            x = x + mlp(x) if keep_mlp else x
    f = _ln(x[:, 1:], sd, v + "post_layernorm", eps) @ sd["visual_projection.weight"].T
    return F.normalize(f[0], dim=-1), attn[0]


@pytest.mark.parametrize("variant", ["kk", "qq", "qk"])
@pytest.mark.parametrize("keep", [(False, False), (True, True), (True, False)])
def test_dense_features_match_hand_computation(small, image, variant, keep):
    m = small.with_settings(attention=variant, keep_residual=keep[0], keep_mlp=keep[1])
    feats = m.dense_features(image)
    gh, gw = m.grid_for(image.shape[:2])
    assert feats.shape == (gh, gw, m.model.config.projection_dim)
    from dslo.models.common import pixel_tensor

    pixels = pixel_tensor(image, m.input_size(image.shape[:2]), m.mean, m.std, device=torch.device("cpu"))
    ref, _ = reference_dense(m.model, pixels, variant, *keep)
    torch.testing.assert_close(feats.reshape(-1, feats.shape[-1]), ref, atol=1e-5, rtol=1e-4)


def test_vanilla_block_equals_transformers_own_forward(clip_dir, image):
    """qk with residual and MLP kept is the unmodified tower: compare with transformers itself."""
    m = create_logits_model(clip_dir, device="cpu", attention="qk", keep_residual=True, keep_mlp=True,
                            short_side=112)
    from dslo.models.common import pixel_tensor

    pixels = pixel_tensor(image, m.input_size(image.shape[:2]), m.mean, m.std, device=torch.device("cpu"))
    with torch.no_grad():
        hs = m.model.vision_model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        ref = F.normalize(m.model.visual_projection(m.model.vision_model.post_layernorm(hs[0, 1:])), dim=-1)
    torch.testing.assert_close(m.dense_features(image).reshape(ref.shape), ref, atol=1e-5, rtol=1e-4)


def test_defaults_follow_spec(clip_dir):
    m = create_logits_model(clip_dir, device="cpu")
    s = m.settings
    assert (s.attention, s.keep_residual, s.keep_mlp, s.short_side) == ("kk", False, False, 336)
    assert s.templates == IMAGENET_TEMPLATES and len(s.templates) == 80
    # short side 336 at patch 16 → 21 patches; the long side keeps the aspect ratio
    assert m.grid_for((360, 480)) == (21, 28)
    assert m.grid_for((480, 360)) == (28, 21)


def _hand_text(m, name):
    tok = m.tokenizer([t.format(name) for t in IMAGENET_TEMPLATES], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = m.model.get_text_features(**tok)
    out = getattr(out, "pooler_output", out)  # transformers 5 returns an output object
    return F.normalize(F.normalize(out, dim=-1).mean(0), dim=-1)


def test_template_average_and_synonym_max_equal_hand_computation(small, image):
    m = small
    classes = ["sky", ["person", "man", "the cyclist"], "car"]
    logits = m.logits(image, classes)
    gh, gw = m.grid_for(image.shape[:2])
    assert logits.shape == (3, gh, gw) and logits.dtype == torch.float32
    feats = m.dense_features(image)
    names = ["sky", "person", "man", "the cyclist", "car"]
    per = {n: torch.einsum("d,hwd->hw", _hand_text(m, n), feats) for n in names}
    torch.testing.assert_close(logits[0], per["sky"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[1], torch.maximum(torch.maximum(per["person"], per["man"]), per["the cyclist"]),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[2], per["car"], atol=1e-5, rtol=1e-4)
    # cosine similarities
    assert logits.abs().max() <= 1.0 + 1e-5


def test_text_cache_and_custom_templates(small, image):
    m = small.with_settings(templates=("a photo of a {}.",))
    a = m.logits(image, ["dog", "cat"])
    assert set(m._text_cache) == {"dog", "cat"}
    b = m.logits(image, ["cat", "dog"])  # same vocabulary, other order: served from the cache
    torch.testing.assert_close(a.flip(0), b)
    tok = m.tokenizer(["a photo of a dog."], return_tensors="pt")
    with torch.no_grad():
        out = m.model.get_text_features(**tok)
    ref = F.normalize(getattr(out, "pooler_output", out)[0], dim=-1)
    torch.testing.assert_close(m.text_embeddings(["dog"])[0], ref, atol=1e-5, rtol=1e-4)


def test_image_forms_agree(small, image, tmp_path):
    from PIL import Image

    m = small
    path = tmp_path / "img.png"
    Image.fromarray(image).save(path)
    ref = m.logits(image, ["road"])
    for form in (str(path), Image.fromarray(image), torch.from_numpy(image).permute(2, 0, 1)):
        torch.testing.assert_close(m.logits(form, ["road"]), ref)


@pytest.mark.parametrize("bad", [[], "sky", ["sky", ""], [[]], [["a", " "]]])
def test_bad_classes_are_refused(small, image, bad):
    m = small
    with pytest.raises(ValueError, match="class"):
        m.logits(image, bad)


def test_bad_settings_are_refused(clip_dir):
    with pytest.raises(TypeError, match="valid settings"):
        create_logits_model(clip_dir, device="cpu", atention="kk")
    with pytest.raises(ValueError, match="attention"):
        create_logits_model(clip_dir, device="cpu", attention="vv")
    with pytest.raises(ValueError, match="only supported on an accelerator"):
        create_logits_model(clip_dir, device="cpu", dtype="float16")
    with pytest.raises(TypeError, match="valid settings"):
        create_logits_model(clip_dir, device="cpu").with_settings(short_sid=3)


@pytest.mark.parametrize("variant", ["qk", "kk"])
def test_clip_attention_source(small, image, variant):
    logits_model = small
    src = create_attention_model("clip", clip=logits_model, variant=variant)
    A, (h, w) = src.affinity(image)
    assert (h, w) == logits_model.grid_for(image.shape[:2]) == src.grid_for(image.shape[:2])
    assert A.shape == (h * w, h * w) and A.dtype == torch.float32
    torch.testing.assert_close(A.sum(1), torch.ones(h * w), atol=1e-5, rtol=0)
    # reference: the tower's last attention, heads averaged, CLS row and column dropped, renormalised
    from dslo.models.common import pixel_tensor

    pixels = pixel_tensor(image, logits_model.input_size(image.shape[:2]), logits_model.mean, logits_model.std,
                          device=torch.device("cpu"))
    _, attn = reference_dense(logits_model.model, pixels, variant, False, False)
    ref = attn.mean(0)[1:, 1:]
    torch.testing.assert_close(A, ref / ref.sum(1, keepdim=True), atol=1e-5, rtol=1e-4)


def test_clip_attention_shares_a_loaded_model(small, image):
    src = create_attention_model("clip", device="cpu", clip=small, dtype="auto")  # agreeing dtype is fine
    assert src.clip is small
    calls = []
    hook = small.model.vision_model.embeddings.register_forward_hook(lambda *a: calls.append(1))
    try:
        fresh = image.copy()
        fresh[0, 0] = 255 - fresh[0, 0]  # pixels this model has not seen yet
        small.dense_features(fresh)
        src.affinity(fresh)  # reuses the tower's forward from the logits call
    finally:
        hook.remove()
    assert calls == [1]
    with pytest.raises(TypeError, match="shared as loaded"):
        create_attention_model("clip", device="cpu", clip=small, short_side=224)


def test_clip_attention_by_directory(clip_dir, image):
    src = create_attention_model(clip_dir, device="cpu", short_side=112)  # a CLIP directory as the source
    A, (h, w) = src.affinity(image)
    assert A.shape == (h * w, h * w) and src.variant == "qk"
    src2 = create_attention_model("clip", device="cpu", clip=str(clip_dir), short_side=224)
    assert src2.affinity(image)[1] == (14, 23)

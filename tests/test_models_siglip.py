"""SigLIP / SigLIP 2 logits models on tiny random checkpoints written with save_pretrained and
loaded through dslo's loader: global embeddings equal transformers' get_image_features /
get_text_features; the dense path (attention-pooling head per token) and the class scores
(cos + b/t) against hand computations; the contracts and the text-cache identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dslo.errors import SettingsError
from dslo.models import BatchedLogits, DenseFeatures, LogitsModel, TextEmbeddings, create_logits_model
from dslo.models.siglip import SiglipLogitsModel, patchify
from dslo.models.templates import SIGLIP_TEMPLATES, canonical_text
from dslo.testing import make_tiny_siglip, make_tiny_siglip_tokenizer

VARIANTS = ("siglip", "siglip2", "siglip2-naflex")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("siglip")
    return {v: make_tiny_siglip(root / v, variant=v) for v in VARIANTS}


@pytest.fixture(scope="module")
def models(folders):
    return {v: create_logits_model(p, device="cpu", short_side=64) for v, p in folders.items()}


def _reference(folder):
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("variant", VARIANTS)
def test_global_embeddings_equal_transformers(folders, models, variant):
    """encode_image / encode_text equal get_image_features / get_text_features (ids padded to
    the tower's 64 positions, no attention mask), on a non-square input whose grid differs from
    the position table's."""
    m = models[variant]
    assert isinstance(m, SiglipLogitsModel) and m.family == ("siglip2" if variant == "siglip2-naflex" else "siglip")
    ref, tok = _reference(folders[variant])
    texts = ["a photo of a cat", "road", "the shadow of a tree"]
    ids = torch.tensor(tok(texts, padding="max_length", max_length=64, truncation=True)["input_ids"])
    px = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        text_ref = ref.get_text_features(input_ids=ids).pooler_output
        if variant == "siglip2-naflex":
            image_ref = ref.get_image_features(pixel_values=patchify(px, 16), spatial_shapes=torch.tensor([[4, 5]] * 2),
                                               pixel_attention_mask=torch.ones(2, 20, dtype=torch.long)).pooler_output
        else:
            image_ref = ref.get_image_features(pixel_values=px, interpolate_pos_encoding=True).pooler_output
    torch.testing.assert_close(m.encode_text(texts), text_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(m.encode_image(px), image_ref, atol=1e-5, rtol=0)
    # the model's own sigmoid logits: t·cos + b over the global embeddings
    with torch.no_grad():
        if variant == "siglip2-naflex":
            out = ref(input_ids=ids, pixel_values=patchify(px, 16), spatial_shapes=torch.tensor([[4, 5]] * 2),
                      pixel_attention_mask=torch.ones(2, 20, dtype=torch.long))
        else:
            out = ref(input_ids=ids, pixel_values=px, interpolate_pos_encoding=True)
    cos = F.normalize(m.encode_image(px), dim=-1) @ F.normalize(m.encode_text(texts), dim=-1).T
    torch.testing.assert_close(m.logit_scale * cos + m.logit_bias, out.logits_per_image, atol=1e-5, rtol=0)


def test_patchify_is_the_image_processors():
    from transformers.models.siglip2.image_processing_pil_siglip2 import convert_image_to_patches

    x = torch.randn(2, 3, 32, 48)
    ours = patchify(x, 16)
    for b in range(2):
        np.testing.assert_array_equal(ours[b].numpy(), convert_image_to_patches(x[b].numpy(), 16))


def _tokens_after_post_layernorm(m, px, vanilla: bool):
    """The last block's output after the final layer norm, computed by hand (kk: softmax(k kᵀ/√d)
    v through the output projection, no residual, no MLP)."""
    x, grid = m._trunk(px)
    vm = m.model.vision_model
    layer = vm.encoder.layers[-1]
    with torch.no_grad():
        if vanilla:
            out = layer(x, None)
            out = out[0] if isinstance(out, tuple) else out
        else:
            sa = layer.self_attn
            y = layer.layer_norm1(x)
            B, T, C = y.shape
            k = sa.k_proj(y).view(B, T, sa.num_heads, -1).transpose(1, 2)
            v = sa.v_proj(y).view(B, T, sa.num_heads, -1).transpose(1, 2)
            a = torch.softmax(k @ k.transpose(-1, -2) / (C // sa.num_heads) ** 0.5, dim=-1)
            out = sa.out_proj((a @ v).transpose(1, 2).reshape(B, T, C))
        return vm.post_layernorm(out), grid


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("vanilla", [False, True])
def test_dense_path_is_the_pooling_head_per_token(models, variant, vanilla):
    """Patch features: (B, h, w, D), unit norm; each is the pooling head (torch's
    MultiheadAttention, its layer norm and MLP) run on a one-token sequence of that patch."""
    m = models[variant]
    if vanilla:
        m = SiglipLogitsModel(m.model, m.tokenizer, name=m.name, mean=m.mean, std=m.std, identity=m.identity,
                              settings=type(m.settings)(attention="qk", keep_residual=True, keep_mlp=True,
                                                        short_side=64))
    px = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    f = m.patch_features(px)
    assert f.shape == (2, 3, 4, m.embed_dim)
    torch.testing.assert_close(f.norm(dim=-1), torch.ones(2, 3, 4))
    y, grid = _tokens_after_post_layernorm(m, px, vanilla)
    head = m.model.vision_model.head
    with torch.no_grad():
        per_token = torch.stack([head(y[:, i:i + 1]) for i in range(y.shape[1])], dim=1)  # (B, N, D)
    torch.testing.assert_close(f, F.normalize(per_token, dim=-1).reshape(2, *grid, -1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_class_scores_by_hand(models, variant):
    """logits = cos(patch, class) + b/t, the class embedding the normalised mean of the normalised
    embeddings of SigLIP's canonical prompts, a class the max over its synonyms; so sigmoid(t·L)
    is SigLIP's own probability sigmoid(t·cos + b)."""
    m = models[variant]
    image = np.random.default_rng(2).integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    classes = ["Cat", ["dog", "Traffic-light"]]
    L = m.logits(image, classes)
    f = m.dense_features(image)
    assert L.shape == (2, *f.shape[:2]) and f.shape[:2] == m.grid_for(image.shape[:2])

    def class_embedding(name):
        prompts = [canonical_text(t.format(name)) for t in SIGLIP_TEMPLATES]
        assert "traffic-light" not in " ".join(prompts) and "Cat" not in " ".join(prompts)
        return F.normalize(F.normalize(m.encode_text(prompts), dim=-1).mean(0), dim=-1)

    cos = {n: torch.einsum("hwd,d->hw", f, class_embedding(n)) for n in ("Cat", "dog", "Traffic-light")}
    want = torch.stack([cos["Cat"], torch.maximum(cos["dog"], cos["Traffic-light"])]) + m.logit_bias / m.logit_scale
    torch.testing.assert_close(L, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.sigmoid(m.logit_scale * L[0]),
                               torch.sigmoid(m.logit_scale * cos["Cat"] + m.logit_bias), atol=1e-5, rtol=0)
    torch.testing.assert_close(L, m.class_scores(m.dense_features(image), classes))


@pytest.mark.parametrize("variant", VARIANTS)
def test_contracts_batches_and_text_exchange(models, variant):
    m = models[variant]
    for contract in (LogitsModel, DenseFeatures, BatchedLogits, TextEmbeddings):
        assert isinstance(m, contract), contract.__name__
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8) for _ in range(2)]
    batch = m.logits_batch(images, ["cat", "road"])
    for b, im in enumerate(images):
        torch.testing.assert_close(batch[b], m.logits(im, ["cat", "road"]), atol=1e-5, rtol=0)
    fresh = SiglipLogitsModel(m.model, m.tokenizer, name=m.name, settings=m.settings, mean=m.mean, std=m.std,
                              identity=m.identity)
    fresh.import_text_embeddings(m.export_text_embeddings(["cat", "road"]))
    torch.testing.assert_close(fresh.text_embeddings(["cat", "road"]), m.text_embeddings(["cat", "road"]))
    assert fresh.texts_encoded == 0


def test_text_keys_distinguish_every_model(models, clip_dir, tmp_path):
    from dslo.testing import make_tiny_openclip

    clip = create_logits_model(clip_dir, device="cpu")
    openclip = create_logits_model(make_tiny_openclip(tmp_path / "oc"), device="cpu")
    keys = [clip.text_key(), openclip.text_key(), *(m.text_key() for m in models.values())]
    assert len(set(keys)) == len(keys)
    assert models["siglip2-naflex"].text_key().startswith("siglip2:")


def test_settings_are_checked():
    from dslo.models.siglip import SiglipSettings

    with pytest.raises(SettingsError, match="attention"):
        SiglipSettings(attention="window")
    with pytest.raises(SettingsError, match="templates"):
        SiglipSettings(templates=("no placeholder",))


def test_unknown_setting_fails_before_loading(folders):
    from dslo.models.options import check_model_options

    with pytest.raises(SettingsError, match="did you mean short_side"):
        check_model_options("logits", folders["siglip2"], {"short_sid": 64})
    with pytest.raises(SettingsError, match="method"):
        check_model_options("logits", "siglip2-b16", {"method": "naclip"})  # a CLIP setting
    check_model_options("logits", "siglip2-b16", {"short_side": 448, "attention": "qq"})


def test_clip_attention_refuses_a_siglip(models):
    from dslo.models import create_attention_model

    with pytest.raises(SettingsError, match="not a CLIP-family"):
        create_attention_model("clip", device="cpu", clip=models["siglip"])


@pytest.mark.parametrize("gemma", [False, True])
def test_tiny_tokenizers_work_offline(tmp_path, gemma):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(make_tiny_siglip_tokenizer(tmp_path / "t", vocab_size=200, gemma=gemma))
    assert type(tok).__name__ == ("GemmaTokenizer" if gemma else "SiglipTokenizer")
    ids = [tok(w)["input_ids"] for w in ("cat", "dog", "zebra")]
    assert len({tuple(i) for i in ids}) == 3 and max(max(i) for i in ids) < len(tok)


def test_canonical_text_is_big_vision_s():
    assert canonical_text("A close-up photo of the {}.", keep="{}") == "a closeup photo of the {}"
    assert canonical_text("traffic_light,  Red!") == "traffic light red"
    assert len(SIGLIP_TEMPLATES) == 81 and SIGLIP_TEMPLATES[-1] == "{}"


def test_incomplete_folder_names_the_tokenizer_files(folders, tmp_path):
    import shutil

    from dslo.models import WeightsNotFoundError

    broken = tmp_path / "no-tokenizer"
    shutil.copytree(folders["siglip"], broken)
    (broken / "spiece.model").unlink()
    with pytest.raises(WeightsNotFoundError, match=r"tokenizer.json \(or spiece.model, or tokenizer.model\)"):
        create_logits_model(broken, device="cpu")

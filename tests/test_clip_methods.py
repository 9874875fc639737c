"""Every CLIP method against the dense features its peer's published code computes on a tiny
random CLIP (``shared/data/peer_logits``: provenance, flags and math in its README), for both
position interpolations; plus the pure pieces (Ω, proxy attention, position resize) and the
settings' contract. Fixture tests skip cleanly when the shared data is absent."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import DATA

from dslo.models import create_logits_model
from dslo.models.clip_methods import (
    METHODS,
    gaussian_window,
    interpolate_positions,
    method_protocol,
    proxy_attention,
)

PEER = DATA / "peer_logits"
needs_fixtures = pytest.mark.skipif(not (PEER / "expected.safetensors").is_file(),
                                    reason=f"peer fixtures not found at {PEER}")
PEER_METHODS = ("vanilla", "naclip", "naclip_kk", "clearclip", "maskclip", "sclip", "proxyclip")


@pytest.fixture(scope="module")
def fixtures():
    from safetensors.torch import load_file

    return load_file(str(PEER / "inputs.safetensors")), load_file(str(PEER / "expected.safetensors"))


@pytest.fixture(scope="module")
def peer_clip():
    """The fixtures' tiny CLIP through dslo's own loader (it has no tokenizer: the text side is
    not fixtured, so the model is wrapped directly)."""
    from transformers import CLIPModel

    from dslo.models.clip import ClipLogitsModel, ClipSettings

    model = CLIPModel.from_pretrained(str(PEER / "tiny_clip")).float().eval()
    return ClipLogitsModel(model, None, name="peer-tiny", settings=ClipSettings())


@needs_fixtures
@pytest.mark.parametrize("interp", ["exact", "peer"])
@pytest.mark.parametrize("method", PEER_METHODS)
def test_patch_features_equal_peer_code(peer_clip, fixtures, method, interp):
    inputs, expected = fixtures
    px = inputs["pixel_values"].float()  # stored as float16; the cast is exact
    m = peer_clip.with_settings(method=method, pos_interp=interp)
    proxy = inputs["proxy_feats"] if method == "proxyclip" else None
    f = m.patch_features(px, proxy=proxy)
    assert f.shape == (14, 18, 32) and f.dtype == torch.float32
    ref = expected[f"{method}/{interp}_interp"]
    assert (f.reshape(252, 32) - ref).abs().max().item() <= 1e-5
    # the default dslo method is NACLIP's k-k variant
    if method == "naclip_kk":
        d = peer_clip.with_settings(pos_interp=interp).patch_features(px)
        assert (d.reshape(252, 32) - ref).abs().max().item() <= 1e-5


@needs_fixtures
def test_interpolations_are_told_apart(peer_clip, fixtures):
    """The tolerance separates the two interpolations by far (README: 0.044–0.051)."""
    inputs, expected = fixtures
    f = peer_clip.with_settings(method="naclip", pos_interp="exact").patch_features(inputs["pixel_values"].float())
    assert (f.reshape(252, 32) - expected["naclip/peer_interp"]).abs().max().item() > 1e-2


@needs_fixtures
def test_proxyclip_on_a_proxy_grid_reproduces_the_transposed_quirk(peer_clip, fixtures):
    """The published ProxyCLIP reads a non-square input's values as a (W/16, H/16) grid and
    resizes that to the proxy grid. Feeding dslo's value resize that transposed reading gives
    the ``proxyclip_asis`` key; dslo's own output differs from it (the documented quirk)."""
    inputs, expected = fixtures
    px = inputs["pixel_values"].float()
    m = peer_clip.with_settings(method="proxyclip")
    ours = m.patch_features(px, proxy=inputs["proxy_feats"]).reshape(252, 32)
    asis = expected["proxyclip_asis/exact_interp"]
    assert (ours - asis).abs().max().item() > 0.1

    import dslo.models.clip_methods as cm

    real = cm.resize_values

    def transposed(v, grid, target):  # the peer's reshape to (token_size[0], token_size[1]) = (18, 14)
        return real(v, (grid[1], grid[0]), target)

    try:
        cm.resize_values = transposed
        quirk = m.patch_features(px, proxy=inputs["proxy_feats"].reshape(14, 18, -1)).reshape(252, 32)
    finally:
        cm.resize_values = real
    assert (quirk - asis).abs().max().item() <= 1e-5


@needs_fixtures
def test_attention_rows_equal_peer_code(peer_clip, fixtures):
    from dslo.models.clip_methods import last_block

    inputs, expected = fixtures
    m = peer_clip.with_settings(pos_interp="exact")
    x, grid = m._trunk(inputs["pixel_values"].float())
    layer = m.model.vision_model.encoder.layers[-1]
    q = expected["attn_query_index"]
    kinds = {"vanilla": "qk", "naclip": "window", "naclip_kk": "kk", "clearclip": "qq", "sclip": "csa",
             "proxyclip": "proxy"}
    for method, kind in kinds.items():
        with torch.inference_mode():
            _, attn, has_cls = last_block(layer, x, grid, attention=kind, keep_residual=False, keep_mlp=False,
                                          proxy=inputs["proxy_feats"])
        rows = attn.mean(0)
        rows = rows[1:, 1:] if has_cls else rows
        assert (rows[q] - expected[f"{method}/attn_rows"]).abs().max().item() <= 1e-6, method


def test_gaussian_window_closed_form():
    om = gaussian_window((3, 4), 2.0)
    r, c = divmod(7, 4), divmod(2, 4)
    assert om.shape == (12, 12)
    assert om[7, 2].item() == pytest.approx(math.exp(-((r[0] - c[0]) ** 2 + (r[1] - c[1]) ** 2) / 8.0))
    torch.testing.assert_close(om, om.T)
    assert torch.all(om.diagonal() == 1)


def test_proxy_attention_is_masked_row_softmax():
    torch.manual_seed(0)
    z = torch.randn(10, 5)
    a = proxy_attention(z, beta=1.2, gamma=3.0)
    zn = F.normalize(z, dim=-1)
    s = zn @ zn.T
    s = 3.0 * (s - 1.2 * s.mean())
    ref = torch.where(s < 0, torch.zeros_like(s), torch.exp(s))
    torch.testing.assert_close(a, ref / ref.sum(1, keepdim=True))


def test_proxy_attention_never_masks_a_whole_row():
    """Near-identical features (mean similarity above 1/β) would mask every key, NaN in the
    published code; the diagonal is kept instead."""
    z = torch.ones(6, 4) + 1e-3 * torch.arange(24.0).reshape(6, 4)
    a = proxy_attention(z)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a.sum(1), torch.ones(6))


def test_position_interpolation_modes():
    torch.manual_seed(0)
    pos = torch.randn(1 + 16, 8)
    assert interpolate_positions(pos, (4, 4), "peer") is pos  # the peers keep the table at its own grid
    exact = interpolate_positions(pos, (4, 6), "exact")
    peer = interpolate_positions(pos, (4, 6), "peer")
    assert exact.shape == peer.shape == (25, 8)
    torch.testing.assert_close(exact[:1], pos[:1])
    # exact resizes only along the columns when the row count is kept (each row on its own gives
    # the same); the peer call, with its +0.1, also resamples across rows
    table = pos[1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    rows = torch.cat([F.interpolate(table[:, :, r:r + 1], size=(1, 6), mode="bicubic", align_corners=False)
                      for r in range(4)], 2)
    torch.testing.assert_close(exact[1:], rows.permute(0, 2, 3, 1).reshape(24, 8))
    assert (peer[1:] - exact[1:]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="pos_interp"):
        interpolate_positions(pos, (4, 6), "nearest")


def test_method_settings_contract(tmp_path):
    from dslo.testing import make_tiny_clip

    m = create_logits_model(make_tiny_clip(tmp_path / "clip"), device="cpu", short_side=64)
    assert m.settings.method == "dslo" and m.settings.pos_interp == "exact"
    assert "naclip" in repr(m.with_settings(method="naclip"))
    with pytest.raises(ValueError, match="method"):
        m.with_settings(method="gem")
    with pytest.raises(ValueError, match="method='dslo' only"):
        m.with_settings(method="clearclip", attention="qk")
    with pytest.raises(ValueError, match="proxyclip"):
        m.patch_features(torch.zeros(1, 3, 64, 64), proxy=torch.zeros(16, 4))
    with pytest.raises(ValueError, match=r"\(1, 3, H, W\)"):
        m.patch_features(torch.zeros(3, 64, 64))
    assert set(METHODS) == {"dslo", *PEER_METHODS}


def test_method_protocol_records():
    from dslo.eval.datasets import BENCHMARKS
    from dslo.models.clip_methods import PROTOCOLS

    for method in METHODS:
        assert set(PROTOCOLS[method]["short_side"]) == set(PROTOCOLS[method]["slide"]) == set(BENCHMARKS)
    p = method_protocol("naclip", "voc21")
    assert p["short_side"] == 336 and p["sliding_window"] is None and p["pamr"] is True
    p = method_protocol("clearclip", "cityscapes")
    assert p["short_side"] == 448 and p["sliding_window"] == {"crop": 224, "stride": 224}
    assert method_protocol("sclip", "coco_stuff")["short_side"] == 448
    with pytest.raises(ValueError, match="unknown method"):
        method_protocol("gem")


@pytest.mark.parametrize("kind", ["dino", "dinov2-reg"])
def test_proxyclip_with_dino_and_dinov2_proxies(tmp_path, kind):
    """Any ViT attention source is a proxy: its last-layer patch tokens (prefix tokens dropped) on
    CLIP's grid, or on its own grid with proxy_grid='proxy' (the output then has that grid)."""
    from dslo.testing import make_tiny_clip, make_tiny_dino, make_tiny_dinov2

    proxy_dir = (make_tiny_dino(tmp_path / "dino") if kind == "dino"
                 else make_tiny_dinov2(tmp_path / "dinov2", registers=2))
    clip = create_logits_model(make_tiny_clip(tmp_path / "clip"), device="cpu", method="proxyclip",
                               proxy=str(proxy_dir))
    torch.manual_seed(0)
    px = torch.randn(1, 3, 64, 96)
    f = clip.patch_features(px)
    assert f.shape == (4, 6, clip.model.config.projection_dim) and torch.isfinite(f).all()
    p = clip.proxy_model().patch_size
    z = clip.proxy_features(px, (4, 6))
    assert z.shape == (4, 6, 32)
    # the same features given explicitly give the same output
    torch.testing.assert_close(clip.patch_features(px, proxy=z.reshape(24, -1)), f)
    own = clip.with_settings(proxy_grid="proxy").patch_features(px)
    assert own.shape[:2] == (64 // p, 96 // p)

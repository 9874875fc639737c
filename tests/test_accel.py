"""accel="int8" (dslo.models.accel): the quantized linear layer against a hand computation, what
is quantized (image towers, never the text tower), every custom attention path after
quantization, batches and encode/decode composing with it, refusals, the request and the CLI
(`--accel`, `dslo check-accel`). Tiny random models through the real loaders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dslo.errors import SettingsError
from dslo.models import create_attention_model, create_logits_model
from dslo.models.accel import (
    accelerate,
    affinity_cosine,
    check_accel,
    count_int8_layers,
    full_range_activations,
    logits_cosine,
    quantize_linear_int8,
)
from dslo.segmenter import Segmenter, create_segmenter
from dslo.testing import make_tiny_clip, make_tiny_dinov2, make_tiny_sd2, make_tiny_siglip

CLASSES = ["sky", ["road", "street"], "car"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("accel-models")
    return {"clip": make_tiny_clip(root / "clip"), "reg": make_tiny_dinov2(root / "reg", registers=4)}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, size=(60, 90, 3), dtype=np.uint8) for _ in range(3)]


# ---- the layer -----------------------------------------------------------------------------------
def _quantized(linear: torch.nn.Linear) -> torch.nn.Module:
    box = torch.nn.Sequential(linear)
    assert quantize_linear_int8(box) == 1
    return box[0]


def _hand_int8(x: torch.Tensor, q: torch.nn.Module, full: bool) -> torch.Tensor:
    """x quantized per tensor to uint8 as fbgemm chooses its parameters (range widened to hold 0;
    7 bits unless ``full``), times the layer's own int8 weights, exact in float64."""
    qmax = 255 if full else 127
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / qmax
    zero = int(np.clip(round(-lo / scale), 0, qmax))
    xq = torch.clamp(torch.round(x.double() / scale) + zero, 0, qmax)
    w = q.weight().dequantize().double()  # the layer's int8 weights (per output channel)
    return ((xq - zero) * scale) @ w.T + q.bias().double()


@torch.no_grad()
def test_int8_linear_is_the_hand_computation():
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 40)
    x = torch.randn(1, 50, 96) * 3 + 0.5  # large activations: where a saturating kernel would show
    q = _quantized(lin)
    assert q.full_range == full_range_activations()
    out = q(x)
    ref = _hand_int8(x, q, q.full_range)
    # int32 accumulation is exact; what is left is float32 rounding (and an input exactly on a
    # rounding boundary, rare): far below one quantization step of the output
    torch.testing.assert_close(out.double(), ref, atol=2e-3, rtol=1e-4)
    rel = float((out - lin(x)).norm() / lin(x).norm())
    assert rel < 0.02  # and close to float32


def test_int8_linear_quantizes_each_image_of_a_batch_alone():
    torch.manual_seed(1)
    q = _quantized(torch.nn.Linear(32, 16))
    x = torch.randn(3, 20, 32) * torch.tensor([0.1, 1.0, 10.0]).view(3, 1, 1)  # very different scales
    assert torch.equal(q(x), torch.cat([q(x[i:i + 1]) for i in range(3)]))


def test_multihead_attention_projections_stay_float():
    box = torch.nn.Module()
    box.mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)
    box.fc = torch.nn.Linear(16, 16)
    assert quantize_linear_int8(box) == 1  # fc only: F.multi_head_attention_forward reads out_proj.weight
    x = torch.randn(1, 5, 16)
    assert box.mha(x, x, x)[0].shape == (1, 5, 16)


# ---- what is quantized -----------------------------------------------------------------------------
def test_clip_image_tower_only_and_text_embeddings_unchanged(dirs):
    f = create_logits_model(str(dirs["clip"]), device="cpu")
    q = create_logits_model(str(dirs["clip"]), device="cpu")
    n = accelerate(q, "int8")
    vision_linears = sum(isinstance(m, torch.nn.Linear) for m in f.model.vision_model.modules())
    assert n == vision_linears == count_int8_layers(q.model.vision_model) > 0
    assert count_int8_layers(q.model.text_model) == 0 and count_int8_layers(q.model) == n
    assert accelerate(q, "int8") == 0  # idempotent
    # the text tower is float: same embeddings, same key, so one text cache serves both
    assert q.text_key() == f.text_key()
    torch.testing.assert_close(q.text_embeddings(["sky", "car"]), f.text_embeddings(["sky", "car"]), rtol=0, atol=0)


@pytest.mark.parametrize("method", ["dslo", "vanilla", "naclip", "sclip", "clearclip", "maskclip"])
def test_clip_last_block_methods_run_on_quantized_projections(dirs, images, method):
    f = create_logits_model(str(dirs["clip"]), device="cpu", method=method, short_side=64)
    q = create_logits_model(str(dirs["clip"]), device="cpu", method=method, short_side=64)
    accelerate(q, "int8")
    Lf, Lq = f.logits(images[0], CLASSES), q.logits(images[0], CLASSES)
    assert Lq.shape == Lf.shape and torch.isfinite(Lq).all()
    Ff, Fq = f.dense_features(images[0]), q.dense_features(images[0])
    assert float(torch.nn.functional.cosine_similarity(Ff, Fq, dim=-1).mean()) > 0.95


def _row_stochastic(A: torch.Tensor) -> None:
    assert (A >= 0).all()
    torch.testing.assert_close(A.sum(-1), torch.ones(A.shape[:-1]), atol=1e-4, rtol=0)


def test_vit_source_keeps_its_hooked_attention_path(dirs, images):
    f = create_attention_model(str(dirs["reg"]), device="cpu", short_side=56)
    q = create_attention_model(str(dirs["reg"]), device="cpu", short_side=56)
    accelerate(q, "int8")
    assert q._attn_modules is not None  # the forward pre-hook path, not the eager fallback
    calls = []
    handle = q._attn_modules[-1].register_forward_pre_hook(lambda *a: calls.append(1))
    (Af, gf), (Aq, gq) = f.affinity(images[0]), q.affinity(images[0])
    handle.remove()
    assert calls and gf == gq and Aq.shape == Af.shape
    _row_stochastic(Aq)
    assert affinity_cosine(Af, Aq) > 0.95


def test_clip_attention_source_shares_the_quantized_tower(dirs, images):
    seg = create_segmenter("default", logits=str(dirs["clip"]), attention="clip", device="cpu", max_side=64,
                           accel="int8")
    assert seg.attention_model.clip is seg.logits_model  # one tower, quantized once
    assert count_int8_layers(seg.logits_model.model.vision_model) > 0
    A, _ = seg.attention_model.affinity(images[0])
    _row_stochastic(A)


def test_sd2_processors_run_on_quantized_projections(tmp_path, images):
    path = make_tiny_sd2(tmp_path / "sd2")
    f = create_attention_model("sd2", device="cpu", model_id=str(path), resolution=64)
    q = create_attention_model("sd2", device="cpu", model_id=str(path), resolution=64)
    assert accelerate(q, "int8") > 0 and count_int8_layers(q.unet) > 0
    (Af, _), (Aq, _) = f.affinity(images[0]), q.affinity(images[0])
    _row_stochastic(Aq)
    assert affinity_cosine(Af, Aq) > 0.9


def test_siglip_vision_tower_and_pooling_head(tmp_path, images):
    path = make_tiny_siglip(tmp_path / "siglip")
    f = create_logits_model(str(path), device="cpu", short_side=64)
    q = create_logits_model(str(path), device="cpu", short_side=64)
    accelerate(q, "int8")
    head = q.model.vision_model.head
    assert type(head.attention.out_proj) is torch.nn.modules.linear.NonDynamicallyQuantizableLinear
    assert count_int8_layers(q.model.text_model) == 0
    Lf, Lq = f.logits(images[0], CLASSES), q.logits(images[0], CLASSES)
    assert Lq.shape == Lf.shape and torch.isfinite(Lq).all()


# ---- the segmenter: batches, encode once ------------------------------------------------------------
@pytest.mark.parametrize("attention", ["reg", "clip"])
def test_predict_batch_and_encode_decode_compose_with_int8(dirs, images, attention):
    att = {"attention": "clip"} if attention == "clip" else {"attention": str(dirs["reg"]),
                                                              "attention_options": {"short_side": 56}}
    seg = create_segmenter("offline", logits=str(dirs["clip"]), device="cpu", logits_options={"short_side": 64},
                           accel="int8", **att)
    single = [seg.predict(im, CLASSES) for im in images]
    for batch in (seg.predict_batch(images, CLASSES), seg.predict_batch(images, CLASSES, batch_size=2)):
        for b, s in zip(batch, single, strict=True):
            assert np.array_equal(b.labels, s.labels)
            torch.testing.assert_close(b.scores, s.scores, atol=1e-5, rtol=1e-5)
    enc = seg.encode(images[1])
    assert np.array_equal(seg.decode(enc, CLASSES).labels, single[1].labels)
    assert seg.settings()["accel"] == "int8"
    flt = create_segmenter("offline", logits=str(dirs["clip"]), device="cpu", logits_options={"short_side": 64}, **att)
    agree = np.mean([(flt.predict(im, CLASSES).labels == s.labels).mean() for im, s in zip(images, single, strict=True)])
    assert agree > 0.8  # random tiny models: near-ties everywhere, yet mostly the same labels


# ---- refusals, the request, the command line ----------------------------------------------------------
def test_refusals_name_the_problem_and_the_fix(dirs):
    with pytest.raises(SettingsError, match="did you mean int8"):
        check_accel("int4")
    with pytest.raises(SettingsError, match="CPU only.*--device cpu"):
        check_accel("int8", "cuda")
    with pytest.raises(SettingsError, match="CPU only"):
        create_segmenter("default", logits=str(dirs["clip"]), attention=str(dirs["reg"]), device="meta",
                         accel="int8")
    model = create_attention_model(str(dirs["reg"]), device="cpu").model.to(torch.bfloat16)
    src = create_attention_model(str(dirs["reg"]), device="cpu")
    src.model = model
    with pytest.raises(SettingsError, match="float32 weights"):
        accelerate(src, "int8")

    class NoTowers:
        def affinity(self, image):
            raise AssertionError

    with pytest.raises(SettingsError, match="image_towers"):
        Segmenter(None, NoTowers(), accel="int8")
    Segmenter(None, NoTowers(), accel="none")  # float: nothing asked of the model


def test_request_carries_accel(dirs):
    from dslo.request import ModelChoice, SegmentRequest

    m = ModelChoice("offline", logits=str(dirs["clip"]), device="cpu", accel="int8")
    assert m.segmenter_kwargs()["accel"] == "int8"
    assert "accel" not in ModelChoice("offline", device="cpu").segmenter_kwargs()
    assert SegmentRequest.create(["a"], models=m).record()["accel"] == "int8"
    assert "accel" not in SegmentRequest.create(["a"], models=m.replace(accel="none")).record()
    with pytest.raises(SettingsError, match="CPU only"):
        SegmentRequest.create(["a"], models=m.replace(device="cuda"))
    with pytest.raises(SettingsError, match="int8"):
        ModelChoice(accel="int9")


def test_segment_flag_reaches_the_segmenter(tmp_path, fake_models, capsys):
    from standins import colour_picture, save_image

    from dslo.cli import main

    img, _ = colour_picture(32, 32)
    save_image(tmp_path / "a.png", img)
    args = ["segment", str(tmp_path / "a.png"), "--classes", "red, green", "--device", "cpu", "-o",
            str(tmp_path / "o"), "-q"]
    assert main(args + ["--accel", "int8"]) == 0
    assert fake_models[0][2]["accel"] == "int8"
    assert json.loads((tmp_path / "o" / "a.json").read_text())["request"]["accel"] == "int8"
    with pytest.raises(SystemExit):
        main(args + ["--accel", "fast"])
    assert "use one of none, int8" in capsys.readouterr().err


def test_eval_request_key_depends_on_accel():
    import argparse

    from dslo.cli.evaluate import _overrides

    base = dict(settings=[], mode=None, dtype="auto", logits_options=[], attention_options=[])
    assert "accel" not in _overrides(argparse.Namespace(**base, accel="none"))
    assert _overrides(argparse.Namespace(**base, accel="int8"))["accel"] == "int8"


def test_check_accel_cli_reports_every_number(tmp_path, dirs, images, capsys):
    from standins import save_image

    from dslo.cli import main

    for i, im in enumerate(images[:2]):
        save_image(tmp_path / "in" / f"{i}.png", im)
    out = tmp_path / "check.json"
    rc = main(["check-accel", str(tmp_path / "in"), "--classes", "sky, road, car", "--model", "offline",
               "--logits", str(dirs["clip"]), "--attention", str(dirs["reg"]), "--attention-option", "short_side=56",
               "--logits-option", "short_side=64", "--json", str(out), "-q"])
    assert rc == 0
    text = capsys.readouterr().out
    for needle in ("float32 vs int8 on 2 image(s)", "speed-up", "pixels labelled the same", "logits cosine",
                   "affinity rows cosine"):
        assert needle in text
    doc = json.loads(out.read_text())
    assert len(doc["rows"]) == 2 and doc["summary"]["images"] == 2
    s = doc["summary"]
    assert 0.0 <= s["label_agreement"]["min"] <= s["label_agreement"]["mean"] <= 1.0
    assert 0.9 < s["affinity_cosine"]["mean"] <= 1.0 + 1e-6 and s["encode_speedup"] > 0
    assert main(["check-accel", str(tmp_path / "in"), "--classes", "a, b", "--accel", "none"]) == 1


def test_cosines_are_one_for_equal_inputs_and_lower_otherwise():
    A = torch.softmax(torch.randn(10, 10), -1)
    assert affinity_cosine(A, A) == pytest.approx(1.0)
    assert affinity_cosine(A, torch.softmax(torch.randn(10, 10), -1)) < 0.99
    L = torch.rand(3, 4, 5)
    assert logits_cosine(L, L + 0.3) == pytest.approx(1.0, abs=1e-5)  # a common offset changes nothing
    assert logits_cosine(L, -L) == pytest.approx(-1.0, abs=1e-5)
    assert np.isnan(logits_cosine(L[:1], L[:1]))

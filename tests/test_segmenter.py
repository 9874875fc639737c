"""The segmenter's composition, with the colour stand-ins of ``standins.py`` for the models and
the real head."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from standins import ColourAffinity, ColourLogits, colour_picture

import dslo
from dslo import segmenter as seg_mod
from dslo.head import HeadConfig
from dslo.segmenter import Segmenter, create_segmenter, list_presets, resolve_device, upsample_argmax


@pytest.fixture
def seg():
    return Segmenter(ColourLogits(), ColourAffinity(), mode="mv", max_side=None,
                     info={"preset": "test", "logits": "colour", "attention": "colour"})


def test_segments_coloured_regions(seg):
    img, truth = colour_picture()
    r = seg.predict(img, "red, green, blue")
    assert r.labels.shape == truth.shape and r.labels.dtype == np.int64
    assert (r.labels == truth).mean() > 0.95
    assert r.class_names == ["red", "green", "blue"]
    assert r.background == {"policy": "none"}
    assert set(r.score_class_ids.tolist()) <= {0, 1, 2} and r.scores.shape[0] == len(r.score_class_ids)


def test_every_image_form_gives_the_same_labels(seg, tmp_path):
    img, _ = colour_picture()
    path = tmp_path / "pic.png"
    Image.fromarray(img).save(path)
    forms = [img, Image.fromarray(img), torch.from_numpy(img).permute(2, 0, 1).contiguous(),
             path, str(path)]
    results = [seg.predict(f, ["red", "green", "blue"]) for f in forms]
    for r in results[1:]:
        assert np.array_equal(r.labels, results[0].labels)
    assert results[3].image_name == str(path) and results[0].image_name is None


def test_every_class_form_gives_the_same_labels(seg, tmp_path):
    img, _ = colour_picture()
    f = tmp_path / "classes.txt"
    f.write_text("red\ngreen\nblue, navy\n")
    a = seg.predict(img, "red, green, blue")
    b = seg.predict(img, ["red", ["green"], "blue, navy"])
    c = seg.predict(img, f)
    assert np.array_equal(b.labels, c.labels)
    # "navy" raises the blue class's max-over-synonyms logit a little; the default readout reads
    # the evidence's own posterior (on this clean evidence, plain upsampling), so pixels near
    # borders may differ from "blue" alone
    assert (a.labels == b.labels).mean() > 0.9  # 95.5 % here
    assert c.classes == [["red"], ["green"], ["blue", "navy"]]
    # the logits model received the synonym lists
    assert seg.logits_model.calls[-1][1] == [["red"], ["green"], ["blue", "navy"]]


def test_background_none_stuff_threshold(seg):
    img, truth = colour_picture()
    # none: the blue third must go to one of the two classes given
    none = seg.predict(img, "red, green", background="none")
    assert none.class_names == ["red", "green"] and none.labels.max() <= 1

    # stuff: a 'background' class (id 0) of stuff words; 'sky' is blue to the stand-in model
    stuff = seg.predict(img, "red, green", background="stuff")
    assert stuff.class_names == ["background", "red", "green"]
    assert "sky" in stuff.classes[0] and "background" not in stuff.classes[0]
    assert stuff.background["policy"] == "stuff"
    right = stuff.labels == np.where(truth == 2, 0, truth + 1)
    # This clean evidence is read out as plain upsampling (the fused readout's λ = 0), whose edges
    # follow CLIP's 16 px grid: every pixel one patch away from the two region borders is right.
    away = np.ones(truth.shape[1], bool)
    for border in (truth.shape[1] / 3, 2 * truth.shape[1] / 3):
        away &= np.abs(np.arange(truth.shape[1]) - border) >= 16
    assert right[:, away].all() and right.mean() > 0.9

    # threshold: blue patches are equally (un)like red and green → probability ~0.5 → background
    # (no noise here: at scale 40 a little colour noise already tips the balance)
    img, truth = colour_picture(noise=0)
    thr = seg.predict(img, "red, green", background=0.7)
    assert thr.class_names == ["background", "red", "green"]
    assert thr.background == {"policy": "threshold", "class_id": 0, "threshold": 0.7, "scale": 40.0}
    # CLIP's grid is coarse (16 px here): judge the blue region away from its border with green
    inside_blue = (truth == 2) & (np.arange(truth.shape[1]) >= 104)[None]
    assert (thr.labels[inside_blue] == 0).all()
    assert (thr.labels[truth < 2] == truth[truth < 2] + 1).mean() > 0.9
    assert set(thr.score_class_ids.tolist()) <= {1, 2}  # score maps are of the head's classes


def test_threshold_reads_the_clip_class_softmax(seg):
    """The background mask is exactly {max_c softmax(40 L)_c < t}, upsampled to the image."""
    img, _ = colour_picture(64, 64)
    L = seg.logits_model.logits(img, [["red"], ["green"]])
    conf = torch.softmax(40 * L, 0).amax(0)
    conf = torch.nn.functional.interpolate(conf[None, None], size=(64, 64), mode="bilinear",
                                           align_corners=False)[0, 0]
    r = seg.predict(img, "red, green", background=0.8)
    assert np.array_equal(r.labels == 0, (conf < 0.8).numpy())


def test_segmenter_default_background(seg):
    s2 = Segmenter(seg.logits_model, seg.attention_model, max_side=None, background="stuff")
    img, _ = colour_picture()
    assert s2.predict(img, "red, green").class_names[0] == "background"
    assert s2.predict(img, "red, green", background="none").class_names == ["red", "green"]


def test_background_class_name_conflict(seg):
    img, _ = colour_picture()
    with pytest.raises(ValueError, match="named 'background'"):
        seg.predict(img, "background, red", background="stuff")


def test_large_images_are_downscaled_for_models_and_labels_come_back_full_size():
    img, truth = colour_picture(300, 480)
    s = Segmenter(ColourLogits(), ColourAffinity(), max_side=120)
    r = s.predict(img, "red, green, blue")
    assert s.logits_model.calls[-1][0] == (75, 120, 3)  # the models saw the downscaled image
    assert r.labels.shape == (300, 480) and r.model["input_size"] == [75, 120]
    assert (r.labels == truth).mean() > 0.95
    assert r.scores.shape[1:] == (75, 120)


def test_upsample_argmax_matches_full_bilinear_interpolation():
    torch.manual_seed(0)
    for k, h, w, H, W in [(4, 7, 9, 50, 61), (3, 16, 12, 16, 12), (2, 5, 5, 3, 4), (5, 10, 20, 333, 517)]:
        s = torch.rand(k, h, w, dtype=torch.float64)
        full = torch.nn.functional.interpolate(s[None], size=(H, W), mode="bilinear", align_corners=False)[0]
        got = upsample_argmax(s, (H, W), band=37)
        assert got.shape == (H, W)
        assert torch.equal(got, full.argmax(0))


def test_result_outputs(seg, tmp_path):
    img, _ = colour_picture()
    r = seg.predict(img, "red, green, blue", background="stuff")
    m = r.save_mask(tmp_path / "m.png")
    back = Image.open(m)
    assert back.mode == "P" and np.array_equal(np.array(back), r.labels)
    assert tuple(back.getpalette()[:3]) == (0, 0, 0)  # background is black
    ov = r.overlay()
    assert ov.size[1] == img.shape[0] and ov.size[0] > img.shape[1]
    doc = json.loads(r.to_json(image_name="pic.png"))
    assert doc["image"] == "pic.png" and (doc["width"], doc["height"]) == (128, 96)
    assert doc["classes"] == r.class_names
    assert sum(s["area"] for s in doc["segments"]) == 128 * 96
    assert doc["model"]["background"]["policy"] == "stuff" and doc["model"]["mode"] == "mv"
    assert doc["model"]["head"]["nms_threshold"] == 0.5  # the head's settings are recorded
    rec = torch.load(r.save_scores(tmp_path / "s.pt"))
    assert rec["scores"].shape[0] == len(rec["class_ids"]) and rec["class_names"] == r.class_names
    assert r.areas() == {d["class_name"]: d["area"] for d in doc["segments"]}


def test_refine_with_external_logits_equals_the_head(seg):
    from dslo.head import refine

    img, _ = colour_picture()
    L = torch.rand(3, 6, 8)
    r = seg.refine(L, img, ["a", "b", "c"])
    A, grid = seg.attention_model.affinity(img)
    ref = refine(L, A, img, mode="mv", grid=grid)
    assert np.array_equal(r.labels, ref.labels.numpy())
    with pytest.raises(ValueError, match="do not fit 2 classes"):
        seg.refine(L, img, ["a", "b"])
    with pytest.raises(ValueError, match="stuff-word background needs the logits model"):
        seg.refine(L, img, ["a", "b", "c"], background="stuff")


def test_head_settings_reach_the_head(monkeypatch, seg):
    seen = {}
    real = seg_mod._head_refine

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(seg_mod, "_head_refine", spy)
    s = Segmenter(seg.logits_model, seg.attention_model, mode="op", max_side=None,
                  head_settings={"nms_threshold": 0.6, "eps": 0.2})
    img, _ = colour_picture()
    r = s.predict(img, "red, green, blue")
    cfg = seen["config"]
    assert seen["mode"] == "op" and cfg.nms_threshold == 0.6 and cfg.eps == 0.2
    assert cfg == HeadConfig(nms_threshold=0.6, eps=0.2)  # every other setting at its default
    assert seen["grid"] == (12, 16)
    assert r.model["head"]["eps"] == 0.2 and r.model["mode"] == "op"


def test_bad_inputs(seg, tmp_path):
    img, _ = colour_picture()
    with pytest.raises(ValueError, match="duplicate class name"):
        seg.predict(img, "red, Red")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    from dslo.imageio import ImageReadError

    with pytest.raises(ImageReadError, match="bad.jpg"):
        seg.predict(bad, "red, green")
    with pytest.raises(ValueError, match="unknown mode"):
        Segmenter(seg.logits_model, seg.attention_model, mode="fast")


# --- create_segmenter: presets and overrides, without real weights --------------------------


def test_presets_table():
    p = list_presets()
    assert {"default", "paper-mv", "paper-op", "offline", "default-l14", "paper-mv-l14"} <= set(p)
    assert (p["paper-mv"]["attention"], p["paper-mv"]["mode"]) == ("sd2", "mv")
    assert p["paper-op"]["mode"] == "op" and p["default"]["attention"] == "dinov2-reg-b14"
    assert p["offline"]["attention"] == "focus-s14" and p["offline"]["logits"] is None
    assert dslo.list_presets() == p


def test_unknown_names_suggest_the_closest():
    with pytest.raises(ValueError, match="did you mean default"):
        create_segmenter("defualt")
    with pytest.raises(ValueError, match="did you mean clip-b16"):
        create_segmenter("default", logits="clip-b61")
    with pytest.raises(ValueError, match="did you mean dinov2-reg-b14"):
        create_segmenter("default", attention="dinov2-regb14")
    with pytest.raises(ValueError, match="did you mean nms_threshold"):
        create_segmenter("default", nms_treshold=0.6)


def test_offline_without_a_clip_says_how_to_pass_one(monkeypatch):
    import dslo.models

    monkeypatch.setattr(dslo.models, "weights_available", lambda name: False)
    with pytest.raises(RuntimeError, match="--logits DIR") as e:
        create_segmenter("offline")
    assert isinstance(e.value, dslo.models.WeightsNotFoundError)
    assert "make_tiny_clip" in str(e.value)


def test_overrides_and_model_creation(monkeypatch):
    made = []

    def fake(kind):
        def create(name, device="auto", **kw):
            made.append((kind, name, device, kw))
            return ColourLogits() if kind == "logits" else ColourAffinity()
        return create

    import dslo.models

    monkeypatch.setattr(dslo.models, "create_logits_model", fake("logits"))
    monkeypatch.setattr(dslo.models, "create_attention_model", fake("attention"))
    s = create_segmenter("paper-op", device="cpu", attention="dinov2-b14", max_side=512,
                         nms_threshold=0.7, logits_options={"short_side": 224})
    assert made == [("logits", "clip-b16", "cpu", {"short_side": 224}),
                    ("attention", "dinov2-b14", "cpu", {})]
    assert s.mode == "op" and s.max_side == 512
    # the paper's head (the preset's: SPEC §8) with the override on top
    assert s.head_settings == {"fusion": "none", "recover_threshold": None, "nms_threshold": 0.7}
    assert s.info == {"preset": "paper-op", "logits": "clip-b16", "attention": "dinov2-b14",
                      "device": "cpu", "dtype": "auto"}
    made.clear()
    create_segmenter("clip-l14", device="cpu", dtype="float32")  # a logits name: default preset
    assert made[0][1:] == ("clip-l14", "cpu", {"dtype": "float32"})
    assert made[1][1] == "dinov2-reg-b14"


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if expected == "cpu" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu0")


def test_clip_attention_shares_the_logits_model(tmp_path):
    """attention="clip" reuses the loaded logits CLIP (one tower in memory) instead of loading a
    second one; the segmenter still runs end to end through the real loaders."""
    from dslo.testing import make_tiny_clip

    clip_dir = make_tiny_clip(tmp_path / "clip")
    s = create_segmenter("offline", logits=clip_dir, attention="clip", device="cpu")
    assert s.attention_model.clip is s.logits_model
    img, truth = colour_picture()
    result = s.predict(img, ["red", "green", "blue"])
    assert result.labels.shape == truth.shape and set(np.unique(result.labels)) <= {0, 1, 2}

"""Segmenter.predict_batch against predict, image by image, and each model's batched pass against
its single-image pass, on tiny random models saved and loaded through the real loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dslo.models import create_attention_model
from dslo.segmenter import Segmenter, create_segmenter
from dslo.testing import make_tiny_clip, make_tiny_dino, make_tiny_dinov2

CLASSES = ["sky", ["road", "street"], "car"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"clip": make_tiny_clip(root / "clip"), "dinov2-reg": make_tiny_dinov2(root / "reg", registers=4),
            "dino": make_tiny_dino(root / "dino")}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    sizes = [(60, 90), (60, 90), (50, 50), (60, 90), (50, 50)]  # two size groups, interleaved
    return [rng.integers(0, 256, size=(*s, 3), dtype=np.uint8) for s in sizes]


def assert_same(batch, single):
    assert len(batch) == len(single)
    for b, s in zip(batch, single, strict=False):
        assert np.array_equal(b.labels, s.labels)
        assert b.class_names == s.class_names and np.array_equal(b.score_class_ids, s.score_class_ids)
        torch.testing.assert_close(b.scores, s.scores, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["dinov2-reg", "clip"])
@pytest.mark.parametrize("background", ["none", "stuff"])
def test_predict_batch_equals_predict(dirs, images, attention, background):
    att = {"attention": "clip"} if attention == "clip" else {"attention": dirs[attention],
                                                              "attention_options": {"short_side": 56}}
    seg = create_segmenter("offline", logits=dirs["clip"], device="cpu", logits_options={"short_side": 64},
                           background=background, **att)
    single = [seg.predict(im, CLASSES) for im in images]
    assert_same(seg.predict_batch(images, CLASSES), single)
    assert_same(seg.predict_batch(images, CLASSES, batch_size=2), single)


def test_models_without_batch_methods_are_called_per_image(dirs, images):
    class PerImage:
        def __init__(self, model):
            self.model, self.calls = model, 0

        def affinity(self, image):
            self.calls += 1
            return self.model.affinity(image)

    reg = create_attention_model(dirs["dinov2-reg"], device="cpu", short_side=56)
    seg = create_segmenter("offline", logits=dirs["clip"], attention=dirs["dinov2-reg"], device="cpu",
                           logits_options={"short_side": 64}, attention_options={"short_side": 56})
    plain = Segmenter(seg.logits_model, PerImage(reg), mode="mv")
    assert_same(plain.predict_batch(images, CLASSES), [seg.predict(im, CLASSES) for im in images])
    assert plain.attention_model.calls == len(images)
    with pytest.raises(ValueError, match="batch_size"):
        plain.predict_batch(images, CLASSES, batch_size=0)


@pytest.mark.parametrize("kind", ["dinov2-reg", "dino"])
def test_vit_affinity_batch_equals_single(dirs, images, kind):
    src = create_attention_model(dirs[kind], device="cpu", short_side=56, layers=(0, -1))
    same = [images[0], images[1], images[3]]
    A, grid = src.affinity_batch(same)
    for a, im in zip(A, same, strict=False):
        ref, g = src.affinity(im)
        assert g == grid
        torch.testing.assert_close(a, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["dslo", "naclip", "sclip", "clearclip", "maskclip", "vanilla"])
def test_clip_features_batch_one_trunk_pass_equals_single(dirs, images, method):
    from dslo.models import create_logits_model

    clip = create_logits_model(dirs["clip"], device="cpu", short_side=64, method=method)
    same = [images[0], images[1], images[3]]
    calls = []
    trunk = clip._trunk
    clip._trunk = lambda px: calls.append(px.shape[0]) or trunk(px)
    F = clip.dense_features_batch(same)
    assert calls == [3]  # every block but the last runs once for the batch
    assert clip.dense_features_batch(same) is not None and calls == [3]  # the batch's trunk is memoised
    for f, im in zip(F, same, strict=False):
        torch.testing.assert_close(f, clip.dense_features(im), atol=1e-5, rtol=1e-5)
    L = clip.logits_batch(same, CLASSES)
    for lb, im in zip(L, same, strict=False):
        torch.testing.assert_close(lb, clip.logits(im, CLASSES), atol=1e-5, rtol=1e-5)

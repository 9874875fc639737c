"""Encode once, decode many (as segment-anything's set_image / predict): Segmenter.encode runs the
model passes, Segmenter.decode the text side and the head. Tiny random models through the real
loaders; a forward hook on every module of both models counts what runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dslo.segmenter import Encoding, create_segmenter
from dslo.testing import make_tiny_clip, make_tiny_dinov2

CLASSES = ["sky", ["road", "street"], "car"]


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return create_segmenter("default", logits=str(make_tiny_clip(root / "clip")),
                            attention=str(make_tiny_dinov2(root / "reg", registers=4)), device="cpu",
                            max_side=64)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, size=(60, 90, 3), dtype=np.uint8)


class ForwardCounter:
    """Counts forward calls of every module of the segmenter's two models."""

    def __init__(self, seg):
        self.calls = 0
        mods = [seg.logits_model.model, seg.attention_model.model]
        self.handles = [m.register_forward_pre_hook(self._hook) for root in mods for m in root.modules()]

    def _hook(self, *_):
        self.calls += 1

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("mode", ["mv", "op", "none"])
@pytest.mark.parametrize("background", ["none", "stuff", 0.3])
def test_decode_of_an_encoding_is_predict(segmenter, image, mode, background):
    from dslo.segmenter import Segmenter

    enc = segmenter.encode(image)
    assert isinstance(enc, Encoding) and enc.features is not None and enc.affinity is not None
    seg = Segmenter(segmenter.logits_model, segmenter.attention_model, mode=mode, head=segmenter.head,
                    max_side=segmenter.max_side, info=segmenter.info)
    ref = seg.predict(image, CLASSES, background=background)
    got = segmenter.decode(enc, CLASSES, background, mode=mode)
    assert np.array_equal(got.labels, ref.labels) and got.class_names == ref.class_names
    torch.testing.assert_close(got.scores, ref.scores)
    assert got.model == ref.model  # the record says which mode and settings made it


def test_a_new_theta_mode_or_background_runs_no_model_layer(segmenter, image):
    enc = segmenter.encode(image)
    first = segmenter.decode(enc, CLASSES)  # the class list's text embeddings: computed (and kept) here
    counter = ForwardCounter(segmenter)
    try:
        for mode, theta in (("op", 0.3), ("mv", 0.7), ("kl", 0.5)):
            res = segmenter.decode(enc, CLASSES, "stuff" if mode == "kl" else None, mode=mode, nms_threshold=theta)
            assert res.model["head"]["nms_threshold"] == theta and res.model["mode"] == mode
        assert counter.calls == 0
        # a different θ really changes what the head does (it is not a cached result)
        low = segmenter.decode(enc, CLASSES, nms_threshold=0.05, fusion="none")
        high = segmenter.decode(enc, CLASSES, nms_threshold=0.95, fusion="none")
        assert low.seeds is not None and not torch.equal(low.seeds, high.seeds)
        assert counter.calls == 0
    finally:
        counter.close()
    # a new class runs the text tower only: never the vision towers
    vision = [segmenter.logits_model.model.vision_model, segmenter.attention_model.model]
    calls = []
    handles = [m.register_forward_pre_hook(lambda *_: calls.append(1)) for v in vision for m in v.modules()]
    try:
        segmenter.decode(enc, CLASSES + ["bicycle"])
    finally:
        for h in handles:
            h.remove()
    assert calls == [] and first.labels.shape == (60, 90)


def test_encode_batch_equals_encode(segmenter, image):
    other = image[:, ::-1].copy()
    small = image[:40, :50].copy()  # another size: its own group
    batch = segmenter.encode_batch([image, small, other])
    for enc, im in zip(batch, [image, small, other], strict=True):
        one = segmenter.encode(im)
        torch.testing.assert_close(enc.features, one.features, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(enc.affinity, one.affinity, atol=1e-6, rtol=1e-5)
        assert enc.grid == one.grid

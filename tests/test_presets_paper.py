"""Names keep their promise (SPEC §8): every ``paper-*`` preset runs the paper's head exactly (the
readout argmax_c JBU(D_c) over the NMS classes, no fusion, no recovery seeds, every other setting
the SPEC default), the product's presets the product's head, and the evaluation record says which
readout ran."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from standins import ColourAffinity, ColourLogits, colour_picture

from dslo.eval.protocol import describe_segmenter, readout_record
from dslo.head import HeadConfig, refine
from dslo.presets import PRESETS
from dslo.segmenter import create_segmenter

PAPER = [name for name in PRESETS if name.startswith("paper-")]
PRODUCT = ["default", "default-l14", "offline"]

# SPEC §4's constants, written out here from the SPEC (not read from HeadConfig)
SPEC_HEAD = dict(nms_scale=40.0, nms_threshold=0.5, norm_scale=1.0, top_k=10, top_k_above=21, ipf_iters=15,
                 op_cost="ipf", eps=0.1, sinkhorn_iters=50, readout="cost", normalize_max=True, delta=0.3,
                 max_steps=1000, interpolate=True, upsample="jbu", sigma_spatial=1.0, sigma_range=0.1,
                 jbu_radius=None, jbu_max_side=None)


def test_there_are_four_paper_presets_and_each_runs_the_papers_head_exactly():
    assert sorted(PAPER) == ["paper-mv", "paper-mv-l14", "paper-op", "paper-op-l14"]
    for name in PAPER:
        head = PRESETS[name].head
        assert head == HeadConfig.paper() and head.paper_readout, name
        assert head.fusion == "none" and head.recover_threshold is None, name
        assert {k: getattr(head, k) for k in SPEC_HEAD} == SPEC_HEAD, name
        assert PRESETS[name].attention == "sd2" and PRESETS[name].mode in ("mv", "op")


def test_the_product_presets_run_the_product_head():
    for name in PRODUCT:
        assert PRESETS[name].head == HeadConfig() and not PRESETS[name].head.paper_readout, name
        assert {k: getattr(PRESETS[name].head, k) for k in SPEC_HEAD} == SPEC_HEAD, name


def test_the_papers_head_is_argmax_of_the_upsampled_maps_over_the_nms_classes():
    # an independent reading of SPEC §4's output step: refine's labels with the paper's head are
    # kept[argmax_c JBU(D_c)] of its own scores, and no class outside NMS's survivors wins
    g = torch.Generator().manual_seed(0)
    L = 0.15 + 0.15 * torch.rand(4, 5, 6, generator=g)
    A = torch.rand(30, 30, generator=g) + 0.01
    A = A / A.sum(1, keepdim=True)
    img = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    r = refine(L, A, img, config=PRESETS["paper-mv"].head)
    assert r.weight is None
    assert torch.equal(r.labels, r.kept[r.scores.argmax(0)])
    P = torch.softmax(40 * L.reshape(4, -1), 0)
    assert set(r.kept.tolist()) == {c for c in range(4) if (P[c] >= 0.5).any()}


@pytest.mark.parametrize("name", PAPER + ["default"])
def test_create_segmenter_gives_the_presets_head_and_the_record_says_which_readout(monkeypatch, name):
    import dslo.models

    monkeypatch.setattr(dslo.models, "create_logits_model", lambda *a, **k: ColourLogits())
    monkeypatch.setattr(dslo.models, "create_attention_model", lambda *a, **k: ColourAffinity())
    seg = create_segmenter(name, device="cpu")
    paper = name.startswith("paper-")
    assert seg.head == PRESETS[name].head and seg.head.paper_readout == paper
    rec = describe_segmenter(seg)
    assert rec["readout"]["paper"] is paper
    assert rec["readout"]["description"].startswith("paper:" if paper else "fused:")
    assert rec["head"]["fusion"] == ("none" if paper else "evidence")
    # an override of the readout is recorded as what ran, not as the preset's name promises
    seg = create_segmenter(name, device="cpu", fusion="evidence", recover_threshold=0.25)
    assert describe_segmenter(seg)["readout"]["paper"] is False
    img, _ = colour_picture(32, 40)
    assert seg.predict(img, "red, green, blue").labels.shape == (32, 40)


def test_readout_record_of_every_kind():
    assert readout_record("mv", HeadConfig.paper())["paper"] is True
    assert readout_record("mv", HeadConfig.paper(recover_threshold=0.25))["description"].startswith("paper's")
    assert readout_record("none", HeadConfig.paper())["description"].startswith("no head")
    assert readout_record("mv", None) is None
    fixed = readout_record("op", HeadConfig(fusion_weight=3.0))
    assert fixed["paper"] is False and "fixed λ = 3.0" in fixed["description"]
    assert dataclasses.replace(HeadConfig.paper(), fusion="evidence").paper_readout is False

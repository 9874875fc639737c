"""The fused readout (log P_c + λ·D̂_c), its per-image λ rule and the recovery seeds: parity with
naive loops written here, and the edge cases (one class, every class dropped, λ bounds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dslo.errors import SettingsError
from dslo.head import (
    EVIDENCE_SCALE,
    MODE_TABLE,
    FusionRule,
    HeadConfig,
    candidate_classes,
    class_argmax,
    discrepancy,
    evidence_ambiguity,
    evidence_margin,
    evidence_posterior,
    fuse,
    fusion_rule,
    fusion_step,
    fusion_weight,
    image_config,
    nms,
    normalize_maps,
    possible_winners,
    recover_seeds,
    refine,
    seed_classes,
    upsample_maps,
)

# every mode of the table with a fused-readout rule (all that run the head)
RULE_MODES = [name for name, m in MODE_TABLE.items() if m.fusion_rule is not None]


def row_stochastic(n: int, seed: int = 0) -> torch.Tensor:
    A = torch.rand(n, n, generator=torch.Generator().manual_seed(seed)) + 0.01
    return A / A.sum(1, keepdim=True)


def logits(k: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return 0.15 + 0.15 * torch.rand(k, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- parity with naive loops
def test_fuse_equals_naive_loop():
    g = torch.Generator().manual_seed(1)
    K2, N = 5, 7
    log_post = torch.randn(K2, N, generator=g, dtype=torch.float64)
    rows = torch.tensor([0, 2, 3])
    maps = torch.rand(3, N, generator=g, dtype=torch.float64)
    out = fuse(log_post, maps, rows, 2.5)
    for c in range(K2):
        for i in range(N):
            d = float(maps[rows.tolist().index(c), i]) if c in rows.tolist() else 0.0
            assert out[c, i].item() == pytest.approx(log_post[c, i].item() + 2.5 * d, abs=1e-12)


def test_normalize_maps_and_ambiguity_equal_naive_formulas():
    D = torch.tensor([[0.0, 2.0, 4.0], [0.0, 0.0, 0.0], [1.0, 0.5, 0.25]], dtype=torch.float64)
    assert normalize_maps(D).tolist() == [[0.0, 0.5, 1.0], [0.0, 0.0, 0.0], [1.0, 0.5, 0.25]]
    L = logits(4, 3, 5, seed=2).reshape(4, -1)
    naive = 0.0
    for i in range(L.shape[1]):
        p = [math.exp(40 * float(L[c, i])) for c in range(4)]
        naive += max(p) / sum(p)
    assert evidence_ambiguity(L, 40.0) == pytest.approx(1 - naive / L.shape[1], abs=1e-6)


def test_refine_fused_equals_the_pipeline_written_out():
    L, A = logits(4, 5, 6, seed=3), row_stochastic(30, seed=3)
    img = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    cfg = HeadConfig()
    r = refine(L, A, img, mode="mv", config=cfg)
    flat = L.reshape(4, -1)
    a, kept = seed_classes(flat, image_config(flat, cfg, "mv"))
    D = discrepancy(a, A, "mv", cfg)
    rule = MODE_TABLE["mv"].fusion_rule
    lam = fusion_weight(evidence_margin(flat), rule.thresholds, rule.levels)
    assert lam > 0  # this evidence is noisy: the fused branch runs
    up_p = F.interpolate(torch.log_softmax(40 * L, 0)[None], size=(20, 24), mode="bilinear", align_corners=False)[0]
    cand = candidate_classes(torch.log_softmax(40 * L, 0), kept, cfg.fusion_extra)
    up_d = upsample_maps(normalize_maps(D).reshape(-1, 5, 6), torch.from_numpy(img).float() / 255, cfg)
    want = up_p[cand].clone()
    for j, c in enumerate(kept.tolist()):
        want[cand.tolist().index(c)] += lam * up_d[j]
    assert r.weight == pytest.approx(lam)
    assert r.kept.tolist() == cand.tolist()
    assert torch.allclose(r.scores, want, atol=1e-5)
    assert torch.equal(r.labels, cand[want.argmax(0)])


def test_zero_weight_is_plain_upsampling_and_none_is_the_paper_readout():
    L, A = logits(5, 6, 6, seed=4), row_stochastic(36, seed=4)
    img = np.zeros((18, 18, 3), np.uint8)
    plain = refine(L, A, img, mode="none").labels
    assert torch.equal(refine(L, A, img, mode="mv", fusion_weight=0.0, fusion_extra=None).labels, plain)
    # fusion="none": argmax over the kept classes of the upsampled discrepancy, as in the paper
    cfg = HeadConfig().replace(fusion="none")
    r = refine(L, A, img, mode="op", config=cfg)
    a, kept = seed_classes(L.reshape(5, -1), cfg)
    D = discrepancy(a, A, "op", cfg).reshape(-1, 6, 6)
    assert torch.equal(r.kept, kept) and r.weight is None
    assert torch.allclose(r.scores, upsample_maps(D, torch.zeros(18, 18, 3), cfg))


# ---------------------------------------------------------------- λ rule
def test_fusion_weight_is_a_step_function_of_the_margin():
    rule = ((1.0, 3.0), (0.0, 2.0, 8.0))
    assert fusion_weight(5.0, *rule) == 0.0  # clean: the evidence alone
    assert fusion_weight(3.0, *rule) == 0.0  # at a threshold: the cleaner side
    assert fusion_weight(2.0, *rule) == 2.0
    assert fusion_weight(0.5, *rule) == 8.0
    assert fusion_weight(float("inf"), *rule) == 0.0
    with pytest.raises(ValueError, match="one more"):
        fusion_weight(1.0, (1.0,), (0.0,))
    with pytest.raises(ValueError, match="ascend"):
        fusion_weight(1.0, (3.0, 1.0), (0.0, 1.0, 2.0))
    with pytest.raises(ValueError, match=">= 0"):
        fusion_weight(1.0, (1.0,), (0.0, -1.0))
    with pytest.raises(ValueError, match=">= 0"):
        fuse(torch.zeros(2, 3), torch.zeros(1, 3), torch.tensor([0]), -1.0)


def test_margin_equals_naive_median_of_top_two_log_odds():
    L = logits(5, 3, 7, seed=6).reshape(5, -1)
    odds = []
    for i in range(L.shape[1]):
        col = sorted((float(L[c, i]) for c in range(5)), reverse=True)
        odds.append(40 * (col[0] - col[1]))
    # torch's median of an even count is the lower middle value
    assert evidence_margin(L, 40.0) == pytest.approx(sorted(odds)[(len(odds) - 1) // 2], abs=1e-5)
    assert evidence_margin(torch.rand(1, 9)) == float("inf")


def test_ambiguity_spans_certain_to_uniform_evidence():
    K = 6
    certain = torch.zeros(K, 10)
    certain[2] = 1.0  # 40 nats ahead: every patch certain
    assert evidence_ambiguity(certain) == pytest.approx(0.0, abs=1e-6)
    assert evidence_ambiguity(torch.full((K, 10), 0.2)) == pytest.approx(1 - 1 / K, abs=1e-6)


def test_clean_evidence_gets_plain_upsampling_and_noisy_evidence_the_head():
    K, img = 4, np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    A = row_stochastic(36, seed=5)
    clean = torch.zeros(K, 6, 6)
    clean[0, :, :3], clean[1, :, 3:] = 0.3, 0.3  # 12 nats ahead everywhere
    r = refine(clean, A, img)
    assert r.weight == 0.0
    assert torch.equal(r.labels, refine(clean, A, img, mode="none").labels)
    assert set(r.kept.tolist()) == {0, 1}  # scores kept only for the classes that win a pixel
    noisy = logits(K, 6, 6, seed=7)
    for mode in RULE_MODES:
        rule = MODE_TABLE[mode].fusion_rule
        assert evidence_margin(noisy.reshape(K, -1)) < rule.thresholds[0]
        assert refine(noisy, A, img, mode=mode).weight == rule.levels[-1]
        assert refine(clean, A, img, mode=mode).weight == rule.levels[0] == 0.0
    # the rule's settings: a custom rule, and a fixed λ over the rule
    assert refine(noisy, A, img, fusion_thresholds=(0.0, 100.0), fusion_levels=(0.0, 3.0, 9.0)).weight == 3.0
    assert refine(noisy, A, img, fusion_weight=1.5).weight == 1.5


# ---------------------------------------------------------------- edge cases
@pytest.mark.parametrize("mode", ["mv", "op", "kl"])
def test_one_class(mode):
    r = refine(torch.rand(1, 3, 3), row_stochastic(9), np.zeros((6, 7, 3), np.uint8), mode=mode)
    assert (r.labels == 0).all() and r.kept.tolist() == [0] and r.weight == pytest.approx(0.0)


def test_every_class_dropped_by_nms_still_segments():
    # θ = 0.9 and near-uniform evidence: NMS keeps nothing, the head falls back to arg-max seeds
    L = torch.full((3, 4, 4), 0.2)
    L[1, :2] += 0.001
    L[2, 2:] += 0.002
    for rec in (None, 0.3):
        r = refine(L, row_stochastic(16), np.zeros((8, 8, 3), np.uint8), nms_threshold=0.9, recover_threshold=rec)
        assert torch.isfinite(r.scores).all() and set(r.labels.unique().tolist()) <= {1, 2}


def test_recover_seeds_seed_dropped_classes_at_their_argmax_patches_only():
    # class 2 is the arg-max at patch 3 with P ≈ 0.45 < θ: NMS drops it, recovery seeds it there
    L = torch.tensor([[0.30, 0.10, 0.10, 0.200],
                      [0.10, 0.30, 0.12, 0.200],
                      [0.10, 0.10, 0.10, 0.205]])
    _, keep = nms(L, 40.0, 0.5)
    assert not keep[2].any() and not keep[:, 3].any()
    rec = recover_seeds(L, keep, 40.0, 0.3)
    assert rec[2].tolist() == [False, False, False, True]
    assert torch.equal(rec[:2], keep[:2])
    assert (rec.sum(0) <= 1).all()  # still at most one seed per patch
    assert not recover_seeds(L, keep, 40.0, 0.6)[2].any()  # below the recovery threshold
    a, kept = seed_classes(L, HeadConfig(recover_threshold=0.3))
    assert kept.tolist() == [0, 1, 2] and a[2].tolist() == [0.0, 0.0, 0.0, 1.0]


def test_candidates_add_possible_winners_up_to_the_limit():
    S = torch.zeros(5, 1, 4)
    S[0, 0, 0] = S[1, 0, 1] = 1  # 0, 1 top one patch each
    S[3, 0, 2:] = 1  # 3 tops two patches
    S[4] = -5  # 4 can win nowhere
    kept = torch.tensor([1])
    # 10 windows (the replicate-padded 3 x 6 grid); counted by hand: class 0 can win in the windows
    # over columns (p0, p0), (p0, p1), (p1, p2) (a tie at 0 there), 3 in the four right of p0
    assert possible_winners(S).tolist() == [6, 4, 4, 8, 0]
    assert candidate_classes(S, kept).tolist() == [0, 1, 2, 3]
    assert candidate_classes(S, kept, limit=2).tolist() == [0, 1, 3]
    assert candidate_classes(S, kept, limit=0).tolist() == [1]


@pytest.mark.parametrize("seed", range(4))
def test_possible_winners_contain_every_winner_of_plain_upsampling(seed):
    g = torch.Generator().manual_seed(seed)
    K, h, w = 9, 4, 5
    S = torch.randn(K, h, w, generator=g) - 0.8 * torch.arange(K).view(K, 1, 1)  # later classes rarely win
    possible = possible_winners(S) > 0
    assert not possible.all()  # the test is not vacuous: some classes are excluded
    for size in [(4, 5), (9, 13), (40, 50), (3, 2)]:
        won = F.interpolate(S[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0).unique()
        assert possible[won].all(), (size, won, possible)
    # and the windows are needed: a class that tops no patch can still win between patches
    T = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[0.9, 0.9]]])  # (3, 1, 2)
    mid = F.interpolate(T[None], size=(1, 8), mode="bilinear", align_corners=False)[0].argmax(0)
    assert (mid == 2).any() and possible_winners(T)[2] > 0


@pytest.mark.parametrize("weight", [1e-6, 0.3, 2.0, 40.0])
@pytest.mark.parametrize("mode", ["mv", "op"])
def test_fused_readout_equals_the_argmax_over_every_class(weight, mode):
    # The candidate set is exact: refine's labels equal argmax over all K classes of
    # up(log P_c) + λ·JBU(D̂_c), written out here with every class (D̂ = 0 without a head map);
    # with λ → 0 that is plain upsampling's labels.
    K, h, w = 7, 5, 6
    L, A = logits(K, h, w, seed=11), row_stochastic(h * w, seed=11)
    L[-1] = 0.05  # a class absent everywhere: not a candidate, yet the labels are exact
    img = np.random.default_rng(2).integers(0, 256, (23, 29, 3), dtype=np.uint8)
    cfg = HeadConfig(fusion_weight=weight, fusion_extra=None)
    r = refine(L, A, img, mode=mode, config=cfg)
    a, kept = seed_classes(L.reshape(K, -1), cfg)
    D = discrepancy(a, A, mode, cfg)
    up_p = F.interpolate(torch.log_softmax(40 * L, 0)[None], size=(23, 29), mode="bilinear", align_corners=False)[0]
    up_d = torch.zeros_like(up_p)
    up_d[kept] = upsample_maps(normalize_maps(D).reshape(-1, h, w), torch.from_numpy(img).float() / 255, cfg)
    want = (up_p + weight * up_d).argmax(0)
    assert (r.labels != want).sum() == 0
    if weight < 1e-3:
        assert torch.equal(r.labels, refine(L, A, img, mode="none").labels)
    assert K - 1 not in r.kept.tolist()


def test_fused_readout_recovers_a_thin_class_the_paper_readout_drops():
    # A one-patch-wide column of class 1 whose evidence is the arg-max but never above θ = 0.5 of the
    # class softmax: the paper's readout cannot predict it; the fused readout with recovery seeds
    # keeps it (without them its D̂ = 0 against the others' D̂ > 0 there).
    h, w = 6, 10
    L = torch.full((3, h, w), 0.15)
    L[0, :, :4] = 0.30
    L[2, :, 6:] = 0.30
    L[:, :, 4:6] = torch.tensor([0.215, 0.23, 0.215])[:, None, None]  # class 1 ahead by 0.6 nats: P = 0.48
    img = np.zeros((h * 4, w * 4, 3), np.uint8)
    A = row_stochastic(h * w)
    paper = refine(L, A, img, fusion="none", recover_threshold=None)
    assert not (paper.labels == 1).any()
    fused = refine(L, A, img, recover_threshold=0.25)
    assert 1 in fused.kept.tolist() and (fused.labels[:, 18:22] == 1).all()


def test_class_argmax_equals_torch_argmax_including_ties():
    g = torch.Generator().manual_seed(5)
    S = torch.randint(0, 3, (6, 7, 9), generator=g).float()  # many ties: the first index wins
    assert torch.equal(class_argmax(S), S.argmax(0))
    S = torch.randn(4, 33, generator=g, dtype=torch.float64)
    assert torch.equal(class_argmax(S), S.argmax(0))
    assert torch.equal(class_argmax(S[:1]), torch.zeros(33, dtype=torch.int64))


def test_readout_settings_are_typed_values_only():
    # the command line turns text into these (dslo.cli parse_setting; tests/test_cli.py)
    cfg = HeadConfig(fusion_thresholds=[1.5, 3], fusion_levels=(0, 4, 16))
    assert cfg.fusion_thresholds == (1.5, 3.0) and cfg.fusion_levels == (0.0, 4.0, 16.0)
    for bad in (dict(fusion_levels="0,4,16"), dict(fusion_thresholds="1.5, 3"), dict(fusion_levels=(0, "four", 16)),
                dict(fusion_recover="1,0,1"), dict(fusion_recover=(1, 0, 1)), dict(fusion=None)):
        with pytest.raises(SettingsError, match="tuple of|fusion None"):
            HeadConfig(**bad)


def test_every_mode_of_the_table_has_a_valid_rule_and_a_partial_override_is_checked_against_each():
    for name, mode in MODE_TABLE.items():
        rule = mode.fusion_rule
        assert (rule is None) == (not mode.runs_head), name
        if rule is None:
            assert fusion_rule(HeadConfig(), name) is None
            continue
        assert isinstance(rule, FusionRule) and rule.levels[0] == 0.0  # clean evidence: plain upsampling
        assert len(rule.recover) == len(rule.levels) == len(rule.thresholds) + 1
        assert fusion_rule(HeadConfig(), name) == rule
        # a part set in the config replaces the mode's, the others stay the mode's
        assert fusion_rule(HeadConfig(fusion_thresholds=(1.0, 2.0)), name) == FusionRule((1.0, 2.0), rule.levels,
                                                                                         rule.recover)
        # more levels than the rule's flags: the last flag repeats for the extra step
        four = HeadConfig(fusion_thresholds=(1.0, 2.0, 3.0), fusion_levels=(0.0, 1.0, 2.0, 3.0))
        assert fusion_rule(four, name).recover == rule.recover + rule.recover[-1:]
    with pytest.raises(SettingsError, match="one more entry"):
        HeadConfig(fusion_thresholds=(1.0,))  # 1 threshold against the modes' 3 levels
    with pytest.raises(ValueError, match="ascend"):
        FusionRule((2.0, 1.0), (0.0, 1.0, 2.0), (True, True, True))


def test_evidence_posterior_is_the_one_softmax_at_the_one_scale():
    L = logits(4, 3, 5, seed=8)
    assert EVIDENCE_SCALE == 40.0 == HeadConfig().nms_scale  # SPEC §4: s = 40
    P = evidence_posterior(L)
    naive = torch.exp(40 * L) / torch.exp(40 * L).sum(0, keepdim=True)
    torch.testing.assert_close(P, naive)
    torch.testing.assert_close(evidence_posterior(L, 10.0, log=True), torch.log_softmax(10 * L, 0))
    masked, keep = nms(L.reshape(4, -1))
    assert torch.equal(keep, evidence_posterior(L.reshape(4, -1)) >= 0.5)


def test_the_rule_step_switches_recovery_seeds_as_fusion_recover_says():
    assert [fusion_step(m, (1.0, 2.0)) for m in (2.5, 2.0, 1.5, 0.5)] == [0, 0, 1, 2]
    cfg = HeadConfig(recover_threshold=0.25, fusion_recover=(True, False, True))
    flat = torch.zeros(3, 4)
    for gap, step in ((1.9 / 40, 1), (0.5 / 40, 2)):  # margins 1.9 (middle step of (1, 2)) and 0.5
        flat[0] = gap
        c = image_config(flat, cfg.replace(fusion_thresholds=(1.0, 2.0)), "mv")
        assert c.recover_threshold == (None if step == 1 else 0.25)
        assert fusion_step(evidence_margin(flat), (1.0, 2.0)) == step
    # the paper's readout and a fixed λ keep the settings as given
    flat[0] = 1.9 / 40
    for other in (dict(fusion="none"), dict(fusion_weight=3.0)):
        c = cfg.replace(fusion_thresholds=(1.0, 2.0), **other)
        assert image_config(flat, c, "mv") is c


def test_refine_seeds_without_recovery_in_the_middle_step():
    # The thin column of class 1 below (P = 0.48 < θ): only the recovery seeds give it a map. In a
    # step whose flag is off, refine's labels are those of recover_threshold=None.
    h, w = 6, 10
    L = torch.full((3, h, w), 0.15)
    L[0, :, :4] = 0.30
    L[2, :, 6:] = 0.30
    L[:, :, 4:6] = torch.tensor([0.215, 0.23, 0.215])[:, None, None]
    img, A = np.zeros((h * 4, w * 4, 3), np.uint8), row_stochastic(h * w)
    m = evidence_margin(L.reshape(3, -1))
    rule = dict(fusion_thresholds=(m / 2, m * 2), fusion_levels=(0.0, 40.0, 80.0))  # m: the middle step
    off = refine(L, A, img, fusion_recover=(True, False, True), **rule)
    on = refine(L, A, img, fusion_recover=(True, True, True), **rule)
    assert off.weight == on.weight == 40.0
    assert torch.equal(off.labels, refine(L, A, img, recover_threshold=None, **rule).labels)
    assert (on.labels[:, 18:22] == 1).all() and not torch.equal(on.labels, off.labels)


def test_fusion_recover_errors():
    with pytest.raises(SettingsError, match="one flag per fusion level"):
        HeadConfig(fusion_recover=(True, False))
    with pytest.raises(SettingsError, match="True/False"):
        HeadConfig(fusion_recover=(1, 0, 1))
    assert HeadConfig(fusion_recover=[True, False, False]).fusion_recover == (True, False, False)


def test_readout_settings_as_the_command_line_gives_them():
    # dslo.cli's parse_setting turns the text of `--set KEY=VALUE` into typed values for HeadConfig
    import argparse

    from dslo.cli import parse_setting

    given = ["fusion=none", "fusion_thresholds=1.5, 3", "fusion_levels=0,4,16", "fusion_recover=1,0,yes",
             "recover_threshold=none", "upsample=bilinear"]
    settings = dict(parse_setting(t) for t in given)
    assert settings == {"fusion": "none", "fusion_thresholds": (1.5, 3), "fusion_levels": (0, 4, 16),
                        "fusion_recover": (True, False, True), "recover_threshold": None, "upsample": "bilinear"}
    cfg = HeadConfig(**settings)
    assert cfg.fusion == "none" and cfg.fusion_levels == (0.0, 4.0, 16.0) and cfg.fusion_recover == (True, False, True)
    assert HeadConfig(**dict([parse_setting("fusion_recover=true, false, true")])).fusion_recover == (True, False, True)
    # one number for a one-threshold rule; a setting that is not the head's reads as before
    assert parse_setting("fusion_thresholds=2.5") == ("fusion_thresholds", 2.5)
    assert parse_setting("post=none") == ("post", None) and parse_setting("layers=-2,-1") == ("layers", (-2, -1))
    with pytest.raises(argparse.ArgumentTypeError, match="true/false"):
        parse_setting("fusion_recover=1,maybe,0")
    with pytest.raises(SettingsError, match="tuple of numbers"):
        HeadConfig(**dict([parse_setting("fusion_levels=0,four,16")]))


def test_an_infinite_level_is_the_papers_readout_in_that_step():
    L, A = logits(4, 5, 6, seed=11), row_stochastic(30, seed=11)
    img = np.random.default_rng(2).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    for mode in RULE_MODES:
        # every image in the noisiest step (thresholds above its margin), which reads out as the paper
        r = refine(L, A, img, mode=mode, fusion_thresholds=(50.0, 60.0), fusion_levels=(0.0, 4.0, math.inf),
                   fusion_recover=(True, True, False))
        paper = refine(L, A, img, mode=mode, config=HeadConfig.paper())
        assert r.weight == math.inf
        assert torch.equal(r.labels, paper.labels) and torch.equal(r.scores, paper.scores)
    with pytest.raises(SettingsError, match="tuple of numbers"):
        HeadConfig(fusion_thresholds=(1.0, math.inf))  # ∞ is a level, not a threshold

"""The benchmark scripts: the evidence generator (exact patch fractions, seeding, each degradation
doing what it says), the memory sampler, and a smoke run of the real-image benchmark on one image
per dataset (skipped without ../shared/data)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_data_dirs

from benchmarks import common, evidence
from benchmarks.evidence import EvidenceConfig, logits_grid, make_evidence, patch_fractions, stable_seed
from dslo.head import MODE_TABLE, discrepancy

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

CLEAN = EvidenceConfig(blur_sigma=0.0, noise_amp=0.0, confusion_prob=0.0, distractors=0)


def _label(seed: int = 0, shape=(45, 61), K: int = 5) -> np.ndarray:
    """A blocky label map with an ignore band: classes 0..K-2 present, class K-1 absent."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, K - 1, size=(5, 7))
    lab = np.kron(coarse, np.ones((9, 9), dtype=np.int64))[: shape[0], : shape[1]]
    lab = np.pad(lab, ((0, max(0, shape[0] - lab.shape[0])), (0, max(0, shape[1] - lab.shape[1]))), mode="edge")
    lab[20:23, :] = 255
    return lab


def test_patch_fractions_match_a_naive_loop():
    lab = _label()
    K, (h, w) = 5, (7, 9)
    got = patch_fractions(lab, K, (h, w))
    H, W = lab.shape
    want = np.zeros((K, h, w))
    for y in range(H):
        for x in range(W):
            if lab[y, x] < K:
                want[lab[y, x], y * h // H, x * w // W] += 1
    tot = want.sum(0, keepdims=True)
    want = np.divide(want, tot, out=np.zeros_like(want), where=tot > 0)
    np.testing.assert_allclose(got, want, atol=1e-6)
    sums = got.sum(0)
    assert np.all((np.abs(sums - 1) < 1e-6) | (sums == 0))


def test_patch_fractions_all_ignored_patch_is_zero():
    lab = np.full((10, 10), 255)
    lab[:, 5:] = 1
    fr = patch_fractions(lab, 3, (1, 2))
    np.testing.assert_array_equal(fr[:, 0, 0], 0)
    np.testing.assert_allclose(fr[:, 0, 1], [0, 1, 0])


def test_logits_grid_is_clip_b16_at_336():
    assert logits_grid((360, 480)) == (21, 28)
    assert logits_grid((480, 640)) == (21, 28)
    assert logits_grid((640, 427)) == (31, 21)


def test_clean_evidence_maps_fractions_to_the_cosine_range():
    lab = _label()
    L = make_evidence(lab, 5, (7, 9), CLEAN, seed=1)
    fr = torch.from_numpy(patch_fractions(lab, 5, (7, 9)))
    torch.testing.assert_close(L, 0.15 + 0.15 * fr)


def test_evidence_is_seeded_and_deterministic():
    lab = _label()
    cfg = evidence.PRESETS["medium"]
    a = make_evidence(lab, 5, (7, 9), cfg, seed=stable_seed(0, "x", "img", "medium"))
    b = make_evidence(lab, 5, (7, 9), cfg, seed=stable_seed(0, "x", "img", "medium"))
    c = make_evidence(lab, 5, (7, 9), cfg, seed=stable_seed(1, "x", "img", "medium"))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    assert stable_seed(0, "x") == stable_seed(0, "x") != stable_seed(0, "y")


def test_stable_seed_does_not_depend_on_the_process():
    # blake2b of the joined parts: a fixed value, unlike the per-process salted hash().
    import hashlib

    want = int.from_bytes(hashlib.blake2b(b"0\x1fcamvid", digest_size=8).digest(), "little") >> 1
    assert stable_seed(0, "camvid") == want


def test_distractors_touch_only_absent_classes():
    lab = _label()  # class 4 absent
    cfg = CLEAN.replace(distractors=3, distractor_amp=0.5)
    L = make_evidence(lab, 8, (7, 9), cfg, seed=3)  # absent: 4, 5, 6, 7
    clean = make_evidence(lab, 8, (7, 9), CLEAN, seed=3)
    changed = [c for c in range(8) if not torch.equal(L[c], clean[c])]
    assert len(changed) == 3 and all(c >= 4 for c in changed)
    assert all(float((L[c] - clean[c]).max()) <= 0.15 * 0.5 + 1e-6 for c in changed)


def test_confusion_leaks_into_another_present_class():
    lab = _label()
    cfg = CLEAN.replace(confusion_prob=1.0, confusion_weight=0.5)
    L = make_evidence(lab, 5, (7, 9), cfg, seed=5)
    clean = make_evidence(lab, 5, (7, 9), CLEAN, seed=5)
    assert torch.all(clean - 1e-7 <= L)
    assert torch.equal(L[4], clean[4])  # the absent class is never a confusion partner
    assert float((L - clean).sum()) > 0
    # Leaked evidence is at most half of the source class: the true class still wins everywhere.
    fr = patch_fractions(lab, 5, (7, 9))
    pure = fr.max(0) == 1
    assert np.all(L.numpy().argmax(0)[pure] == fr.argmax(0)[pure])


def test_presets_degrade_in_order():
    """Patch-level agreement of the evidence argmax with the majority label falls easy > medium > hard."""
    lab = _label(shape=(90, 122), K=5)
    fr = patch_fractions(lab, 5, (14, 19))
    valid = fr.sum(0) > 0
    acc = {}
    for name, cfg in evidence.PRESETS.items():
        hits = []
        for s in range(8):
            L = make_evidence(lab, 5, (14, 19), cfg, seed=s)
            hits.append((L.numpy().argmax(0) == fr.argmax(0))[valid].mean())
        acc[name] = float(np.mean(hits))
    assert acc["easy"] > acc["medium"] > acc["hard"], acc


def test_spaced_subset_and_table():
    assert common.spaced_subset(10, 3) == [0, 4, 9]
    assert common.spaced_subset(5, None) == list(range(5))
    assert common.spaced_subset(5, 9) == list(range(5))
    assert common.spaced_subset(5, 1) == [0]
    t = common.markdown_table(["a", "b"], [["x", 1.234], ["y", float("nan")]])
    assert t.splitlines() == ["| a | b |", "|---|---|", "| x | 1.2 |", "| y | – |"]


def test_maxrss_is_at_least_the_current_process_size():
    big = np.ones(32 * 2**20 // 8)  # 32 MiB, touched
    assert common.maxrss_bytes() >= big.nbytes
    del big


def test_atomic_write_leaves_no_temporary(tmp_path):
    p = tmp_path / "sub" / "x.json"
    common.write_json(p, {"a": (1, 2), "b": np.float32(0.5)})
    assert json.loads(p.read_text()) == {"a": [1, 2], "b": 0.5}
    assert [q.name for q in p.parent.iterdir()] == ["x.json"]


@pytest.mark.slow
@needs_data_dirs("camvid", "coco_object")
def test_refine_real_smoke_run_and_cache(tmp_path, monkeypatch):
    """One image per dataset, real focus-s14 attention at a small input: every method scores,
    and a second run served from the attention cache gives identical numbers."""
    from benchmarks import refine_real

    monkeypatch.setenv("DSLO_BENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "r.json"
    argv = ["--images", "1", "--presets", "medium", "--short-side", "224", "--out", str(out)]
    assert refine_real.main(argv) == 0
    first = json.loads(out.read_text())
    res = first["main"]["results"]
    assert set(res) == {"camvid", "coco_object"}
    for ds in res:
        assert set(res[ds]["medium"]) == set(refine_real.METHODS)
        for m, r in res[ds]["medium"].items():
            assert 0.0 <= r["miou"] <= 100.0 and r["images"] == 1, (ds, m, r)
    assert first["meta"]["vocabulary"] == {"camvid": 11, "coco_object": 81}
    md = out.with_suffix(".md").read_text()
    assert "| (e) M.V. |" in md and "CamVid medium" in md
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 2

    assert refine_real.main(argv) == 0
    second = json.loads(out.read_text())
    assert second["meta"]["attention_seconds_computed"] == 0.0
    assert second["main"]["results"] == first["main"]["results"]


# ------------------------------------------------------------------------------------------------
# speed.py


def _semantic_affinity(h: int, w: int) -> torch.Tensor:
    """Patches attend mostly within their own vertical half: a two-region affinity, rows sum to 1."""
    region = (torch.arange(w) >= w // 2).repeat(h)
    A = torch.where(region[:, None] == region[None, :], 1.0, 0.02) + torch.rand(h * w, h * w) * 0.01
    return A / A.sum(1, keepdim=True)


@pytest.mark.parametrize("mode", [m for m, spec in MODE_TABLE.items() if spec.runs_head])
def test_speed_head_stages_reproduce_refine(mode):
    """The stage-by-stage head that speed.py times is the head, for every mode of the head's table
    (kl was once timed as optimal path): same labels and scores as refine()."""
    from benchmarks import speed

    from dslo.head import HeadConfig, refine

    torch.manual_seed(0)
    h, w = 6, 8
    L = 0.2 + 0.02 * torch.randn(4, 5, 7)
    L[1, :, :3] += 0.1
    L[2, :, 4:] += 0.1
    A = _semantic_affinity(h, w)
    image = (np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)
    cfg = HeadConfig()
    st = speed.head_stages(L, A, (h, w), image, mode, cfg)
    for name in ("seeds", "ipf", "discrepancy", "jbu"):
        st[name]()
    ref = refine(L, A, image, mode=mode, grid=(h, w), config=cfg)
    assert torch.equal(st["_state"]["labels"], ref.labels)
    assert torch.equal(st["_state"]["rows"], ref.kept)
    D = st["_state"]["D"].reshape(-1, h, w)
    assert torch.equal(D, discrepancy(st["_state"]["a"], A, mode, cfg).reshape(-1, h, w))


def test_speed_head_stages_seed_as_the_rule_step_says():
    """In a step of the λ rule whose recovery flag is off, speed.py's stages seed without recovery,
    as refine() does: a thin column (P = 0.48 < θ) that only the recovery seeds give a map."""
    from benchmarks import speed

    from dslo.head import HeadConfig, evidence_margin, refine

    h, w = 6, 10
    L = torch.full((3, h, w), 0.15)
    L[0, :, :4] = 0.30
    L[2, :, 6:] = 0.30
    L[:, :, 4:6] = torch.tensor([0.215, 0.23, 0.215])[:, None, None]
    A = _semantic_affinity(h, w)
    image = np.zeros((h * 4, w * 4, 3), np.uint8)
    m = evidence_margin(L.reshape(3, -1))
    rule = dict(fusion_thresholds=(m / 2, m * 2), fusion_levels=(0.0, 40.0, 80.0))  # m: the middle step
    for flags in ((True, False, True), (True, True, True)):
        cfg = HeadConfig(fusion_recover=flags, **rule)
        st = speed.head_stages(L, A, (h, w), image, "mv", cfg)
        for name in ("seeds", "ipf", "discrepancy", "jbu"):
            st[name]()
        assert torch.equal(st["_state"]["labels"], refine(L, A, image, mode="mv", config=cfg).labels)
        assert (1 in st["_state"]["kept"].tolist()) == flags[1]  # recovery seeded the column or not


def test_mv_steps_reads_the_latest_arrival():
    from benchmarks import speed

    arrival = torch.tensor([[0.0, 1.0, 2.4], [0.0, 3.0, 0.5]])
    assert speed.mv_steps(1.0 / (1.0 + arrival)) == 3


@pytest.mark.slow
def test_speed_offline_preset_in_process():
    """The offline preset (real focus-s14, random-init CLIP B/16) end to end, one repeat."""
    from benchmarks import speed

    row = speed.measure_preset("offline", torch.device("cpu"), repeat=1, image_path=None, one_template=True)
    assert row["stages_match_refine"] is True
    assert row["attention_grid"] == "32x43" and row["N"] == 1376
    assert 1 <= row["K_kept"] <= 11 and row["mv_steps"] >= 1
    for k in ("logits_ms", "attention_ms", "seeds_ms", "ipf_ms", "discrepancy_ms", "jbu_ms", "predict_ms"):
        assert row[k] > 0, k
    # No ordering between timings is asserted: wall-clock times of separate runs are noise, and speed
    # goals are checked by the benchmark tables, not by unit tests.
    assert row["process_peak_MB"] > 100
    md = speed.render([row], {"command": "x", "machine": "m", "repeat": 1, "text_names": 11})
    assert "| offline |" in md


@pytest.mark.slow
def test_gpu_script_runs_on_the_cpu_in_quick_mode(tmp_path):
    """benchmarks/gpu.sh --device cpu --quick: every step of the GPU script (head timing, a preset
    end to end at two batch sizes) on the CPU, its tables written to --out-dir."""
    import os
    import subprocess

    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(BENCH / "gpu.sh"), "--device", "cpu", "--quick", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    head = json.loads((tmp_path / "head_speed_cpu_quick.json").read_text())
    assert [(r["N"], r["K"]) for r in head] == [(1024, 21)]
    speed = json.loads((tmp_path / "speed_cpu_quick.json").read_text())
    (row,) = speed["rows"]
    assert row["preset"] == "offline" and set(row["batch_ms_per_image"]) == {"1", "2"}
    assert row["best_batch"] in (1, 2) and row["stages_match_refine"] and row["text_cached_ms"] < row["text_once_ms"]
    md = (tmp_path / "speed_cpu_quick.md").read_text()
    assert "best batch" in md and "ms cached" in md
    assert (tmp_path / "head_speed_cpu_quick.md").is_file()
    bad = subprocess.run(["bash", str(BENCH / "gpu.sh"), "--device", "tpu"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--device must be" in bad.stderr


def _toy_records(seed: int = 0, per_cell: int = 5, K: int = 3) -> dict:
    """select_readout-style records of two evidence strengths: each image's margin, and confusions
    of the baselines, the paper readout and the fused variants at every grid λ (the fused labels
    get better or worse with λ by an image-specific amount, so rules differ)."""
    from benchmarks.readout import select_readout as sr

    rng = np.random.default_rng(seed)
    rec = {}
    for s, centre in (("easy", 4.0), ("medium", 2.5)):
        for i in range(per_cell):
            label = rng.integers(0, K, size=(6, 6))
            slope = rng.normal(0.0, 0.02)  # per λ unit: flip probability change

            def noisy(p, label=label):
                flip = rng.random(label.shape) < np.clip(p, 0.0, 1.0)
                return np.where(flip, (label + 1) % K, label)

            conf = {"bilinear": sr.confusion(noisy(0.2), label, K), "jbu": sr.confusion(noisy(0.25), label, K),
                    ("mv", "paper"): sr.confusion(noisy(0.3), label, K)}
            for tag in sr.RECOVERY:
                for lam in sr.LAMBDAS:
                    conf[("mv", tag, lam)] = sr.confusion(noisy(0.2 + slope * min(lam, 30.0)), label, K)
            rec[("toy", i, s)] = {"stats": {"log_odds": centre + rng.normal(0.0, 0.6)}, "conf": conf}
    return rec


def _naive_rule_score(rec, th, lv, tags):
    from benchmarks.readout import select_readout as sr

    key = sr.add_rule(rec, "mv", th, lv, tags)
    worst = sr.worst_margin(rec, key, None)
    _, t = sr.table(rec, [key], None)
    for r in rec.values():
        del r["conf"][key]
    return worst, float(np.mean(t[key]))


def test_in_sample_rule_search_matches_a_naive_loop():
    """select_readout.best_in_sample (vectorised over the levels) against rules scored one by one
    through add_rule / worst_margin / table: with two steps the naive loop over every rule finds
    the same best score; with three, the found rule's numbers are the naive ones and no rule of a
    random sample of 300 scores better."""
    from benchmarks.readout import select_readout as sr

    rec = _toy_records()
    margins = np.array([r["stats"]["log_odds"] for r in rec.values()])
    ths = sorted(set(np.round(np.quantile(margins, np.arange(0.04, 0.97, 0.04)), 2).tolist()))
    grid = sr.LAMBDAS[1:-1]

    worst, mean, th, lv = sr.best_in_sample(rec, "mv", 2, tags=("rec", "norec"), top=1)[0]
    naive = max((min(w, 0.0), m) for w, m in (_naive_rule_score(rec, (t,), (0.0, lam), ("rec", "norec"))
                                              for t in ths for lam in grid))
    assert (min(worst, 0.0), mean) == pytest.approx(naive, abs=1e-9)
    assert _naive_rule_score(rec, th, lv, ("rec", "norec")) == pytest.approx((worst, mean), abs=1e-9)

    tags = ("rec", "norec", "rec")
    worst, mean, th, lv = sr.best_in_sample(rec, "mv", 3, tags=tags, top=1)[0]
    assert _naive_rule_score(rec, th, lv, tags) == pytest.approx((worst, mean), abs=1e-9)
    assert list(lv) == sorted(lv) and lv[0] == 0.0  # λ does not decrease with noise
    rng = np.random.default_rng(1)
    for _ in range(300):
        t = sorted(rng.choice(ths, size=2, replace=False).tolist())
        levels = (0.0, *sorted(rng.choice(grid, size=2).tolist()))
        w, m = _naive_rule_score(rec, tuple(t), levels, tags)
        assert (min(w, 0.0), m) <= (min(worst, 0.0) + 1e-9, mean + 1e-9)


def test_rule_statistics_bracket_the_rules_margin():
    """rule_statistics.py's log-odds quartiles bracket the library's evidence_margin (the median the
    default rule reads), and the attention-based statistics see a clean two-block image as clean."""
    from benchmarks.readout import rule_statistics

    from dslo.head import evidence_margin

    torch.manual_seed(0)
    h, w = 6, 8
    L = 0.2 + 0.02 * torch.randn(4, h, w)
    L[1, :, :3] += 0.1
    st = rule_statistics.statistics(L, _semantic_affinity(h, w), (h, w), 40.0)
    m = evidence_margin(L.reshape(4, -1), 40.0)
    assert st["log-odds q10"] <= st["log-odds q25"] <= m <= st["log-odds q75"] <= st["log-odds q90"]
    clean = torch.full((2, h, w), 0.15)
    clean[0, :, :4] = 0.30
    clean[1, :, 4:] = 0.30
    st = rule_statistics.statistics(clean, _semantic_affinity(h, w), (h, w), 40.0)
    assert st["arg-max kept by attention averaging"] == 1.0 and st["grid neighbours agreeing"] > 0.9


# --- issue 23: the readout's cost per step of the λ rule, int8 against float32 ------------------------
@pytest.mark.parametrize("mode", ["mv", "op"])
def test_head_speed_logits_land_in_every_step_of_the_rule(mode):
    """head_speed.py's per-step logits land where the default readout's own rule says."""
    from benchmarks import head_speed

    from dslo.head import HeadConfig, evidence_margin, fusion_rule

    g = torch.Generator().manual_seed(0)
    L = 0.2 + 0.05 * torch.randn(21, 8, 8, generator=g)
    rule = fusion_rule(HeadConfig(), mode)
    for step in range(len(rule.levels)):
        Ls = head_speed.logits_in_step(L, mode, step)
        assert rule.step(evidence_margin(Ls.reshape(21, -1))) == step
        torch.testing.assert_close(Ls.mean(), L.mean())  # spread about the mean, not shifted


def test_head_speed_readout_cost_times_both_readouts_in_each_step():
    from benchmarks import head_speed

    from dslo.head import HeadConfig, fusion_rule

    g = torch.Generator().manual_seed(1)
    L = 0.2 + 0.05 * torch.randn(5, 8, 8, generator=g)
    A = head_speed.semantic_affinity(8, 8)
    row = head_speed.readout_cost(L, A, torch.rand(32, 32, 3, generator=g), torch.device("cpu"), repeat=1)
    for mode in ("mv", "op"):
        for step in range(len(fusion_rule(HeadConfig(), mode).levels)):
            assert row[f"paper {mode} step {step}"] > 0
            ratio = row[f"default {mode} step {step}"] / row[f"paper {mode} step {step}"]
            assert row[f"readout/paper {mode} step {step}"] == pytest.approx(ratio)


def test_speed_accel_counts_int8_layers_at_their_packed_size():
    from benchmarks.speed_accel import weights_mb

    from dslo.models.accel import quantize_linear_int8

    box = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.LayerNorm(512))
    before = weights_mb(box)
    assert before == pytest.approx((256 * 512 + 512 + 2 * 512) * 4 / 2**20)
    quantize_linear_int8(box)
    after = weights_mb(box)
    # int8 weights, float bias, per-channel scale and zero point (16 bytes a channel), the norm in float
    assert after == pytest.approx((256 * 512 + 512 * 4 + 512 * 16 + 2 * 512 * 4) / 2**20)


@pytest.mark.slow
def test_speed_accel_offline_preset_in_process():
    """float32 against int8 for the offline preset (real focus-s14, random CLIP B/16), one round,
    and agreement over one CamVid image when ../shared/data is there (about 3 min on 2 loaded cores)."""
    from benchmarks import speed
    from benchmarks.speed_accel import measure_accel

    row = measure_accel("offline", torch.device("cpu"), "int8", rounds=1, image_path=None, agreement_images=1)
    assert row["speedup"] > 0 and len(row["ms"]["float32"]) == len(row["ms"]["int8"]) == 1
    assert row["weights_MB"]["int8"] < 0.7 * row["weights_MB"]["float32"]
    assert 0.9 < row["label_agreement"] <= 1.0 and 0.98 < row["affinity_cosine"] <= 1.0 + 1e-6
    if row["agreement"]["images"]:  # real focus-s14 weights on a real CamVid image
        assert row["agreement"]["affinity_cosine_mean"] > 0.99 and row["agreement"]["label_agreement_mean"] > 0.95
    md = speed.render_accel([row], {"command": "x", "machine": "m", "rounds": 1})
    assert "| offline |" in md

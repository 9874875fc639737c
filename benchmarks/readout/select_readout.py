"""Choose the fused readout's settings on one half of the images (even indices), report the other.

For every image and evidence strength this runs the head once per (mode, recovery) variant,
upsamples the evidence term ``s·L`` and the normalised maps ``D̂`` once (JBU is linear), and
records the image's confusion matrix for a grid of fixed λ values, plus the per-image evidence
statistics a λ rule may use. Rules are then scored offline by summing the chosen per-image
confusions, so a rule's mIoU on a half costs no head run.

    python -m benchmarks.readout.select_readout --images 60 --out /tmp/sel.pkl     # record
    python -m benchmarks.readout.select_readout --load /tmp/sel.pkl                # choose + report
    python -m benchmarks.readout.select_readout --load /tmp/sel.pkl --in-sample    # + the family's best, fit on all

Results: docs/benchmarks.md §1b ("A head that does not lose") and benchmarks/results/select_readout.md.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import (
    DATASET_DIRS,
    DEFAULT_DATA_ROOT,
    AttentionCache,
    atomic_write_bytes,
    atomic_write_text,
    spaced_subset,
)
from benchmarks.refine_real import Item, evidence_for, jbu_baseline, load_item, make_probe
from dslo.eval.datasets import get_dataset
from dslo.head import (
    MODE_TABLE,
    HeadConfig,
    candidate_classes,
    class_argmax,
    discrepancy,
    evidence_ambiguity,
    evidence_posterior,
    joint_bilateral_upsample,
    normalize_maps,
    seed_classes,
)
from dslo.head import fusion_step, fusion_weight

# fixed λ, recorded per image so that any rule choosing λ from this grid per image (e.g. a step
# function of the image's ambiguity) is scored exactly offline; 1e6: the head alone (ties to log P)
LAMBDAS = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0, 1e6]
RECOVER = 0.25  # recovery threshold of the "rec" variants
RECOVERY = {"rec": RECOVER, "norec": None}  # the fused variants: with and without recovery seeds
STRENGTHS = ["easy", "medium", "hard", "probe"]


def default_tags() -> tuple[str, ...]:
    """The fused variant ``refine`` runs with its default settings, per step of the rule."""
    thr = HeadConfig().recover_threshold
    return tuple("rec" if on and thr == RECOVER else "norec" for on in MODE_TABLE["mv"].fusion_rule.recover)


def record_evidence(it: Item, strength: str, probe=None) -> torch.Tensor:
    """The ``(K, h, w)`` evidence the records are made from: the seeded synthetic strength (seed 0),
    or the linear probe's (``probe``: :func:`benchmarks.refine_real.make_probe`'s, for ``"probe"``)."""
    return probe.evidence(it.index) if strength == "probe" else evidence_for(it, strength, 0)


def fused_argmax(U1: torch.Tensor, U2: torch.Tensor, lam: float) -> torch.Tensor:
    """``argmax_c (U1 + lam·U2)`` over dim 0 by a running maximum over classes (first index on
    ties, as ``argmax``); ``lam >= 1e5`` ranks by ``U2`` first. Several times faster than
    ``Tensor.argmax(0)`` on a ``(K, H, W)`` CPU tensor, which is most of this script's time."""
    def score(k):
        return U2[k] + U1[k] / lam if lam >= 1e5 else U1[k] + lam * U2[k]

    best = score(0)
    idx = torch.zeros(best.shape, dtype=torch.int64)
    for k in range(1, U1.shape[0]):
        s = score(k)
        m = s > best
        best = torch.where(m, s, best)
        idx.masked_fill_(m, k)
    return idx


def confusion(pred: np.ndarray, label: np.ndarray, K: int) -> tuple:
    """The image's ``(K, K)`` confusion (rows: truth) stored sparsely as ``(K, cells, counts)``:
    an image holds a few of COCO-Object's 81 classes, and a dense 81² matrix per variant, image and
    strength would not fit in memory for the full data sets. :func:`dense` reads it back."""
    ok = label < K
    flat = label[ok].astype(np.int64) * K + pred[ok]
    cells, counts = np.unique(flat, return_counts=True)
    return K, cells.astype(np.int32), counts.astype(np.int64)


def dense(c) -> np.ndarray:
    """A :func:`confusion` as a dense ``(K, K)`` int64 matrix (dense input passes through)."""
    if isinstance(c, np.ndarray):
        return c
    K, cells, counts = c
    return np.bincount(cells, weights=counts, minlength=K * K).astype(np.int64).reshape(K, K)


def record_image(it: Item, L: torch.Tensor, A: torch.Tensor, grid: tuple[int, int], cfg: HeadConfig,
                 have: dict | None = None, tags: tuple[str, ...] = ("rec",)) -> dict:
    """One image's record: evidence statistics and confusions of the baselines, the paper readouts
    and the fused readout at every λ of :data:`LAMBDAS`. With ``have`` (an earlier record of the
    same image and evidence), its baseline and paper-readout confusions are reused, not recomputed
    (they do not depend on the fused readout)."""
    K = L.shape[0]
    N = grid[0] * grid[1]
    Lg = F.interpolate(L[None], size=tuple(grid), mode="bilinear", align_corners=False)[0]
    flat = Lg.reshape(K, N)
    out: dict = {"stats": {"ambiguity": evidence_ambiguity(flat, cfg.nms_scale)}, "conf": {}}
    P = evidence_posterior(flat, cfg.nms_scale)
    srt = P.sort(0, descending=True).values
    out["stats"]["margin"] = float((srt[0] - srt[1]).mean())
    out["stats"]["nms_survival"] = float((srt[0] >= cfg.nms_threshold).float().mean())
    out["stats"]["present"] = int((torch.bincount(flat.argmax(0), minlength=K) > 0).sum())
    top2 = flat.topk(min(2, K), dim=0).values
    out["stats"]["log_odds"] = float((cfg.nms_scale * (top2[0] - top2[-1])).median()) if K > 1 else float("inf")
    reuse = ["bilinear", "jbu", ("mv", "paper"), ("op", "paper")]
    if have is not None and all(k in have["conf"] for k in reuse):
        out["conf"].update({k: have["conf"][k] for k in reuse})
    else:
        out["conf"]["bilinear"] = confusion(
            F.interpolate(L[None], size=it.label.shape, mode="bilinear", align_corners=False)[0].argmax(0).numpy(),
            it.label, K)
        out["conf"]["jbu"] = confusion(jbu_baseline(L, grid, it.image, cfg).numpy(), it.label, K)
    if have is not None:  # fused variants not recomputed here are kept from the earlier record
        out["conf"].update({k: v for k, v in have["conf"].items()
                            if isinstance(k, tuple) and len(k) == 3 and k[1] not in tags})
    log_post = evidence_posterior(L, cfg.nms_scale, log=True)
    for tag in tags:
        # the fused readout's candidates, as refine computes them: the head's classes and the
        # classes that can win plain upsampling (exact: no other class can win a pixel at any λ)
        a, kept = seed_classes(flat, cfg.replace(recover_threshold=RECOVERY[tag]))
        cand = candidate_classes(log_post, kept, cfg.fusion_extra)
        U1 = F.interpolate(log_post[cand][None], size=it.label.shape, mode="bilinear", align_corners=False)[0]
        rows = torch.searchsorted(cand, kept)
        for mode in ("mv", "op"):
            D = discrepancy(a, A, mode, cfg)
            if (mode, "paper") not in out["conf"]:  # the paper: NMS seeds only, no recovery, no fusion
                a0, kept0 = seed_classes(flat, cfg.replace(recover_threshold=None))
                D0 = joint_bilateral_upsample(discrepancy(a0, A, mode, cfg).reshape(-1, *grid), it.image,
                                              cfg.sigma_spatial, cfg.sigma_range, cfg.jbu_radius)
                out["conf"][(mode, "paper")] = confusion(kept0[class_argmax(D0)].numpy(), it.label, K)
            Dup = joint_bilateral_upsample(normalize_maps(D).reshape(-1, *grid), it.image, cfg.sigma_spatial,
                                           cfg.sigma_range, cfg.jbu_radius)
            U2 = torch.zeros_like(U1)
            U2[rows] = Dup
            for lam in LAMBDAS:
                out["conf"][(mode, tag, lam)] = confusion(cand[fused_argmax(U1, U2, lam)].numpy(), it.label, K)
    return out


def _wait_cached(cache: AttentionCache, image: np.ndarray) -> None:
    path = cache.path(image, features=True)
    while not path.is_file():
        time.sleep(5)


def miou(conf: np.ndarray) -> float:
    inter = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - inter
    gt = conf.sum(1)
    ok = gt > 0
    return float(100 * np.mean(inter[ok] / np.maximum(union[ok], 1)))


# ------------------------------------------------------------------------------------------------
# Choosing on the even half, reporting both


def variants(rec: dict) -> list:
    """Every recorded variant key (baselines, paper readouts, fixed λ, λ rules)."""
    return list(next(iter(rec.values()))["conf"])


def cell_miou(rec: dict, ds: str, strength: str, key, half: str | None) -> float:
    """mIoU of one variant over one dataset × strength, on the even / odd half or all (None)."""
    tot = None
    for (d, i, s), r in rec.items():
        if d != ds or s != strength or (half == "even" and i % 2) or (half == "odd" and not i % 2):
            continue
        c = dense(r["conf"][key])
        tot = c.copy() if tot is None else tot + c
    return float("nan") if tot is None else miou(tot)


def table(rec: dict, keys: list, half: str | None) -> tuple[list, dict]:
    cells = sorted({(d, s) for d, _, s in rec}, key=lambda c: (c[0], STRENGTHS.index(c[1])))
    return cells, {k: [cell_miou(rec, d, s, k, half) for d, s in cells] for k in keys}


def rule_key(mode: str, thresholds: tuple, levels: tuple, tag="rec") -> tuple:
    return (mode, "rule", tuple(float(t) for t in thresholds), tuple(float(v) for v in levels), tag)


def rule_conf(r: dict, mode: str, thresholds, levels, tag="rec"):
    """One image's confusion under the step rule: λ from its evidence margin; λ = 0 is plain
    upsampling over every class (what ``refine`` returns then), any other λ a recorded grid value
    of the fused variant ``tag`` (with or without recovery seeds; a tuple: one per step)."""
    lam = fusion_weight(r["stats"]["log_odds"], thresholds, levels)
    if not isinstance(tag, str):
        tag = tag[fusion_step(r["stats"]["log_odds"], thresholds)]
    return r["conf"]["bilinear"] if lam == 0 else r["conf"][(mode, tag, lam)]


def add_rule(rec: dict, mode: str, thresholds, levels, tag: str = "rec") -> tuple:
    """Store the rule's per-image confusions in ``rec`` under :func:`rule_key`; returns the key."""
    key = rule_key(mode, thresholds, levels, tag)
    for r in rec.values():
        r["conf"][key] = rule_conf(r, mode, thresholds, levels, tag)
    return key


def recorded_tags(rec: dict) -> list[str]:
    """The fused variants every record has (:data:`RECOVERY` keys)."""
    return [t for t in RECOVERY if all(("mv", t, LAMBDAS[1]) in r["conf"] for r in rec.values())]


def targets(rec: dict, half: str | None) -> dict:
    """The issue's per-cell target ``max(bilinear, JBU, paper-readout M.V. − 0.5)``."""
    cells, t = table(rec, ["bilinear", "jbu", ("mv", "paper")], half)
    return {c: max(a, b, m - 0.5) for c, a, b, m in zip(cells, t["bilinear"], t["jbu"], t[("mv", "paper")], strict=False)}


def _iou_parts(c) -> np.ndarray:
    """``(3, K)``: the diagonal, row sums (truth) and column sums (prediction) of a confusion. IoU
    needs nothing else, and all three add over images: a rule's confusion is a sum of images'."""
    d = dense(c)
    return np.stack([np.diag(d), d.sum(1), d.sum(0)]).astype(np.float64)


def _miou_parts(p: np.ndarray) -> np.ndarray:
    """mIoU (%) of ``(..., 3, K)`` parts over the classes present in the truth (as :func:`miou`)."""
    inter, gt, pred = p[..., 0, :], p[..., 1, :], p[..., 2, :]
    iou = inter / np.maximum(gt + pred - inter, 1)
    ok = gt > 0
    return 100 * (iou * ok).sum(-1) / np.maximum(ok.sum(-1), 1)


def _class_iou_parts(p: np.ndarray, c: int) -> np.ndarray:
    inter, gt, pred = p[..., 0, c], p[..., 1, c], p[..., 2, c]
    return 100 * inter / np.maximum(gt + pred - inter, 1)


def _fold_cell(parts: np.ndarray, target: float, thin: list, worst: np.ndarray, total: np.ndarray):
    """Score one cell for a whole array of rules (``parts (..., 3, K)``): its mIoU is added to
    ``total``; its margin over ``target`` and its thin classes' IoU margins ``thin`` ((class,
    bilinear IoU) pairs) are folded into ``worst``. Returns ``(worst, total)``."""
    m = _miou_parts(parts)
    worst = np.minimum(worst, m - target)
    for j, base in thin:
        worst = np.minimum(worst, _class_iou_parts(parts, j) - base)
    return worst, total + m


def _rank(worst: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The search's order: rules whose worst case is >= 0 first (by mean), the others by worst case."""
    return np.minimum(worst, 0.0) * 1e3 + mean


# the thin classes whose IoU on clean evidence must not fall below plain upsampling's (issue goal)
THIN_GUARD = {("camvid", "easy"): (2, 6)}  # pole, sign symbol


def choose(rec: dict, top: int = 8, clean_levels: int = 6) -> dict:
    """On the even half: the step rule λ(margin) of each mode with the best worst-case margin
    ("never lose"), the two thresholds shared by both modes. A rule has two thresholds on the evidence's median top-two log-odds and three grid
    levels, clean to noisy, the clean one among the first ``clean_levels`` of :data:`LAMBDAS`
    (0: plain upsampling exactly); levels do not decrease with noise; each step's fused variant
    (with or without recovery seeds, :data:`RECOVERY`) is searched too. The worst case is taken
    over every cell's margin above :func:`targets` and, for :data:`THIN_GUARD`, each thin class's
    IoU margin above plain upsampling's. Rules whose worst case is ≥ 0 (rounded to 0.01) rank by
    their mean over the cells; the others by their worst case. Each rule is scored exactly: its
    per-image λ is a recorded grid value. Thresholds are the 4 %, 8 %, ... 96 % quantiles of the
    margins of the even half's images."""
    even = {k: r for k, r in rec.items() if k[1] % 2 == 0}
    cells = sorted({(d, s) for d, _, s in even}, key=lambda c: (c[0], STRENGTHS.index(c[1])))
    tgt = targets(rec, "even")
    margins = np.array([r["stats"]["log_odds"] for r in even.values()])
    ths = sorted(set(np.round(np.quantile(margins, np.arange(0.04, 0.97, 0.04)), 2).tolist()))
    tags = recorded_tags(rec)
    # a step's options: (fused variant, λ) pairs; the clean step's λ among the first clean_levels
    opts = [(t, lam) for t in tags for lam in LAMBDAS]
    clean = [o for o, (t, lam) in enumerate(opts) if LAMBDAS.index(lam) < clean_levels]
    lv = np.array([lam for _, lam in opts])
    # λ never decreases from clean to noisy: (clean, opts, opts) mask
    ok_rule = (lv[clean][:, None, None] <= lv[None, :, None]) & (lv[None, :, None] <= lv[None, None, :])
    out = {}
    for mode in ("mv", "op"):
        per_cell = {}
        for c in cells:
            ks = [k for k in even if (k[0], k[2]) == c]
            # λ = 0 is plain upsampling (refine's shortcut; the recorded fused λ = 0 differs from it
            # where fusion_extra cuts the candidates)
            V = np.stack([[_iou_parts(even[k]["conf"]["bilinear" if lam == 0 else (mode, t, lam)]) for t, lam in opts]
                          for k in ks])
            thin = []
            if c in THIN_GUARD:
                base = sum(_iou_parts(even[k]["conf"]["bilinear"]) for k in ks)
                thin = [(j, _class_iou_parts(base, j)) for j in THIN_GUARD[c]]
            per_cell[c] = (V, np.array([even[k]["stats"]["log_odds"] for k in ks]), thin)
        scored = []
        for i, t1 in enumerate(ths):
            for t2 in ths[i + 1:]:
                worst = np.full(ok_rule.shape, np.inf)
                total = np.zeros(ok_rule.shape)
                for c, (V, x, thin) in per_cell.items():
                    g0, g1, g2 = (V[m].sum(0) for m in (x >= t2, (x >= t1) & (x < t2), x < t1))
                    parts = g0[clean][:, None, None] + g1[None, :, None] + g2[None, None, :]
                    worst, total = _fold_cell(parts, tgt[c], thin, worst, total)
                worst = np.where(ok_rule, worst, -np.inf)
                mean = total / len(per_cell)
                o0, o1, o2 = np.unravel_index(np.argmax(_rank(worst, mean)), worst.shape)
                steps = [opts[clean[o0]], opts[o1], opts[o2]]
                scored.append((float(worst[o0, o1, o2]), float(mean[o0, o1, o2]),
                               ((t1, t2), tuple(lam for _, lam in steps), tuple(t for t, _ in steps))))
        out[mode] = scored
    # One pair of thresholds for both modes (one reading of how clean an image's evidence is; the
    # levels and variants stay per mode): the pair whose worse mode's worst case is best, then the
    # best sum of the two modes' means.
    joint = sorted(zip(out["mv"], out["op"], strict=False), key=lambda p: (min(p[0][0], p[1][0], 0.0), p[0][1] + p[1][1]),
                   reverse=True)[:top]
    return {"mv": [p[0] for p in joint], "op": [p[1] for p in joint]}


def step_tags(steps: int) -> tuple[str, ...]:
    """The fused variant each step of a ``steps``-step rule reads: :func:`default_tags`, its middle
    flag repeated when there are more steps."""
    d = default_tags()
    return (d[0],) + (d[1],) * (steps - 2) + (d[-1],)


def step_rules(rec: dict, mode: str, steps: int = 3, tags: tuple[str, ...] | None = None,
               quantile_step: float = 0.04, half: str | None = None) -> list[tuple[tuple, float, float, tuple]]:
    """For every choice of thresholds, the best levels of a ``steps``-step rule on one half of the
    images (None: all). ``steps`` levels (the clean one λ = 0, plain upsampling; the others grid
    values of :data:`LAMBDAS` that do not decrease with noise) on ``steps − 1`` thresholds at the
    quantiles ``quantile_step``, 2·``quantile_step``, ... (default 4 %, ... 96 %) of the half's
    margins; step ``j`` reads the fused variant ``tags[j]`` (default :func:`step_tags`). Criterion
    as :func:`choose`: worst margin over the half's :func:`targets` and the thin-class guard first,
    then the mean. Returns ``(thresholds, worst, mean, levels)`` per threshold choice."""
    tags = step_tags(steps) if tags is None else tuple(tags)
    if len(tags) != steps or steps < 2:
        raise ValueError(f"need {steps} tags, one per step, got {tags}")
    sel = {k: r for k, r in rec.items() if half is None or (k[1] % 2 == 0) == (half == "even")}
    tgt = targets(rec, half)
    grid = LAMBDAS[1:-1]
    per = {}
    for c in sorted({(d, s) for d, _, s in sel}):
        ks = [k for k in sel if (k[0], k[2]) == c]
        base = np.stack([_iou_parts(sel[k]["conf"]["bilinear"]) for k in ks])
        V = {t: np.stack([[_iou_parts(sel[k]["conf"][(mode, t, lam)]) for lam in grid] for k in ks]) for t in set(tags)}
        thin = [(j, _class_iou_parts(base.sum(0), j)) for j in THIN_GUARD.get(c, ())]
        per[c] = (base, V, np.array([sel[k]["stats"]["log_odds"] for k in ks]), thin)
    margins = np.array([r["stats"]["log_odds"] for r in sel.values()])
    qs = np.arange(quantile_step, 1.0 - quantile_step / 2, quantile_step)
    ths = sorted(set(np.round(np.quantile(margins, qs), 2).tolist()))
    n = steps - 1  # noisy steps, each a grid level
    lv = np.array(grid)
    mono = np.ones((len(grid),) * n, dtype=bool)  # axis j: the level of step j + 1
    for j in range(n - 1):  # levels[j + 1] <= levels[j + 2]
        a = lv.reshape([-1 if i == j else 1 for i in range(n)])
        b = lv.reshape([-1 if i == j + 1 else 1 for i in range(n)])
        mono &= a <= b
    out = []
    for th in itertools.combinations(ths, n):
        worst = np.full(mono.shape, np.inf)
        total = np.zeros(mono.shape)
        for c, (base, V, x, thin) in per.items():
            step = np.array([fusion_step(m, th) for m in x])  # 0: clean ... n: noisiest
            parts = base[step == 0].sum(0)
            for j in range(1, steps):  # step j: the j-th level, from the clean side
                g = V[tags[j]][step == j].sum(0)  # (len(grid), 3, K)
                parts = parts + g.reshape([len(grid) if i == j - 1 else 1 for i in range(n)] + list(g.shape[1:]))
            worst, total = _fold_cell(parts, tgt[c], thin, worst, total)
        worst = np.where(mono, worst, -np.inf)
        mean = total / len(per)
        o = np.unravel_index(np.argmax(_rank(worst, mean)), mono.shape)
        levels = (0.0,) + tuple(float(grid[o[j - 1]]) for j in range(1, steps))
        out.append((tuple(th), float(worst[o]), float(mean[o]), levels))
    return out


def best_in_sample(rec: dict, mode: str, steps: int = 3, tags: tuple[str, ...] | None = None,
                   top: int = 3, quantile_step: float = 0.04) -> list[tuple[float, float, tuple, tuple]]:
    """An upper bound for the protocol: the :func:`step_rules` fitted on **all** images (the test
    images included), so no rule of the family does better on them. Returns the ``top`` best as
    ``(worst, mean, thresholds, levels)``."""
    rules = step_rules(rec, mode, steps, tags, quantile_step, None)
    rules.sort(key=lambda r: (min(r[1], 0.0), r[2]), reverse=True)
    return [(w, m, th, lv) for th, w, m, lv in rules[:top]]


def choose_steps(rec: dict, steps: int, quantile_step: float = 0.04, top: int = 3) -> list[dict]:
    """:func:`choose` for rules of any number of steps (recovery per step as :func:`step_tags`):
    on the even half, thresholds shared by both modes, levels per mode; the threshold choice whose
    worse mode's worst case is best, then the best sum of the modes' means. Returns the ``top``
    as ``{"thresholds", "mv": (worst, mean, levels), "op": ...}``."""
    per_mode = {mode: {th: (w, m, lv) for th, w, m, lv in step_rules(rec, mode, steps, None, quantile_step, "even")}
                for mode in ("mv", "op")}
    joint = sorted(per_mode["mv"], key=lambda th: (min(per_mode["mv"][th][0], per_mode["op"][th][0], 0.0),
                                                   per_mode["mv"][th][1] + per_mode["op"][th][1]), reverse=True)
    return [{"thresholds": th, "mv": per_mode["mv"][th], "op": per_mode["op"][th]} for th in joint[:top]]


def worst_margin(rec: dict, key, half: str | None) -> float:
    """The worst case :func:`choose` maximises, for a recorded variant on a half."""
    tgt = targets(rec, half)
    cells, t = table(rec, [key], half)
    worst = min(v - tgt[c] for v, c in zip(t[key], cells, strict=False))
    for (ds, s), classes in THIN_GUARD.items():
        rs = [r for (d, i, st), r in rec.items() if d == ds and st == s and
              (half is None or (i % 2 == 0) == (half == "even"))]
        if not rs:
            continue
        mine, base = sum(_iou_parts(r["conf"][key]) for r in rs), sum(_iou_parts(r["conf"]["bilinear"]) for r in rs)
        worst = min([worst] + [float(_class_iou_parts(mine, j) - _class_iou_parts(base, j)) for j in classes])
    return worst


def report(rec: dict) -> str:
    lines = []
    keys = ["bilinear", "jbu"] + [k for k in variants(rec) if isinstance(k, tuple)]
    for half in ("even", "odd", None):
        cells, t = table(rec, keys, half)
        n = {ds: len({i for d, i, _ in rec if d == ds and (half is None or (i % 2 == 0) == (half == "even"))})
             for ds in {c[0] for c in cells}}
        lines.append(f"\n## {half or 'all'} images {n}\n")
        lines.append("| variant | " + " | ".join(f"{d} {s}" for d, s in cells) + " | mean |")
        lines.append("|---" * (len(cells) + 2) + "|")
        for k in keys:
            v = t[k]
            lines.append(f"| {k} | " + " | ".join(f"{x:.1f}" for x in v) + f" | {np.nanmean(v):.1f} |")
    return "\n".join(lines)


THIN = {"camvid": {"pole": 2, "sign symbol": 6, "pedestrian": 9, "bicyclist": 10}}


def class_iou(conf: np.ndarray, c: int) -> float:
    inter = conf[c, c]
    union = conf[c].sum() + conf[:, c].sum() - inter
    return float("nan") if union == 0 else 100.0 * inter / union


def results_markdown(rec: dict, rows: dict) -> str:
    """The results tables: ``rows`` maps a row title to a variant key; both halves and all."""
    out = []
    for half, what in (("even", "even indices (settings chosen here)"), ("odd", "odd indices (held out)"),
                       (None, "all")):
        cells, t = table(rec, list(rows.values()), half)
        n = {ds: len({i for d, i, _ in rec if d == ds and (half is None or (i % 2 == 0) == (half == "even"))})
             for ds in sorted({c[0] for c in cells})}
        out.append(f"mIoU (%), {what}; images: " + ", ".join(f"{d} {k}" for d, k in n.items()) + "\n")
        out.append("| method | " + " | ".join(f"{_title(d)} {s}" for d, s in cells) + " | mean |")
        out.append("|---" * (len(cells) + 2) + "|")
        for title, k in rows.items():
            v = t[k]
            out.append(f"| {title} | " + " | ".join(f"{x:.1f}" for x in v) + f" | {np.nanmean(v):.1f} |")
        out.append("")
    for ds, classes in THIN.items():
        strengths = [s for s in STRENGTHS if any(d == ds and st == s for d, _, st in rec)]
        out.append(f"{_title(ds)}, per-class IoU (%) of the thin and small classes, all images\n")
        out.append("| method | " + " | ".join(f"{s} {c}" for s in strengths for c in classes) + " |")
        out.append("|---" * (len(strengths) * len(classes) + 1) + "|")
        for title, k in rows.items():
            vals = []
            for s in strengths:
                tot = sum(dense(r["conf"][k]) for (d, _, st), r in rec.items() if d == ds and st == s)
                vals += [class_iou(tot, c) for c in classes.values()]
            out.append(f"| {title} | " + " | ".join(f"{x:.1f}" for x in vals) + " |")
        out.append("")
    return "\n".join(out)


def _title(ds: str) -> str:
    return {"camvid": "CamVid", "coco_object": "COCO-Obj"}.get(ds, ds)


def verify(rec: dict, n: int, seed: int = 0) -> list[str]:
    """Re-run ``refine`` (the library, attention from the cache) on ``n`` random records of the
    synthetic strengths, both modes, at the default rule's λ and at one other grid λ, and count the
    pixels whose label differs from the recorded confusion's (0: the records are what ``refine``
    returns). Returns one line per check."""
    from dslo.head import refine

    rng = np.random.default_rng(seed)
    keys = [k for k in rec if k[2] != "probe"]
    cache = AttentionCache("focus-s14", {}, "cpu")
    dsets = {ds: get_dataset(ds, DEFAULT_DATA_ROOT / DATASET_DIRS[ds]) for ds in {k[0] for k in keys}}
    lines = []
    for j in rng.choice(len(keys), size=min(n, len(keys)), replace=False):
        ds, i, s = keys[j]
        it = load_item(dsets[ds], i)
        A, grid = cache.get(it.image)
        L = record_evidence(it, s)
        for mode in ("mv", "op"):
            rule = MODE_TABLE[mode].fusion_rule
            rule_lam = rule.weight(rec[keys[j]]["stats"]["log_odds"])
            step = rule.step(rec[keys[j]]["stats"]["log_odds"])
            for lam in (rule_lam, float(rng.choice([x for x in LAMBDAS[1:-1] if x != rule_lam]))):
                # the defaults (the rule, its step's recovery flag), then a fixed λ (recovery on)
                fixed = {} if lam == rule_lam else {"fusion_weight": lam}
                labels = refine(L, A, it.image, mode=mode, grid=grid, **fixed).labels.numpy()
                tag = "rec" if fixed else default_tags()[step]
                want = dense(rec[keys[j]]["conf"]["bilinear" if lam == 0 else (mode, tag, lam)])
                got = dense(confusion(labels, it.label, it.num_classes))
                lines.append(f"{ds} {i} {s} {mode} λ={lam:g}: {int(np.abs(got - want).sum()) // 2} pixels differ")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--strengths", nargs="+", default=STRENGTHS)
    ap.add_argument("--datasets", nargs="+", default=list(DATASET_DIRS))
    ap.add_argument("--out", type=Path, default=Path("/tmp/select_readout.pkl"))
    ap.add_argument("--stride", type=int, default=1, help="every stride-th image of the spaced subset")
    ap.add_argument("--wait", action="store_true", help="wait for another process to cache each image")
    ap.add_argument("--md", type=Path, default=None, help="with --load: write the results tables here")
    ap.add_argument("--load", type=Path, nargs="+", default=None, help="only choose and report from saved records")
    ap.add_argument("--all-variants", action="store_true", help="with --load: print every recorded variant too")
    ap.add_argument("--reuse", type=Path, nargs="+", default=None,
                    help="earlier records whose baseline and paper-readout confusions are reused")
    ap.add_argument("--tags", nargs="+", default=["rec"], choices=list(RECOVERY),
                    help="fused variants to record (others are kept from --reuse)")
    ap.add_argument("--in-sample", type=int, nargs="*", default=None, metavar="STEPS",
                    help="with --load: also fit step rules of these many steps (default 3 4) on all images, "
                         "the test images included: the best any rule of the family can reach")
    ap.add_argument("--quantile-step", type=float, default=0.04,
                    help="with --in-sample / --choose-steps: thresholds at these quantile steps of the margins")
    ap.add_argument("--choose-steps", type=int, nargs="*", default=None, metavar="STEPS",
                    help="with --load: also choose rules of these many steps on the even half (thresholds shared "
                         "by the modes) and report the odd half and all images")
    ap.add_argument("--verify", type=int, default=0,
                    help="with --load: re-run refine on this many random records and count differing pixels")
    args = ap.parse_args(argv)
    import pickle

    if args.load:
        rec = {}
        for path in args.load:
            rec.update(pickle.loads(path.read_bytes()))
        if args.all_variants:
            print(report(rec))
        if args.verify:
            for line in verify(rec, args.verify):
                print(line, flush=True)
        chosen = choose(rec)
        rows = {"(a) bilinear": "bilinear", "(b) + JBU": "jbu", "(d0) O.P., paper readout": ("op", "paper"),
                "(e0) M.V., paper readout": ("mv", "paper")}
        for mode in ("mv", "op"):
            rule = MODE_TABLE[mode].fusion_rule
            key = add_rule(rec, mode, rule.thresholds, rule.levels, default_tags())
            rows[f"({'d' if mode == 'op' else 'e'}) {mode.upper()}, default rule {key[2]} → λ {key[3]}"] = key
        md = results_markdown(rec, rows)
        print(md)
        if args.md:
            atomic_write_text(args.md, md)
        for mode, best in chosen.items():
            print(f"\n{mode}: best step rules on the even half (worst margin over max(a, b, paper M.V. - 0.5) "
                  f"and over bilinear's thin-class IoU, mean; then the odd half's and all images')")
            for worst, mean, (th, lv, tag) in best:
                key = add_rule(rec, mode, th, lv, tag)
                cells, t = table(rec, [key], "odd")
                print(f"  {tag}, thresholds {th}, levels {lv}: even worst {worst:+.2f}, mean {mean:.2f} | "
                      f"odd worst {worst_margin(rec, key, 'odd'):+.2f}, mean {np.nanmean(t[key]):.2f} | "
                      f"all worst {worst_margin(rec, key, None):+.2f}")
        if args.in_sample is not None:
            print("\nin-sample bound: step rules fitted on all images (worst margin over the per-cell target and "
                  "the thin-class guard, four decimals; mean)")
            for steps in args.in_sample or [3, 4]:
                for mode in ("mv", "op"):
                    for worst, mean, th, lv in best_in_sample(rec, mode, steps, quantile_step=args.quantile_step):
                        key = add_rule(rec, mode, th, lv, step_tags(steps))  # the same rule on each half alone
                        print(f"  {mode} {steps} steps, thresholds {th}, levels {lv}: worst {worst:+.4f}, mean {mean:.2f}"
                              f" (even half alone {worst_margin(rec, key, 'even'):+.4f}, odd "
                              f"{worst_margin(rec, key, 'odd'):+.4f})", flush=True)
        for steps in args.choose_steps or []:
            print(f"\n{steps}-step rules chosen on the even half (worst margin, four decimals; mean)")
            for r in choose_steps(rec, steps, args.quantile_step):
                parts = [f"thresholds {r['thresholds']}"]
                for mode in ("mv", "op"):
                    worst, mean, lv = r[mode]
                    key = add_rule(rec, mode, r["thresholds"], lv, step_tags(steps))
                    parts.append(f"{mode} levels {lv}: even {worst:+.4f} (mean {mean:.2f}), "
                                 f"odd {worst_margin(rec, key, 'odd'):+.4f}, all {worst_margin(rec, key, None):+.4f}")
                print("  " + " | ".join(parts), flush=True)
        return 0

    torch.set_num_threads(1)
    cfg = HeadConfig()
    cache = AttentionCache("focus-s14", {}, "cpu")
    # resumable: records already in --out are kept and not recomputed
    rec: dict = pickle.loads(args.out.read_bytes()) if args.out.is_file() else {}
    old: dict = {}
    for path in args.reuse or []:
        old.update(pickle.loads(path.read_bytes()))
    t0 = time.perf_counter()
    dsets = {ds: get_dataset(ds, DEFAULT_DATA_ROOT / DATASET_DIRS[ds]) for ds in args.datasets}
    idx = {ds: spaced_subset(len(d), args.images)[:: args.stride] for ds, d in dsets.items()}
    synthetic = [s for s in args.strengths if s != "probe"]
    # synthetic strengths first, image by image; the probe last (each fold needs its whole half)
    n = max(len(v) for v in idx.values())
    jobs = [(ds, idx[ds][j], synthetic) for j in range(n) for ds in dsets if j < len(idx[ds])]
    if "probe" in args.strengths:
        jobs += [(ds, idx[ds][j], ["probe"]) for j in range(n) for ds in dsets if j < len(idx[ds])]
    probes = {ds: make_probe(d, cache, pool=idx[ds]) for ds, d in dsets.items()}
    done = 0
    for ds, i, strengths in jobs:
        strengths = [s for s in strengths if (ds, i, s) not in rec or
                     any(("mv", t, LAMBDAS[1]) not in rec[(ds, i, s)]["conf"] for t in args.tags)]
        if not strengths:
            continue
        if args.wait:
            _wait_cached(cache, dsets[ds][i].load_image())
        it = load_item(dsets[ds], i)
        A, grid = cache.get(it.image)
        for s in strengths:
            L = record_evidence(it, s, probes[ds])
            rec[(ds, i, s)] = record_image(it, L, A, grid, cfg, old.get((ds, i, s)), tuple(args.tags))
        print(f"{ds} {i} {strengths} {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        done += 1
        if done % 10 == 0:
            atomic_write_bytes(args.out, pickle.dumps(rec))
    atomic_write_bytes(args.out, pickle.dumps(rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())

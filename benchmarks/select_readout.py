"""Choose the fused readout's settings on one half of the images (even indices), report the other.

For every image and evidence strength this runs the head once per (mode, recovery) variant,
upsamples the evidence term ``s·L`` and the normalised maps ``D̂`` once (JBU is linear), and
records the image's confusion matrix for a grid of fixed λ values, plus the per-image evidence
statistics a λ rule may use. Rules are then scored offline by summing the chosen per-image
confusions, so a rule's mIoU on a half costs no head run.

    python benchmarks/select_readout.py --images 60 --out /tmp/sel.npz     # record
    python benchmarks/select_readout.py --load /tmp/sel.npz                # choose + report

Results: docs/benchmarks.md ("Choosing the readout").
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import DATASET_DIRS, DEFAULT_DATA_ROOT, AttentionCache, spaced_subset  # noqa: E402
from refine_real import Item, _item, evidence_for, jbu_baseline, make_probe  # noqa: E402

from dslo.eval.datasets import get_dataset  # noqa: E402
from dslo.head import (  # noqa: E402
    HeadConfig,
    candidate_classes,
    discrepancy,
    evidence_ambiguity,
    joint_bilateral_upsample,
    normalize_maps,
    seed_classes,
)

LAMBDAS = [0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 1e6]  # 1e6: the head alone (ties to L)
RECOVER = [None, 0.25]
MODES = ["mv", "op"]
STRENGTHS = ["easy", "medium", "hard", "probe"]


def confusion(pred: np.ndarray, label: np.ndarray, K: int) -> np.ndarray:
    ok = label < K
    return np.bincount(label[ok].astype(np.int64) * K + pred[ok], minlength=K * K).reshape(K, K)


def record_image(it: Item, L: torch.Tensor, A: torch.Tensor, grid: tuple[int, int], cfg: HeadConfig) -> dict:
    K = L.shape[0]
    N = grid[0] * grid[1]
    Lg = F.interpolate(L[None], size=tuple(grid), mode="bilinear", align_corners=False)[0]
    flat = Lg.reshape(K, N)
    out: dict = {"stats": {"ambiguity": evidence_ambiguity(flat, cfg.nms_scale)}, "conf": {}}
    P = torch.softmax(cfg.nms_scale * flat, 0)
    srt = P.sort(0, descending=True).values
    out["stats"]["margin"] = float((srt[0] - srt[1]).mean())
    out["stats"]["nms_survival"] = float((srt[0] >= cfg.nms_threshold).float().mean())
    out["conf"]["bilinear"] = confusion(
        F.interpolate(L[None], size=it.label.shape, mode="bilinear", align_corners=False)[0].argmax(0).numpy(),
        it.label, K)
    out["conf"]["jbu"] = confusion(jbu_baseline(L, grid, it.image, cfg).numpy(), it.label, K)
    for mode, rec in itertools.product(MODES, RECOVER):
        c = cfg.replace(recover_threshold=rec)
        a, kept = seed_classes(flat, c)
        D = discrepancy(a, A, mode, c)
        cand = candidate_classes(flat, kept, c.fusion_extra)
        U1 = F.interpolate(torch.log_softmax(cfg.nms_scale * L, 0)[cand][None], size=it.label.shape,
                           mode="bilinear", align_corners=False)[0]
        Dup = joint_bilateral_upsample(normalize_maps(D).reshape(-1, *grid), it.image, cfg.sigma_spatial,
                                       cfg.sigma_range, cfg.jbu_radius)
        U2 = torch.zeros_like(U1)
        U2[torch.searchsorted(cand, kept)] = Dup
        inkept = torch.isin(cand, kept)
        pure = U2.masked_fill(~inkept[:, None, None], float("-inf")).argmax(0)
        out["conf"][(mode, rec, "pure")] = confusion(cand[pure].numpy(), it.label, K)
        for lam in LAMBDAS:
            S = U2 + U1 / lam if lam >= 1e5 else U1 + lam * U2
            out["conf"][(mode, rec, lam)] = confusion(cand[S.argmax(0)].numpy(), it.label, K)
    return out


def _wait_cached(cache: AttentionCache, image: np.ndarray) -> None:
    from _bench import _image_digest

    path = cache.dir / f"{_image_digest(image)}.feat.npz"
    while not path.is_file():
        time.sleep(5)


def miou(conf: np.ndarray) -> float:
    inter = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - inter
    gt = conf.sum(1)
    ok = gt > 0
    return float(100 * np.mean(inter[ok] / np.maximum(union[ok], 1)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--strengths", nargs="+", default=STRENGTHS)
    ap.add_argument("--datasets", nargs="+", default=list(DATASET_DIRS))
    ap.add_argument("--out", type=Path, default=Path("/tmp/select_readout.pkl"))
    ap.add_argument("--wait", action="store_true", help="wait for another process to cache each image")
    args = ap.parse_args(argv)
    import pickle

    torch.set_num_threads(1)
    cfg = HeadConfig()
    cache = AttentionCache("focus-s14", {}, "cpu")
    rec: dict = {}
    t0 = time.perf_counter()
    dsets = {ds: get_dataset(ds, DEFAULT_DATA_ROOT / DATASET_DIRS[ds]) for ds in args.datasets}
    idx = {ds: spaced_subset(len(d), args.images) for ds, d in dsets.items()}
    synthetic = [s for s in args.strengths if s != "probe"]
    # synthetic strengths first, image by image; the probe last (each fold needs its whole half)
    jobs = [(ds, i, synthetic) for ds in dsets for i in idx[ds]]
    if "probe" in args.strengths:
        jobs += [(ds, i, ["probe"]) for ds in dsets for i in idx[ds]]
    probes = {ds: make_probe(d, cache, pool=idx[ds]) for ds, d in dsets.items()}
    for ds, i, strengths in jobs:
        if args.wait:
            _wait_cached(cache, dsets[ds][i].load_image())
        it = _item(dsets[ds], i)
        A, grid = cache.get(it.image)
        for s in strengths:
            L = probes[ds].evidence(i) if s == "probe" else evidence_for(it, s, 0)
            rec[(ds, i, s)] = record_image(it, L, A, grid, cfg)
        print(f"{ds} {i} {strengths} {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        with open(args.out, "wb") as f:
            pickle.dump(rec, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Could another per-image statistic place λ better than the evidence margin? (issue 12)

The fused readout's λ comes from one number per image, the evidence margin (the median top-two
log-odds, ``dslo.head.evidence_margin``). This script scores other candidates on the
records of :mod:`benchmarks.readout.select_readout`: for every image and evidence strength, the **gain** of fusing is
the change in correct pixels of the fused M.V. readout (λ = 6, no recovery seeds: the default
rule's middle step) over plain upsampling, as a share of the image's pixels. An oracle fuses
exactly the images with a positive gain; a one-threshold rule on a statistic fuses the images on
one side of it. For each statistic the table gives the best such threshold (fitted on all images:
an upper bound) and what it captures: the share of the oracle's gain, the gain it gives up on the
images it leaves alone and the loss it takes on the images it fuses (per cent of an image, summed
over images).

    python -m benchmarks.readout.rule_statistics --load /tmp/camvid.pkl /tmp/coco.pkl --md out.md

Evidence is made again exactly as ``select_readout.py`` made it (seeded synthetic strengths; the
probe refit on the other index parity), the attention from the cache.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import DATASET_DIRS, DEFAULT_DATA_ROOT, AttentionCache, atomic_write_text
from benchmarks.readout.select_readout import dense, record_evidence
from benchmarks.refine_real import load_item, make_probe
from dslo.eval.datasets import get_dataset
from dslo.head import HeadConfig, evidence_posterior

GAIN_KEY = ("mv", "norec", 6.0)  # the default M.V. rule's middle step


def statistics(logits: torch.Tensor, affinity: torch.Tensor, grid: tuple[int, int], scale: float) -> dict:
    """Candidate per-image statistics of ``(K, h, w)`` evidence on the head's ``grid`` (the
    affinity ``(N, N)`` is that grid's). Larger = cleaner for all but ``top1_spread``."""
    K = logits.shape[0]
    g = F.interpolate(logits[None], size=tuple(grid), mode="bilinear", align_corners=False)[0].reshape(K, -1)
    top2 = g.topk(2, dim=0)
    lo = scale * (top2.values[0] - top2.values[1])  # each patch's top-two log-odds
    lab = top2.indices[0].reshape(grid)
    # interior patches: the same arg-max as all 8 neighbours (their log-odds measure noise, not edges)
    pad = F.pad(lab[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
    inner = torch.ones(grid, dtype=torch.bool)
    for dy in range(3):
        for dx in range(3):
            inner &= pad[dy:dy + grid[0], dx:dx + grid[1]] == lab
    P = evidence_posterior(g, scale)
    PA = P @ (affinity / affinity.sum(1, keepdim=True)).T  # each patch's posterior averaged by attention
    flat = lab.flatten()
    out = {f"log-odds q{q}": float(lo.quantile(q / 100)) for q in (10, 25, 75, 90)}  # q50: the margin row
    out["log-odds, mean clipped at 8"] = float(lo.clamp(max=8).mean())
    out["log-odds, interior median"] = float(lo.reshape(grid)[inner].median()) if inner.any() else float("nan")
    out["interior share"] = float(inner.float().mean())
    out["grid neighbours agreeing"] = float(((lab[1:] == lab[:-1]).sum() + (lab[:, 1:] == lab[:, :-1]).sum())
                                            / (lab[1:].numel() + lab[:, 1:].numel()))
    out["arg-max kept by attention averaging"] = float((PA.argmax(0) == flat).float().mean())
    out["posterior moved by attention (TV)"] = -float(0.5 * (P - PA).abs().sum(0).mean())
    out["top1_spread"] = float((scale * top2.values[0]).std())
    return out


def collect(keys: list, scale: float) -> dict:
    """``{record key: statistics}``, evidence made as ``select_readout.py`` made it."""
    cache = AttentionCache("focus-s14", {}, "cpu")
    out = {}
    for ds in sorted({k[0] for k in keys}):
        dset = get_dataset(ds, DEFAULT_DATA_ROOT / DATASET_DIRS[ds])
        idx = sorted({k[1] for k in keys if k[0] == ds})
        probe = make_probe(dset, cache, pool=idx) if any(k[0] == ds and k[2] == "probe" for k in keys) else None
        for i in idx:
            it = load_item(dset, i)
            A, grid = cache.get(it.image)
            for s in sorted({k[2] for k in keys if k[:2] == (ds, i)}):
                L = record_evidence(it, s, probe)
                out[(ds, i, s)] = statistics(L, A, grid, scale)
        print(f"{ds}: {len(idx)} images", file=sys.stderr, flush=True)
    return out


def best_threshold(x: np.ndarray, gain: np.ndarray) -> tuple[float, int, np.ndarray]:
    """The one-threshold rule on ``x`` with the largest summed gain: fuse where ``sign·x < t``."""
    best = (-np.inf, 0.0, 1, None)
    for sign in (1, -1):
        for t in np.unique(x):
            fuse = sign * x < sign * t
            v = gain[fuse].sum()
            if v > best[0]:
                best = (v, float(t), sign, fuse)
    return best[1], best[2], best[3]


def table(rec: dict, stats: dict) -> str:
    keys = [k for k in rec if k in stats]
    def gain_of(r: dict) -> float:  # correct pixels gained by fusing, per cent of the image
        base = dense(r["conf"]["bilinear"])
        return (np.trace(dense(r["conf"][GAIN_KEY])) - np.trace(base)) / base.sum() * 100

    gain = np.array([gain_of(rec[k]) for k in keys])
    oracle = gain[gain > 0].sum()
    rows = [("evidence margin (the default rule's)", np.array([rec[k]["stats"]["log_odds"] for k in keys]))]
    rows += [(n, np.nan_to_num(np.array([stats[k][n] for k in keys]), nan=-1.0)) for n in stats[keys[0]]]
    lines = [f"Per-image statistics as the λ rule's input: the best one-threshold rule on each, fitted on all images "
             f"(gain: fused M.V., λ = {GAIN_KEY[2]:g}, {GAIN_KEY[1]}, over plain upsampling, correct pixels in per cent "
             f"of the image)\n",
             f"{len(keys)} records; fusing gains on {int((gain > 0).sum())}, loses on {int((gain < 0).sum())}; "
             f"oracle gain {oracle:.1f} (per cent of an image, summed)\n",
             "| statistic | best threshold | share of the oracle's gain | gain left out | loss taken |",
             "|---|---|---|---|---|"]
    for name, x in rows:
        t, sign, fuse = best_threshold(x, gain)
        lines.append(f"| {name} | {'<' if sign > 0 else '>'} {t:.3f} | {gain[fuse].sum() / oracle:.3f} | "
                     f"{gain[~fuse & (gain > 0)].sum():.1f} | {-gain[fuse & (gain < 0)].sum():.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--load", type=Path, nargs="+", required=True, help="select_readout.py records")
    ap.add_argument("--stats", type=Path, default=None, help="cache of the statistics (read if present, else written)")
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rec = {}
    for path in args.load:
        rec.update(pickle.loads(path.read_bytes()))
    if args.stats and args.stats.is_file():
        stats = pickle.loads(args.stats.read_bytes())
    else:
        stats = collect(list(rec), HeadConfig().nms_scale)
        if args.stats:
            args.stats.write_bytes(pickle.dumps(stats))
    md = table(rec, stats)
    print(md)
    if args.md:
        atomic_write_text(args.md, md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

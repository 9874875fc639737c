"""Per-image records of the readout study: for every image and evidence family × strength, the
confusion matrices of the baselines, the paper's readout and the fused readout at a grid of λ, and
the per-image statistics a rule may read. A rule is then scored offline by summing the confusions
it picks per image (``benchmarks.readout.leave_one_out``), so choosing among thousands of rules
costs no head run.

One file per image (``DIR/<dataset>/<index>.pkl``, written atomically after each image), so a run
is resumable: what a file holds is not computed again; ``--wait`` waits for another process to
cache each image's attention and features.

    python -m benchmarks.readout.records --out ~/.cache/dslo/bench/readout          # every family
    python -m benchmarks.readout.records --families clip forest --datasets camvid    # a part
    python -m benchmarks.readout.records --modes op --every 4                        # O.P., a quarter

The head here is M.V. (the default preset's mode) unless ``--modes`` says otherwise; the
attention is the cached focus-s14 (``benchmarks.common.AttentionCache``).
"""

from __future__ import annotations

import argparse
import math
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import DATASET_DIRS, DEFAULT_DATA_ROOT, AttentionCache, atomic_write_bytes, bench_cache_dir
from benchmarks.readout.families import FAMILIES, FamilyEvidence, strengths
from benchmarks.readout.select_readout import RECOVERY, confusion, fused_argmax
from benchmarks.refine_real import Item, load_item
from dslo.eval.datasets import get_dataset
from dslo.head import (
    HeadConfig,
    candidate_classes,
    class_argmax,
    discrepancy,
    evidence_margin,
    evidence_posterior,
    joint_bilateral_upsample,
    normalize_maps,
    resize_to_grid,
    seed_classes,
)

# fused λ recorded per image (1e6: the head alone, ties broken by log P); λ = 0 is plain upsampling
LAMBDAS = (0.5, 1.0, 2.0, 4.0, 6.0, 12.0, 24.0, 64.0, 1e6)
# λ proportional to the image's evidence margin m (median top-two log-odds): λ = κ·m. Both terms
# of log P + κ·m·D̂ then scale alike when the logits are rescaled, so the fusion's balance between
# evidence and head does not depend on the logits' scale (the head's NMS still does).
KAPPAS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
PARTS = ("base", "fixed", "kappa")  # baselines and paper head; fused at LAMBDAS; fused at κ·m
DEFAULT_DIR = bench_cache_dir() / "readout"


# ------------------------------------------------------------------------------------------------
# Statistics a rule may read


def statistics(L: torch.Tensor, flat: torch.Tensor, A: torch.Tensor, grid: tuple[int, int], scale: float) -> dict:
    """Per-image statistics of ``L (K, h, w)`` (its own grid) and ``flat (K, N)`` (the head's grid,
    ``A (N, N)`` its affinity). ``margin`` and ``nms_survival`` read the logits' scale; the others
    are unchanged by ``a·L + b`` (a > 0): ratios of logit differences, or functions of the arg-max."""
    K = flat.shape[0]
    out: dict = {"margin": evidence_margin(flat, scale)}
    P = evidence_posterior(flat, scale)
    out["nms_survival"] = float((P.amax(0) >= 0.5).float().mean())
    if K < 2:
        return out | {"gap_ratio": 1.0, "z_margin": math.inf, "grid_agree": 1.0, "attn_agree": 1.0}
    top2 = flat.topk(2, dim=0).values
    gap = top2[0] - top2[1]
    spread = top2[0] - flat.mean(0)
    out["gap_ratio"] = float(gap.median() / spread.median().clamp_min(1e-12))  # top-two gap / top-to-mean
    out["z_margin"] = float(gap.median() / flat.std().clamp_min(1e-12))
    lab = L.argmax(0)  # the evidence's own grid: 4-neighbour patches with the same arg-max
    same = (lab[1:] == lab[:-1]).sum() + (lab[:, 1:] == lab[:, :-1]).sum()
    out["grid_agree"] = float(same / max(1, lab[1:].numel() + lab[:, 1:].numel()))
    arg = flat.argmax(0)
    votes = A @ F.one_hot(arg, K).to(A.dtype)  # each patch's attention-weighted vote of arg-max labels
    out["attn_agree"] = float((votes.argmax(1) == arg).float().mean())
    return out


# ------------------------------------------------------------------------------------------------
# One record


def jbu_candidates(S: torch.Tensor, radius: int) -> torch.Tensor:
    """Classes of ``S (K, h, w)`` that can win the arg-max of its joint bilateral upsampling
    (radius ``radius``) at some pixel: a JBU value is a weighted mean over a ``(2R+1)²`` window, so
    class c can win in a window only if its maximum there reaches the best minimum of any class.
    A superset of the winners (exact: the arg-max over it is the arg-max over all K)."""
    k = 2 * radius + 1
    hi = F.max_pool2d(S[None], k, stride=1, padding=radius)[0]
    lo = -F.max_pool2d(-S[None], k, stride=1, padding=radius)[0]
    return torch.nonzero((hi + 1e-6 >= lo.amax(0, keepdim=True)).flatten(1).any(1)).flatten()


def jbu_labels(L: torch.Tensor, grid: tuple[int, int], image: np.ndarray, cfg: HeadConfig) -> torch.Tensor:
    """Baseline (b), ``benchmarks.refine_real.jbu_baseline``'s labels: the arg-max of the JBU of
    the evidence posterior on the attention grid, computed on the classes that can win only."""
    X = evidence_posterior(resize_to_grid(L, grid), cfg.nms_scale)
    R = int(math.ceil(3.0 * cfg.sigma_spatial)) if cfg.jbu_radius is None else cfg.jbu_radius
    cand = jbu_candidates(X, R)
    up = joint_bilateral_upsample(X[cand], image, cfg.sigma_spatial, cfg.sigma_range, cfg.jbu_radius)
    return cand[class_argmax(up)]


def _jbu(maps: torch.Tensor, grid: tuple[int, int], image: np.ndarray, cfg: HeadConfig) -> torch.Tensor:
    return joint_bilateral_upsample(maps.reshape(-1, *grid), image, cfg.sigma_spatial, cfg.sigma_range, cfg.jbu_radius)


def record(it: Item, L: torch.Tensor, A: torch.Tensor, grid: tuple[int, int], cfg: HeadConfig,
           modes: tuple[str, ...] = ("mv",), parts: tuple[str, ...] = PARTS) -> dict:
    """One image × evidence: ``{"stats", "conf"}``. ``conf`` holds sparse confusions
    (:func:`benchmarks.readout.select_readout.confusion`) of ``"bilinear"`` (plain upsampling,
    ``refine(mode="none")``), ``"jbu"`` (baseline (b)), ``(mode, "paper")`` (the paper's head,
    ``HeadConfig.paper()``) and ``(mode, tag, λ)`` (the fused readout at each λ of
    :data:`LAMBDAS`, with (``"rec"``) or without (``"norec"``) recovery seeds) and
    ``(mode, tag, "kappa", κ)`` (the fused readout at λ = κ·margin, :data:`KAPPAS`). ``stats`` adds
    ``head_agree_<mode>``: the share of pixels where plain upsampling and the paper's head agree.
    ``parts``: which of :data:`PARTS` to compute (the others are left out)."""
    K = L.shape[0]
    H, W = it.label.shape
    flat = resize_to_grid(L, grid).reshape(K, -1)
    out: dict = {"stats": statistics(L, flat, A, grid, cfg.nms_scale), "conf": {}}
    plain = F.interpolate(L[None], size=(H, W), mode="bilinear", align_corners=False)[0].argmax(0)
    if "base" in parts:
        out["conf"]["bilinear"] = confusion(plain.numpy(), it.label, K)
        out["conf"]["jbu"] = confusion(jbu_labels(L, grid, it.image, cfg).numpy(), it.label, K)
    margin = out["stats"]["margin"]
    log_post = evidence_posterior(L, cfg.nms_scale, log=True)
    seeds = {tag: seed_classes(flat, cfg.replace(recover_threshold=thr)) for tag, thr in RECOVERY.items()}
    for mode in modes:
        maps: dict = {}  # class -> (its seeds, its JBU-upsampled normalised map): shared by the tags
        for tag in ("norec", "rec"):
            a, kept = seeds[tag]
            rows = []
            for j, c in enumerate(kept.tolist()):
                same = c in maps and torch.equal(maps[c][0], a[j])
                rows.append(None if same else j)
            todo = [j for j in rows if j is not None]
            if todo:
                D = discrepancy(a[todo], A, mode, cfg)
                if tag == "norec" and "base" in parts:  # the paper's head: NMS seeds, label argmax_c JBU(D_c)
                    paper = kept[class_argmax(_jbu(D, grid, it.image, cfg))]
                    out["conf"][(mode, "paper")] = confusion(paper.numpy(), it.label, K)
                    out["stats"][f"head_agree_{mode}"] = float((paper == plain).float().mean())
                up = _jbu(normalize_maps(D), grid, it.image, cfg)
                for n, j in enumerate(todo):
                    maps[int(kept[j])] = (a[j], up[n])
            cand = candidate_classes(log_post, kept, cfg.fusion_extra)
            U1 = F.interpolate(log_post[cand][None], size=(H, W), mode="bilinear", align_corners=False)[0]
            U2 = torch.zeros_like(U1)
            U2[torch.searchsorted(cand, kept)] = torch.stack([maps[c][1] for c in kept.tolist()])
            grid_lams = [((mode, tag, lam), lam) for lam in LAMBDAS] if "fixed" in parts else []
            if "kappa" in parts and math.isfinite(margin):
                grid_lams += [((mode, tag, "kappa", k), k * margin) for k in KAPPAS]
            for key, lam in grid_lams:
                out["conf"][key] = confusion(cand[fused_argmax(U1, U2, lam)].numpy(), it.label, K)
    return out


# ------------------------------------------------------------------------------------------------
# Files


def record_path(root: Path, dataset: str, index: int) -> Path:
    return root / dataset / f"{index:04d}.pkl"


def load_records(root: Path, datasets: list[str] | None = None) -> dict:
    """``{(dataset, index, family, strength): record}`` of every record file under ``root``."""
    out = {}
    for ds_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if datasets and ds_dir.name not in datasets:
            continue
        for f in sorted(ds_dir.glob("*.pkl")):
            for (fam, s), r in pickle.loads(f.read_bytes()).items():
                out[(ds_dir.name, int(f.stem), fam, s)] = r
    return out


def _holds(r: dict, modes: list[str], parts: list[str]) -> bool:
    """Whether record ``r`` already holds ``parts`` of every mode in ``modes``."""
    want = {"base": lambda m: (m, "paper"), "fixed": lambda m: (m, "rec", LAMBDAS[-1]),
            "kappa": lambda m: (m, "rec", "kappa", KAPPAS[-1])}
    return all(want[p](m) in r["conf"] for m in modes for p in parts) or (
        "kappa" in parts and not math.isfinite(r["stats"].get("margin", 0.0)))


def _wait(cache: AttentionCache, image: np.ndarray) -> None:
    while not (cache.path(image).is_file() and cache.path(image, features=True).is_file()):
        time.sleep(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_DIR, help=f"record folder (default {DEFAULT_DIR})")
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    ap.add_argument("--datasets", nargs="+", default=list(DATASET_DIRS), choices=list(DATASET_DIRS))
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--modes", nargs="+", default=["mv"], choices=["mv", "op"])
    ap.add_argument("--every", type=int, default=1, help="every n-th image only (default all)")
    ap.add_argument("--part", type=str, default="0/1", help="K/N: this process does images i with i %% N == K")
    ap.add_argument("--wait", action="store_true", help="wait for another process to cache each image's attention")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS),
                    help="what to compute (records already holding it are skipped)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    part, parts = (int(x) for x in args.part.split("/"))
    cfg = HeadConfig()
    cache = AttentionCache("focus-s14", {}, "cpu")
    wanted = [(f, s) for f, s in strengths() if f in args.families]
    # real-model families need their whole other half first: synthetic-like ones go first
    order = sorted(wanted, key=lambda fs: fs[0] in ("probe", "forest"))
    t0 = time.perf_counter()
    done = 0
    for ds in args.datasets:
        dset = get_dataset(ds, args.data_root / DATASET_DIRS[ds])
        pool = list(range(len(dset)))
        fams = FamilyEvidence(dset, cache, pool)
        mine = [i for i in pool[:: args.every] if i % parts == part]
        for g, group in enumerate(([fs for fs in order if fs[0] not in ("probe", "forest")],
                                   [fs for fs in order if fs[0] in ("probe", "forest")])):
            if g == 1 and group and args.wait:  # the probe's folds read every image's features
                for i in pool:
                    _wait(cache, dset[i].load_image())
            for i in mine:
                path = record_path(args.out, ds, i)
                have = pickle.loads(path.read_bytes()) if path.is_file() else {}
                todo = [fs for fs in group if fs not in have or not _holds(have[fs], args.modes, args.parts)]
                if not todo:
                    continue
                it = load_item(dset, i)
                if args.wait:
                    _wait(cache, it.image)
                A, grid = cache.get(it.image)
                for fs in todo:
                    L = fams.evidence(it, *fs)
                    old = have.get(fs)
                    rec = record(it, L, A, grid, cfg, tuple(args.modes), tuple(args.parts))
                    if old is not None:  # a record of other modes: keep what it holds
                        rec["conf"] = {**old["conf"], **rec["conf"]}
                        rec["stats"] = {**old["stats"], **rec["stats"]}
                    have[fs] = rec
                atomic_write_bytes(path, pickle.dumps(have))
                done += 1
                print(f"{ds} {i}: {len(todo)} records, {time.perf_counter() - t0:.0f}s ({done} images)",
                      file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

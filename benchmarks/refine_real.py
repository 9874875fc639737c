"""What the DSLO head is worth on real images with real attention.

For the real annotated images of ``../shared/data`` (CamVid test, the COCO-Object subset) this
builds coarse, noisy class evidence from the ground truth (:mod:`benchmarks.evidence`: a CLIP-like stand-in,
since no CLIP weights can be downloaded here), takes the patch affinity of the offline
``focus-s14`` ViT-S/14, and scores five ways of turning the evidence into a label map with the
project's own metric (``dslo.eval.metrics.IoUAccumulator``):

    (a) bilinear  argmax of the bilinearly upsampled evidence (``refine(mode="none")``)
    (b) jbu       argmax of the JBU-upsampled class probabilities softmax(s·L) (no discrepancy)
    (c) kl        the head with the KL discrepancy (ablation)
    (d) op        the head with the optimal path
    (e) mv        the head with the maximum velocity

Every class of the dataset is in the vocabulary (CamVid 11, COCO-Object 81, so on COCO-Object the
head's top-k early rejection keeps 10 classes). Affinities are computed once per image and cached
under ``~/.cache/dslo/bench`` (``$DSLO_BENCH_CACHE``).

    python -m benchmarks.refine_real --quick            # 10 + 10 images, medium (< 3 min on 2 CPU cores)
    python -m benchmarks.refine_real                    # all 397 images, 3 evidence strengths
    python -m benchmarks.refine_real --sweep-only --sweep-images 40       # every sensitivity sweep
    python -m benchmarks.refine_real --presets medium --set nms_threshold=0.6   # any head setting

Results and what they mean: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    DATASET_DIRS,
    DEFAULT_DATA_ROOT,
    RESULTS_DIR,
    AttentionCache,
    atomic_write_text,
    markdown_table,
    spaced_subset,
    write_json,
)
from benchmarks.evidence import PRESETS, EvidenceConfig, logits_grid, make_evidence, stable_seed
from benchmarks.probe import LinearProbeEvidence
from dslo.cli import parse_setting
from dslo.eval.datasets import get_dataset
from dslo.eval.metrics import IoUAccumulator
from dslo.head import (
    MODE_TABLE,
    HeadConfig,
    evidence_posterior,
    joint_bilateral_upsample,
    refine,
    resize_to_grid,
    seed_classes,
)

METHODS = {
    "bilinear": "(a) bilinear",
    "jbu": "(b) + JBU",
    "kl": "(c) KL",
    "op_paper": "(d0) O.P., paper readout",
    "mv_paper": "(e0) M.V., paper readout",
    "op": "(d) O.P.",
    "mv": "(e) M.V.",
}
HALVES = ("all", "even", "odd")  # even image indices: where settings were chosen; odd: held out
THIN = {"camvid": ["pole", "sign symbol", "pedestrian", "bicyclist"]}  # per-class IoU reported
# fusion="none", recover_threshold=None: the SPEC §4 head (label argmax_c JBU(D_c), NMS seeds only)
PAPER_READOUT = {"op_paper": "op", "mv_paper": "mv"}
ATTENTION = "focus-s14"
QUICK_IMAGES = 10


# ------------------------------------------------------------------------------------------------
# One image, one method


def jbu_baseline(
    logits: torch.Tensor,
    grid: tuple[int, int],
    image: np.ndarray,
    cfg: HeadConfig,
    source: str = "attention",
    values: str = "softmax",
) -> torch.Tensor:
    """Method (b): argmax of the JBU-upsampled evidence, no discrepancy.

    ``source="attention"`` resizes the ``(K, h, w)`` evidence bilinearly to the attention grid
    first (the grid the head's own JBU starts from, so (b) and (c–e) differ only in the
    discrepancy); ``"logits"`` upsamples from the evidence grid. ``values="softmax"`` upsamples the
    class probabilities ``softmax_c(s·L)`` (s = the NMS logit scale, 40), ``"raw"`` the cosines.
    Returns ``(H, W)`` int64 class indices."""
    X = logits
    if source == "attention":
        X = resize_to_grid(X, grid)
    elif source != "logits":
        raise ValueError(f"source must be 'attention' or 'logits', got {source!r}")
    if values == "softmax":
        X = evidence_posterior(X, cfg.nms_scale)
    elif values != "raw":
        raise ValueError(f"values must be 'softmax' or 'raw', got {values!r}")
    up = joint_bilateral_upsample(X, image, cfg.sigma_spatial, cfg.sigma_range, cfg.jbu_radius)
    return up.argmax(0)


def predict(method: str, logits: torch.Tensor, A: torch.Tensor, grid: tuple[int, int], image: np.ndarray,
            cfg: HeadConfig, jbu_source: str = "attention", jbu_values: str = "softmax") -> np.ndarray:
    """``(H, W)`` int64 label map (indices into the K classes) of one method."""
    if method == "bilinear":
        return refine(logits, A, image, mode="none", grid=grid, config=cfg).labels.numpy()
    if method == "jbu":
        return jbu_baseline(logits, grid, image, cfg, jbu_source, jbu_values).numpy()
    if method in MODE_TABLE and MODE_TABLE[method].runs_head:
        return refine(logits, A, image, mode=method, grid=grid, config=cfg).labels.numpy()
    if method in PAPER_READOUT:
        paper = cfg.replace(fusion="none", recover_threshold=None)
        return refine(logits, A, image, mode=PAPER_READOUT[method], grid=grid, config=paper).labels.numpy()
    raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")


# ------------------------------------------------------------------------------------------------
# Data


@dataclass
class Item:
    dataset: str
    stem: str
    image: np.ndarray
    label: np.ndarray
    num_classes: int
    index: int = -1  # position in the dataset (its parity picks the half: settings are chosen on even)


def load_item(ds: Any, i: int) -> Item:
    """The ``i``-th image of dataset ``ds`` with its label."""
    s = ds[i]
    return Item(ds.name, s.stem, s.load_image(), s.load_label(), ds.num_classes, i)


EVIDENCE_OVERRIDES: dict[str, Any] = {}  # --evidence-set
STRENGTHS = [*PRESETS, "probe"]  # the synthetic strengths, then the linear probe (benchmarks.probe)
PROBES: dict[str, LinearProbeEvidence] = {}  # dataset -> its probe evidence (fit lazily)


def make_probe(dset: Any, cache: AttentionCache, pool: Sequence[int] | None = None) -> LinearProbeEvidence:
    """Probe evidence for the images of ``dset`` from ``cache``'s focus-s14 patch features; each
    half's probe is fit on the other half's images among ``pool`` (default: every image)."""
    return LinearProbeEvidence(len(dset), dset.num_classes, lambda i: cache.features(dset[i].load_image()),
                               lambda i: dset[i].load_label(), pool=pool)


def evidence_for(item: Item, preset: str, seed: int, cfg: EvidenceConfig | None = None) -> torch.Tensor:
    """The item's ``(K, h, w)`` evidence on the CLIP-B/16 grid; seeded by (seed, dataset, stem,
    preset) so every run, subset and sweep sees the same evidence for an image. ``preset="probe"``:
    the linear probe of the other half of the dataset (:data:`PROBES`)."""
    if preset == "probe":
        return PROBES[item.dataset].evidence(item.index)
    cfg = (cfg or PRESETS[preset]).replace(**EVIDENCE_OVERRIDES)
    grid = logits_grid(item.label.shape)
    return make_evidence(item.label, item.num_classes, grid, cfg, stable_seed(seed, item.dataset, item.stem, preset))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# Main table


def run_main(items_by_ds: dict[str, list[Item]], class_names: dict[str, list[str]], presets: Sequence[str],
             methods: Sequence[str], cache: AttentionCache, seed: int, cfg: HeadConfig | None = None) -> dict:
    cfg = cfg or HeadConfig()
    results: dict = {}
    halves: dict = {}
    diag: dict = {}
    for ds, items in items_by_ds.items():
        K = len(class_names[ds])
        accs = {(p, m, h): IoUAccumulator(K, class_names=class_names[ds])
                for p in presets for m in methods for h in HALVES}
        kept_sizes, recall_hits, recall_total = [], 0, 0
        t0 = time.perf_counter()
        for n, it in enumerate(items, 1):
            A, grid = cache.get(it.image)
            half = "even" if it.index % 2 == 0 else "odd"
            for p in presets:
                L = evidence_for(it, p, seed)
                for m in methods:
                    pred = predict(m, L, A, grid, it.image, cfg)
                    accs[(p, m, "all")].update(pred, it.label)
                    accs[(p, m, half)].update(pred, it.label)
                if p == "medium":
                    # How much early rejection costs: which present classes reach the discrepancy.
                    Lg = resize_to_grid(L, grid)
                    kept = set(seed_classes(Lg.reshape(K, -1), cfg)[1].tolist())
                    present = {int(c) for c in np.unique(it.label) if c < K}
                    kept_sizes.append(len(kept))
                    recall_hits += len(kept & present)
                    recall_total += len(present)
            if n % 10 == 0 or n == len(items):
                log(f"[main] {ds}: {n}/{len(items)} images, {time.perf_counter() - t0:.0f}s "
                    f"(attention cache {cache.hits} hits / {cache.misses} computed)")
        results[ds] = {p: {m: _summary(accs[(p, m, "all")]) for m in methods} for p in presets}
        for h in HALVES[1:]:
            halves.setdefault(h, {})[ds] = {p: {m: _summary(accs[(p, m, h)]) for m in methods} for p in presets}
        if kept_sizes:
            diag[ds] = {"mean_classes_kept": float(np.mean(kept_sizes)),
                        "present_class_recall_after_nms_and_rejection": recall_hits / max(1, recall_total)}
    return {"results": results, "halves": halves, "early_rejection": diag}


def _summary(acc: IoUAccumulator) -> dict:
    r = acc.compute()
    return {"miou": r["miou"], "aacc": r["aacc"], "per_class": r["per_class"], "images": r["images"]}


# ------------------------------------------------------------------------------------------------
# Sweeps


@dataclass
class Sweep:
    name: str
    setting: str  # HeadConfig field, an attention setting, or a (b) option
    values: list
    default: Any
    kind: str = "head"  # head | attention | jbu
    modes: tuple[str, ...] = ("op", "mv")
    datasets: tuple[str, ...] = ("camvid", "coco_object")
    note: str = ""


SWEEPS = [
    Sweep("NMS θ", "nms_threshold", [0.3, 0.4, 0.5, 0.6, 0.7, 0.8], 0.5),
    Sweep("M.V. δ", "delta", [0.1, 0.2, 0.3, 0.4, 0.5, 0.7], 0.3, modes=("mv",)),
    Sweep("O.P. ε", "eps", [0.01, 0.03, 0.1, 0.3, 1.0], 0.1, modes=("op",)),
    Sweep("patch-softmax temperature r (norm_scale)", "norm_scale", [1.0, 5.0, 10.0, 20.0, 40.0], 1.0),
    Sweep("top-k early rejection (K > 21)", "top_k", [5, 10, 20, None], 10, datasets=("coco_object",),
          note="only COCO-Object has K > 21"),
    Sweep("attention layers", "layers", [(-1,), (-2,), (-3,), (-2, -1), (-4, -3, -2, -1)], (-1,),
          kind="attention", note="focus-s14 `layers=` setting: equal-weight mean of the listed blocks"),
    Sweep("grid resolution (attention input short side, px)", "short_side", [224, 336, 448, 560], 448,
          kind="attention", modes=("jbu", "op", "mv"), note="grid = short side / 14 patches"),
    Sweep("(b) JBU input", "jbu", [("attention", "softmax"), ("attention", "raw"), ("logits", "softmax"),
                                    ("logits", "raw")], ("attention", "softmax"), kind="jbu", modes=("jbu",),
          note="(source grid, values): what baseline (b) upsamples"),
]


def run_sweeps(items_by_ds: dict[str, list[Item]], class_names: dict[str, list[str]], cache: AttentionCache,
               seed: int, device: str, cache_enabled: bool, only: Sequence[str] | None = None,
               base: HeadConfig | None = None, extra_caches: list | None = None) -> dict:
    base = base or HeadConfig()
    out: dict = {}
    for sw in SWEEPS:
        if only and sw.setting not in only and sw.name not in only:
            continue
        t0 = time.perf_counter()
        res: dict = {}
        for ds, items in items_by_ds.items():
            if ds not in sw.datasets:
                continue
            K = len(class_names[ds])
            accs = {(v, m): IoUAccumulator(K) for v in range(len(sw.values)) for m in sw.modes}
            for vi, value in enumerate(sw.values):
                src = cache
                if sw.kind == "attention" and not _same(cache.settings.get(sw.setting, sw.default), value):
                    # sw.default is the model's own default, so an unset setting means that value
                    src = AttentionCache(ATTENTION, {**cache.settings, sw.setting: value}, device,
                                         enabled=cache_enabled)
                    if extra_caches is not None:
                        extra_caches.append(src)
                for it in items:
                    A, grid = src.get(it.image)
                    L = evidence_for(it, "medium", seed)
                    for m in sw.modes:
                        if sw.kind == "head":
                            pred = predict(m, L, A, grid, it.image, base.replace(**{sw.setting: value}))
                        elif sw.kind == "jbu":
                            pred = predict(m, L, A, grid, it.image, base, jbu_source=value[0], jbu_values=value[1])
                        else:
                            pred = predict(m, L, A, grid, it.image, base)
                        accs[(vi, m)].update(pred, it.label)
                log(f"[sweep] {sw.name} = {value} on {ds}: {time.perf_counter() - t0:.0f}s")
            res[ds] = {m: [accs[(vi, m)].compute()["miou"] for vi in range(len(sw.values))] for m in sw.modes}
        out[sw.name] = {"setting": sw.setting, "kind": sw.kind, "values": sw.values, "default": sw.default,
                        "modes": list(sw.modes), "note": sw.note, "miou": res,
                        "images": {ds: len(items_by_ds[ds]) for ds in res}}
    return out


# ------------------------------------------------------------------------------------------------
# Reporting


def main_table(main: dict, presets: Sequence[str], methods: Sequence[str], half: str = "all") -> str:
    res = main["results"] if half == "all" else main["halves"][half]
    cols = [(ds, p) for ds in res for p in presets]
    header = ["method"] + [f"{_ds_title(ds)} {p}" for ds, p in cols] + ["mean"]
    rows = []
    for m in methods:
        vals = [res[ds][p][m]["miou"] for ds, p in cols]
        rows.append([METHODS[m]] + vals + [float(np.nanmean(vals))])
    return markdown_table(header, rows)


def thin_table(main: dict, presets: Sequence[str], methods: Sequence[str]) -> str:
    """Per-class IoU of the thin and small classes (:data:`THIN`), all images."""
    parts = []
    for ds, names in THIN.items():
        if ds not in main["results"]:
            continue
        cols = [(p, c) for p in presets for c in names]
        header = ["method"] + [f"{p} {c}" for p, c in cols]
        rows = [[METHODS[m]] + [_iou(main["results"][ds][p][m], c) for p, c in cols] for m in methods]
        parts.append(f"{_ds_title(ds)}, per-class IoU (%)\n\n" + markdown_table(header, rows))
    return "\n\n".join(parts)


def _iou(summary: dict, name: str) -> float:
    return float(summary["per_class"].get(name, float("nan")))


def sweep_tables(sweeps: dict) -> str:
    parts = []
    for name, sw in sweeps.items():
        cols = [(ds, m) for ds in sw["miou"] for m in sw["modes"]]
        header = [sw["setting"]] + [f"{_ds_title(ds)} {METHODS[m]}" for ds, m in cols]
        rows = []
        for vi, v in enumerate(sw["values"]):
            label = _fmt_value(v) + (" (default)" if _same(v, sw["default"]) else "")
            rows.append([label] + [sw["miou"][ds][m][vi] for ds, m in cols])
        note = f" — {sw['note']}" if sw["note"] else ""
        imgs = ", ".join(f"{_ds_title(d)} {n}" for d, n in sw["images"].items())
        parts.append(f"**{name}**{note} (medium evidence; images: {imgs})\n\n" + markdown_table(header, rows))
    return "\n\n".join(parts)


def sweep_findings(sweeps: dict) -> list[str]:
    """One line per sweep and (dataset, mode): the best value and its margin over the default."""
    lines = []
    for name, sw in sweeps.items():
        d = next(i for i, v in enumerate(sw["values"]) if _same(v, sw["default"]))
        for ds, per_mode in sw["miou"].items():
            for m, vals in per_mode.items():
                b = int(np.nanargmax(vals))
                if b == d or vals[b] - vals[d] < 0.05:
                    lines.append(f"{name}, {_ds_title(ds)} {METHODS[m]}: the default {_fmt_value(sw['default'])} "
                                 f"wins ({vals[d]:.1f})")
                else:
                    lines.append(f"{name}, {_ds_title(ds)} {METHODS[m]}: {_fmt_value(sw['values'][b])} beats the "
                                 f"default {_fmt_value(sw['default'])} by {vals[b] - vals[d]:+.1f} "
                                 f"({vals[b]:.1f} vs {vals[d]:.1f})")
    return lines


def _same(a: Any, b: Any) -> bool:
    norm = lambda x: list(x) if isinstance(x, (tuple, list)) else x  # noqa: E731  (JSON turns tuples to lists)
    return norm(a) == norm(b)


def _fmt_value(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(map(str, v)) + ")"
    return "off" if v is None else str(v)


def _ds_title(ds: str) -> str:
    return {"camvid": "CamVid", "coco_object": "COCO-Obj"}.get(ds, ds)


# ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="folder holding camvid/ and coco_object/")
    ap.add_argument("--datasets", nargs="+", default=list(DATASET_DIRS), choices=list(DATASET_DIRS))
    ap.add_argument("--presets", nargs="+", default=None, choices=STRENGTHS,
                    help="evidence strengths (default: all four; --quick: medium); probe needs the "
                         "features of every image of the run (cached with the affinities)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--images", type=int, default=None, help="images per dataset (evenly spaced; default all)")
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_IMAGES} images per dataset, medium evidence, no sweeps (< 3 min on 2 CPU cores)")
    ap.add_argument("--sweep", action="store_true", help="run the sensitivity sweeps (medium evidence)")
    ap.add_argument("--sweep-only", action="store_true", help="sweeps only, no main table")
    ap.add_argument("--sweep-images", type=int, default=60, help="images per dataset for the sweeps")
    ap.add_argument("--sweeps", nargs="*", default=None, help="only these sweeps (setting names, e.g. eps delta)")
    ap.add_argument("--short-side", type=int, default=None, help="focus-s14 input short side (default: the model's)")
    ap.add_argument("--set", nargs="+", default=[], type=parse_setting, metavar="FIELD=VALUE", dest="head_set",
                    help="head settings (dslo.head.HeadConfig fields) for every run, e.g. nms_threshold=0.6; "
                         "unknown fields fail in HeadConfig.replace")
    ap.add_argument("--evidence-set", nargs="+", default=[], type=parse_setting, metavar="FIELD=VALUE",
                    help="change benchmarks.evidence.EvidenceConfig fields of every strength, e.g. noise_amp=0.1")
    ap.add_argument("--render", type=Path, default=None, help="only re-render the markdown of a saved JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-cache", action="store_true", help="recompute every affinity (nothing written)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON output (a .md table is written beside it); "
                         "default benchmarks/results/refine_real[_quick].json")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    EVIDENCE_OVERRIDES.clear()
    EVIDENCE_OVERRIDES.update(args.evidence_set)
    head = HeadConfig().replace(**dict(args.head_set))
    t_start = time.perf_counter()
    n_main = QUICK_IMAGES if args.quick and args.images is None else args.images
    settings = {"short_side": args.short_side} if args.short_side else {}
    cache = AttentionCache(ATTENTION, settings, args.device, enabled=not args.no_cache)

    extra: list[AttentionCache] = []  # the attention sweeps' caches
    names: dict[str, list[str]] = {}
    main_items: dict[str, list[Item]] = {}
    sweep_items: dict[str, list[Item]] = {}
    for ds in args.datasets:
        dset = get_dataset(ds, args.data_root / DATASET_DIRS[ds])
        names[ds] = list(dset.class_names)
        main_idx = [] if args.sweep_only else spaced_subset(len(dset), n_main)
        sweep_idx = spaced_subset(len(dset), args.sweep_images) if (args.sweep or args.sweep_only) else []
        loaded = {i: load_item(dset, i) for i in sorted(set(main_idx) | set(sweep_idx))}
        main_items[ds] = [loaded[i] for i in main_idx]
        # the probe of each half is fit on the other half of this run's images
        PROBES[ds] = make_probe(dset, cache, pool=main_idx or sweep_idx)
        sweep_items[ds] = [loaded[i] for i in sweep_idx]

    report: dict = {
        "meta": {
            "command": "python -m benchmarks.refine_real " + " ".join(sys.argv[1:]),
            "attention": {"model": ATTENTION, "settings": settings or "model defaults",
                          "model_repr": None},
            "evidence_grid": "CLIP B/16 at short side 336 (evidence.logits_grid)",
            "evidence_presets": {k: dataclasses.asdict(v.replace(**EVIDENCE_OVERRIDES)) for k, v in PRESETS.items()},
            "evidence_overrides": dict(EVIDENCE_OVERRIDES),
            "head": dataclasses.asdict(head),
            "head_overrides": dict(args.head_set),
            "seed": args.seed,
            "images": {ds: len(v) for ds, v in main_items.items()},
            "vocabulary": {ds: len(v) for ds, v in names.items()},
            "methods": METHODS,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        }
    }
    if not args.sweep_only:
        report["main"] = run_main(main_items, names, args.presets, args.methods, cache, args.seed, head)
    if args.sweep or args.sweep_only:
        report["sweeps"] = run_sweeps(sweep_items, names, cache, args.seed, args.device, not args.no_cache,
                                      args.sweeps, head, extra)
        report["findings"] = sweep_findings(report["sweeps"])
    report["meta"]["attention"]["model_repr"] = repr(cache._model) if cache._model is not None else "(all cached)"
    report["meta"]["seconds"] = round(time.perf_counter() - t_start, 1)
    computed = cache.compute_seconds + sum(c.compute_seconds for c in extra)
    report["meta"]["attention_seconds_computed"] = round(computed, 1)
    return report


def render(report: dict, presets: Sequence[str], methods: Sequence[str]) -> str:
    parts = [f"<!-- generated by: {report['meta']['command']} -->"]
    if report["meta"].get("evidence_overrides"):
        parts.append("Evidence changed from the strength presets: " + ", ".join(
            f"`{k}={v}`" for k, v in report["meta"]["evidence_overrides"].items()))
    if report["meta"].get("head_overrides"):
        parts.append("Head settings changed from the SPEC defaults: " + ", ".join(
            f"`{k}={v}`" for k, v in report["meta"]["head_overrides"].items()))
    if "main" in report:
        imgs = ", ".join(f"{_ds_title(d)} {n}" for d, n in report["meta"]["images"].items())
        parts.append(f"mIoU (%), evidence strength × dataset; images: {imgs}\n\n"
                     + main_table(report["main"], presets, methods))
        for h, what in (("even", "even image indices (where the settings were chosen)"),
                        ("odd", "odd image indices (held out)")):
            if report["main"].get("halves", {}).get(h):
                parts.append(f"mIoU (%), {what}\n\n" + main_table(report["main"], presets, methods, h))
        thin = thin_table(report["main"], presets, methods)
        if thin:
            parts.append(thin)
        er = report["main"].get("early_rejection", {})
        if er:
            parts.append("Early rejection (medium evidence): " + "; ".join(
                f"{_ds_title(d)}: {v['mean_classes_kept']:.1f} classes kept per image, "
                f"{100 * v['present_class_recall_after_nms_and_rejection']:.1f}% of present classes kept"
                for d, v in er.items()))
    if "sweeps" in report:
        parts.append(sweep_tables(report["sweeps"]))
        parts.append("\n".join(f"- {line}" for line in report["findings"]))
    parts.append(f"Run time: {report['meta']['seconds']} s (attention computed: "
                 f"{report['meta']['attention_seconds_computed']} s).")
    return "\n\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.presets is None:
        args.presets = ["medium"] if args.quick else list(STRENGTHS)
    if args.render:
        report = json.loads(args.render.read_text())
        if "sweeps" in report:
            report["findings"] = sweep_findings(report["sweeps"])
        presets = list(next(iter(report["main"]["results"].values()))) if "main" in report else args.presets
        methods = list(next(iter(next(iter(report["main"]["results"].values())).values()))) if "main" in report else []
        md = render(report, presets, methods)
        write_json(args.render, report)
        atomic_write_text(args.render.with_suffix(".md"), md)
        print(md)
        return 0
    for ds in args.datasets:
        if not (args.data_root / DATASET_DIRS[ds]).is_dir():
            print(f"error: {args.data_root / DATASET_DIRS[ds]} not found; pass --data-root pointing at the "
                  "folder that holds camvid/ and coco_object/ (shared/data beside the repository)", file=sys.stderr)
            return 2
    report = run(args)
    out = args.out or RESULTS_DIR / ("refine_real_quick.json" if args.quick else
                                     "refine_real_sweeps.json" if args.sweep_only else "refine_real.json")
    md = render(report, args.presets, args.methods)
    write_json(out, report)
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Choose the head's default readout with one evidence family held out at a time (issue 26).

Reads the per-image records of ``benchmarks.readout.records`` (every image of CamVid test and the
COCO-Object subset × every family × strength of ``benchmarks.readout.families``) and scores rule
*designs*: how the readout reads one per-image statistic to pick, per image, plain upsampling, the
paper's head or the fused readout at some λ. For every design and every family F, the design's
parameters are fit on the other families (even-index images) and the fitted rule is reported on F
(its even and odd images, and all of them). The report names the design whose worst held-out
family is best among the designs whose decisions do not flip when the logits are rescaled (the
``affine`` family against the ``synthetic`` one, same images), with its parameters fit on every
family's even half; which rule the head ships is decided in docs/benchmarks.md §1c from these tables.

Per cell (family, strength, data set) the target is ``max(bilinear, + JBU, paper head)`` of that
cell; a rule's margin is its mIoU minus the target (the issue's goal: ≥ −0.3 in every held-out cell,
and a mean over the held-out cells ≥ paper M.V. + 0.2). Fitting: the rules whose every training
cell (and the clean cell's thin classes against bilinear's) is within 0.3 of its target rank by
their mean mIoU, the others by their worst cell.

    python -m benchmarks.readout.leave_one_out                  # every design, tables to stdout
    python -m benchmarks.readout.leave_one_out --md benchmarks/results/readout_leave_one_out.md
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.common import atomic_write_text, markdown_table
from benchmarks.readout.families import CLEAN, FAMILIES, strengths
from benchmarks.readout.records import DEFAULT_DIR, KAPPAS, LAMBDAS, load_records
from benchmarks.readout.select_readout import dense

PLAIN, PAPER = "bilinear", "paper"  # variants of a cell (the head's mode is the cells')
FUSED = [(tag, lam) for tag in ("norec", "rec") for lam in LAMBDAS]  # the fused readout: recovery seeds, λ
KAPPA = [(tag, "kappa", k) for tag in ("norec", "rec") for k in KAPPAS]  # ... at λ = κ·margin
TOLERANCE = 0.3  # the goal: every cell within 0.3 mIoU of max(bilinear, + JBU, paper)
FLIP_LIMIT = 0.01  # share of images whose step may change under the affine family's rescaling
# the rule before issue 26 (chosen on the synthetic family and the probe): (thresholds, variants per step)
PREVIOUS = {"mv": ((2.14, 2.86), (PLAIN, ("norec", 6.0), ("rec", 24.0))),
            "op": ((2.14, 2.86), (PLAIN, ("norec", 4.0), ("rec", 12.0)))}
THIN = {"camvid": (2, 6, 9, 10)}  # pole, sign symbol, pedestrian, bicyclist: bilinear's IoU is the floor on clean cells
STATISTICS = ("margin", "gap_ratio", "z_margin", "grid_agree", "attn_agree", "head_agree")
SCALE_FREE = ("gap_ratio", "z_margin", "grid_agree", "attn_agree")


def _parts(c) -> np.ndarray:
    """``(3, K)``: diagonal, truth and prediction sums of a confusion (IoU adds over images)."""
    d = dense(c)
    return np.stack([np.diag(d), d.sum(1), d.sum(0)]).astype(np.float64)


def miou(p: np.ndarray) -> np.ndarray:
    """mIoU (%) of ``(..., 3, K)`` parts over the classes present in the truth."""
    inter, gt, pred = p[..., 0, :], p[..., 1, :], p[..., 2, :]
    ok = gt > 0
    return 100 * (inter / np.maximum(gt + pred - inter, 1) * ok).sum(-1) / np.maximum(ok.sum(-1), 1)


def class_iou(p: np.ndarray, c: int) -> np.ndarray:
    inter, gt, pred = p[..., 0, c], p[..., 1, c], p[..., 2, c]
    return 100 * inter / np.maximum(gt + pred - inter, 1)


@dataclass
class Cell:
    """One family × strength × data set: per image (sorted by index) the parts of every variant and
    the statistics."""

    family: str
    strength: str
    dataset: str
    index: np.ndarray
    parts: dict  # variant -> (n, 3, K)
    stats: dict  # name -> (n,)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.family, self.strength, self.dataset

    def subset(self, half: str | None) -> Cell:
        m = np.ones(len(self.index), bool) if half is None else (self.index % 2 == (0 if half == "even" else 1))
        return Cell(self.family, self.strength, self.dataset, self.index[m],
                    {v: p[m] for v, p in self.parts.items()}, {s: x[m] for s, x in self.stats.items()})

    def score(self, variant) -> float:
        return float(miou(self.parts[variant].sum(0)))

    def target(self) -> float:
        return max(self.score(PLAIN), self.score("jbu"), self.score(PAPER))

    def thin(self) -> list[tuple[int, float]]:
        """(class, bilinear IoU) of the thin classes this cell guards (the clean cell only)."""
        if (self.family, self.strength) != CLEAN:
            return []
        base = self.parts[PLAIN].sum(0)
        return [(c, float(class_iou(base, c))) for c in THIN.get(self.dataset, ()) if base[1, c] > 0]


def build_cells(rec: dict, mode: str = "mv") -> list[Cell]:
    """The cells of the records that hold ``mode``'s head."""
    cells = []
    for fam, s in strengths():
        for ds in sorted({k[0] for k in rec}):
            keys = sorted(k for k in rec if k[0] == ds and k[2] == fam and k[3] == s and (mode, "paper") in rec[k]["conf"])
            if not keys:
                continue
            src = {PLAIN: PLAIN, "jbu": "jbu", PAPER: (mode, "paper")}
            src.update({v: (mode, *v) for v in FUSED + KAPPA if all((mode, *v) in rec[k]["conf"] for k in keys)})
            parts = {v: np.stack([_parts(rec[k]["conf"][key]) for k in keys]) for v, key in src.items()}
            stats = {n: np.array([rec[k]["stats"].get(n, np.nan) for k in keys], dtype=float)
                     for n in STATISTICS + (f"head_agree_{mode}",)}
            stats["head_agree"] = stats.pop(f"head_agree_{mode}")
            cells.append(Cell(fam, s, ds, np.array([k[1] for k in keys]), parts, stats))
    return cells


# ------------------------------------------------------------------------------------------------
# Rules and designs


@dataclass(frozen=True)
class Rule:
    """Per image: step ``j`` = the number of ``thresholds`` (ascending) above its statistic
    (0: the cleanest); the image is read out with ``variants[j]``."""

    statistic: str | None
    thresholds: tuple[float, ...]
    variants: tuple

    def choose(self, x: np.ndarray) -> np.ndarray:
        """Step of each image whose statistic is ``x``."""
        return (x[:, None] < np.asarray(self.thresholds)[None, :]).sum(1) if self.thresholds else np.zeros(len(x), int)

    def parts(self, cell: Cell) -> np.ndarray:
        step = self.choose(cell.stats[self.statistic]) if self.statistic else np.zeros(len(cell.index), int)
        return sum(cell.parts[v][step == j].sum(0) for j, v in enumerate(self.variants))

    def describe(self) -> str:
        def name(v):
            if v in (PLAIN, PAPER):
                return "plain" if v == PLAIN else "paper"
            lam = f"λ={v[2]:g}·margin" if len(v) == 3 else f"λ={v[1]:g}"
            return f"fused {lam}{' +rec' if v[0] == 'rec' else ''}"
        if not self.thresholds:
            return name(self.variants[0])
        edges = [f"≥ {self.thresholds[-1]:.3g}"] + [f"[{a:.3g}, {b:.3g})" for a, b in
                                                     zip(self.thresholds[:-1], self.thresholds[1:], strict=False)][::-1]
        edges += [f"< {self.thresholds[0]:.3g}"]
        return f"{self.statistic}: " + ", ".join(f"{e} → {name(v)}" for e, v in zip(edges, self.variants, strict=False))


@dataclass
class Design:
    """A family of rules: ``steps`` steps on ``statistic``; step 0 plain upsampling (the clean-evidence
    guard) unless ``steps == 1``; the other steps pick from ``options``."""

    name: str
    statistic: str | None
    steps: int
    options: list = field(default_factory=list)
    fixed: Rule | None = None  # a rule with no parameters to fit


def designs(mode: str = "mv") -> list[Design]:
    th, variants = PREVIOUS[mode]
    out = [Design("the paper's head", None, 1, fixed=Rule(None, (), (PAPER,))),
           Design("plain upsampling", None, 1, fixed=Rule(None, (), (PLAIN,))),
           Design(f"previous default (margin {th[0]} / {th[1]}, λ {variants[1][1]:g} / {variants[2][1]:g})", "margin", 3,
                  fixed=Rule("margin", th, variants)),
           Design("one readout for every image", None, 1, [PLAIN, PAPER] + FUSED + KAPPA)]
    for stat in STATISTICS:
        out.append(Design(f"guard on {stat} → paper", stat, 2, [PAPER]))
        out.append(Design(f"guard on {stat} → fixed λ", stat, 2, [PAPER] + FUSED))
        out.append(Design(f"guard on {stat} → λ ∝ margin", stat, 2, [PAPER] + KAPPA))
        out.append(Design(f"3 steps on {stat}, fixed λ", stat, 3, [PAPER] + FUSED))
        out.append(Design(f"3 steps on {stat}, λ ∝ margin", stat, 3, [PAPER] + KAPPA))
    return out


def _thresholds(cells: Sequence[Cell], stat: str, q: float = 0.025) -> list[float]:
    x = np.concatenate([c.stats[stat] for c in cells])
    x = x[np.isfinite(x)]
    return sorted(set(np.round(np.quantile(x, np.arange(q, 1.0, q)), 4).tolist()))


def _rank(worst: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Rules whose every training cell is within :data:`TOLERANCE` of its target rank by their mean
    mIoU; the others below them, by their worst cell."""
    return np.minimum(worst + TOLERANCE, 0.0) * 1e3 + mean


def fit(design: Design, cells: Sequence[Cell]) -> Rule | None:
    """The design's best rule on ``cells`` by :func:`_rank` (worst training-cell margin, thin classes
    of the clean cell included, within :data:`TOLERANCE`; then the mean mIoU). Vectorised over the variants of the noisy steps; each rule
    is scored exactly (a rule's confusion is the sum of the images' it picks)."""
    if design.fixed is not None:
        return design.fixed
    # only the variants every cell's records hold (λ ∝ margin was not recorded for every image)
    opts = [v for v in design.options if all(v in c.parts for c in cells)]
    if not opts:
        return None
    tgt = [c.target() for c in cells]
    if design.steps == 1:  # one readout for every image: the option with the best worst case
        worst, total = np.full(len(opts), np.inf), np.zeros(len(opts))
        for c, t in zip(cells, tgt, strict=False):
            parts = np.stack([c.parts[v].sum(0) for v in opts])
            m = miou(parts)
            w = m - t
            for cls, base in c.thin():
                w = np.minimum(w, class_iou(parts, cls) - base - TOLERANCE)  # thin classes: no tolerance
            worst, total = np.minimum(worst, w), total + m
        return Rule(None, (), (opts[int(np.argmax(_rank(worst, total / len(cells))))],))
    # per cell: images sorted by the statistic, cumulative parts per option (and plain)
    prep = []
    for c in cells:
        o = np.argsort(c.stats[design.statistic], kind="stable")
        x = c.stats[design.statistic][o]
        cum = {v: np.concatenate([np.zeros((1, *c.parts[v].shape[1:])), np.cumsum(c.parts[v][o], 0)])
               for v in [PLAIN] + opts}
        prep.append((x, cum, c.thin()))
    ths = _thresholds(cells, design.statistic, 0.025 if design.steps == 2 else 0.05)
    best, best_rule = -np.inf, None
    O = np.stack  # options along axis 0
    for th in itertools.combinations(ths, design.steps - 1):
        worst, total = None, None
        for (x, cum, thin), t in zip(prep, tgt, strict=False):
            idx = [0] + [int(np.searchsorted(x, v, side="left")) for v in th] + [len(x)]
            # step j (0 = clean) covers sorted images [idx[steps-1-j], idx[steps-j])
            clean = cum[PLAIN][idx[-1]] - cum[PLAIN][idx[-2]]
            if design.steps == 2:
                parts = clean + O([cum[v][idx[1]] - cum[v][idx[0]] for v in opts])  # (V, 3, K)
            else:
                mid = O([cum[v][idx[2]] - cum[v][idx[1]] for v in opts])
                low = O([cum[v][idx[1]] - cum[v][idx[0]] for v in opts])
                parts = clean + mid[:, None] + low[None, :]  # (V, V, 3, K)
            m = miou(parts)
            w = m - t
            for cls, base in thin:
                w = np.minimum(w, class_iou(parts, cls) - base - TOLERANCE)  # thin classes: no tolerance
            worst = w if worst is None else np.minimum(worst, w)
            total = m if total is None else total + m
        score = _rank(worst, total / len(cells))
        j = np.unravel_index(np.argmax(score), score.shape)
        if score[j] > best:
            best = score[j]
            chosen = tuple(opts[k] for k in (j if design.steps == 3 else j[:1]))
            best_rule = Rule(design.statistic, tuple(th), (PLAIN,) + chosen)
    assert best_rule is not None
    return best_rule


# ------------------------------------------------------------------------------------------------
# Leave one family out


def margins(rule: Rule, cells: Sequence[Cell]) -> dict:
    """Per cell: the rule's mIoU, its margin over the cell's target and over paper M.V."""
    out = {}
    for c in cells:
        p = rule.parts(c)
        m = float(miou(p))
        worst_thin = min([float(class_iou(p, cls)) - base for cls, base in c.thin()], default=np.inf)
        out[c.key] = {"miou": m, "vs_target": m - c.target(), "vs_paper": m - c.score(PAPER),
                      "vs_plain_jbu": m - max(c.score(PLAIN), c.score("jbu")), "thin": worst_thin,
                      "plain": c.score(PLAIN), "jbu": c.score("jbu"), "paper": c.score(PAPER)}
    return out


def leave_one_out(design: Design, cells: list[Cell]) -> dict:
    """For every family F: the rule fit on the other families' even images, and its per-cell
    numbers on F's even, odd and all images."""
    out = {}
    for fam in FAMILIES:
        train = [c.subset("even") for c in cells if c.family != fam]
        test = [c for c in cells if c.family == fam]
        if not test or not train:
            continue
        rule = fit(design, train)
        assert rule is not None, design.name
        out[fam] = {"rule": rule, **{h: margins(rule, [c.subset(None if h == "all" else h) for c in test])
                                      for h in ("even", "odd", "all")}}
    return out


def summary(loo: dict, half: str = "all") -> dict:
    cells = [v for f in loo.values() for v in f[half].values()]
    per_family = {f: min(v["vs_target"] for v in r[half].values()) for f, r in loo.items()}
    return {"worst_family": min(per_family.values()), "per_family": per_family,
            "mean_vs_paper": float(np.mean([v["vs_paper"] for v in cells])),
            "worst_vs_paper": min(v["vs_paper"] for v in cells),
            "worst_vs_plain_jbu": min(v["vs_plain_jbu"] for v in cells),
            "thin": min(v["thin"] for v in cells)}


def flips(rule: Rule, rec: dict, mode: str = "mv") -> float:
    """Share of images whose step differs between the synthetic evidence and its affine rescaling
    (same image, same strength): a rule that flips there reads the logits' scale, not the evidence."""
    if not rule.statistic:
        return 0.0
    stat = f"head_agree_{mode}" if rule.statistic == "head_agree" else rule.statistic
    n = same = 0
    for (ds, i, fam, s), r in rec.items():
        if fam != "affine" or (ds, i, "synthetic", s) not in rec:
            continue
        a = rule.choose(np.array([r["stats"][stat]]))[0]
        b = rule.choose(np.array([rec[(ds, i, "synthetic", s)]["stats"][stat]]))[0]
        n += 1
        same += int(a == b)
    return 1.0 - same / max(1, n)


# ------------------------------------------------------------------------------------------------
# Report


def _title(key: tuple[str, str, str]) -> str:
    fam, s, ds = key
    d = {"camvid": "CamVid", "coco_object": "COCO-Obj"}.get(ds, ds)
    return f"{d} {fam}" + ("" if s == fam else f" {s}")


def cell_table(loo: dict, half: str, others: dict | None = None) -> str:
    """Held-out numbers per cell: baselines, ``others`` (design name → its leave-one-out result,
    e.g. today's default), the held-out rule's mIoU and its margins."""
    others = others or {}
    rows = []
    for fam, r in loo.items():
        for key, v in r[half].items():
            rows.append([_title(key), v["plain"], v["jbu"], v["paper"],
                         *(o[fam][half][key]["miou"] for o in others.values()),
                         v["miou"], v["vs_target"], v["vs_paper"]])
    return markdown_table(["cell (held out)", "(a) bilinear", "(b) + JBU", "paper head", *others, "rule (held out)",
                           "vs max(a, b, paper)", "vs paper head"], rows, fmt="{:.2f}")


def report(rec: dict, cells: list[Cell], which: Sequence[str] | None = None, mode: str = "mv") -> tuple[str, dict]:
    n = {ds: len({c_i for c in cells if c.dataset == ds for c_i in c.index}) for ds in sorted({c.dataset for c in cells})}
    lines = [f"Head: {mode}; images: " + ", ".join(f"{d} {k}" for d, k in n.items())
             + f"; cells (family × strength × data set): {len(cells)}.", ""]
    results = {}
    held = set.intersection(*(set(c.parts) for c in cells))  # the variants every record holds
    for d in designs(mode):
        if which and not any(w in d.name for w in which):
            continue
        fused = [v for v in d.options if v not in (PLAIN, PAPER)]
        if fused and not any(v in held for v in fused):  # e.g. λ ∝ margin, recorded for some images only
            print(f"{d.name}: skipped (its variants are not in every record)", file=sys.stderr, flush=True)
            continue
        loo = leave_one_out(d, cells)
        s_all, s_odd = summary(loo, "all"), summary(loo, "odd")
        final = fit(d, [c.subset("even") for c in cells])
        results[d.name] = {"loo": loo, "all": s_all, "odd": s_odd, "final": final, "flips": flips(final, rec, mode)}
        print(f"{d.name}: worst held-out family {s_all['worst_family']:+.2f} (odd {s_odd['worst_family']:+.2f}), "
              f"mean vs paper {s_all['mean_vs_paper']:+.2f}", file=sys.stderr, flush=True)
    order = sorted(results, key=lambda n: (results[n]["all"]["worst_family"], results[n]["all"]["mean_vs_paper"]),
                   reverse=True)
    # a rule whose decisions flip under a rescaling of the logits reads the scale, not the evidence
    transferable = [n for n in order if results[n]["flips"] <= FLIP_LIMIT]
    head = ["design", "worst held-out family", *(f"held out: {f}" for f in FAMILIES), "mean vs paper head",
            "worst vs (a), (b)", "odd half: worst family", "steps flipped by (c)"]
    rows = [[n, r["all"]["worst_family"], *(r["all"]["per_family"].get(f, np.nan) for f in FAMILIES),
             r["all"]["mean_vs_paper"], r["all"]["worst_vs_plain_jbu"], r["odd"]["worst_family"], r["flips"]]
            for n, r in ((n, results[n]) for n in order)]
    lines += ["Per design, with each family held out in turn (fit on the other families' even images): the worst "
              "cell margin over max(bilinear, + JBU, the paper's head) of each held-out family, all images of it "
              "(mIoU points)", "",
              markdown_table(head, rows, fmt="{:+.2f}"), ""]
    best = transferable[0] if transferable else order[0]
    lines += [f"Best transferable design (the best worst held-out family among the designs flipping ≤ {100 * FLIP_LIMIT:g} % "
              f"of the steps under (c)): **{best}**; fit on every family's even images: "
              f"`{results[best]['final'].describe()}`", ""]
    for fam, r in results[best]["loo"].items():
        lines.append(f"- held out {fam}: `{r['rule'].describe()}`")
    prev = next((n for n in results if n.startswith("previous")), None)
    others = {"previous default": results[prev]["loo"]} if prev and prev != best else {}
    for half in ("all", "odd", "even"):
        lines += ["", f"Held-out cells, {half} images of the held-out family ({best})", "",
                  cell_table(results[best]["loo"], half, others)]
    return "\n".join(lines) + "\n", results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--md", type=Path, default=None, help="write the tables here too")
    ap.add_argument("--designs", nargs="*", default=None, help="only designs whose name contains one of these")
    ap.add_argument("--mode", default="mv", choices=["mv", "op"], help="the head's mode (its records)")
    args = ap.parse_args(argv)
    rec = load_records(args.records)
    cells = build_cells(rec, args.mode)
    md, _ = report(rec, cells, args.designs, args.mode)
    print(md)
    if args.md:
        atomic_write_text(args.md, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

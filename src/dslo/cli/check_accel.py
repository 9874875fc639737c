"""``dslo check-accel``: float32 against the accelerated models (``--accel int8``) on your own
images with your own weights, so you decide from your own numbers whether the speed is worth
the difference.

Both segmenters are built from the same flags (the weights load twice). Per image, both encode
it (the model passes, timed; which goes first alternates from image to image, so neither
always runs on a warmer or busier machine) and decode it into your classes. Reported: the
speed-up of the model passes and of the whole prediction (medians), the share of pixels
labelled the same, the cosine of the logits (per patch, centred over the classes) and the
cosine of the affinity rows (mean over patches); per image and summarised.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from dslo.cli._args import add_model_args, positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check-accel",
        help="compare float32 with --accel int8 on your images: speed-up, label agreement, cosines",
        description="Run float32 and the accelerated models (--accel) on your images with your weights and "
                    "print the speed-up, the share of pixels labelled the same, and the cosine of the logits "
                    "and of the affinity rows, per image and summarised.",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGES", help="image files, folders or glob patterns")
    from dslo.cli.segment import add_class_args

    add_class_args(p)
    add_model_args(p, device="cpu", accel="int8", help={
        "accel": "what to compare with float32 (default int8): int8, the image towers' linear layers in "
                 "dynamic int8 on the CPU (text tower float)",
        "device": "cpu (default; int8 runs on the CPU only)"})
    p.add_argument("--limit", type=positive_int, metavar="N", help="only the first N images")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the per-image rows and the summary")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no per-image lines")
    p.set_defaults(func=run)


def compare_one(float_seg: Any, accel_seg: Any, image: Any, classes: Any, accel_first: bool) -> dict[str, Any]:
    """One image through both segmenters: encode times (ms), predict times (encode + decode, ms),
    label agreement, logits and affinity cosines."""
    from dslo.models.accel import affinity_cosine, logits_cosine

    order = [("accel", accel_seg), ("float", float_seg)] if accel_first else [("float", float_seg), ("accel", accel_seg)]
    enc, results, ms = {}, {}, {}
    for name, seg in order:
        t0 = time.perf_counter()
        enc[name] = seg.encode(image)
        t1 = time.perf_counter()
        results[name] = seg.decode(enc[name], classes)
        ms[name] = ((t1 - t0) * 1000.0, (time.perf_counter() - t0) * 1000.0)
    f, a = results["float"], results["accel"]
    row = {
        "encode_ms_float": ms["float"][0], "encode_ms_accel": ms["accel"][0],
        "predict_ms_float": ms["float"][1], "predict_ms_accel": ms["accel"][1],
        "label_agreement": float((f.labels == a.labels).mean()),
        "logits_cosine": logits_cosine(f.logits, a.logits),
        "affinity_cosine": None,
    }
    if enc["float"].affinity is not None and enc["accel"].affinity is not None:
        row["affinity_cosine"] = affinity_cosine(enc["float"].affinity, enc["accel"].affinity)
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the times and their ratios, means and minima of the agreements."""
    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    def stats(key: str) -> dict[str, float] | None:
        vals = [r[key] for r in rows if r[key] is not None and r[key] == r[key]]
        return {"mean": statistics.fmean(vals), "min": min(vals)} if vals else None

    return {
        "images": len(rows),
        "encode_ms": {"float": med("encode_ms_float"), "accel": med("encode_ms_accel")},
        "predict_ms": {"float": med("predict_ms_float"), "accel": med("predict_ms_accel")},
        "encode_speedup": med("encode_ms_float") / med("encode_ms_accel"),
        "predict_speedup": med("predict_ms_float") / med("predict_ms_accel"),
        "label_agreement": stats("label_agreement"),
        "logits_cosine": stats("logits_cosine"),
        "affinity_cosine": stats("affinity_cosine"),
        "load_average": list(os.getloadavg()),
    }


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def summary_lines(s: dict[str, Any], accel: str) -> list[str]:
    def both(d: dict[str, float] | None, pct: bool = False) -> str:
        if d is None:
            return "-"
        return (f"mean {100 * d['mean']:.2f} %, min {100 * d['min']:.2f} %" if pct
                else f"mean {d['mean']:.4f}, min {d['min']:.4f}")

    return [
        f"float32 vs {accel} on {s['images']} image(s) (load average {s['load_average'][0]:.1f}):",
        f"  model passes: {s['encode_ms']['float']:.0f} ms -> {s['encode_ms']['accel']:.0f} ms per image "
        f"(median), speed-up {s['encode_speedup']:.2f}x",
        f"  whole prediction: {s['predict_ms']['float']:.0f} ms -> {s['predict_ms']['accel']:.0f} ms, "
        f"speed-up {s['predict_speedup']:.2f}x",
        f"  pixels labelled the same: {both(s['label_agreement'], pct=True)}",
        f"  logits cosine (per patch, centred over classes): {both(s['logits_cosine'])}",
        f"  affinity rows cosine: {both(s['affinity_cosine'])}",
    ]


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from dslo.cli._args import quiet_libraries
    from dslo.cli._args import model_choice
    from dslo.cli.segment import read_class_args
    from dslo.inputs import discover
    from dslo.outputs import atomic_write_text

    if args.accel == "none":
        raise ValueError("--accel none compares float32 with itself; pass --accel int8")
    classes = read_class_args(args)
    base = model_choice(args, accel="none")
    accelerated = base.replace(accel=args.accel)
    base.head_settings()
    accelerated.head_settings()  # int8 on a GPU, a bad --set: refused before any model loads
    items, errors = discover(args.inputs)
    for e in errors:
        print(f"dslo check-accel: {e}", file=sys.stderr)
    items = items[: args.limit] if args.limit else items
    if not items:
        print("dslo check-accel: no images to compare", file=sys.stderr)
        return 1
    if args.quiet:
        quiet_libraries()
    float_seg, accel_seg = base.create_segmenter(), accelerated.create_segmenter()
    first = items[0].read()
    compare_one(float_seg, accel_seg, first, classes, False)  # warm-up: allocators, text embeddings
    rows = []
    for i, item in enumerate(tqdm(items, unit="img", file=sys.stderr, disable=True if args.quiet else None)):
        row = {"image": item.name, **compare_one(float_seg, accel_seg, item.read(), classes, bool(i % 2))}
        rows.append(row)
        if not args.quiet:
            tqdm.write(f"{item.name}: {row['encode_ms_float']:.0f} -> {row['encode_ms_accel']:.0f} ms, "
                       f"same labels {100 * row['label_agreement']:.2f} %, logits cos "
                       f"{_fmt(row['logits_cosine'])}, affinity cos {_fmt(row['affinity_cosine'])}",
                       file=sys.stderr)
    summary = summarize(rows)
    print("\n".join(summary_lines(summary, args.accel)))
    if args.json is not None:
        record = {"request": accelerated.replace(accel="none").segmenter_kwargs(), "accel": args.accel,
                  "summary": summary, "rows": rows}
        atomic_write_text(args.json, json.dumps(record, indent=1, default=str) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0

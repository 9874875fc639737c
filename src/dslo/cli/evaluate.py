"""``dslo eval``: run a segmenter on a benchmark (or all eight) and report MMSeg-exact numbers
with their protocol. Resumable: predictions are cached in the output folder. Data-parallel
under ``torchrun`` (each rank a shard, rank 0 merges); see docs/evaluation.md."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from dslo.cli._args import add_model_args



def _positive_float(text: str) -> float:
    v = float(text)
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError("--background-threshold must be a probability in (0, 1)")
    return v


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate on a benchmark (or all eight) with the protocol saved next to the numbers",
        description="Evaluate a segmenter on a benchmark. Writes DIR/pred/<stem>.png (cached: a "
                    "rerun only predicts what is missing), DIR/report.json (miou, aacc, per_class, "
                    "protocol) and DIR/report.md. --dataset all runs the eight benchmarks of the "
                    "paper's Table 1 into DIR/<dataset>/ and writes DIR/table.md.",
    )
    p.add_argument("--dataset", required=True, metavar="NAME",
                   help="voc21, voc20, context60, context59, coco_object, coco_stuff, cityscapes, "
                        "ade20k, camvid, folder, or all (the eight benchmarks)")
    p.add_argument("--data-root", required=True, type=Path, metavar="DIR",
                   help="the dataset's folder (with --dataset all: the folder holding VOCdevkit/, "
                        "coco_stuff164k/, ADEChallengeData2016/, cityscapes/)")
    p.add_argument("--split", default=None, help="split (default: val; CamVid: test)")
    p.add_argument("--output", "-o", type=Path, metavar="DIR",
                   help="output folder (default runs/PRESET, or runs/PRESET-DATASET for one benchmark)")
    add_model_args(p, max_side=None, help={
        "logits": "logits model (CLIP) replacing the preset's; naclip-b16, sclip-b16, clearclip-b16, "
                  "maskclip-b16, proxyclip-b16 run another method (docs/methods.md)",
        "set": "a head setting (repeatable), e.g. --set nms_threshold=0.6; --set post=pamr adds PAMR "
               "after the head (or after the logits with --mode none)",
        "logits-option": "a logits-model setting (repeatable), e.g. --logits-option method=naclip, "
                         "--logits-option pos_interp=peer",
        "attention-option": "an attention-model setting (repeatable), e.g. --attention-option resolution=768",
        "max-side": "downscale larger images to this side for the models (default: the benchmark's, "
                    "1024; Cityscapes 1120; 0 = never)",
        "device": "auto (under torchrun: cuda:LOCAL_RANK), cpu, cuda, cuda:N, mps"})
    p.add_argument("--class-file", "--classes-file", dest="class_file", metavar="FILE",
                   help="class names replacing the shipped file")
    p.add_argument("--background-threshold", type=_positive_float, metavar="P",
                   help="VOC21/Context60/COCO-Object: instead of the background class, send pixels "
                        "whose max CLIP class probability is below P to background")
    p.add_argument("--short-side", type=int, metavar="N",
                   help="CLIP input short side (default: the method's published one for a peer method, "
                        "else the benchmark's, 336; Cityscapes 560)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images (smoke tests)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    from dslo.cli.segment import add_speed_args

    add_speed_args(p)
    p.set_defaults(func=run)


def _device(requested: str) -> str:
    """Under torchrun each rank takes its own GPU."""
    if requested == "auto" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return requested


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    ov: dict[str, Any] = dict(args.settings)
    if args.mode:
        ov["mode"] = args.mode
    if args.dtype not in (None, "auto"):
        ov["dtype"] = args.dtype
    if args.logits_options:
        ov["logits_options"] = dict(args.logits_options)
    if args.attention_options:
        ov["attention_options"] = dict(args.attention_options)
    if args.accel != "none":  # int8 predictions are cached apart from float ones (the request key)
        ov["accel"] = args.accel
    return ov


_SEGMENTERS: dict[tuple, Any] = {}


def evaluate_one(args: argparse.Namespace, name: str, data_root: Path, out_dir: Path) -> dict | None:
    from dslo.eval.datasets import get_dataset
    from dslo.eval.protocol import describe_segmenter, eval_request
    from dslo.eval.runner import Shard, evaluate
    from dslo.models.registry import logits_method

    ds = get_dataset(name, data_root, args.split, class_file=args.class_file)
    overrides = _overrides(args)
    request = eval_request(
        ds, model=args.model, logits=args.logits, attention=args.attention, overrides=overrides,
        background_threshold=args.background_threshold, short_side=args.short_side,
        max_side="default" if args.max_side is None else (args.max_side or None),
        method=logits_method(args.logits, dict(args.logits_options)),
    )
    resize = request["resize"]

    def make_segmenter():
        # Benchmarks that share resize settings share one segmenter (and its text-feature
        # cache) within a `--dataset all` run: models load once, not eight times.
        key = (resize["logits_short_side"], resize["max_side"])
        if key not in _SEGMENTERS:
            from dslo.cli._args import model_choice

            options = dict(args.logits_options)
            if "short_side" in options:
                raise ValueError("set the CLIP input size with --short-side (it is part of the protocol)")
            _SEGMENTERS[key] = model_choice(
                args, device=_device(args.device), max_side=resize["max_side"],
                logits_options={**options, "short_side": resize["logits_short_side"]}).create_segmenter()
        return _SEGMENTERS[key]

    shard = Shard.from_env()
    report = evaluate(
        ds, out_dir, make_segmenter, request, limit=args.limit, shard=shard,
        background_threshold=args.background_threshold, progress=not args.quiet,
        describe=describe_segmenter, batch_size=args.batch_size,
    )
    if report is not None:
        from dslo.eval.report import protocol_line

        run = report["run"]
        print(
            f"{request['title']}: mIoU {report['miou']:.2f}  aAcc {report['aacc']:.2f}  "
            f"({report['images']} images; {run['predicted']} predicted, {run['cached']} cached) "
            f"-> {out_dir / 'report.json'}"
        )
        print(f"  protocol: {protocol_line(report['protocol'])}")
    return report


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    from dslo.cli._args import model_choice

    model_choice(args, max_side=None).head_settings()  # every setting checked before any model loads
    if args.quiet:
        from dslo.cli._args import quiet_libraries

        quiet_libraries()
    from dslo.cli.segment import apply_text_cache_flag

    apply_text_cache_flag(args)
    _SEGMENTERS.clear()
    try:
        return _run(args)
    finally:
        _SEGMENTERS.clear()  # release the models


def _run(args: argparse.Namespace) -> int:
    from dslo.eval.datasets import BENCHMARKS, canonical_name
    from dslo.eval.runner import Shard
    from dslo.outputs import atomic_write_text

    one = args.dataset.strip().lower() != "all"
    if args.output is None:  # runs/<preset>[-<dataset>]: a folder name from the request, said aloud
        label = Path(str(args.model)).name + ("" if not one else f"-{canonical_name(args.dataset)}")
        args.output = Path("runs") / label
        print(f"dslo eval: writing to {args.output} (--output chooses another folder)", file=sys.stderr)
    if one:
        evaluate_one(args, canonical_name(args.dataset), args.data_root, args.output)
        return 0

    from dslo.eval.report import table_rows

    reports: dict[str, dict | None] = {}
    failed: dict[str, str] = {}
    for name in BENCHMARKS:
        try:
            reports[name] = evaluate_one(args, name, args.data_root, args.output / name)
        except FileNotFoundError as exc:  # a benchmark not on disk: run the others, say so
            failed[name] = str(exc)
            print(f"dslo eval: skipped {name}: {exc}", file=sys.stderr)
    if Shard.from_env().rank != 0:
        return 0
    label = args.model + (f" ({args.logits})" if args.logits else "")
    table = table_rows(reports, label)
    atomic_write_text(args.output / "table.md", table)
    summary = {n: (None if r is None else {"miou": r["miou"], "aacc": r["aacc"], "images": r["images"]})
               for n, r in reports.items()}
    atomic_write_text(args.output / "summary.json", json.dumps({"results": summary, "skipped": failed}, indent=1))
    print(table, end="")
    return 1 if failed else 0

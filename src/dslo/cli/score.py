"""``dslo score``: score any method's saved masks on a benchmark, MMSegmentation-exact.

Masks are single-channel PNGs named ``<image stem>.png`` whose pixel values are the dataset's
train ids (after reduce_zero_label where the benchmark uses it; 255 in a mask counts as wrong).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="score saved masks on a benchmark (mIoU, aAcc, per-class IoU)",
        description="Score a folder of predicted label PNGs (<image stem>.png, values = the "
                    "dataset's train ids) against a benchmark's ground truth. Intersections and "
                    "unions are summed over the dataset as MMSegmentation does.",
    )
    p.add_argument("--dataset", required=True, metavar="NAME",
                   help="voc21, voc20, context60, context59, coco_object, coco_stuff, cityscapes, "
                        "ade20k, camvid or folder")
    p.add_argument("--data-root", required=True, type=Path, metavar="DIR", help="the dataset's folder")
    p.add_argument("--split", default=None, help="split (default: val; CamVid: test)")
    p.add_argument("--pred", required=True, type=Path, metavar="DIR", help="folder of predicted masks")
    p.add_argument("--output", "-o", type=Path, metavar="FILE",
                   help="write the JSON here (default: print it to stdout)")
    p.add_argument("--class-file", "--classes-file", dest="class_file", metavar="FILE",
                   help="class names to report (default: the shipped file)")
    p.add_argument("--limit", type=int, metavar="N", help="score only the first N images of the split")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dslo.eval.datasets import get_dataset
    from dslo.eval.protocol import METRIC
    from dslo.eval.runner import evaluated_samples
    from dslo.eval.scoring import json_ready, score_predictions
    from dslo.outputs import atomic_write_text

    ds = get_dataset(args.dataset, args.data_root, args.split, class_file=args.class_file)
    samples = evaluated_samples(ds, args.limit)
    metrics = score_predictions(ds, args.pred, samples, progress=not args.quiet)
    result = {
        **json_ready(metrics),
        "dataset": ds.name,
        "split": ds.split,
        "images": len(samples),
        "pred": str(args.pred),
        "protocol": {
            "dataset": ds.name, "split": ds.split, "num_classes": ds.num_classes,
            "class_file": ds.class_file, "reduce_zero_label": ds.reduce_zero_label,
            "ignore_index": ds.ignore_index, "background": ds.background, "metric": METRIC,
        },
    }
    text = json.dumps(result, indent=1, ensure_ascii=False) + "\n"
    if args.output is not None:
        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    print(
        f"dslo score: {ds.name} ({ds.split}, {len(samples)} images): mIoU {metrics['miou']:.2f}, "
        f"aAcc {metrics['aacc']:.2f}" + (f" -> {args.output}" if args.output else ""),
        file=sys.stderr,
    )
    return 0

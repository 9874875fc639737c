"""``dslo segment``: segment image files, folders, globs, list files or URIs into the classes you
name.

Outputs per image, under ``--output`` (folder inputs keep their relative paths):
``STEM.png`` (palette mask, index = class id), ``STEM.overlay.png``, ``STEM.json``,
``STEM.scores.pt``. Each output records the request that made it (:mod:`dslo.provenance`); a
rerun skips images whose outputs all exist and were made by the same request, and refuses a folder
holding outputs of another request unless ``--overwrite`` (which redoes them).

This module only turns flags into a :class:`dslo.request.SegmentRequest`, hands it to an engine
(:mod:`dslo.engines`) and prints what the engine reports.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dslo.cli._args import add_model_args, model_choice, positive_int
from dslo.engines import ENGINES
from dslo.outputs import OUTPUT_KINDS
from dslo.remote import location
from dslo.request import DEFAULT_SAVE

if TYPE_CHECKING:
    from dslo.request import SegmentRequest


# ------------------------------------------------------------------------------------------------
# Argument helpers shared with `dslo refine`, `dslo eval` and `dslo app`


def parse_save(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in OUTPUT_KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown output kind {bad[0] if bad else text!r}; choose from {', '.join(OUTPUT_KINDS)}"
        )
    return list(dict.fromkeys(kinds))


def add_class_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--classes", metavar="LIST",
                   help='class names separated by commas, e.g. "cat, dog, potted plant"')
    g.add_argument("--classes-file", "--class-file", dest="classes_file", metavar="FILE", type=Path,
                   help="text file: one class per line, synonyms separated by commas")


def read_class_args(args: argparse.Namespace) -> list[list[str]]:
    from dslo.classes import parse_class_string, read_classes_file

    if args.classes_file is not None:
        return read_classes_file(args.classes_file)
    return parse_class_string(args.classes)


def add_output_args(p: argparse.ArgumentParser) -> None:
    """``--output --save --overwrite --quiet`` (shared by ``dslo segment`` and ``dslo refine``)."""
    p.add_argument("--output", "-o", required=True, metavar="DIR", type=location,
                   help="output folder (or a URI such as s3://bucket/out/)")
    p.add_argument("--save", type=parse_save, default=list(DEFAULT_SAVE), metavar="KINDS",
                   help=f"outputs to write, comma-separated from {','.join(OUTPUT_KINDS)} "
                        f"(default {','.join(DEFAULT_SAVE)})")
    p.add_argument("--overwrite", action="store_true", help="redo images whose outputs already exist")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def add_speed_args(p: argparse.ArgumentParser) -> None:
    """``--batch-size`` and ``--no-text-cache`` (shared by ``dslo segment`` and ``dslo eval``)."""
    p.add_argument("--batch-size", type=positive_int, default=1, metavar="B",
                   help="images per model pass (same-size images are batched; default 1). Larger "
                        "batches pay off on a GPU; results are the same")
    p.add_argument("--no-text-cache", action="store_true",
                   help="do not read or write the on-disk text-embedding cache (same as DSLO_TEXT_CACHE=0)")


def apply_text_cache_flag(args: argparse.Namespace) -> None:
    if getattr(args, "no_text_cache", False):
        os.environ["DSLO_TEXT_CACHE"] = "0"  # read by dslo.models.text_cache (and inherited by workers)


def segment_request(args: argparse.Namespace) -> SegmentRequest:
    """The request of a ``dslo segment`` command line: every setting checked, no model loaded."""
    from dslo.classes import parse_background
    from dslo.request import OutputOptions, SegmentRequest

    if args.background_words and str(args.background).strip().lower() != "stuff":
        raise ValueError("--background-words only applies with --background stuff; add it or drop the words")
    kinds = tuple(args.save) + (("json",) if args.format == "label-studio" else ())  # the export reads it
    return SegmentRequest.create(
        read_class_args(args), parse_background(args.background, args.background_words), model_choice(args),
        OutputOptions(args.output, kinds, args.overwrite, args.format), args.batch_size)


def _positive_float(text: str) -> float:
    x = float(text)
    if not (x >= 0 and math.isfinite(x)):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return x


def add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine (see docs/scale.md)")
    g.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: this process (default); ray: a Ray cluster (pip install \"dslo[ray]\")")
    g.add_argument("--address", metavar="ADDR",
                   help="Ray cluster to join: auto (the running local cluster) or ray://HOST:PORT; "
                        "default: $RAY_ADDRESS, else a Ray started for this run")
    g.add_argument("--workers", type=positive_int, metavar="N",
                   help="Ray actors, each with its own segmenter (default: one per GPU of the "
                        "cluster, else 1)")
    g.add_argument("--gpus-per-worker", type=_positive_float, metavar="F",
                   help="GPUs per actor, fractions allowed (default 1 when the cluster has GPUs, else 0)")
    g.add_argument("--cpus-per-worker", type=_positive_float, metavar="F",
                   help="CPUs per actor (default: 1 with GPUs; without, an equal share of the "
                        "cluster's CPUs less one for reading, at least 0.5)")
    g.add_argument("--format", choices=("files", "parquet", "label-studio"), default="files",
                   help="files: the --save outputs per image (default); parquet: one row per image "
                        "with path, size, class names and RLE segments (--engine ray); label-studio: "
                        "the files (json always) plus dslo-label-studio-tasks.json, tasks with "
                        "predictions for Label Studio's import (see --url-prefix)")


# ------------------------------------------------------------------------------------------------


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "segment",
        help="segment images into the classes you name",
        description="Segment image files, folders (recursive; relative paths mirrored under the "
                    "output folder) or globs. Writes STEM.png (palette mask, index = class id), "
                    "STEM.overlay.png, STEM.json (COCO RLE per class) and STEM.scores.pt.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    add_class_args(p)
    add_model_args(p)
    p.add_argument("--background", default="none", metavar="POLICY",
                   help="none (default); stuff (a 'background' class of stuff words); or a "
                        "probability threshold such as 0.5 (low-confidence pixels become background)")
    p.add_argument("--background-words", metavar="LIST",
                   help="comma-separated stuff words for --background stuff (default: a built-in list)")
    add_output_args(p)
    add_speed_args(p)
    add_engine_args(p)
    from dslo.cli.export import add_label_studio_args

    add_label_studio_args(p)
    p.set_defaults(func=run)


def with_offline_hint(exc: RuntimeError, preset: str) -> RuntimeError:
    """A preset's weights missing: also name the way to run with no download at all."""
    from dslo.models import WeightsNotFoundError

    if not isinstance(exc, WeightsNotFoundError) or preset == "offline":
        return exc
    hint = ("  - or run with no download: `--model offline --logits DIR` (DIR: any local CLIP folder; "
            "the offline preset's focus-s14 attention ships with dslo); `dslo models` lists what is here")
    return WeightsNotFoundError(f"{exc}\n{hint}")


def _log(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"dslo segment: {msg}", file=sys.stderr)  # above a running progress bar, not through it


def run(args: argparse.Namespace) -> int:
    from dslo import engines
    from dslo.cli._args import quiet_libraries
    from dslo.inputs import discover

    apply_text_cache_flag(args)
    request = segment_request(args)  # every setting checked: no model loaded yet
    if args.engine == "local" and args.format == "parquet":
        raise ValueError("--format parquet needs --engine ray")
    if args.format == "label-studio":
        from dslo.cli.export import check_label_studio_args

        check_label_studio_args(args)
    items, errors = discover(args.inputs, exclude=args.output)
    for e in errors:
        print(f"dslo segment: {e}", file=sys.stderr)
    if not items:
        print("dslo segment: no images to process", file=sys.stderr)
        return 1
    if args.quiet:
        quiet_libraries()
    options: dict = {"progress": not args.quiet, "log": _log}
    if args.engine == "ray":
        from dslo.engines.ray import RayOptions

        options["options"] = RayOptions(args.address, args.workers, args.gpus_per_worker, args.cpus_per_worker)
    try:
        summary = engines.run(request, items, args.engine, **options)
    except RuntimeError as exc:
        raise with_offline_hint(exc, args.model) from exc
    redone = " (--overwrite: every image redone)" if args.overwrite and summary.done + len(summary.failed) else ""
    print(f"dslo segment: {summary.total} image(s): {summary.done} segmented, {summary.skipped} already done "
          f"(skipped), {len(summary.failed)} failed{', ' + summary.timing if summary.timing else ''}{redone} "
          f"-> {args.output}", file=sys.stderr)
    for note in summary.notes:
        print(f"  {note}", file=sys.stderr)
    if summary.failed:
        where = f" (reasons in {summary.failures_file})" if summary.failures_file else ""
        print("failed: " + ", ".join(name for name, _ in summary.failed) + where, file=sys.stderr)
    if args.format == "label-studio" and summary.done + summary.skipped:
        from dslo.cli.export import write_label_studio_tasks

        write_label_studio_tasks(args, args.output)
    return 0 if summary.ok and not errors else 1

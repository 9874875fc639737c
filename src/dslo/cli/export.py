"""``dslo export``: an output folder of ``dslo segment`` as a Label Studio import file or a CVAT
"Segmentation mask 1.1" archive (and the Label Studio flags of ``dslo segment --format
label-studio``, which runs the same export after segmenting)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_label_studio_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Label Studio import file (--format label-studio; see docs/labelling.md)")
    g.add_argument("--url-prefix", metavar="PREFIX",
                   help="each task's image URL: PREFIX + the image's path relative to its input folder, e.g. "
                        "/data/local-files/?d=photos/ or https://bucket.example/photos/ (default: the "
                        "image's name as dslo segment read it)")
    g.add_argument("--label-config", type=Path, metavar="FILE",
                   help="the project's labelling config (its BrushLabels control names the regions; its "
                        "labels must be the classes); default: a config with one label per class, "
                        "written beside the tasks")
    g.add_argument("--control", metavar="NAME", help="the BrushLabels control to fill when the config has several")


def _read_config(args: argparse.Namespace) -> str | None:
    if args.label_config is None:
        return None
    try:
        return args.label_config.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--label-config {args.label_config}: {exc.strerror or exc}") from None


def check_label_studio_args(args: argparse.Namespace) -> None:
    """Before any model loads: a local output folder, and a readable config with a BrushLabels."""
    from dslo.labelling.label_config import parse_label_config
    from dslo.remote import is_uri

    if is_uri(args.output):
        raise ValueError("--format label-studio writes its import file into a local --output folder")
    text = _read_config(args)
    if text is not None:
        parse_label_config(text, args.control)


def write_label_studio_tasks(args: argparse.Namespace, out, dest: Path | None = None) -> Path:
    from dslo.labelling.export import CONFIG_FILE, TASKS_FILE, export_label_studio, write_label_config

    dest = dest or Path(out) / TASKS_FILE
    count, config = export_label_studio(out, dest, args.url_prefix, _read_config(args), args.control)
    where = ""
    if args.label_config is None:
        write_label_config(dest.parent / CONFIG_FILE, config)
        where = f"; its labelling config: {dest.parent / CONFIG_FILE}"
    print(f"dslo: {count} Label Studio task(s) with predictions -> {dest}{where}", file=sys.stderr)
    return dest


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="an output folder of dslo segment as a Label Studio import file or a CVAT mask archive",
        description="Convert what dslo segment wrote (its STEM.json files: the exact label maps) into a "
                    "labelling tool's import format. See docs/labelling.md.",
    )
    sub = p.add_subparsers(dest="target", metavar="TOOL", required=True)
    ls = sub.add_parser("label-studio", help="tasks with brush predictions, for Label Studio's import")
    ls.add_argument("folder", type=Path, metavar="OUT_DIR", help="the --output folder of dslo segment")
    ls.add_argument("--output", "-o", type=Path, required=True, metavar="FILE", help="the tasks file to write (.json)")
    add_label_studio_args(ls)
    ls.set_defaults(func=run_label_studio)
    cv = sub.add_parser("cvat", help='a "Segmentation mask 1.1" archive for CVAT\'s annotation import')
    cv.add_argument("folder", type=Path, metavar="OUT_DIR", help="the --output folder of dslo segment")
    cv.add_argument("--output", "-o", type=Path, required=True, metavar="FILE", help="the archive to write (.zip)")
    cv.set_defaults(func=run_cvat)


def run_label_studio(args: argparse.Namespace) -> int:
    write_label_studio_tasks(args, args.folder, args.output)
    return 0


def run_cvat(args: argparse.Namespace) -> int:
    from dslo.labelling.export import export_cvat

    n = export_cvat(args.folder, args.output)
    print(f"dslo export: {n} mask(s) in CVAT's Segmentation mask 1.1 format -> {args.output}", file=sys.stderr)
    return 0

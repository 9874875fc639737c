"""``dslo segment``: segment image files, folders or globs into the classes you name.

Outputs per image, under ``--output`` (folder inputs keep their relative paths):
``STEM.png`` (palette mask, index = class id), ``STEM.overlay.png``, ``STEM.json``,
``STEM.scores.pt``. A rerun skips images whose outputs all exist (``--overwrite`` redoes them).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from dslo.cli._args import MODE_HELP, mode_arg, parse_setting
from dslo.imageio import IMAGE_SUFFIXES, ImageReadError, list_images

OUTPUT_KINDS = {"mask": ".png", "overlay": ".overlay.png", "json": ".json", "scores": ".scores.pt"}
DEFAULT_SAVE = "mask,overlay,json"
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputImage:
    """One image to process: ``path`` as found, ``stem`` its output path without suffix
    (relative to the output folder)."""

    path: Path
    stem: Path

    def output(self, out_dir: Path, kind: str) -> Path:
        return out_dir / self.stem.parent / (self.stem.name + OUTPUT_KINDS[kind])


# ------------------------------------------------------------------------------------------------
# Input discovery


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard: relative paths are mirrored below it."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def discover_inputs(inputs: Sequence[str], exclude: str | os.PathLike | None = None
                    ) -> tuple[list[InputImage], list[str]]:
    """Expand files, folders (recursive) and globs into images with their output stems.

    A file maps to its name without suffix; a folder's images keep their path relative to the
    folder; a glob's matches keep their path relative to the glob's fixed prefix. Files under
    ``exclude`` (the output folder) are never inputs, so outputs are not re-segmented on a rerun.
    Returns ``(images, errors)``; errors name inputs that matched nothing or would collide.
    """
    excl = Path(exclude).resolve() if exclude is not None else None
    found: list[tuple[Path, Path]] = []  # (path, relative path)
    errors: list[str] = []
    for raw in inputs:
        p = Path(raw).expanduser()
        if p.is_dir():
            imgs = [f for f in list_images(p) if not _inside(f, excl)]
            if not imgs:
                errors.append(f"{raw}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)})")
            found += [(f, f.relative_to(p)) for f in imgs]
        elif p.is_file():
            found.append((p, Path(p.name)))
        elif _GLOB_CHARS & set(raw):
            root = _glob_root(raw)
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(raw), recursive=True))
            imgs = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES
                    and not _inside(m, excl)]
            if not imgs:
                errors.append(f"{raw}: the pattern matched no images")
            found += [(m, m.relative_to(root) if m.is_relative_to(root) else Path(m.name)) for m in imgs]
        else:
            errors.append(f"{raw}: no such file or folder")

    # The same file reached twice (a folder and a glob over it) is processed once.
    unique: dict[Path, tuple[Path, Path]] = {}
    for path, rel in found:
        unique.setdefault(path.resolve(), (path, rel))
    by_stem: dict[Path, list[tuple[Path, Path]]] = {}
    for path, rel in unique.values():
        by_stem.setdefault(rel.with_suffix(""), []).append((path, rel))
    images: list[InputImage] = []
    taken: dict[Path, Path] = {}
    for stem, group in by_stem.items():
        for path, rel in group:
            # photo.jpg and photo.png in one folder: keep the suffix in the stem to tell them apart.
            s = stem if len(group) == 1 else rel.parent / rel.name
            if s in taken:
                errors.append(
                    f"{path}: its outputs would overwrite those of {taken[s]} (both map to {s}); "
                    "pass their common parent folder instead so relative paths are kept"
                )
                continue
            taken[s] = path
            images.append(InputImage(path, s))
    return images, errors


# ------------------------------------------------------------------------------------------------
# Argument helpers shared with `dslo refine`


def parse_save(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in OUTPUT_KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown output kind {bad[0] if bad else text!r}; choose from {', '.join(OUTPUT_KINDS)}"
        )
    return list(dict.fromkeys(kinds))


def max_side_arg(text: str) -> int | None:
    n = int(text)
    if n < 0 or 0 < n < 16:
        raise argparse.ArgumentTypeError("--max-side must be 0 (never downscale) or at least 16")
    return n or None


def add_class_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--classes", metavar="LIST",
                   help='class names separated by commas, e.g. "cat, dog, potted plant"')
    g.add_argument("--classes-file", metavar="FILE", type=Path,
                   help="text file: one class per line, synonyms separated by commas")


def read_class_args(args: argparse.Namespace) -> list[list[str]]:
    from dslo.classes import parse_class_string, read_classes_file

    if args.classes_file is not None:
        return read_classes_file(args.classes_file)
    return parse_class_string(args.classes)


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", "-o", required=True, metavar="DIR", type=Path, help="output folder")
    p.add_argument("--save", type=parse_save, default=parse_save(DEFAULT_SAVE), metavar="KINDS",
                   help=f"outputs to write, comma-separated from {','.join(OUTPUT_KINDS)} "
                        f"(default {DEFAULT_SAVE})")
    p.add_argument("--mode", type=mode_arg, metavar="MODE", help=MODE_HELP)
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--max-side", type=max_side_arg, default=1024, metavar="N",
                   help="downscale larger images to this side for the models; masks stay at full "
                        "size (default 1024; 0 = never)")
    p.add_argument("--set", dest="settings", action="append", type=parse_setting, default=[],
                   metavar="KEY=VALUE", help="a head setting (repeatable), e.g. --set nms_threshold=0.6")
    p.add_argument("--attention-option", dest="attention_options", action="append", type=parse_setting,
                   default=[], metavar="KEY=VALUE",
                   help="a setting of the attention model (repeatable), e.g. short_side=336")
    p.add_argument("--overwrite", action="store_true", help="redo images whose outputs already exist")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return n


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


def write_outputs(result, image: InputImage, out_dir: Path, kinds: Iterable[str]) -> None:
    """Write the requested outputs of one result, each atomically."""
    for kind in kinds:
        path = image.output(out_dir, kind)
        if kind == "mask":
            result.save_mask(path)
        elif kind == "overlay":
            result.save_overlay(path)
        elif kind == "json":
            result.save_json(path, image_name=str(image.path))
        elif kind == "scores":
            result.save_scores(path)


def is_done(image: InputImage, out_dir: Path, kinds: Iterable[str]) -> bool:
    return all(image.output(out_dir, k).is_file() for k in kinds)


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
    p.add_argument("--model", default="default", metavar="PRESET",
                   help="preset: default, offline, paper-mv, paper-op, ... (`dslo models` lists them)")
    p.add_argument("--logits", metavar="NAME|DIR", help="logits model (CLIP) replacing the preset's")
    p.add_argument("--attention", metavar="NAME|DIR", help="attention model replacing the preset's")
    p.add_argument("--dtype", default="auto", help="model dtype: auto, float32, float16, bfloat16")
    p.add_argument("--logits-option", dest="logits_options", action="append", type=parse_setting,
                   default=[], metavar="KEY=VALUE",
                   help="a setting of the logits model (repeatable), e.g. short_side=448 or attention=qk")
    p.add_argument("--background", default="none", metavar="POLICY",
                   help="none (default); stuff (a 'background' class of stuff words); or a "
                        "probability threshold such as 0.5 (low-confidence pixels become background)")
    p.add_argument("--background-words", metavar="LIST",
                   help="comma-separated stuff words for --background stuff (default: a built-in list)")
    add_common_args(p)
    add_speed_args(p)
    p.set_defaults(func=run)


def _log(msg: str, bar) -> None:
    if bar is not None:
        bar.write(msg, file=sys.stderr)
    else:
        print(msg, file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from dslo.classes import parse_background

    apply_text_cache_flag(args)
    classes = read_class_args(args)
    background = parse_background(args.background, args.background_words)
    out_dir: Path = args.output
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--output {out_dir} exists and is not a folder")
    images, errors = discover_inputs(args.inputs, exclude=out_dir)
    for e in errors:
        print(f"dslo segment: {e}", file=sys.stderr)
    if not images:
        print("dslo segment: no images to process", file=sys.stderr)
        return 1
    todo = images if args.overwrite else [im for im in images if not is_done(im, out_dir, args.save)]
    done_before = len(images) - len(todo)

    failed: list[str] = []
    t0 = time.perf_counter()
    if todo:  # models are loaded only when there is work: a finished rerun returns at once
        from dslo.segmenter import create_segmenter

        overrides = dict(args.settings)
        for key in ("logits", "attention", "mode"):
            if getattr(args, key):
                overrides[key] = getattr(args, key)
        if args.logits_options:
            overrides["logits_options"] = dict(args.logits_options)
        if args.attention_options:
            overrides["attention_options"] = dict(args.attention_options)
        seg = create_segmenter(args.model, device=args.device, dtype=args.dtype,
                               max_side=args.max_side, background=background, **overrides)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="img", file=sys.stderr, disable=True if args.quiet else None,
                   dynamic_ncols=True)
        log_bar = bar if not bar.disable else None
        B = args.batch_size
        for start in range(0, len(todo), B):
            chunk = todo[start:start + B]
            try:
                results = seg.predict_batch([im.path for im in chunk], classes) if B > 1 else None
            except (ImageReadError, ValueError, RuntimeError, OSError):
                results = None  # one bad image must not fail its batch: redo the chunk one by one
            for k, im in enumerate(chunk):
                try:
                    result = results[k] if results is not None else seg.predict(im.path, classes)
                    write_outputs(result, im, out_dir, args.save)
                except ImageReadError as exc:
                    failed.append(str(im.path))
                    _log(f"dslo segment: skipped {im.path}: {exc}", log_bar)
                except (ValueError, RuntimeError, OSError) as exc:
                    failed.append(str(im.path))
                    _log(f"dslo segment: failed {im.path}: {type(exc).__name__}: {exc}", log_bar)
                bar.update(1)
        bar.close()
    elapsed = time.perf_counter() - t0
    n_new = len(todo) - len(failed)
    rate = f", {elapsed / len(todo):.2f} s/img" if todo else ""
    print(
        f"dslo segment: {len(images)} image(s): {n_new} segmented, {done_before} already done "
        f"(skipped), {len(failed)} failed{rate} -> {out_dir}",
        file=sys.stderr,
    )
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed or errors else 0

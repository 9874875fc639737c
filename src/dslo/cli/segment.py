"""``dslo segment``: segment image files, folders or globs into the classes you name.

Outputs per image, under ``--output`` (folder inputs keep their relative paths):
``STEM.png`` (palette mask, index = class id), ``STEM.overlay.png``, ``STEM.json``,
``STEM.scores.pt``. Each output records the request that made it (:mod:`dslo.provenance`); a
rerun skips images whose outputs all exist and were made by the same request, and refuses a folder
holding outputs of another request unless ``--overwrite`` (which redoes them).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dslo.cli._args import MODE_HELP, mode_arg, parse_setting
from dslo.imageio import IMAGE_SUFFIXES, ImageReadError, list_images
from dslo.outputs import OUTPUT_KINDS, output_location, write_result
from dslo.remote import location

DEFAULT_SAVE = "mask,overlay,json"
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputImage:
    """One image to process: ``path`` as found, ``stem`` its output path without suffix
    (relative to the output folder)."""

    path: Path
    stem: Path

    def output(self, out_dir: Path, kind: str) -> Path:
        return output_location(out_dir, self.stem, kind)


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
            if _inside(p, excl):
                errors.append(f"{raw}: this folder is the output folder or inside it; choose an "
                              "--output outside the input folders (a folder inside one is fine)")
                continue
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
    taken: dict[Path, Path] = {}  # output file name (relative) -> the input writing it
    # Shorter stems first, so x.png keeps x.* and x.overlay.png (whose mask x.overlay.png would be
    # x.png's overlay) is the one that moves to x.overlay.png.*.
    for stem, group in sorted(by_stem.items(), key=lambda kv: (len(kv[0].parts), len(str(kv[0])), str(kv[0]))):
        for path, rel in group:
            # photo.jpg and photo.png in one folder: keep the suffix in the stem to tell them apart.
            candidates = [stem, rel.parent / rel.name] if len(group) == 1 else [rel.parent / rel.name]
            chosen = next((c for c in candidates if not any(n in taken for n in _output_names(c))), None)
            if chosen is None:
                c = candidates[-1]
                other = next(taken[n] for n in _output_names(c) if n in taken)
                errors.append(
                    f"{path}: its outputs would overwrite those of {other} (both write "
                    f"{next(n for n in _output_names(c) if n in taken)}); pass their common parent "
                    "folder instead so relative paths are kept, or rename one"
                )
                continue
            for n in _output_names(chosen):
                taken[n] = path
            images.append(InputImage(path, chosen))
    return images, errors


def _output_names(stem: Path) -> list[Path]:
    """Every output file name an image with this stem may write (all kinds)."""
    return [stem.parent / (stem.name + suffix) for suffix in OUTPUT_KINDS.values()]


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
    g.add_argument("--classes-file", "--class-file", dest="classes_file", metavar="FILE", type=Path,
                   help="text file: one class per line, synonyms separated by commas")


def read_class_args(args: argparse.Namespace) -> list[list[str]]:
    from dslo.classes import parse_class_string, read_classes_file

    if args.classes_file is not None:
        return read_classes_file(args.classes_file)
    return parse_class_string(args.classes)


def add_common_args(p: argparse.ArgumentParser, mode_default: str = "the preset's") -> None:
    p.add_argument("--output", "-o", required=True, metavar="DIR", type=location,
                   help="output folder (or a URI such as s3://bucket/out/)")
    p.add_argument("--save", type=parse_save, default=parse_save(DEFAULT_SAVE), metavar="KINDS",
                   help=f"outputs to write, comma-separated from {','.join(OUTPUT_KINDS)} "
                        f"(default {DEFAULT_SAVE})")
    p.add_argument("--mode", type=mode_arg, metavar="MODE",
                   help=MODE_HELP.replace("the preset's", mode_default))
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


def write_outputs(result, image: InputImage, out_dir: Path, kinds: Iterable[str],
                  request: dict | None = None) -> None:
    """Write the requested outputs of one result, each atomically and marked with the request that
    produced it (the writer every engine uses: :func:`dslo.outputs.write_result`)."""
    write_result(result, out_dir, image.stem, kinds, image_name=str(image.path), request=request)


def check_settings(args: argparse.Namespace, logits: str | None, attention: str | None) -> dict:
    """Type- and range-check ``--set`` (by :class:`dslo.head.HeadConfig`) and the model options
    before any model loads; returns the head's effective settings (the preset's, with ``--set``)."""
    from dslo.errors import SettingsError
    from dslo.head import HeadConfig
    from dslo.models.options import check_model_options
    from dslo.presets import PRESETS
    from dslo.segmenter import POST_PROCESSES

    settings = dict(args.settings)
    settings.pop("mode", None)  # --set mode=op is --mode op
    post = settings.pop("post", None)  # the segmenter's post-process, not a head setting
    if post is not None and post not in POST_PROCESSES:
        raise SettingsError(f"--set post={post!r}; use one of {', '.join(POST_PROCESSES)}")
    preset = PRESETS.get(getattr(args, "model", None) or "")
    try:
        head = (preset.head if preset is not None else HeadConfig()).replace(**settings).as_dict()
    except SettingsError as exc:
        raise SettingsError(f"--set: {exc}") from exc
    check_model_options("logits", logits, dict(getattr(args, "logits_options", None) or {}))
    check_model_options("attention", attention, dict(args.attention_options or {}))
    return head


def segment_request(args: argparse.Namespace, classes: list[list[str]], background) -> dict:
    """What a ``dslo segment`` run asks for: everything that changes its outputs (classes,
    background, models, mode, settings, sizes, dtype), with the preset's choices filled in and the
    head settings validated, so equal requests compare equal and a bad setting fails before any
    model loads. The outputs carry it (see :func:`write_outputs`)."""
    from dslo.presets import PRESETS

    preset = PRESETS.get(args.model)
    p_logits, p_attention, p_mode = (preset.logits, preset.attention, preset.mode) if preset else (None, None, None)
    head = check_settings(args, args.logits or p_logits or "clip-b16", args.attention or p_attention)
    return {
        "command": "segment",
        "classes": [list(c) for c in classes],
        "background": background.describe(),
        "preset": args.model,
        "logits": args.logits or p_logits,
        "attention": args.attention or p_attention,
        "mode": args.mode or dict(args.settings).get("mode") or p_mode,
        "head": head,
        "post": dict(args.settings).get("post"),
        "logits_options": dict(sorted(dict(args.logits_options).items())),
        "attention_options": dict(sorted(dict(args.attention_options).items())),
        "max_side": args.max_side,
        "dtype": args.dtype,
    }


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
    from dslo.scale import add_engine_args

    add_engine_args(p)
    p.set_defaults(func=run)


def _with_offline_hint(exc: RuntimeError, args: argparse.Namespace) -> RuntimeError:
    """A preset's weights missing: also name the way to run with no download at all."""
    from dslo.models import WeightsNotFoundError

    if not isinstance(exc, WeightsNotFoundError) or args.model == "offline":
        return exc
    hint = ("  - or run with no download: `--model offline --logits DIR` (DIR: any local CLIP folder; "
            "the offline preset's focus-s14 attention ships with dslo); `dslo models` lists what is here")
    return WeightsNotFoundError(f"{exc}\n{hint}")


def _release_memory() -> None:
    """After an allocation failure: drop what the failed image left behind before the next one."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _log(msg: str, bar) -> None:
    if bar is not None:
        bar.write(msg, file=sys.stderr)
    else:
        print(msg, file=sys.stderr)


def segmenter_kwargs(args: argparse.Namespace, background) -> dict:
    """``create_segmenter`` keyword arguments from the command line (the preset is ``args.model``)."""
    overrides = dict(args.settings)
    for key in ("logits", "attention", "mode"):
        if getattr(args, key):
            overrides[key] = getattr(args, key)
    if args.logits_options:
        overrides["logits_options"] = dict(args.logits_options)
    if args.attention_options:
        overrides["attention_options"] = dict(args.attention_options)
    return dict(device=args.device, dtype=args.dtype, max_side=args.max_side, background=background,
                **overrides)


def run(args: argparse.Namespace) -> int:
    from dslo.classes import parse_background
    from dslo.cli._args import quiet_libraries
    from dslo.cli._plan import check_output_dir, check_output_names, plan_resume, stale_error

    apply_text_cache_flag(args)
    if args.background_words and str(args.background).strip().lower() != "stuff":
        raise ValueError("--background-words only applies with --background stuff; add it or drop the words")
    classes = read_class_args(args)
    background = parse_background(args.background, args.background_words)
    request = segment_request(args, classes, background)  # every setting checked: no model loaded yet
    if args.engine != "local" or args.format != "files":
        from dslo.scale import run_ray

        return run_ray(args, classes, segmenter_kwargs(args, background), request)
    out_dir: Path = args.output
    if isinstance(out_dir, Path):
        check_output_dir(out_dir)
    images, errors = discover_inputs(args.inputs, exclude=out_dir)
    errors += check_output_names({im.path: [im.output(out_dir, k) for k in OUTPUT_KINDS] for im in images},
                                 [im.path for im in images])
    for e in errors:
        print(f"dslo segment: {e}", file=sys.stderr)
    if errors and any("would overwrite the input" in e for e in errors):
        return 1
    if not images:
        print("dslo segment: no images to process", file=sys.stderr)
        return 1
    plan = plan_resume(images, lambda im, k: im.output(out_dir, k), args.save, list(OUTPUT_KINDS),
                       request, overwrite=args.overwrite)
    if plan.stale:
        raise stale_error(plan, len(images), out_dir)
    todo, done_before = plan.todo, len(plan.done)
    if args.quiet:
        quiet_libraries()

    failed: list[str] = []
    t0 = time.perf_counter()
    if todo:  # models are loaded only when there is work: a finished rerun returns at once
        from dslo.segmenter import create_segmenter

        try:
            seg = create_segmenter(args.model, **segmenter_kwargs(args, background))
        except RuntimeError as exc:
            raise _with_offline_hint(exc, args) from exc
        from tqdm.auto import tqdm

        from dslo.cli._plan import remove_files

        bar = tqdm(total=len(todo), unit="img", file=sys.stderr, disable=True if args.quiet else None,
                   dynamic_ncols=True)
        log_bar = bar if not bar.disable else None
        B = args.batch_size
        for start in range(0, len(todo), B):
            chunk = todo[start:start + B]
            try:
                results = seg.predict_batch([im.path for im in chunk], classes) if B > 1 else None
            except MemoryError:  # the batch did not fit: redo it one image at a time
                _release_memory()
                results = None
            except (ImageReadError, ValueError, RuntimeError, OSError, TypeError):
                results = None  # one bad image must not fail its batch: redo the chunk one by one
            for k, im in enumerate(chunk):
                try:
                    result = results[k] if results is not None else seg.predict(im.path, classes)
                    write_outputs(result, im, out_dir, args.save, request)
                    remove_files(plan.remove.get(im, ()))  # kinds of the old run no longer saved
                except ImageReadError as exc:
                    failed.append(str(im.path))
                    _log(f"dslo segment: skipped {im.path}: {exc}", log_bar)
                except MemoryError as exc:  # one image too large: report it, keep the batch going
                    _release_memory()
                    failed.append(str(im.path))
                    _log(f"dslo segment: failed {im.path}: out of memory ({exc or 'allocation failed'}); "
                         "try a smaller --max-side", log_bar)
                except (ValueError, RuntimeError, OSError, TypeError) as exc:
                    failed.append(str(im.path))
                    oom = "memory" in str(exc).lower()
                    _log(f"dslo segment: failed {im.path}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}"
                         + ("; try a smaller --max-side" if oom else ""), log_bar)
                bar.update(1)
        bar.close()
    elapsed = time.perf_counter() - t0
    n_new = len(todo) - len(failed)
    rate = f", {elapsed / len(todo):.2f} s/img" if todo else ""
    redone = " (--overwrite: every image redone)" if args.overwrite and todo else ""
    print(
        f"dslo segment: {len(images)} image(s): {n_new} segmented, {done_before} already done "
        f"(skipped), {len(failed)} failed{rate}{redone} -> {out_dir}",
        file=sys.stderr,
    )
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed or errors else 0

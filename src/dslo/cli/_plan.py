"""Output-folder checks shared by ``dslo segment`` and ``dslo refine`` (and any engine that
writes their outputs): writability, output-name collisions, and the resume plan that reuses only
outputs made by the same request (:mod:`dslo.provenance`). Nothing here loads a model, so every
check runs before the first one is loaded."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dslo.provenance import describe_difference, is_output, output_state, read_request, request_id

__all__ = ["check_output_dir", "check_output_names", "ResumePlan", "plan_resume", "remove_files"]


def check_output_dir(out_dir: Path) -> None:
    """Create ``out_dir`` if needed and prove it writable, so a read-only or mistyped folder fails
    in a second, not after every image was computed."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--output {out_dir} exists and is not a folder; choose a folder path")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".dslo-write-test-", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(
            f"cannot write to --output {out_dir}: {exc.strerror or exc}; choose a folder you can write to"
        ) from exc


def check_output_names(outputs: Mapping[object, Sequence[Path]], inputs: Iterable[Path]) -> list[str]:
    """Errors for output files that two images would both write, or that would overwrite an input.

    ``outputs``: image → every output path it may write (all kinds, so that a later run with more
    ``--save`` kinds cannot collide either)."""
    errors: list[str] = []
    owner: dict[Path, object] = {}
    for image, paths in outputs.items():
        for p in paths:
            key = Path(os.path.normcase(os.path.realpath(p)))
            if key in owner and owner[key] != image:
                errors.append(f"{image}: its output {p} would overwrite an output of {owner[key]}")
            owner.setdefault(key, image)
    for src in inputs:
        key = Path(os.path.normcase(os.path.realpath(src)))
        if key in owner:
            errors.append(f"{owner[key]}: its output {key} would overwrite the input image {src}; "
                          "choose an --output folder other than the images' folder")
    return errors


@dataclass
class ResumePlan:
    """Which images to compute: ``todo`` (missing or redone), ``done`` (every wanted output made by
    this request), ``stale`` (outputs of another request; redone only with ``overwrite``), and
    ``remove``: old files to delete once an image is redone (kinds no longer saved)."""

    todo: list = field(default_factory=list)
    done: list = field(default_factory=list)
    stale: list = field(default_factory=list)
    remove: dict = field(default_factory=dict)
    stale_reason: str = ""


def plan_resume(images: Sequence, paths_of, kinds: Sequence[str], all_kinds: Sequence[str],
                request: Mapping, *, overwrite: bool) -> ResumePlan:
    """Decide, per image, whether its outputs can be reused.

    ``paths_of(image, kind) -> Path``. Without ``overwrite`` a folder holding outputs of another
    request is refused (a :class:`ValueError` naming what differs) rather than silently mixed
    with this run's; with ``overwrite`` every image is redone and its files of kinds not in
    ``kinds`` are removed (they belong to the old run)."""
    rid = request_id(request)
    others = [k for k in all_kinds if k not in kinds]
    plan = ResumePlan()
    for im in images:
        wanted = [paths_of(im, k) for k in kinds]
        extra = [paths_of(im, k) for k in others]
        if overwrite:
            plan.todo.append(im)
            plan.remove[im] = [p for p in extra if is_output(p)]
            continue
        st = output_state(wanted, extra, rid)
        if st.state == "done":
            plan.done.append(im)
        elif st.state == "todo":
            plan.todo.append(im)
        else:
            plan.stale.append(im)
            if not plan.stale_reason:
                old = next((r for p in st.stale if (r := read_request(p)) is not None), None)
                plan.stale_reason = describe_difference(old, request)
    return plan


def stale_error(plan: ResumePlan, n_images: int, out_dir: Path) -> ValueError:
    first = plan.stale[0]
    return ValueError(
        f"{len(plan.stale)} of {n_images} image(s) (first: {getattr(first, 'path', first)}) already "
        f"have outputs in {out_dir} made by a different request ({plan.stale_reason}); they are not "
        "reused. Pass --overwrite to redo them (their old outputs are replaced) or choose another --output"
    )


def remove_files(paths: Iterable[Path | str]) -> None:
    from dslo import remote

    for p in paths:
        if remote.is_uri(p):
            if remote.exists(str(p)):
                fs, path = remote.fs_path(str(p))
                fs.delete_file(path)
            continue
        with contextlib.suppress(FileNotFoundError):
            Path(p).unlink()

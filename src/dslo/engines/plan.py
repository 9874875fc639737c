"""What a run decides before any model loads: the output location is writable, no two images
(or an image and an input) share an output file, and which images are finished already (resume).

Resume follows :mod:`dslo.provenance`: an image is finished when every output it should write
exists *and* was made by the same request; outputs of another request are stale and are never
passed off as this run's (refused, or redone with ``overwrite``). Existence comes from one listing
of the output location (on object storage, one request instead of one per file); only the outputs
that exist are read back.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from dslo import remote
from dslo.inputs import InputItem
from dslo.outputs import OUTPUT_KINDS
from dslo.provenance import describe_difference, read_request, read_request_id, request_id

__all__ = ["ResumePlan", "check_output_location", "check_output_names", "existing_files", "plan_resume",
           "remove_files", "stale_error"]


def check_output_location(out: Path | str) -> None:
    """Create a local output folder if needed and prove it writable, so a read-only or mistyped
    folder fails in a second, not after every image was computed. (A URI is checked by its first
    write.)"""
    if remote.is_uri(out):
        return
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} exists and is not a folder; choose a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".dslo-write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(
            f"cannot write to --output {out}: {exc.strerror or exc}; choose a folder you can write to"
        ) from exc


@dataclass
class NameCheck:
    """:func:`check_output_names`' verdict: ``errors`` to report, the images to leave out
    (``dropped``: their outputs would overwrite another image's), and ``fatal`` (an output would
    overwrite an input image: nothing may run)."""

    errors: list[str] = field(default_factory=list)
    dropped: set[str] = field(default_factory=set)
    fatal: bool = False


def check_output_names(items: Sequence[InputItem], out: Path | str) -> NameCheck:
    """Output files that two images would both write (through links, say), or that would overwrite
    an input; every kind is checked, so a later run with more ``--save`` kinds cannot collide
    either. (Under a URI no two stems share a file: nothing to check.)"""
    check = NameCheck()
    if remote.is_uri(out):
        return check
    owner: dict[Path, str] = {}
    for it in items:
        for p in it.outputs(out):
            key = Path(os.path.normcase(os.path.realpath(p)))
            if key in owner and owner[key] != it.name:
                check.errors.append(f"{it.name}: its output {p} would overwrite an output of {owner[key]}")
                check.dropped.add(it.name)
            owner.setdefault(key, it.name)
    for it in items:
        key = Path(os.path.normcase(os.path.realpath(it.source)))
        if it.is_local and key in owner:
            check.fatal = True
            check.errors.append(f"{owner[key]}: its output {key} would overwrite the input image {it.name}; "
                                "choose an --output folder other than the images' folder")
    return check


def existing_files(out: str | Path) -> set[str]:
    """Every file under the output location, as posix paths relative to it (one listing, not one
    request per output: on object storage that is the difference between seconds and hours)."""
    if remote.is_uri(out):
        found = remote.list_files(str(out))
        return {rel for _, rel in found[1]} if found and found[0] == "dir" else set()
    root = Path(out)
    if not root.is_dir():
        return set()
    files: set[str] = set()
    for folder, _, names in os.walk(root):
        rel = PurePosixPath(Path(folder).relative_to(root).as_posix())
        files.update((rel / n).as_posix() for n in names)
    return files


@dataclass
class ResumePlan:
    """Which images to compute: ``todo`` (missing or redone), ``done`` (every wanted output made by
    this request), ``stale`` (outputs of another request; redone only with ``overwrite``), and
    ``remove``: per image (stem), old files to delete once it is redone (kinds no longer saved)."""

    todo: list[InputItem] = field(default_factory=list)
    done: list[InputItem] = field(default_factory=list)
    stale: list[InputItem] = field(default_factory=list)
    remove: dict[str, list[Any]] = field(default_factory=dict)
    stale_reason: str = ""


def plan_resume(items: Sequence[InputItem], out: Path | str, kinds: Sequence[str], request: dict, *,
                overwrite: bool) -> ResumePlan:
    """Decide, per image, whether its outputs can be reused (see the module's docstring). With
    ``overwrite`` every image is redone and its files of kinds not in ``kinds`` are removed once
    it is (they belong to the old run)."""
    rid = request_id(request)
    listing = existing_files(out)
    others = [k for k in OUTPUT_KINDS if k not in kinds]
    plan = ResumePlan()
    found: list[tuple[InputItem, list, list]] = []  # images with outputs: (item, wanted, existing)
    for it in items:
        present = {k for k in OUTPUT_KINDS if it.stem + OUTPUT_KINDS[k] in listing}
        if overwrite:
            plan.todo.append(it)
            plan.remove[it.stem] = [it.output(out, k) for k in others if k in present]
        elif not present:
            plan.todo.append(it)
        else:
            found.append((it, [k for k in kinds if k in present], [it.output(out, k) for k in present]))
    if not found:
        return plan
    paths = [p for _, _, existing in found for p in existing]
    with ThreadPoolExecutor(max_workers=16 if remote.is_uri(out) else 1) as pool:  # I/O bound on storage
        ids = dict(zip(map(str, paths), pool.map(read_request_id, paths), strict=True))
    for it, wanted, existing in found:
        stale = [p for p in existing if ids[str(p)] != rid]
        if stale:
            plan.stale.append(it)
            if not plan.stale_reason:
                old = next((r for p in stale if (r := read_request(p)) is not None), None)
                plan.stale_reason = describe_difference(old, request)
        elif len(wanted) == len(kinds):
            plan.done.append(it)
        else:
            plan.todo.append(it)
    return plan


def stale_error(plan: ResumePlan, n_images: int, out: Path | str) -> ValueError:
    return ValueError(
        f"{len(plan.stale)} of {n_images} image(s) (first: {plan.stale[0].name}) already have outputs in "
        f"{out} made by a different request ({plan.stale_reason}); they are not reused. Pass "
        "--overwrite to redo them (their old outputs are replaced) or choose another --output"
    )


def remove_files(paths: Iterable[Path | str]) -> None:
    for p in paths:
        if remote.is_uri(p):
            if remote.exists(str(p)):
                fs, path = remote.fs_path(str(p))
                fs.delete_file(path)
            continue
        Path(p).unlink(missing_ok=True)

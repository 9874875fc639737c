"""Inputs of a scaled run: what ``dslo segment`` accepts (files, folders, globs) plus text files
listing inputs and URIs (``s3://bucket/photos/``, ``file:///data/x.jpg``) read through pyarrow.

Each image becomes an :class:`Item`: where to read it, the name its JSON records, and its output
stem (a relative posix path without suffix). Local inputs go through the local engine's own
discovery, so both engines name outputs identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dslo import remote
from dslo.imageio import IMAGE_SUFFIXES

LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclass(frozen=True)
class Item:
    """One image: ``source`` (local path or URI) to read, ``name`` recorded in its JSON (the path
    as given, as the local engine records it), ``stem`` its outputs' relative path without suffix."""

    source: str
    name: str
    stem: str


def expand_lists(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Replace every local ``.txt``/``.lst``/``.list`` input by the inputs it lists, one per line
    (blank lines and ``#`` comments skipped; relative lines are relative to the list's folder).
    Returns ``(inputs, errors)``."""
    out: list[str] = []
    errors: list[str] = []
    for raw in inputs:
        p = Path(raw).expanduser()
        if remote.is_uri(raw) or p.suffix.lower() not in LIST_SUFFIXES or not p.is_file():
            out.append(raw)
            continue
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"{raw}: cannot read this list of inputs ({exc})")
            continue
        for line in (s.strip() for s in lines):
            if line and not line.startswith("#"):
                out.append(line if remote.is_uri(line) or Path(line).is_absolute() else str(p.parent / line))
    return out, errors


def _uri_items(uri: str, exclude: str | None) -> tuple[list[tuple[str, PurePosixPath]], str | None]:
    """``(uri, relative path)`` of the images at ``uri`` (a file or a folder), or an error."""
    try:
        found = remote.list_files(uri)
    except (OSError, ValueError) as exc:  # pyarrow: unknown scheme, no credentials, no network
        return [], f"{uri}: cannot list it ({exc})"
    if found is None:
        return [], f"{uri}: no such file or folder"
    kind, files = found
    if kind == "file":
        return [(files[0][0], PurePosixPath(files[0][1]))], None
    keep = [(u, PurePosixPath(rel)) for u, rel in files
            if PurePosixPath(rel).suffix.lower() in IMAGE_SUFFIXES
            and not (exclude and u.startswith(exclude.rstrip("/") + "/"))]
    if not keep:
        return [], f"{uri}: no images under this URI (looked for {', '.join(IMAGE_SUFFIXES)})"
    return keep, None


def discover(inputs: Sequence[str], exclude: str | Path | None = None) -> tuple[list[Item], list[str]]:
    """Expand the inputs into images with output stems; ``exclude`` (the output location) is never
    read. Returns ``(items, errors)``; errors name inputs that matched nothing or would collide."""
    from dslo.cli.segment import discover_inputs

    inputs, errors = expand_lists(inputs)
    local = [s for s in inputs if not remote.is_uri(s)]
    uris = [s for s in inputs if remote.is_uri(s)]
    items: list[Item] = []
    if local:
        local_exclude = None if remote.is_uri(exclude) else exclude
        images, errs = discover_inputs(local, exclude=local_exclude)
        errors += errs
        # Read by absolute path: a worker's working folder is not the driver's.
        items += [Item(str(im.path.resolve()), str(im.path), im.stem.as_posix()) for im in images]
    found: dict[str, PurePosixPath] = {}
    for uri in uris:
        pairs, err = _uri_items(uri, str(exclude) if remote.is_uri(exclude) else None)
        if err:
            errors.append(err)
        for u, rel in pairs:
            found.setdefault(u, rel)
    # The local engine's rule: one stem per relative path without suffix; photo.jpg and photo.png
    # side by side keep their suffix to stay apart.
    by_stem: dict[str, list[str]] = {}
    for u, rel in found.items():
        by_stem.setdefault(rel.with_suffix("").as_posix(), []).append(u)
    taken = {it.stem: it.source for it in items}
    for stem, group in by_stem.items():
        for u in group:
            s = stem if len(group) == 1 else found[u].as_posix()
            if s in taken:
                errors.append(f"{u}: its outputs would overwrite those of {taken[s]} (both map to {s}); "
                              "pass their common parent folder instead so relative paths are kept")
                continue
            taken[s] = u
            items.append(Item(u, u, s))
    return items, errors

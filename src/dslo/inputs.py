"""What a run reads: files, folders (recursive), globs, text files listing inputs, and URIs
(``s3://bucket/photos/``, ``file:///data/x.jpg``, read through pyarrow), expanded into
:class:`InputItem` s with their output names. The one input rule of every engine, so the local
and the Ray engine (and any server or exporter built on them) name outputs identically.

Output names: a file maps to its name without suffix; a folder's images keep their path relative
to the folder; a glob's matches keep their path relative to the glob's fixed prefix; a URI folder's
objects their path relative to it. ``photo.jpg`` and ``photo.png`` side by side keep their suffix
to stay apart.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from dslo import remote
from dslo.imageio import IMAGE_SUFFIXES, ImageReadError, list_images, read_image_bytes
from dslo.outputs import OUTPUT_KINDS, output_location

__all__ = ["InputItem", "LIST_SUFFIXES", "discover", "expand_lists"]

LIST_SUFFIXES = (".txt", ".lst", ".list")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputItem:
    """One image: ``source`` to read (an absolute local path, or a URI), ``name`` as the outputs
    record it (the path as found, or the URI), ``stem`` its outputs' relative posix path without
    suffix."""

    source: str
    name: str
    stem: str

    @property
    def is_local(self) -> bool:
        return not remote.is_uri(self.source)

    def output(self, out: str | os.PathLike, kind: str) -> Path | str:
        """Where output ``kind`` of this image goes under ``out`` (a folder or a URI)."""
        return output_location(out, self.stem, kind)

    def outputs(self, out: str | os.PathLike) -> list[Path | str]:
        """Every output this image may write under ``out``, of every kind."""
        return [self.output(out, k) for k in OUTPUT_KINDS]

    def read_bytes(self) -> bytes:
        """The image file's bytes; :class:`dslo.imageio.ImageReadError` naming it when it cannot
        be read."""
        try:
            return Path(self.source).read_bytes() if self.is_local else remote.read_bytes(self.source)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ImageReadError(f"cannot read {self.name}: {reason}") from exc

    def read(self) -> np.ndarray:
        """The image, ``(H, W, 3)`` uint8 RGB (:func:`dslo.imageio.read_image_bytes`: the pixels
        of reading the file)."""
        return read_image_bytes(self.read_bytes(), self.name)


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


def discover(inputs: Sequence[str], exclude: str | os.PathLike | None = None
             ) -> tuple[list[InputItem], list[str]]:
    """Expand the inputs into images with output stems; nothing under ``exclude`` (the output
    folder or URI) is ever an input, so a rerun does not segment its own outputs. Returns
    ``(items, errors)``; errors name inputs that matched nothing, could not be read or would
    collide."""
    inputs, errors = expand_lists([os.fspath(s) for s in inputs])
    local = [s for s in inputs if not remote.is_uri(s)]
    uris = [s for s in inputs if remote.is_uri(s)]
    found: list[tuple[str, str, PurePosixPath]] = []  # (source, name, relative path)
    local_exclude = None if exclude is None or remote.is_uri(exclude) else Path(exclude).resolve()
    for raw in local:
        pairs, err = _local_items(raw, local_exclude)
        if err:
            errors.append(err)
        found += [(str(p.resolve()), str(p), PurePosixPath(rel.as_posix())) for p, rel in pairs]
    uri_exclude = str(exclude) if remote.is_uri(exclude) else None
    for uri in uris:
        upairs, err = _uri_items(uri, uri_exclude)
        if err:
            errors.append(err)
        found += [(u, u, rel) for u, rel in upairs]
    items, collisions = _name_outputs(found)
    return items, errors + collisions


# ------------------------------------------------------------------------------------------------


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard: relative paths are mirrored below it."""
    fixed = []
    for part in Path(pattern).parts[:-1]:
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


def _local_items(raw: str, exclude: Path | None) -> tuple[list[tuple[Path, Path]], str | None]:
    """``(path, relative path)`` of the images a local file, folder or glob names, or an error."""
    p = Path(raw).expanduser()
    if p.is_dir():
        if _inside(p, exclude):
            return [], (f"{raw}: this folder is the output folder or inside it; choose an --output "
                        "outside the input folders (a folder inside one is fine)")
        imgs = [f for f in list_images(p) if not _inside(f, exclude)]
        if not imgs:
            return [], f"{raw}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)})"
        return [(f, f.relative_to(p)) for f in imgs], None
    if p.is_file():
        return [(p, Path(p.name))], None
    if _GLOB_CHARS & set(raw):
        root = _glob_root(raw)
        matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(raw), recursive=True))
        imgs = [m for m in matches
                if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES and not _inside(m, exclude)]
        if not imgs:
            return [], f"{raw}: the pattern matched no images"
        return [(m, m.relative_to(root) if m.is_relative_to(root) else Path(m.name)) for m in imgs], None
    return [], f"{raw}: no such file or folder"


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


def _output_names(stem: PurePosixPath) -> list[PurePosixPath]:
    """Every output file name an image with this stem may write (all kinds)."""
    return [stem.parent / (stem.name + suffix) for suffix in OUTPUT_KINDS.values()]


def _name_outputs(found: list[tuple[str, str, PurePosixPath]]) -> tuple[list[InputItem], list[str]]:
    """Give each image its output stem: one stem per relative path without suffix; files that
    would write each other's outputs are refused with the reason."""
    unique: dict[str, tuple[str, PurePosixPath]] = {}  # the same file reached twice counts once
    for source, name, rel in found:
        unique.setdefault(source, (name, rel))
    by_stem: dict[PurePosixPath, list[tuple[str, str, PurePosixPath]]] = {}
    for source, (name, rel) in unique.items():
        by_stem.setdefault(rel.with_suffix(""), []).append((source, name, rel))
    items: list[InputItem] = []
    errors: list[str] = []
    taken: dict[PurePosixPath, str] = {}  # output file name (relative) -> the input writing it
    # Shorter stems first, so x.png keeps x.* and x.overlay.png (whose mask x.overlay.png would be
    # x.png's overlay) is the one that moves to x.overlay.png.*.
    for stem, group in sorted(by_stem.items(), key=lambda kv: (len(kv[0].parts), len(str(kv[0])), str(kv[0]))):
        for source, name, rel in group:
            # photo.jpg and photo.png in one folder: keep the suffix in the stem to tell them apart.
            candidates = [stem, rel] if len(group) == 1 else [rel]
            chosen = next((c for c in candidates if not any(n in taken for n in _output_names(c))), None)
            if chosen is None:
                clash = next(n for n in _output_names(candidates[-1]) if n in taken)
                errors.append(f"{name}: its outputs would overwrite those of {taken[clash]} (both write "
                              f"{clash}); pass their common parent folder instead so relative paths are "
                              "kept, or rename one")
                continue
            for n in _output_names(chosen):
                taken[n] = name
            items.append(InputItem(source, name, chosen.as_posix()))
    return items, errors

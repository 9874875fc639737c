"""Unpacking a verified archive, refusing what could write outside the target.

Every member name is checked before anything is written: an absolute path, a ``..`` component,
a link (symbolic or hard) or a device/FIFO refuses the whole archive. Regular files are written
atomically (temporary file, then rename: :func:`dslo.outputs.atomic_write`), so an interrupted
extraction leaves only complete files and a rerun simply writes them again.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from dslo.data.fetch import DataError
from dslo.outputs import atomic_write

__all__ = ["UnsafeArchiveError", "extract"]


class UnsafeArchiveError(DataError):
    """An archive member that would land outside the target, or is a link or a device."""


def _target(name: str, strip: str, include: tuple[str, ...]) -> PurePosixPath | None:
    """The member's path relative to the destination, None when it is not extracted."""
    if name.startswith("/") or PurePosixPath(name).is_absolute() or "\\" in name or ":" in name.split("/")[0]:
        raise UnsafeArchiveError(f"member {name!r} has an absolute path")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"member {name!r} points outside the target folder")
    rel = "/".join(parts)
    if strip:
        if not (rel + "/").startswith(strip):
            return None
        rel = rel[len(strip):]
    if not rel or (include and not any((rel + "/").startswith(p) or rel.startswith(p) for p in include)):
        return None
    return PurePosixPath(rel)


def _zip_members(z: zipfile.ZipFile, strip: str, include: tuple[str, ...]) -> Iterator[tuple[zipfile.ZipInfo, PurePosixPath]]:
    for info in z.infolist():
        target = _target(info.filename, strip, include)
        mode = info.external_attr >> 16
        if mode and (stat.S_ISLNK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                     or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            raise UnsafeArchiveError(f"member {info.filename!r} is a link or a device")
        if target is not None and not info.is_dir():
            yield info, target


def _tar_members(t: tarfile.TarFile, strip: str, include: tuple[str, ...]) -> Iterator[tuple[tarfile.TarInfo, PurePosixPath]]:
    for info in t.getmembers():
        target = _target(info.name, strip, include)
        if info.issym() or info.islnk():
            raise UnsafeArchiveError(f"member {info.name!r} is a link")
        if info.isdev() or not (info.isfile() or info.isdir()):
            raise UnsafeArchiveError(f"member {info.name!r} is a device or special file")
        if target is not None and info.isfile():
            yield info, target


def extract(archive: Path, dest: Path, *, strip: str = "", include: tuple[str, ...] = (),
            progress: bool = True) -> int:
    """Unpack ``archive`` (zip or tar, any compression) into ``dest``; returns the file count.

    All members are checked first; :class:`UnsafeArchiveError` (naming the member) is raised
    before any file is written. ``strip``/``include``: see :class:`dslo.data.catalogue.Archive`.
    """
    from tqdm import tqdm

    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            members = list(_zip_members(z, strip, include))
            with tqdm(members, desc=f"extracting {archive.name}", unit="file", disable=not progress,
                      leave=False) as bar:
                for info, target in bar:
                    _write_member(dest, target, lambda f, i=info: _copy(z.open(i), f))
        return len(members)
    if not tarfile.is_tarfile(archive):
        raise DataError(f"{archive.name}: neither a zip nor a tar archive")
    with tarfile.open(archive) as t:
        tar_members = list(_tar_members(t, strip, include))
        with tqdm(tar_members, desc=f"extracting {archive.name}", unit="file", disable=not progress,
                  leave=False) as bar:
            for tinfo, target in bar:
                src = t.extractfile(tinfo)
                assert src is not None  # a regular file always has a body
                _write_member(dest, target, lambda f, s=src: _copy(s, f))
    return len(tar_members)


def _copy(src, f) -> None:
    with src:
        shutil.copyfileobj(src, f, 1 << 20)


def _write_member(dest: Path, target: PurePosixPath, write) -> None:
    path = dest.joinpath(*target.parts)
    # The checks above make this impossible; kept as the last guard (e.g. a symlinked folder).
    if not path.resolve().is_relative_to(dest.resolve()):
        raise UnsafeArchiveError(f"member {target} would be written outside {dest}")
    try:
        atomic_write(path, write)
    except OSError as exc:
        import errno

        if exc.errno == errno.ENOSPC:
            raise DataError(f"disk full while extracting into {dest}; free some space and rerun "
                            "(the archive is kept; extraction starts again)") from None
        raise

"""Fetching one archive over HTTP, resumably, and checking it before anything reads it.

A download goes to ``<name>.part`` beside its final name; a rerun (or a retry after a cut
connection) asks the server for the remaining bytes only (HTTP ``Range``) and appends them. The
finished file is renamed to ``<name>`` and then verified: its published checksum (and size)
when the catalogue has one, otherwise its own structure. A file that fails is moved to
``<name>.bad`` and refused with a message naming the file and both checksums, so nothing is ever
extracted from it and the next run fetches it afresh.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from dslo.data.catalogue import Archive
from dslo.hashing import file_digest

__all__ = ["ChecksumError", "DataError", "fetch", "verify"]

_CHUNK = 1 << 20
USER_AGENT = "dslo-data/1 (+https://github.com/; python-urllib)"


class DataError(RuntimeError):
    """A download or preparation step that cannot go on; the message says what to do."""


class ChecksumError(DataError):
    """An archive whose bytes are not the published ones (wrong, truncated or corrupt)."""


def _progress_bar(total: int | None, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True,
                unit_divisor=1024, disable=not enabled, leave=False)


def fetch(url: str, dest: Path, *, size: int | None = None, opener: urllib.request.OpenerDirector | None = None,
          retries: int = 3, progress: bool = True, headers: dict[str, str] | None = None) -> Path:
    """Download ``url`` to ``dest`` (via ``dest.part``, resumed if present). Returns ``dest``.

    ``size``: the published size, checked before the rename (None: the server's length).
    ``retries``: how many times a cut connection is resumed before giving up (the ``.part``
    stays, so a rerun resumes again). Raises :class:`DataError` with what to do.
    """
    part = dest.with_name(dest.name + ".part")
    open_url = (opener or urllib.request.build_opener()).open
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have == size:
            break
        if size is not None and have > size:
            part.unlink()  # longer than published: not a prefix of the right file
            have = 0
        try:
            if _download_into(open_url, url, part, have, size, progress, headers or {}):
                break
        except (http.client.IncompleteRead, ConnectionError, TimeoutError, urllib.error.URLError) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code not in (408, 429, 500, 502, 503, 504):
                raise DataError(f"{url}: HTTP {exc.code} {exc.reason}; check the URL or --mirror") from None
            attempt += 1
            got = part.stat().st_size if part.exists() else 0
            if attempt > retries:
                raise DataError(
                    f"{dest.name}: the connection to {url} was lost after {got} bytes "
                    f"({_reason(exc)}); rerun the same command to resume from there") from None
            time.sleep(min(2.0 ** attempt, 30.0) * 0.1)
    os.replace(part, dest)
    return dest


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return str(exc.reason)
    return type(exc).__name__


def _download_into(open_url, url: str, part: Path, have: int, size: int | None, progress: bool,
                   headers: dict[str, str]) -> bool:
    """One request from byte ``have`` on; True when the file is complete."""
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = open_url(req, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing after byte `have`: the part is the whole file
            return True
        raise
    with resp:
        if have and resp.status != 206:
            have = 0  # the server ignored the range: start over
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else size
        mode = "ab" if have else "wb"
        with open(part, mode) as f, _progress_bar(total, have, part.name[:-5], progress) as bar:
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                _write(f, chunk, part, size)
                bar.update(len(chunk))
        got = part.stat().st_size
        if total is not None and got < total:
            raise http.client.IncompleteRead(b"", total - got)
    return True


def _write(f, chunk: bytes, part: Path, size: int | None) -> None:
    try:
        f.write(chunk)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            have = f.tell()
            need = f" of {size}" if size else ""
            raise DataError(
                f"disk full while downloading {part.name[:-5]} into {part.parent} ({have}{need} bytes "
                f"written); free some space and rerun: the download resumes where it stopped") from None
        raise


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuse early when ``needed`` bytes cannot fit (a download would fail half-way)."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DataError(f"{what} needs {needed / 2**30:.2f} GiB more in {folder} but only "
                        f"{free / 2**30:.2f} GiB are free; free some space or choose another --root")


# ---------------------------------------------------------------------------------------------
# Verification


def verify(path: Path, archive: Archive, *, checksum: tuple[str, str] | None = None,
           progress: bool = True) -> str:
    """Check ``path`` against ``checksum`` (default: the catalogue's) and the published size.

    Without a published checksum: a zip's CRC-32 of every member (``testzip``), a JSON file's
    syntax, and the sha256 recorded beside it on the first check (``<name>.sha256``). Returns a
    one-line description of what was checked. A failure moves the file to ``<name>.bad`` and
    raises :class:`ChecksumError` naming the file, the expected and the actual checksum.
    """
    checksum = checksum or archive.checksum
    size = path.stat().st_size
    if checksum is not None:
        algo, expected = checksum
        with _progress_bar(size, 0, f"checking {path.name}", progress) as bar:
            actual = file_digest(path, algo, progress=bar.update)
        size_ok = archive.size is None or size == archive.size
        if actual == expected.lower() and size_ok:
            return f"{algo} {actual} (published)"
        published = f", published size {archive.size}" if archive.size is not None else ""
        raise _refuse(path, f"expected {algo} {expected}, got {actual} ({size} bytes{published})")
    actual = file_digest(path, "sha256")
    record = path.with_name(path.name + ".sha256")
    if record.is_file():
        recorded = record.read_text().split()[0]
        if recorded != actual:
            raise _refuse(path, f"expected sha256 {recorded} (recorded at its first download, no checksum "
                                f"is published), got {actual} ({size} bytes)")
    problem = _structure_problem(path, archive)
    if problem:
        raise _refuse(path, f"expected: no checksum published, so its structure was checked: {problem}; "
                            f"got sha256 {actual} ({size} bytes)")
    if not record.is_file():
        from dslo.outputs import atomic_write_text

        atomic_write_text(record, f"{actual}  {path.name}\n")
    return f"sha256 {actual} (no checksum published: checked its structure; recorded)"


def _structure_problem(path: Path, archive: Archive) -> str | None:
    if archive.kind == "file":
        if path.suffix == ".json":
            try:
                with open(path, "rb") as f:
                    json.load(f)
            except ValueError as exc:
                return f"not valid JSON ({exc})"
        return None
    if not zipfile.is_zipfile(path):
        return "not a complete zip file (truncated or not a zip)"
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"unreadable zip ({exc})"
    return f"member {bad} fails its CRC-32" if bad else None


def _refuse(path: Path, detail: str) -> ChecksumError:
    bad = path.with_name(path.name + ".bad")
    os.replace(path, bad)
    return ChecksumError(f"{path.name}: refused, nothing extracted: {detail}. It was moved to {bad}; "
                         "rerun to download it again (or check --mirror / the file you placed)")

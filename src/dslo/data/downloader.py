"""`dslo data download`: fetch, verify and unpack the archives of the requested data sets.

Archives are kept in ``<root>/archives/``; once one is verified and unpacked a marker
(``<name>.done``, JSON) says so, and a rerun skips it without touching the network. Each step is
resumable: a partial download resumes (HTTP Range), an interrupted extraction is redone from the
kept archive, a refused archive is moved aside and fetched again.
"""

from __future__ import annotations

import json
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import dslo.data.account as account
from dslo.data.catalogue import ARCHIVES, Archive, Source, resolve
from dslo.data.extract import extract
from dslo.data.fetch import DataError, check_free_space, fetch, verify
from dslo.outputs import atomic_write_text

__all__ = ["DownloadReport", "archives_dir", "download", "is_done"]


def archives_dir(root: Path) -> Path:
    return Path(root) / "archives"


def _marker(root: Path, name: str) -> Path:
    return archives_dir(root) / f"{name}.done"


def is_done(root: Path, archive: Archive) -> bool:
    """Whether ``archive`` was verified and unpacked under ``root`` (against the same checksum)."""
    path = _marker(root, archive.name)
    if not path.is_file():
        return False
    try:
        rec = json.loads(path.read_text())
    except ValueError:
        return False
    return archive.checksum is None or rec.get("checksum") == list(archive.checksum)


@dataclass
class DownloadReport:
    done: list[str] = field(default_factory=list)  # fetched (or found), verified, unpacked now
    skipped: list[str] = field(default_factory=list)  # already unpacked by an earlier run
    failed: dict[str, str] = field(default_factory=dict)  # archive -> what to do
    downloaded_bytes: int = 0


def check_writable(root: Path) -> None:
    """Refuse early, naming the folder, when ``root`` cannot be written."""
    try:
        archives_dir(root).mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".dslo-write-test.", dir=archives_dir(root))
    except OSError as exc:
        raise DataError(f"cannot write to {root} ({exc.strerror or exc}); choose a --root you can "
                        "write to, or fix its permissions") from None
    import os

    os.close(fd)
    os.unlink(probe)


def download(names, root: str | Path, *, mirror: str | None = None, progress: bool = True,
             retries: int = 3, log=print) -> DownloadReport:
    """Download, verify and unpack the archives of ``names`` (`dslo eval` names, ``all``...).

    ``mirror``: a base URL serving the same file names (institutional mirrors, tests).
    Problems with one archive do not stop the others: they are listed in ``report.failed``.
    """
    root = Path(root).expanduser()
    sources = resolve(names)
    check_writable(root)
    report = DownloadReport()
    for source in sources:
        for name in source.archives:
            archive = ARCHIVES[name]
            if is_done(root, archive):
                report.skipped.append(name)
                continue
            try:
                _one(root, archive, source, mirror, progress, retries, report, log)
            except DataError as exc:
                report.failed[name] = str(exc)
    return report


def _one(root: Path, archive: Archive, source: Source, mirror: str | None, progress: bool,
         retries: int, report: DownloadReport, log) -> None:
    path = archives_dir(root) / archive.name
    checksum = archive.checksum
    if not path.is_file():
        url, opener, checksum = _where(archive, mirror, root)
        if archive.size is not None:
            part = path.with_name(path.name + ".part")
            have = part.stat().st_size if part.exists() else 0
            check_free_space(archives_dir(root), archive.size - have, archive.name)
        log(f"dslo data: downloading {archive.name} from {url}")
        before = _part_size(path)
        fetch(url, path, size=archive.size, opener=opener, retries=retries, progress=progress)
        report.downloaded_bytes += path.stat().st_size - before
    what = verify(path, archive, checksum=checksum, progress=progress)
    log(f"dslo data: {archive.name}: {what}")
    dest = root / archive.dest
    if archive.kind == "file":
        import shutil

        from dslo.outputs import atomic_write

        atomic_write(dest / archive.name, lambda f: _copy_file(path, f, shutil))
        count = 1
    else:
        count = extract(path, dest, strip=archive.strip, include=archive.include, progress=progress)
    atomic_write_text(_marker(root, archive.name), json.dumps(
        {"archive": archive.name, "checksum": list(checksum) if checksum else None, "verified": what,
         "files": count, "dest": archive.dest, "source": source.key}, indent=1) + "\n")
    log(f"dslo data: {archive.name}: {count} file(s) in {dest}")
    report.done.append(archive.name)


def _copy_file(path: Path, f, shutil) -> None:
    with open(path, "rb") as src:
        shutil.copyfileobj(src, f, 1 << 20)


def _part_size(path: Path) -> int:
    part = path.with_name(path.name + ".part")
    return part.stat().st_size if part.exists() else 0


def _where(archive: Archive, mirror: str | None, root: Path
           ) -> tuple[str, urllib.request.OpenerDirector | None, tuple[str, str] | None]:
    """(URL, opener, checksum to verify against) for an archive not on disk yet."""
    if mirror:
        return f"{mirror.rstrip('/')}/{archive.name}", None, archive.checksum
    if archive.account == "cityscapes":
        creds = account.credentials()
        if creds is None:
            missing = [a.name for a in ARCHIVES.values()
                       if a.account == "cityscapes" and not (archives_dir(root) / a.name).is_file()]
            raise DataError(account.manual_instructions(missing, str(archives_dir(root))))
        opener = account.login(*creds)
        url, md5 = account.package(opener, archive.name)
        return url, opener, ("md5", md5)
    assert archive.url is not None
    return archive.url, None, archive.checksum

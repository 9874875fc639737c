"""From an empty disk to the layouts `dslo eval` reads, without MMSegmentation.

- :mod:`dslo.data.catalogue`: the archives (URL, published size and checksum, where each unpacks)
  and the data sets built from them;
- :func:`download`: fetch (resumable), verify, unpack safely (:mod:`~dslo.data.fetch`,
  :mod:`~dslo.data.extract`; Cityscapes' login: :mod:`~dslo.data.account`);
- :func:`prepare`: the reference converters' label conversions (:mod:`~dslo.data.convert`) and a
  check of each evaluation split's size;
- :func:`status`: what is downloaded and prepared under a data root.

Standard library, numpy, Pillow and tqdm (pycocotools for PASCAL Context). See docs/evaluation.md.
"""

from __future__ import annotations

from pathlib import Path

from dslo.data.catalogue import ARCHIVES, SOURCES, Archive, Source, resolve, with_archives
from dslo.data.downloader import DownloadReport, download, is_done
from dslo.data.extract import UnsafeArchiveError
from dslo.data.fetch import ChecksumError, DataError
from dslo.data.prepare import PrepareReport, check_counts, prepare

__all__ = [
    "ARCHIVES", "SOURCES", "Archive", "ChecksumError", "DataError", "DownloadReport", "PrepareReport",
    "Source", "UnsafeArchiveError", "download", "prepare", "resolve", "status", "with_archives",
]


def status(root: str | Path) -> list[dict]:
    """One record per data set: its names, archives (size, checksum, whether unpacked under
    ``root``), whether it needs converting, and the count check's result."""
    root = Path(root).expanduser()
    out = []
    for source in SOURCES.values():
        archives = [ARCHIVES[n] for n in source.archives]
        rep = PrepareReport(source.key)
        if root.exists():
            check_counts(source, root, rep)
        out.append({
            "key": source.key, "title": source.title, "names": list(source.names),
            "converter": source.converter,
            "archives": [{"name": a.name, "size": a.size, "checksum": list(a.checksum) if a.checksum else None,
                          "checksum_source": a.source, "login": a.account,
                          "downloaded": is_done(root, a)} for a in archives],
            "counts": rep.counts, "expected": dict(source.counts),
            "prepared": root.exists() and rep.ok, "problems": rep.problems,
        })
    return out

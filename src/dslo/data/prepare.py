"""`dslo data prepare`: raw annotations -> the layouts `dslo eval` reads, then a count check.

Raw files are where MMSegmentation's instructions unpack them (what `dslo data download` does);
outputs go where its converters write them. Every output is written atomically, so a file that
exists is complete: a rerun converts only what is missing (``force`` redoes everything). The work
runs in ``workers`` processes with a progress bar.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import dslo.data.convert as convert
from dslo.data.catalogue import Source, resolve
from dslo.data.fetch import DataError
from dslo.outputs import atomic_write_text

__all__ = ["PrepareReport", "check_counts", "prepare"]

Task = tuple[Callable[..., None], tuple]


@dataclass
class PrepareReport:
    source: str
    converted: int = 0
    skipped: int = 0  # outputs already there
    counts: dict[str, int | None] = field(default_factory=dict)  # eval name -> images found
    problems: list[str] = field(default_factory=list)  # count check: what is missing
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def prepare(names, root: str | Path, *, workers: int = 2, force: bool = False, progress: bool = True,
            log=print) -> list[PrepareReport]:
    """Convert the raw annotations of ``names`` under ``root`` and check each split's size."""
    root = Path(root).expanduser()
    reports = []
    for source in resolve(names):
        rep = PrepareReport(source.key)
        if source.converter is None:
            rep.note = f"{source.title}: nothing to convert (its archive holds the layout dslo eval reads)"
        else:
            tasks, after = _PLANS[source.converter](root)
            todo = [t for t in tasks if force or not all(Path(p).is_file() for p in _outputs(t))]
            rep.skipped = len(tasks) - len(todo)
            _run(todo, workers, progress, f"preparing {source.key}")
            rep.converted = len(todo)
            if after is not None:
                after()
            rep.note = (f"{source.title}: converted {rep.converted} label file(s), "
                        f"{rep.skipped} already done")
        check_counts(source, root, rep)
        log(f"dslo data: {rep.note}")
        reports.append(rep)
    return reports


def _outputs(task: Task) -> list[str]:
    fn, args = task
    if fn is convert.coco_task:
        return [args[1], args[2]]
    if fn is convert.cityscapes_task:
        return [args[1]]
    return [args[0]]  # context_task


def _run(tasks: list[Task], workers: int, progress: bool, desc: str) -> None:
    from tqdm import tqdm

    if not tasks:
        return
    with tqdm(total=len(tasks), desc=desc, unit="file", disable=not progress, leave=False) as bar:
        if workers <= 1 or len(tasks) < 8:
            for fn, args in tasks:
                fn(*args)
                bar.update(1)
            return
        # spawn: the parent may hold threads (torch, tqdm) that fork would copy mid-flight.
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_call, chunk) for chunk in _chunks(tasks, 32)]
            for fut in futures:
                bar.update(fut.result())


def _chunks(tasks: list[Task], n: int) -> list[list[Task]]:
    return [tasks[i:i + n] for i in range(0, len(tasks), n)]


def _call(chunk: list[Task]) -> int:
    for fn, args in chunk:
        fn(*args)
    return len(chunk)


# ---------------------------------------------------------------------------------------------
# Plans: (tasks, what to do once they are all done)


def _need(path: Path, what: str, hint: str) -> Path:
    if not path.exists():
        raise DataError(f"{what}: {path} not found; {hint}")
    return path


def _coco_plan(root: Path):
    base = root / "coco_stuff164k" / "annotations"
    _need(base, "COCO", "run `dslo data download coco --root ROOT` first (or unzip "
          "stuffthingmaps_trainval2017.zip into coco_stuff164k/annotations/)")
    tasks = []
    for split in ("train2017", "val2017"):
        for raw in sorted((base / split).glob("*.png")):
            if not raw.stem.isdigit():  # our own outputs (<id>_labelTrainIds.png ...)
                continue
            tasks.append((convert.coco_task, (str(raw), str(raw.with_name(f"{raw.stem}_labelTrainIds.png")),
                                              str(raw.with_name(f"{raw.stem}_instanceTrainIds.png")))))
    if not tasks:
        raise DataError(f"COCO: no stuffthingmaps (<id>.png) in {base}/val2017 or train2017")
    return tasks, None


def _cityscapes_plan(root: Path):
    base = _need(root / "cityscapes" / "gtFine", "Cityscapes",
                 "run `dslo data download cityscapes --root ROOT` first (or unzip gtFine_trainvaltest.zip "
                 "into cityscapes/)")
    tasks = [(convert.cityscapes_task, (str(p), str(p).replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png")))
             for p in sorted(base.glob("*/*/*_gtFine_labelIds.png"))]
    if not tasks:
        raise DataError(f"Cityscapes: no *_gtFine_labelIds.png under {base}/<split>/<city>/")
    return tasks, None


def _context_plan(root: Path):
    devkit = root / "VOCdevkit" / "VOC2010"
    json_path = _need(devkit / "trainval_merged.json", "PASCAL Context",
                      "run `dslo data download context --root ROOT` first (it fetches trainval_merged.json "
                      "into VOCdevkit/VOC2010/)")
    with open(json_path, encoding="utf-8") as f:
        data = json.load(f)
    # The Detail API indexes annotations by id (a repeated id keeps the last entry, at the first
    # one's place) and paints an image's annotations in that order.
    by_id: dict = {}
    for ann in data["annos_segmentation"]:
        by_id[ann["id"]] = ann
    per_image: dict = {}
    for ann in by_id.values():
        per_image.setdefault(ann["image_id"], []).append((ann["category_id"], ann["segmentation"]))
    out_dir = devkit / "SegmentationClassContext"
    tasks: list[Task] = []
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for img in data["images"]:
        if img["phase"] not in splits:  # test images have no public labels
            continue
        name = img["file_name"]
        # MMSegmentation: filename.replace('jpg', 'png') and the stem for the split list.
        tasks.append((convert.context_task, (str(out_dir / name.replace("jpg", "png")), img["height"],
                                             img["width"], per_image.get(img["image_id"], []))))
        splits[img["phase"]].append(os.path.splitext(os.path.basename(name))[0])

    def write_lists() -> None:
        for split, stems in splits.items():
            path = devkit / "ImageSets" / "SegmentationContext" / f"{split}.txt"
            text = "".join(s + "\n" for s in sorted(stems))
            if not path.is_file() or path.read_text() != text:  # idempotent: same list, untouched
                atomic_write_text(path, text)

    return tasks, write_lists


_PLANS = {"coco": _coco_plan, "cityscapes": _cityscapes_plan, "context": _context_plan}


# ---------------------------------------------------------------------------------------------
# The count check


def check_counts(source: Source, root: Path, rep: PrepareReport) -> None:
    """Read each `dslo eval` name of ``source`` as `dslo eval` would and compare its evaluation
    split's image count with the official one; ``rep.problems`` names what is missing."""
    from dslo.eval.datasets import DATASETS, DatasetLayoutError, get_dataset

    for name, expected in source.counts.items():
        split = DATASETS[name].default_split
        try:
            n = len(get_dataset(name, root, split))
        except (DatasetLayoutError, ValueError) as exc:
            rep.counts[name] = None
            rep.problems.append(f"{name} ({split}): {exc}")
            continue
        rep.counts[name] = n
        if n != expected:
            gap = f"{expected - n} missing" if n < expected else f"{n - expected} more than expected"
            rep.problems.append(f"{name} ({split}): {n} image/label pairs of the benchmark's {expected}, {gap} "
                                "(an archive is incomplete or a conversion did not run)")

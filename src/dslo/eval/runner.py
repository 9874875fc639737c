"""The evaluation loop: predict every image once (cached as label PNGs, so runs resume), keep a
running mIoU, shard across data-parallel ranks, and let rank 0 merge and write the report."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dslo.eval.datasets import Sample, SegDataset
from dslo.eval.protocol import request_key
from dslo.eval.report import write_report
from dslo.eval.scoring import (
    json_ready,
    new_accumulator,
    prediction_path,
    read_prediction,
    score_predictions,
    score_sample,
    write_prediction,
)
from dslo.outputs import atomic_write_text

PRED_DIR = "pred"
REQUEST_FILE = "request.json"
MODEL_FILE = "model.json"
SHARD_DIR = "shards"


@dataclass(frozen=True)
class Shard:
    """This process's slice of the data: ``samples[rank::world_size]`` (strided, so ranks get
    images of every part of the list and finish at about the same time)."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"invalid shard rank={self.rank} world_size={self.world_size}")

    def select(self, samples: Sequence[Sample]) -> list[Sample]:
        return list(samples[self.rank :: self.world_size])

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Shard:
        """``RANK`` / ``WORLD_SIZE`` as set by ``torchrun`` (single process when absent)."""
        env = os.environ if env is None else env
        try:
            return cls(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")))
        except ValueError as exc:
            raise ValueError(f"RANK/WORLD_SIZE must be integers: {exc}") from exc


def _check_request(output_dir: Path, request: dict[str, Any]) -> None:
    """The cache is only valid for the request that filled it; refuse to mix two."""
    path = output_dir / REQUEST_FILE
    key = request_key(request)
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        pred_dir = output_dir / PRED_DIR
        has_predictions = pred_dir.is_dir() and any(pred_dir.glob("*.png"))
        if old.get("key") != key and not has_predictions:
            # The run that wrote it produced nothing (e.g. it failed loading weights): nothing to
            # protect, so a corrected retry takes the folder over.
            old = {"key": key}
            atomic_write_text(path, json.dumps({"key": key, "request": request}, indent=1))
        if old.get("key") != key:
            diff = sorted(
                k for k in set(old.get("request", {})) | set(request)
                if old.get("request", {}).get(k) != request.get(k)
            )
            raise ValueError(
                f"{output_dir} holds predictions made with different settings (differs in: "
                f"{', '.join(diff) or 'settings'}); pass another --output folder or delete "
                f"{output_dir / PRED_DIR} to start over"
            )
        return
    atomic_write_text(path, json.dumps({"key": key, "request": request}, indent=1))


def dataset_classes(dataset: SegDataset, background_threshold: float | None) -> tuple[list[list[str]], object]:
    """The classes to prompt and the segmenter's background argument for this protocol."""
    if background_threshold is None:
        return [list(c) for c in dataset.classes], "none"
    if dataset.background_index != 0:
        raise ValueError(f"{dataset.name}: a threshold background needs the background at index 0")
    # The segmenter puts its threshold background at id 0 and the classes after it: the
    # dataset's own ids.
    return [list(c) for c in dataset.classes[1:]], float(background_threshold)


def predict_many(segmenter: Any, samples: Sequence[Sample], classes, background,
                 num_classes: int) -> list[np.ndarray]:
    """Several images → their ``(H, W)`` train ids; one ``predict_batch`` call when there are
    several (same-size images share the model passes), else ``predict``."""
    images = [s.load_image() for s in samples]
    if len(images) > 1:
        results = segmenter.predict_batch(images, classes, background=background)
    else:
        results = [segmenter.predict(images[0], classes, background=background)]
    return [_checked_labels(r, im, num_classes) for r, im in zip(results, images, strict=False)]


def _checked_labels(result: Any, image: np.ndarray, num_classes: int) -> np.ndarray:
    if len(result.class_names) != num_classes:
        raise RuntimeError(
            f"the segmenter returned {len(result.class_names)} classes for a {num_classes}-class benchmark"
        )
    labels = np.asarray(result.labels)
    if labels.shape != image.shape[:2]:
        raise RuntimeError(f"prediction {labels.shape} is not at the image size {image.shape[:2]}")
    return labels


def run_shard(
    dataset: SegDataset,
    output_dir: str | os.PathLike,
    make_segmenter: Callable[[], Any],
    request: dict[str, Any],
    *,
    limit: int | None = None,
    shard: Shard = Shard(),
    background_threshold: float | None = None,
    progress: bool = True,
    describe: Callable[[Any], dict] | None = None,
    batch_size: int = 1,
) -> dict[str, Any]:
    """Predict (or reuse) this shard's images; returns ``{"predicted", "cached", "seconds", ...}``.

    ``make_segmenter`` is called only when at least one prediction is missing, so a finished run
    repeats without loading any model. ``batch_size`` > 1: missing predictions are made
    ``batch_size`` images at a time with ``predict_batch`` (same results, fewer model passes).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(output_dir)
    pred_dir = out / PRED_DIR
    out.mkdir(parents=True, exist_ok=True)
    _check_request(out, request)
    samples = evaluated_samples(dataset, limit)
    mine = shard.select(samples)
    pending = {s.stem for s in mine if not prediction_path(pred_dir, s.stem).is_file()}
    classes, background = dataset_classes(dataset, background_threshold)

    segmenter = None
    if pending:
        segmenter = make_segmenter()
        if describe is not None:
            atomic_write_text(out / MODEL_FILE, json.dumps(describe(segmenter), indent=1))

    acc = new_accumulator(dataset)
    bar = None
    if progress and mine:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc=f"{dataset.name}" + (f" [rank {shard.rank}]" if shard.world_size > 1 else ""),
                   unit="img", dynamic_ncols=True)
    seconds = 0.0
    try:
        for start in range(0, len(mine), batch_size):
            chunk = mine[start:start + batch_size]
            todo = [s for s in chunk if s.stem in pending]
            fresh: dict[str, np.ndarray] = {}
            if todo:
                t0 = time.perf_counter()
                for s, labels in zip(todo, predict_many(segmenter, todo, classes, background, dataset.num_classes), strict=False):
                    write_prediction(prediction_path(pred_dir, s.stem), labels)
                    fresh[s.stem] = labels
                seconds += time.perf_counter() - t0
            for s in chunk:
                labels = fresh[s.stem] if s.stem in fresh else read_prediction(prediction_path(pred_dir, s.stem))
                score_sample(acc, s, labels)
                if bar is not None:
                    bar.set_postfix(mIoU=f"{acc.compute()['miou']:.2f}", refresh=False)
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    stats = {
        "rank": shard.rank,
        "world_size": shard.world_size,
        "images": len(mine),
        "predicted": len(pending),
        "cached": len(mine) - len(pending),
        "seconds": seconds,
        "finished": time.time(),
        "key": request_key(request),
    }
    atomic_write_text(out / SHARD_DIR / f"rank{shard.rank}-of-{shard.world_size}.json", json.dumps(stats))
    stats["accumulator"] = acc
    return stats


def evaluated_samples(dataset: SegDataset, limit: int | None) -> list[Sample]:
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    return list(dataset.samples[:limit] if limit else dataset.samples)


def wait_for_predictions(pred_dir: Path, samples: Sequence[Sample], timeout: float, poll: float = 2.0) -> None:
    """Rank 0 waits until every rank's predictions are on disk (atomic writes: present = complete)."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [s for s in samples if not prediction_path(pred_dir, s.stem).is_file()]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(missing)} predictions still missing in {pred_dir} after {timeout:.0f}s, "
                f"e.g. {missing[0].stem}.png; did another rank fail? Rerun: finished images are kept"
            )
        time.sleep(poll)


def evaluate(
    dataset: SegDataset,
    output_dir: str | os.PathLike,
    make_segmenter: Callable[[], Any],
    request: dict[str, Any],
    *,
    limit: int | None = None,
    shard: Shard | None = None,
    background_threshold: float | None = None,
    progress: bool = True,
    describe: Callable[[Any], dict] | None = None,
    merge_timeout: float = 24 * 3600.0,
    batch_size: int = 1,
) -> dict[str, Any] | None:
    """Evaluate ``dataset`` into ``output_dir`` (``pred/<stem>.png``, ``report.json``, ``report.md``).

    With ``shard`` (default: from ``RANK``/``WORLD_SIZE``) each rank predicts its slice; rank 0
    then waits for all predictions, scores the whole set and writes the report. Returns the report
    on rank 0 and None on the other ranks.
    """
    shard = shard or Shard.from_env()
    out = Path(output_dir)
    started = time.time()
    stats = run_shard(
        dataset, out, make_segmenter, request, limit=limit, shard=shard,
        background_threshold=background_threshold, progress=progress and shard.rank == 0, describe=describe,
        batch_size=batch_size,
    )
    if shard.rank != 0:
        return None
    samples = evaluated_samples(dataset, limit)
    if shard.world_size == 1:
        metrics = stats["accumulator"].compute()
        ranks = [stats]
    else:
        wait_for_predictions(out / PRED_DIR, samples, merge_timeout)
        metrics = score_predictions(dataset, out / PRED_DIR, samples)
        ranks = _read_rank_stats(out, shard.world_size, request_key(request), started - 60.0)
    predicted = sum(r["predicted"] for r in ranks)
    seconds = sum(r["seconds"] for r in ranks)
    model_file = out / MODEL_FILE
    report = {
        **json_ready(metrics),
        "dataset": dataset.name,
        "split": dataset.split,
        "images": len(samples),
        "protocol": {
            **request,
            "images": len(samples),
            "limit": limit,
            "model_settings": json.loads(model_file.read_text()) if model_file.is_file() else None,
        },
        "run": {
            "world_size": shard.world_size,
            "predicted": predicted,
            "cached": sum(r["cached"] for r in ranks),
            "ranks_reported": len(ranks),
            "seconds_per_image": seconds / predicted if predicted else None,
        },
    }
    write_report(out, report)
    return report


def _read_rank_stats(out: Path, world_size: int, key: str, since: float) -> list[dict]:
    stats = []
    for r in range(world_size):
        p = out / SHARD_DIR / f"rank{r}-of-{world_size}.json"
        if p.is_file():
            d = json.loads(p.read_text())
            if d.get("key") == key and d.get("finished", 0) >= since:
                stats.append(d)
    return stats

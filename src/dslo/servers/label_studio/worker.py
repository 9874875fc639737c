"""What a worker process of the backend does: load the models once, then for each task read its
image (the checked :class:`~dslo.servers.label_studio.sources.Source`, every cap applied), segment
it with the engines' per-image step (:func:`dslo.engines.step.segment_chunk`: the failure policy
of ``dslo segment``) and turn the label map into a Label Studio prediction.

Worker processes keep the server's event loop free: a prediction never holds the server's GIL,
and a worker that dies (out of memory) fails its task, not the server.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dslo.engines.step import IMAGE_FAILURES, Outcome, failed, segment_chunk
from dslo.imageio import read_image_bytes
from dslo.labelling.label_config import BrushTarget
from dslo.labelling.label_studio import class_labels, prediction, region_scores
from dslo.request import ModelChoice
from dslo.servers.label_studio.sources import FetchLimits, Source, read_source

__all__ = ["TaskJob", "TaskAnswer", "init_worker", "ping", "predict_task"]

_SEGMENTER: Any = None
_LOAD_ERROR: str | None = None


@dataclass(frozen=True)
class TaskJob:
    """One task for a worker: its image's checked source, the classes (synonym lists, in the
    label order of ``target``), where the regions go, the model version to stamp."""

    source: Source
    classes: tuple[tuple[str, ...], ...]
    target: BrushTarget
    version: str
    limits: FetchLimits


@dataclass(frozen=True)
class TaskAnswer:
    """A worker's answer: the prediction (None when the task failed), the failure's one-line
    reason (the engines' wording), the seconds spent."""

    prediction: dict | None
    error: str = ""
    seconds: float = 0.0


def init_worker(models: ModelChoice, background: object, threads: int | None,
                factory: Callable[[], Any] | None = None) -> None:
    """Load the segmenter of this process, once (``factory``: build it another way; tests). A
    failure is kept and reported by :func:`ping` and every task, in one line."""
    global _SEGMENTER, _LOAD_ERROR
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _exit_with_parent()
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        _SEGMENTER = factory() if factory is not None else models.create_segmenter(background)
    except (RuntimeError, ValueError, OSError, ImportError) as exc:  # e.g. WeightsNotFoundError
        _LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def _exit_with_parent() -> None:
    """End this worker when the server is gone (killed before it could stop its workers): an
    orphaned worker would hold its models' memory forever."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="dslo-parent-watch", daemon=True).start()


def ping() -> str | None:
    """None when this worker's models are loaded, else why not."""
    return _LOAD_ERROR if _SEGMENTER is None else None


def predict_task(job: TaskJob) -> TaskAnswer:
    """Read, segment and convert one task's image; never raises for a bad image (the engines'
    failure policy), only for a bug."""
    t0 = time.perf_counter()
    if _SEGMENTER is None:
        return TaskAnswer(None, f"the models are not loaded ({_LOAD_ERROR})", 0.0)
    out: dict[str, Any] = {}

    def load():
        return read_image_bytes(read_source(job.source, job.limits), job.source.shown)

    def finish(_i: int, result) -> None:
        label_of = class_labels(result.class_names, result.classes, job.target, result.background_index is not None)
        scores = region_scores(result.labels, result.scores, result.score_class_ids)
        out["prediction"] = prediction(result.labels, label_of, job.target, job.version, scores)

    try:
        (outcome,) = segment_chunk(_SEGMENTER, [load], [list(c) for c in job.classes], finish)
    except IMAGE_FAILURES as exc:  # e.g. a class that matches no label, raised outside the step
        outcome = failed(exc)
    seconds = time.perf_counter() - t0
    if not isinstance(outcome, Outcome) or not outcome.ok:
        return TaskAnswer(None, outcome.error, seconds)
    return TaskAnswer(out["prediction"], "", seconds)

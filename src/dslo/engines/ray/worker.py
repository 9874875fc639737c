"""The two Ray Data stages of a run, as plain callables (Ray pickles them by reference).

``read_sources``: a task per block, reads each image's bytes (local path or URI); a file that
cannot be read becomes that row's error instead of failing the block.
``SegmentWorker``: one per actor; builds the request's segmenter once, takes the vocabulary's text
embeddings from the driver, and runs the engines' per-image step (:mod:`dslo.engines.step`, the
local engine's failure policy and writer) on each batch.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dslo import remote
from dslo.engines.step import Outcome, failed, segment_chunk
from dslo.imageio import ImageReadError, read_image_bytes
from dslo.inputs import InputItem
from dslo.outputs import output_location, outputs_exist, write_result
from dslo.request import SegmentRequest

# What every output row carries back to the driver.
ROW_KEYS = ("stem", "image", "status", "error", "unreadable", "worker", "started", "seconds",
            "texts_encoded", "record")


@dataclass(frozen=True)
class Job:
    """Everything a worker needs, picklable: the request (its output location absolute: a worker's
    working folder is not the driver's), the driver's clock when the run began, its folder."""

    request: SegmentRequest
    started: float = field(default_factory=time.time)
    cwd: str = field(default_factory=os.getcwd)  # relative model paths mean the driver's folder


def read_sources(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add ``data`` (the file's bytes) and ``error`` (why it could not be read, else "")."""
    data, errors = [], []
    for src, name in zip(batch["source"], batch["name"], strict=True):
        try:
            data.append(InputItem(str(src), str(name), "").read_bytes())
            errors.append("")
        except ImageReadError as exc:
            data.append(b"")
            errors.append(str(exc))
    return {**batch, "data": np.array(data, dtype=object), "error": np.array(errors, dtype=object)}


def _mtime(loc) -> float | None:
    if isinstance(loc, str):
        return remote.mtime(loc)
    try:
        return loc.stat().st_mtime
    except OSError:
        return None


class SegmentWorker:
    """A Ray Data actor: ``__call__(batch) -> rows`` (see :data:`ROW_KEYS`). ``segmenter``: use
    this one instead of building the request's (tests feed the engines' step a stand-in)."""

    def __init__(self, job: Job, embeddings=None, segmenter: Any = None) -> None:
        if embeddings is not None and type(embeddings).__name__ == "ObjectRef":
            import ray

            embeddings = ray.get(embeddings)
        self.job = job
        if job.request.output is None:
            raise ValueError("a Ray worker writes files: the request needs output options")
        self.out = job.request.output
        if os.path.isdir(job.cwd):  # one machine or a shared filesystem: paths as on the driver
            os.chdir(job.cwd)
        self.seg = segmenter or job.request.create_segmenter()
        if embeddings:
            from dslo.models import TextEmbeddings

            if isinstance(self.seg.logits_model, TextEmbeddings):
                self.seg.logits_model.add_text_embeddings(embeddings)
        self.record = job.request.record()
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def _written_by_this_run(self, stem: str) -> bool:
        """Whether an earlier attempt of this run (a batch retried after its worker died) already
        wrote every output of ``stem``; then it is not computed or written again."""
        if not self.out.writes_files:
            return False  # parquet rows are written once, by the driver
        if not self.out.overwrite:
            return outputs_exist(self.out.location, stem, self.out.kinds)
        times = [_mtime(output_location(self.out.location, stem, k)) for k in self.out.kinds]
        return all(t is not None and t >= self.job.started for t in times)

    def _texts_encoded(self) -> int:
        return int(getattr(self.seg.logits_model, "texts_encoded", 0))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows: dict[str, list] = {k: [] for k in ROW_KEYS}
        names, stems = [str(n) for n in batch["name"]], [str(s) for s in batch["stem"]]
        records = [""] * len(names)
        outcomes: dict[int, Outcome] = {}
        todo = []
        for i, (stem, error) in enumerate(zip(stems, batch["error"], strict=True)):
            if self._written_by_this_run(stem):
                outcomes[i] = Outcome("again")
            elif str(error):  # the read task could not read it
                outcomes[i] = failed(ImageReadError(str(error)))
            else:
                todo.append(i)

        def load(i: int):
            return lambda: read_image_bytes(bytes(batch["data"][i]), names[i])

        def finish(j: int, result) -> None:
            i = todo[j]
            if self.out.writes_files:
                write_result(result, self.out.location, stems[i], self.out.kinds, image_name=names[i],
                             request=self.record)
            else:
                from dslo.engines.ray.parquet import record

                records[i] = json.dumps(record(result, names[i], stems[i]))

        started, t0 = time.time(), time.perf_counter()
        for j, outcome in enumerate(segment_chunk(self.seg, [load(i) for i in todo], self.job.request.class_lists,
                                                  finish)):
            outcomes[todo[j]] = outcome
        # the chunk shares its batched passes: each image gets an equal share of its time, in turn
        share = (time.perf_counter() - t0) / max(1, len(todo))
        for i in range(len(names)):
            o = outcomes[i]
            k = todo.index(i) if i in todo else 0
            timing = (started + k * share, share) if i in todo else (started, 0.0)
            for key, value in zip(ROW_KEYS, (stems[i], names[i], o.status, o.error, o.unreadable, self.name,
                                             *timing, self._texts_encoded(), records[i]), strict=True):
                rows[key].append(value)
        return rows

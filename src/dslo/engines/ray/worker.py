"""The two Ray Data stages of a scaled run, as plain callables (Ray pickles them by reference).

``read_sources``: a task per block, reads each image's bytes (local path or URI); a file that
cannot be read becomes that row's error instead of failing the block.
``SegmentWorker``: one per actor; loads the segmenter once, takes the vocabulary's text
embeddings from the driver, segments and writes each image with the local engine's writer.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dslo import remote
from dslo.outputs import output_location, outputs_exist, write_result

# What every output row carries back to the driver.
ROW_KEYS = ("stem", "image", "status", "error", "worker", "started", "seconds", "texts_encoded",
            "record")


@dataclass(frozen=True)
class Job:
    """Everything a worker needs, picklable. ``kwargs`` are ``create_segmenter``'s; ``out`` a
    local folder (``Path``) or a URI; ``started`` the driver's clock when the run began."""

    preset: str
    kwargs: dict
    classes: list
    out: object
    kinds: tuple[str, ...]
    format: str = "files"
    overwrite: bool = False
    started: float = field(default_factory=time.time)
    cwd: str = field(default_factory=os.getcwd)  # relative model paths mean the driver's folder
    request: dict | None = None  # what produced the outputs (dslo.provenance), stamped into each


def read_sources(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add ``data`` (the file's bytes) and ``error`` (why it could not be read, else "")."""
    data, errors = [], []
    for src in batch["source"]:
        src = str(src)
        try:
            data.append(remote.read_bytes(src) if remote.is_uri(src) else Path(src).read_bytes())
            errors.append("")
        except (OSError, ValueError) as exc:
            data.append(b"")
            errors.append(f"cannot read {src}: {exc}")
    return {**batch, "data": np.array(data, dtype=object), "error": np.array(errors, dtype=object)}


def _mtime(loc) -> float | None:
    if isinstance(loc, str):
        return remote.mtime(loc)
    try:
        return loc.stat().st_mtime
    except OSError:
        return None


class SegmentWorker:
    """A Ray Data actor: ``__call__(batch) -> rows`` (see :data:`ROW_KEYS`)."""

    def __init__(self, job: Job, embeddings=None) -> None:
        from dslo.segmenter import create_segmenter

        if embeddings is not None and type(embeddings).__name__ == "ObjectRef":
            import ray

            embeddings = ray.get(embeddings)
        self.job = job
        if os.path.isdir(job.cwd):  # one machine or a shared filesystem: paths as on the driver
            os.chdir(job.cwd)
        self.seg = create_segmenter(job.preset, **job.kwargs)
        if embeddings:
            self.seg.logits_model.add_text_embeddings(embeddings)
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def _written_by_this_run(self, stem: str) -> bool:
        """Whether an earlier attempt of this run (a batch retried after its worker died) already
        wrote every output of ``stem``; then it is not computed or written again."""
        if self.job.format != "files":
            return False  # parquet rows are written once, by the driver
        if not self.job.overwrite:
            return outputs_exist(self.job.out, stem, self.job.kinds)
        times = [_mtime(output_location(self.job.out, stem, k)) for k in self.job.kinds]
        return all(t is not None and t >= self.job.started for t in times)

    def _one(self, name: str, stem: str, data: bytes, error: str) -> tuple[str, str, str]:
        from dslo.imageio import ImageReadError, read_image_bytes

        if self._written_by_this_run(stem):
            return "again", "", ""
        if error:
            return "failed", error, ""
        try:
            result = self.seg.predict(read_image_bytes(data, name), self.job.classes)
            if self.job.format == "files":
                write_result(result, self.job.out, stem, self.job.kinds, image_name=name,
                             request=self.job.request)
                return "done", "", ""
            from dslo.scale.parquet import record

            return "done", "", json.dumps(record(result, name, stem))
        except ImageReadError as exc:
            return "failed", str(exc), ""
        except (ValueError, RuntimeError, OSError) as exc:  # as the local engine: report, go on
            return "failed", f"{type(exc).__name__}: {exc}", ""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows: dict[str, list] = {k: [] for k in ROW_KEYS}
        for name, stem, data, error in zip(batch["name"], batch["stem"], batch["data"], batch["error"], strict=False):
            started, t0 = time.time(), time.perf_counter()
            status, err, rec = self._one(str(name), str(stem), bytes(data), str(error))
            for key, value in zip(ROW_KEYS, (str(stem), str(name), status, err, self.name, started,
                                             time.perf_counter() - t0,
                                             getattr(self.seg.logits_model, "texts_encoded", 0), rec), strict=False):
                rows[key].append(value)
        return rows

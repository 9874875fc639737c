"""The Ray engine's driver: the local engine's job on a Ray cluster.

Finished images are dropped here, before Ray starts or any model loads; the vocabulary's text
embeddings are computed once and put in the object store; then a Ray Data pipeline reads the
images' bytes (tasks) and segments them on a fixed pool of actors, one segmenter each, running the
engines' per-image step (:mod:`dslo.engines.step`: the local engine's failure policy and writer).
The driver consumes the stream of per-image rows for the progress bar, the failures file, parquet
parts and the summary.

A worker that dies is restarted by Ray and its unfinished batch is run again (Ray Data's actor
pools retry tasks); images of that batch whose outputs an earlier attempt already wrote are
recognised and not computed or written again.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from dslo.engines.plan import check_output_location, plan_resume, stale_error
from dslo.engines.step import Outcome
from dslo.engines.summary import Logger, RunSummary, write_failures
from dslo.inputs import InputItem
from dslo.request import SegmentRequest

__all__ = ["INSTALL_HINT", "RayOptions", "run_ray"]

INSTALL_HINT = ('--engine ray needs Ray Data, which is not installed; install it with '
                'pip install "dslo[ray]" (or pip install "ray[data]")')


@dataclass(frozen=True)
class RayOptions:
    """``address``: the cluster to join (None: ``$RAY_ADDRESS``, else a Ray started for the run);
    ``workers``: actors, each with its own segmenter (None: one per GPU, else 1);
    ``gpus_per_worker`` (None: 1 when the cluster has GPUs, else 0); ``cpus_per_worker`` (None: 1
    with GPUs; without, an equal share of the cluster's CPUs less one for reading, at least 0.5)."""

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None


@dataclass
class WorkerStats:
    """What one actor did: images segmented, seconds spent on them (decode + segment + write), the
    wall-clock span from its first image's start to its last one's end, names it embedded itself."""

    images: int = 0
    busy: float = 0.0
    first: float = math.inf
    last: float = 0.0
    texts: int = 0

    def add(self, row: dict) -> None:
        self.texts = max(self.texts, int(row["texts_encoded"]))
        if row["status"] == "done":
            self.images += 1
            self.busy += row["seconds"]
            self.first = min(self.first, row["started"])
            self.last = max(self.last, row["started"] + row["seconds"])

    def describe(self) -> str:
        span = self.last - self.first if self.images else 0.0
        rate = self.images / self.busy if self.busy else 0.0
        share = 100.0 * self.busy / span if span > 0 else 100.0
        return (f"{self.images} image(s), {rate:.2f} img/s while busy, busy {share:.0f}% of "
                f"{span:.1f} s, {self.texts} text embedding(s) computed on the worker")


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (ray without its data extra has no ray.data)
    except ImportError as exc:
        raise RuntimeError(INSTALL_HINT) from exc
    return ray


def _start_ray(ray, address: str | None) -> tuple[bool, float]:
    """Join or start Ray; → (whether this run started it, seconds taken)."""
    t0 = time.perf_counter()
    if ray.is_initialized():
        return False, 0.0
    kw = {"logging_level": logging.WARNING}
    if address is None:
        kw["include_dashboard"] = False
    try:
        ray.init(address=address, **kw)
    except Exception as exc:  # Ray raises bare Exceptions too (e.g. a node start-up time-out)
        if address is None:
            raise RuntimeError(f"cannot start a local Ray: {exc}") from None
        raise RuntimeError(f"cannot join the Ray cluster at {address!r}: {exc}; start one with "
                           "`ray start --head` or leave --address out for a local Ray") from None
    return True, time.perf_counter() - t0


def _resources(ray, opts: RayOptions) -> tuple[int, float, float]:
    """→ (workers, GPUs per worker, CPUs per worker) from the options and the cluster."""
    res = ray.cluster_resources()
    gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 1))
    gpw = opts.gpus_per_worker if opts.gpus_per_worker is not None else (1.0 if gpus else 0.0)
    workers = opts.workers or (max(1, int(gpus // gpw)) if gpw else 1)
    if opts.cpus_per_worker is not None:
        cpw = opts.cpus_per_worker
    elif gpw:
        cpw = 1.0
    else:
        # Leave a CPU to the read tasks: with every CPU held by actors they never run (a hang).
        cpw = max(0.5, math.floor(2 * (cpus - 1) / workers) / 2)
    return workers, gpw, cpw


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def run_ray(request: SegmentRequest, items: Sequence[InputItem], options: RayOptions = RayOptions(), *,
            progress: bool = True, log: Logger = _stderr) -> RunSummary:
    """The local engine's job (:func:`dslo.engines.local.run_local`) on Ray: the same outputs,
    byte for byte, plus ``--format parquet`` rows. Fails at once, with the install command, when
    Ray is missing."""
    import dslo.engines.ray.parquet as parquet

    out = request.output
    if out is None:
        raise ValueError("the Ray engine writes files: the request needs output options")
    ray = _import_ray()  # at once: no listing, no model before saying Ray is missing
    check_output_location(out.location)
    if isinstance(out.location, Path):  # absolute: a worker's working folder is not the driver's
        request = request.replace(output=replace(out, location=out.location.resolve()))
        out = request.output
        assert out is not None
    summary = RunSummary(total=len(items))
    t_start = time.perf_counter()
    from dslo.engines.plan import existing_files

    old_parts = parquet.part_files(out.location, existing_files(out.location)) if out.format == "parquet" else []
    if out.format == "parquet":
        if out.overwrite:
            parquet.delete(old_parts)
        done = set() if out.overwrite else parquet.read_stems(old_parts)
        todo = [it for it in items if it.stem not in done]
    else:
        plan = plan_resume(items, out.location, out.kinds, request.record(), overwrite=out.overwrite)
        if plan.stale:
            raise stale_error(plan, len(items), out.location)
        todo = plan.todo
    summary.skipped = len(items) - len(todo)
    startup = 0.0
    per_worker: dict[str, WorkerStats] = defaultdict(WorkerStats)
    writer = parquet.PartWriter(out.location) if out.format == "parquet" else None
    if todo:  # a finished rerun starts neither Ray nor a model
        from dslo.engines.ray.vocabulary import vocabulary_embeddings

        # Before Ray starts: a missing CLIP fails here, in seconds, with its message.
        embeddings = vocabulary_embeddings(request)
        started_here, startup = _start_ray(ray, options.address)
        try:
            pipeline_start = _pipeline_run(ray, request, options, todo, embeddings, summary, per_worker,
                                           writer, progress, log)
        finally:
            if writer is not None:
                writer.flush()
            if started_here:
                ray.shutdown()
    summary.seconds = time.perf_counter() - t_start - startup
    if todo:
        first = min((w.first for w in per_worker.values()), default=math.inf)
        ready = f", first image started after {first - pipeline_start:.1f} s" if first < math.inf else ""
        n = summary.done + len(summary.failed)
        summary.timing = f"{n / summary.seconds:.2f} img/s ({summary.seconds:.1f} s; Ray start-up {startup:.1f} s{ready})"
    summary.failures_file = write_failures(out.location, summary.failed)
    summary.notes += [f"worker {name}: {w.describe()}" for name, w in sorted(per_worker.items())]
    return summary


def _pipeline_run(ray, request: SegmentRequest, options: RayOptions, todo: list[InputItem], embeddings,
                  summary: RunSummary, per_worker: dict[str, WorkerStats], writer, progress: bool,
                  log: Logger) -> float:
    """Run the Ray Data pipeline over ``todo``; fills ``summary`` and ``per_worker``; returns the
    driver's clock when models and workers started."""
    from tqdm.auto import tqdm

    from dslo.engines.ray.worker import Job, SegmentWorker, read_sources

    pipeline_start = time.time()  # models and workers start from here
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours is the one bar
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled"
    workers, gpw, cpw = _resources(ray, options)

    emb_ref = ray.put(embeddings) if embeddings else None  # one copy, read by every worker
    job = Job(request)
    B = request.batch_size
    # Blocks small enough to spread over the workers and to stream, large enough not to drown
    # a million-image run in tasks.
    per_block = max(B, min(256, math.ceil(len(todo) / (workers * 8))))
    rows = [{"source": it.source, "name": it.name, "stem": it.stem} for it in todo]
    ds = (ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / per_block))
          .map_batches(read_sources, batch_size=None, num_cpus=0.25)
          .map_batches(SegmentWorker, fn_constructor_args=(job, emb_ref),
                       compute=ray.data.ActorPoolStrategy(size=workers), batch_size=B,
                       num_gpus=gpw or None, num_cpus=cpw))

    seen: set[str] = set()
    bar = tqdm(total=len(todo), unit="img", file=sys.stderr, dynamic_ncols=True,
               disable=None if progress else True)
    try:
        for row in ds.iter_rows():
            stem = row["stem"]
            if stem in seen:  # defensive: Ray hands each output row over once
                continue
            seen.add(stem)
            per_worker[row["worker"]].add(row)
            if row["status"] == "failed":
                summary.failed.append((row["image"], row["error"]))
                log(Outcome("failed", row["error"], bool(row["unreadable"])).describe(row["image"]))
            else:
                summary.done += 1
                if writer is not None and row["record"]:
                    writer.add(json.loads(row["record"]))
            bar.update(1)
    except ray.exceptions.RayError as exc:
        raise RuntimeError(f"the Ray job failed: {str(exc).splitlines()[0]}") from None
    finally:
        bar.close()
    for it in todo:  # never silently lost
        if it.stem not in seen:
            summary.failed.append((it.name, "no result came back from the Ray workers"))
    return pipeline_start

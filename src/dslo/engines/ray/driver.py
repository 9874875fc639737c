"""The driver of ``dslo segment --engine ray``.

Inputs are listed and finished images dropped here, before Ray starts or any model loads; the
vocabulary's text embeddings are computed once and put in the object store; then a Ray Data
pipeline reads the images' bytes (tasks) and segments them on a fixed pool of actors, one
segmenter each, which write their outputs with the local engine's writer. The driver consumes the
stream of per-image rows for the progress bar, the failures file, parquet parts and the summary.

A worker that dies is restarted by Ray and its unfinished batch is run again (Ray Data's actor
pools retry tasks); images of that batch whose outputs an earlier attempt already wrote are
recognised and not computed or written again.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from dslo import remote
from dslo.outputs import atomic_write_text

ENGINES = ("local", "ray")
FAILURES_FILE = "dslo-failures.jsonl"
INSTALL_HINT = ('--engine ray needs Ray Data, which is not installed; install it with '
                'pip install "dslo[ray]" (or pip install "ray[data]")')


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


def _positive_float(text: str) -> float:
    x = float(text)
    if not (x >= 0 and math.isfinite(x)):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return x


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return n


def add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine (see docs/scale.md)")
    g.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: this process (default); ray: a Ray cluster (pip install \"dslo[ray]\")")
    g.add_argument("--address", metavar="ADDR",
                   help="Ray cluster to join: auto (the running local cluster) or ray://HOST:PORT; "
                        "default: $RAY_ADDRESS, else a Ray started for this run")
    g.add_argument("--workers", type=_positive_int, metavar="N",
                   help="Ray actors, each with its own segmenter (default: one per GPU of the "
                        "cluster, else 1)")
    g.add_argument("--gpus-per-worker", type=_positive_float, metavar="F",
                   help="GPUs per actor, fractions allowed (default 1 when the cluster has GPUs, else 0)")
    g.add_argument("--cpus-per-worker", type=_positive_float, metavar="F",
                   help="CPUs per actor (default: 1 with GPUs; without, an equal share of the "
                        "cluster's CPUs less one for reading, at least 0.5)")
    g.add_argument("--format", choices=("files", "parquet"), default="files",
                   help="files: the --save outputs per image (default); parquet: one row per image "
                        "with path, size, class names and RLE segments (--engine ray)")


# ------------------------------------------------------------------------------------------------


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


def _resources(ray, args) -> tuple[int, float, float]:
    """→ (workers, GPUs per worker, CPUs per worker) from the options and the cluster."""
    res = ray.cluster_resources()
    gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 1))
    gpw = args.gpus_per_worker if args.gpus_per_worker is not None else (1.0 if gpus else 0.0)
    workers = args.workers or (max(1, int(gpus // gpw)) if gpw else 1)
    if args.cpus_per_worker is not None:
        cpw = args.cpus_per_worker
    elif gpw:
        cpw = 1.0
    else:
        # Leave a CPU to the read tasks: with every CPU held by actors they never run (a hang).
        cpw = max(0.5, math.floor(2 * (cpus - 1) / workers) / 2)
    return workers, gpw, cpw


def _print(msg: str, bar=None) -> None:
    if bar is not None and not bar.disable:
        bar.write(msg, file=sys.stderr)
    else:
        print(msg, file=sys.stderr)


def _write_failures(out, failures: list[tuple[str, str]]) -> str | None:
    """``dslo-failures.jsonl`` (one ``{"image", "error"}`` per line) under the output, replaced
    on every run; removed when a run has no failures."""
    loc = remote.join(str(out), FAILURES_FILE) if remote.is_uri(out) else Path(out) / FAILURES_FILE
    if failures:
        atomic_write_text(loc, "".join(json.dumps({"image": i, "error": e}, ensure_ascii=False) + "\n"
                                       for i, e in failures))
        return str(loc)
    if isinstance(loc, Path):
        loc.unlink(missing_ok=True)
    elif remote.exists(loc):
        fs, path = remote.fs_path(loc)
        fs.delete_file(path)
    return None


def run_ray(args: argparse.Namespace, classes: list, kwargs: dict, request: dict | None = None) -> int:
    """``dslo segment`` on Ray (``args`` from the segment parser, ``kwargs`` for
    ``create_segmenter``, ``request`` the record of what the outputs are made by, as the local
    engine stamps it). Returns the exit code: 1 when an image failed or an input was bad."""
    from dslo.scale import parquet, plan
    from dslo.scale.inputs import discover

    if args.engine != "ray":
        raise ValueError("--format parquet needs --engine ray")
    ray = _import_ray()  # at once: no listing, no model before saying Ray is missing
    out = args.output
    if isinstance(out, Path) and out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} exists and is not a folder")
    kinds = tuple(args.save)
    items, errors = discover(args.inputs, exclude=out)
    for e in errors:
        print(f"dslo segment: {e}", file=sys.stderr)
    if not items:
        print("dslo segment: no images to process", file=sys.stderr)
        return 1

    t_start = time.perf_counter()
    files = plan.existing_files(out)
    old_parts = parquet.part_files(out, files) if args.format == "parquet" else []
    if args.overwrite:
        done: set[str] = set()
        parquet.delete(old_parts)
    elif args.format == "parquet":
        done = parquet.read_stems(old_parts)
    else:
        done = plan.finished_stems(items, out, kinds, request)
    todo = [it for it in items if it.stem not in done]
    stats = {"done": 0, "skipped": len(items) - len(todo), "failed": 0}
    failures: list[tuple[str, str]] = []
    per_worker: dict[str, WorkerStats] = defaultdict(WorkerStats)
    startup = elapsed = 0.0
    writer = parquet.PartWriter(out) if args.format == "parquet" else None

    if todo:  # a finished rerun starts neither Ray nor a model
        # Before Ray starts: a missing CLIP fails here, in seconds, with its message.
        embeddings = plan.vocabulary_embeddings(args.model, kwargs, classes)
        started_here, startup = _start_ray(ray, args.address)
        try:
            _pipeline_run(ray, args, classes, kwargs, out, kinds, todo, embeddings, stats,
                          failures, per_worker, writer, request)
        finally:
            if writer is not None:
                writer.flush()
            if started_here:
                ray.shutdown()
        elapsed = time.perf_counter() - t_start - startup
    failures_at = _write_failures(out, failures)

    n = stats["done"] + stats["failed"]
    rate = ""
    if n:
        first = min((w.first for w in per_worker.values()), default=math.inf)
        ready = (f", first image started after {first - stats['pipeline_start']:.1f} s"
                 if first < math.inf else "")
        rate = f", {n / elapsed:.2f} img/s ({elapsed:.1f} s; Ray start-up {startup:.1f} s{ready})"
    print(f"dslo segment: {len(items)} image(s): {stats['done']} segmented, {stats['skipped']} "
          f"already done (skipped), {stats['failed']} failed{rate} -> {out}", file=sys.stderr)
    for name, w in sorted(per_worker.items()):
        print(f"  worker {name}: {w.describe()}", file=sys.stderr)
    if failures_at:
        print(f"failed: {', '.join(i for i, _ in failures)} (reasons in {failures_at})", file=sys.stderr)
    return 1 if failures or errors else 0


def _pipeline_run(ray, args, classes, kwargs, out, kinds, todo, embeddings, stats, failures,
                  per_worker, writer, request=None) -> None:
    from tqdm.auto import tqdm

    from dslo.scale.worker import Job, SegmentWorker, read_sources

    stats["pipeline_start"] = time.time()  # models and workers start from here
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours is the one bar
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled"
    workers, gpw, cpw = _resources(ray, args)

    emb_ref = ray.put(embeddings) if embeddings else None  # one copy, read by every worker
    # Absolute: a worker's working folder is not the driver's.
    where = out.resolve() if isinstance(out, Path) else out
    job = Job(args.model, kwargs, classes, where, kinds, args.format, args.overwrite, request=request)

    # Blocks small enough to spread over the workers and to stream, large enough not to drown
    # a million-image run in tasks.
    per_block = max(args.batch_size, min(256, math.ceil(len(todo) / (workers * 8))))
    rows = [{"source": it.source, "name": it.name, "stem": it.stem} for it in todo]
    ds = (ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / per_block))
          .map_batches(read_sources, batch_size=None, num_cpus=0.25)
          .map_batches(SegmentWorker, fn_constructor_args=(job, emb_ref),
                       compute=ray.data.ActorPoolStrategy(size=workers), batch_size=args.batch_size,
                       num_gpus=gpw or None, num_cpus=cpw))

    seen: set[str] = set()
    bar = tqdm(total=len(todo), unit="img", file=sys.stderr, dynamic_ncols=True,
               disable=True if args.quiet else None)
    try:
        for row in ds.iter_rows():
            stem = row["stem"]
            if stem in seen:  # defensive: Ray hands each output row over once
                continue
            seen.add(stem)
            per_worker[row["worker"]].add(row)
            if row["status"] == "failed":
                stats["failed"] += 1
                failures.append((row["image"], row["error"]))
                _print(f"dslo segment: failed {row['image']}: {row['error']}", bar)
            else:
                stats["done"] += 1
                if writer is not None and row["record"]:
                    writer.add(json.loads(row["record"]))
            bar.update(1)
    except ray.exceptions.RayError as exc:
        raise RuntimeError(f"the Ray job failed: {str(exc).splitlines()[0]}") from None
    finally:
        bar.close()
    for it in todo:  # never silently lost
        if it.stem not in seen:
            stats["failed"] += 1
            failures.append((it.name, "no result came back from the Ray workers"))

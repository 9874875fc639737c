"""The local engine: one segmenter in this process, images in chunks of ``batch_size``."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from dslo.engines.plan import check_output_location, check_output_names, plan_resume, remove_files, stale_error
from dslo.engines.step import segment_chunk
from dslo.engines.summary import Logger, RunSummary, write_failures
from dslo.inputs import InputItem
from dslo.outputs import write_result
from dslo.request import SegmentRequest

__all__ = ["run_local"]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def run_local(request: SegmentRequest, items: Sequence[InputItem], *, progress: bool = True,
              log: Logger = _stderr, segmenter=None) -> RunSummary:
    """Segment ``items`` and write their outputs under ``request.output``; resumable (images
    finished by the same request are skipped), atomic per file, one failed image never stops the
    run (:mod:`dslo.engines.step`). Models load only when there is work. ``log`` gets one line per
    problem (it must not garble a progress bar: ``tqdm.write``); ``segmenter``: use this one
    instead of building the request's (tests, servers that hold one already)."""
    out = request.output
    if out is None:
        raise ValueError("the local engine writes files: the request needs output options")
    if not out.writes_files:
        raise ValueError(f"--format {out.format} needs --engine ray")
    check_output_location(out.location)
    names = check_output_names(items, out.location)
    if names.fatal:
        raise ValueError("; ".join(e for e in names.errors if "overwrite the input" in e))
    for e in names.errors:
        log(e)
    items = [it for it in items if it.name not in names.dropped]
    record = request.record()
    plan = plan_resume(items, out.location, out.kinds, record, overwrite=out.overwrite)
    if plan.stale:
        raise stale_error(plan, len(items), out.location)
    summary = RunSummary(total=len(items), skipped=len(plan.done), errors=names.errors)
    t0 = time.perf_counter()
    if plan.todo:  # a finished rerun loads no model and returns at once
        seg = segmenter or request.create_segmenter()
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan.todo), unit="img", file=sys.stderr, disable=None if progress else True,
                   dynamic_ncols=True)
        B = request.batch_size
        for start in range(0, len(plan.todo), B):
            chunk = plan.todo[start:start + B]

            def finish(i: int, result, chunk=chunk) -> None:
                it = chunk[i]
                write_result(result, out.location, it.stem, out.kinds, image_name=it.name, request=record)
                remove_files(plan.remove.get(it.stem, ()))  # kinds of the old run no longer saved

            for it, outcome in zip(chunk, segment_chunk(seg, [it.read for it in chunk], request.class_lists,
                                                        finish), strict=True):
                if outcome.ok:
                    summary.done += 1
                else:
                    summary.failed.append((it.name, outcome.error))
                    log(outcome.describe(it.name))
                bar.update(1)
        bar.close()
    summary.seconds = time.perf_counter() - t0
    if plan.todo:
        summary.timing = f"{summary.seconds / len(plan.todo):.2f} s/img"
    summary.failures_file = write_failures(out.location, summary.failed)
    return summary

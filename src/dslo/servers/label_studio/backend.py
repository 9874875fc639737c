"""The backend's state and scheduling, without HTTP: the run's models (one segmenter per worker
process, loaded once), a request per labelling config, and the bounded, budgeted dispatch of a
``/predict`` call's tasks to the workers.

- At most ``max_concurrent`` tasks run at once, over all calls (one worker process each).
- A call stops starting tasks when the next one would end past its time budget (estimated from
  the tasks before); those tasks are answered without a ``result`` (Label Studio then stores no
  prediction for them and asks again later) and listed under ``not_done``.
- A task whose image is refused, cannot be read or fails in the per-image step gets an empty
  result (listed under ``failed``); its reason goes to the log only, the call goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from dslo.labelling.label_config import BrushTarget, parse_label_config
from dslo.labelling.label_studio import model_version
from dslo.request import ModelChoice, SegmentRequest
from dslo.servers.label_studio.sources import FetchLimits, ImagePolicy, Refused
from dslo.servers.label_studio.worker import TaskAnswer, TaskJob, init_worker, ping, predict_task

__all__ = ["BackendSettings", "Backend", "MAX_TASKS"]

MAX_TASKS = 10_000  # tasks in one /predict call
KEEP_PROJECTS = 64  # labelling configs whose parsed request is kept


@dataclass(frozen=True)
class BackendSettings:
    """Everything ``dslo label-studio``'s flags set. ``control``: the BrushLabels control to fill
    when a config has several; ``time_budget``: seconds one ``/predict`` call may take;
    ``threads``: torch threads per worker (None: the CPUs shared among the workers);
    ``factory``: build each worker's segmenter with this picklable callable instead (tests)."""

    models: ModelChoice = field(default_factory=ModelChoice)
    background: object = None
    control: str | None = None
    policy: ImagePolicy = field(default_factory=ImagePolicy)
    limits: FetchLimits = field(default_factory=FetchLimits)
    max_concurrent: int = 1
    time_budget: float = 80.0
    max_body_bytes: int = 32 << 20
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    threads: int | None = None
    factory: Callable[[], Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_concurrent, int) or self.max_concurrent < 1:
            raise ValueError(f"--max-concurrent must be a positive integer, got {self.max_concurrent!r}")
        if not self.time_budget > 0:
            raise ValueError(f"--time-budget must be a positive number of seconds, got {self.time_budget!r}")


@dataclass(frozen=True)
class Project:
    target: BrushTarget
    request: SegmentRequest
    version: str


def _stderr(msg: str) -> None:
    print(f"dslo label-studio: {msg}", file=sys.stderr, flush=True)


class Backend:
    """The models, the workers and the per-config requests of one server."""

    def __init__(self, settings: BackendSettings, log: Callable[[str], None] = _stderr) -> None:
        self.settings = settings
        self.log = log
        # a bad --set or model option fails here, before any worker starts
        SegmentRequest.create(["probe"], settings.background, settings.models)
        self._projects: OrderedDict[str, Project] = OrderedDict()
        self._pool_lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._estimate = 0.0  # seconds per task, a running mean of the last tasks
        self.running = 0
        self.waiting = 0
        self.predicted = 0
        self.failed = 0

    # ---- workers ---------------------------------------------------------------------------
    def _threads(self) -> int:
        return self.settings.threads or max(1, (os.cpu_count() or 1) // self.settings.max_concurrent)

    def _new_pool(self) -> ProcessPoolExecutor:
        import multiprocessing

        s = self.settings
        # spawn: a fork of a process with threads (the server's) is unsafe, and CUDA needs it
        return ProcessPoolExecutor(s.max_concurrent, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=init_worker,
                                   initargs=(s.models, s.background, self._threads(), s.factory))

    def pool(self) -> ProcessPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = self._new_pool()
            return self._pool

    def _replace_pool(self, broken: ProcessPoolExecutor) -> None:
        with self._pool_lock:
            if self._pool is broken:
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()

    def warm_up(self) -> None:
        """Start every worker and load its models now; a load failure (missing weights) raises
        here, with its message, before the server listens."""
        pool = self.pool()
        futures = [pool.submit(_ping_after, 0.5) for _ in range(self.settings.max_concurrent)]
        try:
            errors = {f.result() for f in futures} - {None}
        except BrokenProcessPool:
            raise RuntimeError("a worker process could not start (its error is printed above)") from None
        if errors:
            raise RuntimeError(errors.pop())

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    # ---- configs ---------------------------------------------------------------------------
    def project(self, label_config: object) -> Project:
        """The parsed config and its request (kept per config text)."""
        if not isinstance(label_config, str):
            raise ValueError("the request has no labelling config (a string under 'label_config' or 'schema')")
        key = hashlib.sha256(label_config.encode("utf-8", "replace")).hexdigest()
        if key in self._projects:
            self._projects.move_to_end(key)
            return self._projects[key]
        target = parse_label_config(label_config, self.settings.control)
        request = SegmentRequest.create(list(target.labels), self.settings.background, self.settings.models)
        proj = Project(target, request, model_version(request.record()))
        self.log(f"labelling config: <BrushLabels name={target.from_name!r}> on <Image name={target.to_name!r}>, "
                 f"labels {', '.join(target.labels)}; model version {proj.version}")
        self._projects[key] = proj
        while len(self._projects) > KEEP_PROJECTS:
            self._projects.popitem(last=False)
        return proj

    def setup(self, body: dict) -> dict:
        return {"model_version": self.project(body.get("schema", body.get("label_config"))).version}

    # ---- predictions -----------------------------------------------------------------------
    async def predict(self, body: dict) -> dict:
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise ValueError("'tasks' must be a list of task objects")
        if len(tasks) > MAX_TASKS:
            raise ValueError(f"{len(tasks)} tasks in one call; at most {MAX_TASKS} (use dslo segment "
                             "--format label-studio for bulk pre-labels)")
        proj = self.project(body.get("label_config"))
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.max_concurrent)
        deadline = time.monotonic() + self.settings.time_budget
        answers = await asyncio.gather(*(self._one(task, proj, deadline) for task in tasks))
        results, failed, not_done = [], [], []
        for task, (kind, pred) in zip(tasks, answers, strict=True):
            tid = task.get("id")
            if kind == "done":
                results.append(pred)
                continue
            if kind == "failed":
                failed.append(tid)
                results.append({"model_version": proj.version, "score": 0.0, "result": []})
            else:  # no "result": Label Studio stores nothing for it and asks again
                not_done.append(tid)
                results.append({"model_version": proj.version,
                                "error": f"not predicted within the time budget ({self.settings.time_budget:g} s)"})
        if not_done:
            self.log(f"predict: {len(not_done)} of {len(tasks)} task(s) left for a later call (time budget "
                     f"{self.settings.time_budget:g} s): {not_done[:20]}")
        return {"results": results, "model_version": proj.version, "failed": failed, "not_done": not_done}

    async def _one(self, task: dict, proj: Project, deadline: float) -> tuple[str, dict | None]:
        tid = task.get("id")
        data = task.get("data")
        try:
            source = self.settings.policy.resolve(data.get(proj.target.value) if isinstance(data, dict) else None)
        except Refused as exc:
            self.failed += 1
            self.log(f"task {tid}: skipped: {exc}")
            return "failed", None
        assert self._slots is not None
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            if time.monotonic() + self._estimate > deadline:
                return "not_done", None
            job = TaskJob(source, proj.request.classes, proj.target, proj.version, self.settings.limits)
            self.running += 1
            pool = self.pool()
            try:
                answer: TaskAnswer = await asyncio.get_running_loop().run_in_executor(pool, predict_task, job)
            except BrokenProcessPool:
                self._replace_pool(pool)
                answer = TaskAnswer(None, "the worker process stopped (out of memory?); it was restarted")
            finally:
                self.running -= 1
        finally:
            self._slots.release()
        if answer.seconds:
            self._estimate = answer.seconds if not self._estimate else 0.7 * self._estimate + 0.3 * answer.seconds
        if answer.prediction is None:
            self.failed += 1
            self.log(f"task {tid}: failed {source.shown}: {answer.error}")
            return "failed", None
        self.predicted += 1
        return "done", answer.prediction

    def health(self) -> dict:
        return {"status": "UP", "model_class": "dslo", "running": self.running, "waiting": self.waiting,
                "max_concurrent": self.settings.max_concurrent, "predicted": self.predicted, "failed": self.failed}


def _ping_after(seconds: float) -> str | None:
    """A worker's load error (None when loaded), held ``seconds`` so that the warm-up's pings
    land on different workers."""
    time.sleep(seconds)
    return ping()

"""Load on ``dslo label-studio``: N concurrent ``/predict`` calls while ``/health`` is polled every
0.3 s, as Label Studio polls it (with a 1 s timeout). Reports every ``/health`` latency (the
backend must answer within 1 s while predictions run), whether any task was lost, duplicated or
given another task's prediction (each answer is compared with the image's prediction from a
single call before the load), and the memory of the server and its worker processes (RSS,
sampled with each poll).

The backend runs as a user starts it (a subprocess, the offline preset: the real focus-s14
attention at its default input size, a tiny random CLIP from ``dslo.testing``), on CamVid frames
(480x360) read with ``--local-files``.

    python -m benchmarks.label_studio_load [--calls 8] [--tasks 4] [--max-concurrent 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from benchmarks.common import DEFAULT_DATA_ROOT, RESULTS_DIR, markdown_table, write_json

CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian", "bicyclist"]
CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="label" toName="image">'
          + "".join(f'<Label value="{c}"/>' for c in CLASSES) + "</BrushLabels></View>")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children (the worker processes), in MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=8, help="concurrent /predict calls")
    ap.add_argument("--tasks", type=int, default=4, help="tasks per call")
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--images", type=int, default=4, help="distinct CamVid frames")
    ap.add_argument("--time-budget", type=float, default=600.0,
                    help="the backend's --time-budget (default 600 s: every task runs; with less, tasks "
                         "left for a later call are counted under 'not done')")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "label_studio_load_cpu")
    args = ap.parse_args()
    from dslo.testing import make_tiny_clip

    with tempfile.TemporaryDirectory(prefix="dslo-ls-load-") as tmp:
        work = Path(tmp)
        clip = make_tiny_clip(work / "clip")
        frames = sorted((DEFAULT_DATA_ROOT / "camvid" / "test").glob("*.png"))[: args.images]
        if not frames:
            sys.exit(f"no CamVid frames under {DEFAULT_DATA_ROOT / 'camvid' / 'test'}")
        for f in frames:
            shutil.copy(f, work / f.name)
        port = _port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        cmd = [sys.executable, "-m", "dslo", "label-studio", "--port", str(port), "--model", "offline",
               "--logits", str(clip), "--local-files", str(work), "--max-concurrent", str(args.max_concurrent),
               "--time-budget", str(args.time_budget)]
        server_log = open(work / "server.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(cmd, env=env, stderr=server_log)
        try:
            for _ in range(600):
                try:
                    urllib.request.urlopen(url + "/health", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.5)
            # each image's prediction from a call of its own: what every later answer must equal
            reference = {}
            for f in frames:
                (res,) = _post(url + "/predict", {"tasks": [{"id": 0, "data": {"image": f.name}}],
                                                  "label_config": CONFIG})["results"]
                reference[f.name] = res["result"]
            rss = [_rss_mb(proc.pid)]
            health: list[float] = []
            health_errors = []
            stop = threading.Event()

            def poll() -> None:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    try:
                        urllib.request.urlopen(url + "/health", timeout=5).close()
                        health.append(time.perf_counter() - t0)
                    except OSError as exc:
                        health_errors.append(str(exc))
                    rss.append(_rss_mb(proc.pid))
                    stop.wait(0.3)

            answers: dict[int, tuple[list, dict]] = {}

            def call(k: int) -> None:
                tasks = [{"id": k * 1000 + j, "data": {"image": frames[(k + j) % len(frames)].name}}
                         for j in range(args.tasks)]
                answers[k] = (tasks, _post(url + "/predict", {"tasks": tasks, "label_config": CONFIG}))

            poller = threading.Thread(target=poll)
            poller.start()
            t0 = time.perf_counter()
            threads = [threading.Thread(target=call, args=(k,)) for k in range(args.calls)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            stop.set()
            poller.join()
            rss.append(_rss_mb(proc.pid))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            server_log.close()
            problems = [line for line in (work / "server.log").read_text().splitlines()
                        if "failed" in line or "left for a later call" in line]

    lost = args.calls * args.tasks - sum(len(body["results"]) for _, body in answers.values())
    skipped = {t for _, body in answers.values() for t in body["not_done"] + body["failed"]}
    wrong = sum(res.get("result") != reference[task["data"]["image"]]
                for tasks, body in answers.values() for task, res in zip(tasks, body["results"], strict=False)
                if task["id"] not in skipped)
    failed = sum(len(body["failed"]) for _, body in answers.values())
    not_done = sum(len(body["not_done"]) for _, body in answers.values())
    ms = sorted(1000 * h for h in health)
    row = {"calls": args.calls, "tasks per call": args.tasks, "max concurrent": args.max_concurrent,
           "wall s": round(wall, 1), "tasks/s": round(args.calls * args.tasks / wall, 2),
           "health polls": len(ms), "health p50 ms": round(statistics.median(ms), 1),
           "health p99 ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1), "health max ms": round(ms[-1], 1),
           "health errors": len(health_errors), "RSS start MB": round(rss[0]), "RSS peak MB": round(max(rss)),
           "RSS end MB": round(rss[-1]), "lost": lost, "wrong or duplicated": wrong, "failed": failed, "not done (budget)": not_done}
    text = markdown_table(list(row), [list(row.values())]) + "\n" + "".join(f"  {p}\n" for p in problems)
    print(text, end="")
    write_json(args.out.with_suffix(".json"), row)
    args.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()

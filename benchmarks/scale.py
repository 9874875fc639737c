"""Throughput of `dslo segment`'s engines on the same CamVid test images (40 by default, evenly
spread over the split), offline preset: the local engine, Ray with 1 and with 2 workers, and what
Ray costs: its start-up and its per-image overhead.

The offline preset's CLIP cannot be downloaded here, so it is a CLIP B/16 **built with random
weights from its real architecture** (``models_speed``'s configs), saved once under the bench
cache; speed does not depend on the weight values. ``--clip tiny`` uses a tiny random CLIP
instead (a smoke test: then nearly all the time is the attention and the head).

Each engine runs as its own ``dslo segment`` command (a subprocess, a fresh Ray each time) writing
masks, overlays and JSON into a fresh folder. Columns:

- ``start-up s``: local: loading the models; Ray: starting Ray (``ray.init``) plus the time until
  a worker starts its first image (the driver's text embeddings, the actors' imports and model
  loading).
- ``text s``: embedding the vocabulary (local: inside the first image; Ray: once, on the driver).
- ``img/s``: images over the whole command; ``steady img/s``: images over the time the engine
  was segmenting (local: after the models loaded, text embeddings excluded; Ray: from the first
  image's start to the last one's end).
- ``s/img in worker``: decode + segment + write, per image, as timed inside the worker (local:
  the same over the whole run after the models loaded).
- ``Ray overhead``: the share of a worker's span (first image start to last image end) it was not
  busy with an image, relative to its busy time: what the pipeline adds per image.

    python -m benchmarks.scale                      # 40 images, local / Ray 1 / Ray 2
    python -m benchmarks.scale --images 6 --clip tiny   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    DEFAULT_DATA_ROOT,
    REPO_ROOT,
    RESULTS_DIR,
    atomic_write_text,
    bench_cache_dir,
    markdown_table,
    spaced_subset,
    write_json,
)

CAMVID = DEFAULT_DATA_ROOT / "camvid"

# Runs `dslo segment` with timing marks: when the models are loaded (local engine) and how long
# text embeddings took (the driver's, for Ray). Printed as one JSON line on stdout.
_RUNNER = r"""
import json, sys, time
import dslo.segmenter as S
from dslo.models.clip import ClipLogitsModel
marks = {"loaded": None, "text": 0.0}
_create, _text = S.create_segmenter, ClipLogitsModel.text_embeddings
def create(*a, **k):
    seg = _create(*a, **k); marks["loaded"] = time.perf_counter(); return seg
def text(self, names):
    t = time.perf_counter(); out = _text(self, names); marks["text"] += time.perf_counter() - t
    return out
S.create_segmenter, ClipLogitsModel.text_embeddings = create, text
from dslo.cli import main
t0 = time.perf_counter(); code = main(sys.argv[1:]); t1 = time.perf_counter()
print(json.dumps({"code": code, "wall": t1 - t0, "text": marks["text"],
                  "loaded": None if marks["loaded"] is None else marks["loaded"] - t0}))
"""

_SUMMARY = re.compile(r"(\d+) segmented.*?([\d.]+) img/s \(([\d.]+) s; Ray start-up ([\d.]+) s, "
                      r"first image started after ([\d.]+) s\)")
_WORKER = re.compile(r"worker (\S+): (\d+) image\(s\), ([\d.]+) img/s while busy, busy (\d+)% of ([\d.]+) s")


def random_clip_b16(folder: Path) -> Path:
    """A CLIP B/16 with random weights (real architecture) saved as a transformers folder."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from dslo.models import get_entry

    torch.manual_seed(0)
    model = get_entry("clip-b16").build_random(device="cpu", dtype="float32")
    tmp = folder.with_name(folder.name + ".tmp")
    model.model.save_pretrained(tmp)
    model.tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def run_engine(label: str, images: Path, clip: Path, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-c", _RUNNER, "segment", str(images), "--model", "offline", "--logits",
           str(clip), "--classes-file", str(CAMVID / "classes.txt"), "-o", str(out), "--device", "cpu",
           "-q", *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"[scale] {label} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    marks = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    if proc.returncode != 0 or marks.get("code") != 0:
        raise RuntimeError(f"{label} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    n = len(list(out.rglob("*.json")))
    row = {"engine": label, "images": n, "wall_s": marks["wall"], "text_s": marks["text"]}
    if marks["loaded"] is not None:  # local
        row.update(startup_s=marks["loaded"], ray_startup_s=0.0)
        steady = marks["wall"] - marks["loaded"] - marks["text"]
        row.update(steady_img_s=n / steady, worker_s_per_img=steady / n, overhead_pct=0.0)
    else:
        m = _SUMMARY.search(proc.stderr)
        workers = [w.groups() for w in _WORKER.finditer(proc.stderr)]
        if not m or not workers:
            raise RuntimeError(f"{label}: no summary in\n{proc.stderr[-3000:]}")
        span = [float(s) for *_, s in workers]
        busy = [int(pct) / 100.0 * sp for (_, _, _, pct, _), sp in zip(workers, span, strict=False)]  # the rate is rounded
        row.update(startup_s=float(m.group(4)) + float(m.group(5)), ray_startup_s=float(m.group(4)),
                   steady_img_s=n / max(span), worker_s_per_img=sum(busy) / n,
                   overhead_pct=100.0 * (sum(span) - sum(busy)) / sum(busy),
                   workers={w[0]: {"images": int(w[1]), "busy_pct": int(w[3]), "span_s": float(w[4])}
                            for w in workers})
    row["img_s"] = n / marks["wall"]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--clip", default="b16", help="b16 (random-weight CLIP B/16), tiny, or a CLIP folder")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "scale_cpu")
    args = ap.parse_args(argv)

    cache = bench_cache_dir()
    if args.clip == "b16":
        clip = random_clip_b16(cache / "clip-b16-random")
    elif args.clip == "tiny":
        from dslo.testing import make_tiny_clip

        clip = make_tiny_clip(cache / "clip-tiny")
    else:
        clip = Path(args.clip)
    frames = sorted((CAMVID / "test").glob("*.png"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="dslo-scale-") as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        for i in spaced_subset(len(frames), args.images):
            os.symlink(frames[i], images / frames[i].name)
        rows.append(run_engine("local", images, clip, Path(tmp) / "local", []))
        for w in args.workers:
            rows.append(run_engine(f"ray, {w} worker{'s' * (w > 1)}", images, clip, Path(tmp) / f"ray{w}",
                                   ["--engine", "ray", "--workers", str(w)]))
        ref = Path(tmp) / "local"
        for w in args.workers:  # the engines must agree before their speeds mean anything
            other = Path(tmp) / f"ray{w}"
            same = all((other / p.relative_to(ref)).read_bytes() == p.read_bytes()
                       for p in ref.rglob("*.png"))
            rows[args.workers.index(w) + 1]["masks_identical_to_local"] = same

    table = markdown_table(
        ["engine", "images", "start-up s", "of it Ray s", "text s", "img/s", "steady img/s",
         "s/img in worker", "Ray overhead %"],
        [[r["engine"], r["images"], r["startup_s"], r["ray_startup_s"], r["text_s"], r["img_s"],
          r["steady_img_s"], r["worker_s_per_img"], r["overhead_pct"]] for r in rows], fmt="{:.2f}")
    meta = {"images": args.images, "clip": args.clip, "cpus": os.cpu_count(),
            "machine": platform.platform(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    write_json(args.out.with_suffix(".json"), {"meta": meta, "rows": rows})
    atomic_write_text(args.out.with_suffix(".md"), table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

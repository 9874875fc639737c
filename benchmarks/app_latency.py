"""How long ``dslo app`` takes to answer, before and after it kept the model passes (issue 22).

The app service answers a page request: read the image, segment, write the mask and JSON, draw
the views. Before, every request ran the model passes again; now the service keeps the last
images' encodings (:meth:`dslo.segmenter.Segmenter.encode`), so changing θ, the mode, the
background or the classes of the same image only decodes. Measured on the service itself
(``AppService.segment``), same process, same models:

- ``new image``: the first request for an image (model passes + decode), as before and after;
- ``θ change, before``: the same request with the kept encodings dropped first: what the app did
  on every request before;
- ``θ change, after``: θ changed on a kept image: decode only.

Models: the ``offline`` layout, a CLIP B/16 of the real architecture with random weights (CLIP
weights cannot be downloaded here) and the real focus-s14 attention; the CamVid timing frame
(480×360). Times are the median of ``--repeat`` requests.

    python -m benchmarks.app_latency [--repeat 5] [--out benchmarks/results/app_latency_cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS_DIR, TIMING_IMAGE, markdown_table, write_json


def _service(work: Path):
    from dslo.app.service import AppService
    from dslo.models import create_attention_model, get_entry
    from dslo.request import ModelChoice
    from dslo.segmenter import Segmenter

    torch.manual_seed(0)
    logits = get_entry("clip-b16").build_random(device="cpu", dtype="float32")
    seg = Segmenter(logits, create_attention_model("focus-s14", device="cpu"), mode="mv",
                    info={"preset": "offline", "logits": "clip-b16 (random init)", "attention": "focus-s14"})
    return AppService(ModelChoice("offline"), work_dir=work, log=lambda m: None, segmenter=seg)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    out = fn()
    assert out.ok, out.message
    return 1000.0 * (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "app_latency_cpu")
    args = ap.parse_args()
    classes = "sky, building, pole, road, pavement, tree, sign, fence, car, pedestrian, bicyclist"
    with tempfile.TemporaryDirectory() as tmp:
        svc = _service(Path(tmp))
        svc.segment(TIMING_IMAGE, classes, "mv", "none", 0.5, 0.5)  # warm-up, text embeddings
        new, before, after = [], [], []
        thetas = [0.3, 0.4, 0.6, 0.7, 0.45, 0.55, 0.35, 0.65]
        for i in range(args.repeat):
            svc._encodings.clear()
            new.append(_timed(lambda: svc.segment(TIMING_IMAGE, classes, "mv", "none", 0.5, 0.5)))
            svc._encodings.clear()  # what the app did on every request before
            before.append(_timed(lambda i=i: svc.segment(TIMING_IMAGE, classes, "mv", "none", 0.5,
                                                         thetas[i % len(thetas)])))
            passes = svc.model_passes
            after.append(_timed(lambda i=i: svc.segment(TIMING_IMAGE, classes, "mv", "none", 0.5,
                                                        thetas[(i + 1) % len(thetas)])))
            assert svc.model_passes == passes, "a θ change ran the models"
    rows = [
        {"request": "new image (model passes + decode)", "ms": statistics.median(new)},
        {"request": "θ change, before (model passes again)", "ms": statistics.median(before)},
        {"request": "θ change, after (decode only)", "ms": statistics.median(after)},
    ]
    speedup = statistics.median(before) / statistics.median(after)
    table = markdown_table(["request", "ms"], [[r["request"], f"{r['ms']:.0f}"] for r in rows])
    text = (f"{table}\nθ change: {speedup:.1f}x faster ({args.repeat} requests each, median; "
            f"{torch.get_num_threads()} threads)\n")
    print(text, end="")
    write_json(args.out.with_suffix(".json"), {"rows": rows, "speedup": speedup, "repeat": args.repeat,
                                               "threads": torch.get_num_threads()})
    args.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()

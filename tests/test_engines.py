"""The engines below the command line: one request, one input rule, one per-image step with one
failure policy. The local engine and the Ray engine's worker are fed the same inputs, including
every kind of failing image, and must write the same files and report the same failures (the real
Ray runs are in test_scale_ray.py; here the worker's stages run in this process)."""

import json
from pathlib import Path

import numpy as np
import pytest
from standins import ColourAffinity, ColourLogits, colour_picture, file_tree, save_image

from dslo.engines.local import run_local
from dslo.engines.ray.worker import Job, SegmentWorker, read_sources
from dslo.engines.step import IMAGE_FAILURES, failure_message
from dslo.engines.summary import FAILURES_FILE, write_failures
from dslo.inputs import discover
from dslo.request import ModelChoice, OutputOptions, SegmentRequest
from dslo.segmenter import Segmenter

# Image heights that make the stand-in's model passes fail, as a real model or device can.
FAILING_HEIGHTS = {41: TypeError("expected a float tensor, got NoneType"),
                   42: MemoryError(),
                   43: RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")}


class FlakySegmenter(Segmenter):
    """The colour stand-ins, failing on the images whose height is in FAILING_HEIGHTS."""

    def __init__(self):
        super().__init__(ColourLogits(), ColourAffinity(), max_side=None, info={"preset": "colour"})

    def encode_batch(self, images, batch_size=None):
        for im in images:
            exc = FAILING_HEIGHTS.get(np.asarray(im).shape[0])
            if exc is not None:
                raise exc
        return super().encode_batch(images, batch_size)


@pytest.fixture
def mixed_inputs(tmp_path):
    """Two good pictures, one per failing model kind, and four unreadable files."""
    root = tmp_path / "in"
    img, _ = colour_picture(48, 64)
    save_image(root / "good1.png", img)
    save_image(root / "sub" / "good2.png", img[:, ::-1].copy())
    for h in FAILING_HEIGHTS:
        save_image(root / f"fails{h}.png", img[:h])
    data = (root / "good1.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 3])
    (root / "text.png").write_text("not an image")
    (root / "empty.jpg").write_bytes(b"")
    (root / "bad.gif").write_bytes(b"GIF89a" + b"\0" * 20)
    return root


def _request(out: Path, batch_size: int) -> SegmentRequest:
    return SegmentRequest.create("red, green, blue", None, ModelChoice("offline", logits="colour", device="cpu"),
                                 OutputOptions(out, ("mask", "json", "scores")), batch_size)


def _ray_worker_run(request: SegmentRequest, items, segmenter) -> list[tuple[str, str]]:
    """The Ray engine's two stages, in this process: read tasks then the worker, one batch of
    ``batch_size`` at a time (as Ray Data hands them); returns the failures the driver collects."""
    worker = SegmentWorker(Job(request), segmenter=segmenter)
    failures = []
    B = request.batch_size
    for s in range(0, len(items), B):
        chunk = items[s:s + B]
        batch = read_sources({"source": np.array([it.source for it in chunk], dtype=object),
                              "name": np.array([it.name for it in chunk], dtype=object),
                              "stem": np.array([it.stem for it in chunk], dtype=object)})
        rows = worker(batch)
        failures += [(n, e) for n, st, e in zip(rows["image"], rows["status"], rows["error"], strict=True)
                     if st == "failed"]
    write_failures(request.output.location, failures)
    return failures


@pytest.mark.parametrize("batch_size", [1, 3])
def test_both_engines_fail_the_same_images_the_same_way(tmp_path, mixed_inputs, batch_size):
    items, errors = discover([str(mixed_inputs)])
    assert errors == [] and len(items) == 9
    local = run_local(_request(tmp_path / "local", batch_size), items, progress=False, log=lambda m: None,
                      segmenter=FlakySegmenter())
    ray_failures = _ray_worker_run(_request(tmp_path / "ray", batch_size), items, FlakySegmenter())

    # the same files, byte for byte (the failures file included)
    tree = file_tree(tmp_path / "local")
    assert tree == file_tree(tmp_path / "ray")
    for rel in tree:
        if rel.endswith(".pt"):
            continue  # torch.save embeds a random record id; its tensors are compared below
        assert (tmp_path / "local" / rel).read_bytes() == (tmp_path / "ray" / rel).read_bytes(), rel
    import torch

    for rel in (r for r in tree if r.endswith(".pt")):
        a, b = (torch.load(tmp_path / e / rel, weights_only=True) for e in ("local", "ray"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k]
                                            for k in a)
    assert sorted(r for r in tree if r.endswith(".png")) == ["good1.png", "sub/good2.png"]
    # every failing kind reported once, with the same one-line reason by both engines
    assert local.done == 2 and sorted(local.failed) == sorted(ray_failures)
    reasons = dict(local.failed)
    by_name = {Path(n).name: r for n, r in reasons.items()}
    assert by_name["fails41.png"] == "TypeError: expected a float tensor, got NoneType"
    assert by_name["fails42.png"] == "out of memory (allocation failed); try a smaller --max-side"
    assert by_name["fails43.png"].startswith("RuntimeError: CUDA out of memory") and "--max-side" in by_name["fails43.png"]
    for name in ("truncated.png", "text.png", "empty.jpg", "bad.gif"):
        assert by_name[name].startswith("cannot read image ") and name in by_name[name]
    lines = [json.loads(x) for x in (tmp_path / "local" / FAILURES_FILE).read_text().splitlines()]
    assert {d["image"]: d["error"] for d in lines} == reasons


def test_failure_policy_covers_image_and_model_errors_only():
    for exc in (ValueError("x"), OSError("x"), MemoryError(), TypeError("x"), RuntimeError("x")):
        assert isinstance(exc, IMAGE_FAILURES)
    assert not isinstance(KeyError("x"), IMAGE_FAILURES) or isinstance(KeyError("x"), LookupError)
    assert failure_message(ValueError("first line\nsecond")) == "ValueError: first line"


def test_a_bug_is_not_swallowed_as_an_image_failure(tmp_path, mixed_inputs):
    class Buggy(FlakySegmenter):
        def encode_batch(self, images, batch_size=None):
            raise ZeroDivisionError("a bug")

    items, _ = discover([str(mixed_inputs / "good1.png")])
    with pytest.raises(ZeroDivisionError):
        run_local(_request(tmp_path / "out", 1), items, progress=False, log=lambda m: None, segmenter=Buggy())

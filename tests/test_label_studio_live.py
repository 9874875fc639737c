"""Label Studio as a user runs it: a real Label Studio server (SQLite, loopback), a project with a
BrushLabels config made through label-studio-sdk, CamVid images uploaded, the real `dslo
label-studio` backend (offline preset: focus-s14 attention and a tiny random CLIP) connected, and
predictions requested by Label Studio itself; then the bulk import file of `dslo segment --format
label-studio`, imported by Label Studio's importer; and the task page in headless Chromium.

Everything read back through Label Studio's API and decoded with its SDK's brush decoder must
equal `dslo segment`'s masks pixel for pixel. Needs label-studio, label-studio-sdk (the test
extra) and, for the page, Debian's chromium: skipped without them, except in CI (CI=true), where
a missing part is a failure.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from label_studio_live import (
    CAMVID_CLASSES,
    TOKEN,
    brush_config,
    dslo_backend,
    images,
    label_studio,
    model_args,
    screenshot,
    upload,
)
from PIL import Image

from dslo.cli import main

IN_CI = os.environ.get("CI", "").lower() == "true"
pytestmark = pytest.mark.slow


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        if IN_CI:
            pytest.fail(f"{module} missing (CI must run the Label Studio tests: pip install -e '.[test]')")
        pytest.skip(f"{module} not installed")


@pytest.fixture(scope="module")
def live(tmp_path_factory, clip_dir):
    """(Label Studio URL, SDK client, backend URL, dslo segment's output folder, image folder)."""
    for m in ("label_studio", "label_studio_sdk"):
        _require(m)
    from label_studio_sdk import LabelStudio

    work = tmp_path_factory.mktemp("label-studio")
    folder = work / "files" / "camvid"
    images(folder, 3)
    config = work / "config.xml"
    config.write_text(brush_config(CAMVID_CLASSES))
    out = work / "segmented"
    # the reference: dslo segment with the backend's settings, and the bulk import file
    assert main(["segment", str(folder), "--classes", ", ".join(CAMVID_CLASSES), "-o", str(out), "--quiet",
                 "--format", "label-studio", "--url-prefix", "/data/local-files/?d=camvid/",
                 "--label-config", str(config), *model_args(clip_dir)]) == 0
    with label_studio(work, work / "files") as ls_url, \
            dslo_backend(model_args(clip_dir), ls_url, work / "backend.log") as backend_url:
        yield ls_url, LabelStudio(base_url=ls_url, api_key=TOKEN), backend_url, out, folder


def _check_prediction(pred_result: list, mask_png: Path) -> None:
    """The regions of one prediction, decoded by Label Studio's SDK, against dslo segment's mask."""
    from label_studio_sdk.converter.brush import decode_rle

    ids = np.array(Image.open(mask_png))
    covered = np.zeros(ids.shape, bool)
    assert pred_result, "an empty prediction"
    for region in pred_result:
        h, w = region["original_height"], region["original_width"]
        assert (h, w) == ids.shape and region["from_name"] == "label" and region["to_name"] == "image"
        mask = decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] == 255
        cid = CAMVID_CLASSES.index(region["value"]["brushlabels"][0])
        assert np.array_equal(mask, ids == cid)
        covered |= mask
    assert covered.all()


def test_label_studio_gets_dslo_segments_masks_from_the_backend(live):
    ls_url, ls, backend_url, out, folder = live
    project = ls.projects.create(title="dslo backend", label_config=brush_config(CAMVID_CLASSES))
    paths = sorted(folder.glob("*.png"))
    upload(ls_url, project.id, paths)  # /data/upload/... URLs: the backend fetches them with the API key
    backend = ls.ml.create(project=project.id, url=backend_url, title="dslo", is_interactive=False)
    assert backend.state == "CO" and backend.model_version.startswith("dslo-")  # CONNECTED after /setup
    ls.actions.create(id="retrieve_tasks_predictions", project=project.id, selected_items={"all": True, "excluded": []})
    preds = ls.predictions.list(project=project.id)
    assert len(preds) == len(paths)
    for pred in preds:
        task = ls.tasks.get(pred.task)
        name = task.data["image"].rsplit("/", 1)[-1].split("-", 1)[1]  # upload names: HASH-NAME
        assert pred.model_version == backend.model_version and 0 < pred.score <= 1
        _check_prediction(pred.result, out / (Path(name).stem + ".png"))


def test_label_studio_imports_the_bulk_file_of_dslo_segment(live, tmp_path):
    ls_url, ls, _, out, folder = live
    project = ls.projects.create(title="dslo bulk", label_config=brush_config(CAMVID_CLASSES))
    # Label Studio serves /data/local-files/?d=camvid/... only under a local storage of the project
    ls.import_storage.local.create(project=project.id, path=str(folder), use_blob_urls=True, title="camvid")
    tasks = json.loads((out / "dslo-label-studio-tasks.json").read_text())
    ls.projects.import_tasks(id=project.id, request=tasks)
    stored = list(ls.tasks.list(project=project.id))
    assert len(stored) == len(tasks)
    for task in stored:
        (pred,) = ls.predictions.list(task=task.id)
        name = task.data["image"].rsplit("/", 1)[-1]
        _check_prediction(pred.result, out / (Path(name).stem + ".png"))
        assert pred.model_version.startswith("dslo-")
    if os.path.isfile("/usr/bin/chromium") or IN_CI:
        _require("playwright.sync_api")
        text = screenshot(ls_url, project.id, stored[0].id, tmp_path / "task.jpg")
        assert "dslo-" in text  # the prediction's tab names its model version
        with Image.open(tmp_path / "task.jpg") as im:
            assert im.size[0] >= 1000

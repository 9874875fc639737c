"""dslo app as a user meets it: `dslo app` in a subprocess (offline focus-s14 attention, a tiny
random CLIP loaded through the real loader), a real headless Chromium, and the Gradio client.

The CLIP is random, so the labels mean nothing; what is checked is the product around them: the
page, the in-page errors, the downloads (byte for byte what `dslo segment` writes), the queue.
Needs Debian's chromium (/usr/bin/chromium) and Playwright: skipped without them, except in CI
(CI=true), where a missing browser is a failure.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from app_browser import (
    CAMVID_IMAGE,
    CHROMIUM,
    FAST,
    chromium,
    image_shown,
    pick_example,
    running_app,
    segment_in_page,
    table_rows,
)
from PIL import Image

IN_CI = os.environ.get("CI", "").lower() == "true"


def _require(ok: bool, why: str) -> None:
    if not ok:
        if IN_CI:
            pytest.fail(f"{why} (CI must run the browser tests: .ci/run installs what they need)")
        pytest.skip(why)


def _playwright_available() -> bool:
    try:
        import gradio  # noqa: F401
        import gradio_client  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def browser_parts():
    _require(CHROMIUM.is_file(), f"{CHROMIUM} not installed (apt-get install chromium)")
    _require(_playwright_available(), 'playwright, gradio or gradio_client missing (pip install -e ".[test]")')


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two real CamVid images when ../shared/data is here; otherwise (a clean CI machine without
    the data) two synthetic street-like pictures, so the browser path still runs."""
    folder = tmp_path_factory.mktemp("images")
    if CAMVID_IMAGE.is_file():
        second = sorted(p for p in CAMVID_IMAGE.parent.glob("*.png") if p != CAMVID_IMAGE)[0]
        return [Path(shutil.copy(p, folder / p.name)) for p in (CAMVID_IMAGE, second)]
    out = []
    for i, horizon in enumerate((150, 190)):
        img = np.zeros((360, 480, 3), np.uint8)
        img[:horizon] = (128, 128, 128)
        img[horizon:260] = (128, 0, 0)
        img[260:] = (128, 64, 128)
        out.append(folder / f"street{i}.png")
        Image.fromarray(img).save(out[-1])
    return out


@pytest.fixture(scope="module")
def image(images):
    return images[0]


@pytest.fixture(scope="module")
def model_args(clip_dir):
    return ["--model", "offline", "--logits", str(clip_dir), "--device", "cpu", *FAST]


@pytest.fixture(scope="module")
def app(model_args, images, tmp_path_factory):
    log = tmp_path_factory.mktemp("app") / "app.log"
    with running_app([*model_args, "--examples", str(images[0].parent)], log) as url:
        yield url, log


@pytest.fixture(scope="module")
def browser():
    with chromium() as ctx:
        yield ctx


def _dslo_segment(image: Path, classes: str, model_args: list[str], out: Path) -> Path:
    """What `dslo segment IMAGE` run beside the image writes, as a user would run it."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src, HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, "-m", "dslo", "segment", image.name, "--classes", classes,
                    *model_args, "--mode", "mv", "--set", "nms_threshold=0.5", "-o", str(out), "-q"],
                   cwd=image.parent, env=env, check=True, capture_output=True)
    return out


def test_segment_in_the_browser_after_an_error(app, browser, images, model_args, tmp_path):
    """An uploaded image with empty classes: the error is in the page. Then a valid request in the
    same page on an example image: overlay shown, table of the classes summing to 100 %, downloads
    equal to `dslo segment`'s files."""
    url, _ = app
    page = browser.new_page()
    page.goto(url)
    status = segment_in_page(page, "  ", images[0])
    assert status.startswith("Error:") and "no classes given" in status

    image = images[1]  # picked from the examples (--examples DIR) this time
    pick_example(page, image.name)
    classes = "sky, road, car, building"
    status = segment_in_page(page, classes)
    assert status.startswith(f"Segmented {image.name}"), status
    assert image_shown(page, "dslo-overlay")
    assert image_shown(page, "dslo-coarse") and image_shown(page, "dslo-seeds")
    assert page.locator("#dslo-heat img").count() >= 1

    rows = table_rows(page)
    assert [r[0] for r in rows] == ["sky", "road", "car", "building"]
    assert sum(float(r[2]) for r in rows) == pytest.approx(100.0, abs=0.05)

    with page.expect_download() as dl:
        page.locator("#dslo-mask").click()
    mask_path = tmp_path / "mask.png"
    dl.value.save_as(mask_path)
    with page.expect_download() as dl:
        page.locator("#dslo-json").click()
    json_path = tmp_path / "result.json"
    dl.value.save_as(json_path)

    mask = Image.open(mask_path)
    assert mask.mode == "P" and mask.size == Image.open(image).size
    ref = _dslo_segment(image, classes, model_args, tmp_path / "cli")
    assert mask_path.read_bytes() == (ref / f"{image.stem}.png").read_bytes()
    assert json_path.read_bytes() == (ref / f"{image.stem}.json").read_bytes()
    assert sum(s["area"] for s in json.loads(json_path.read_text())["segments"]) == mask.size[0] * mask.size[1]
    page.close()


def test_two_client_requests_at_once_share_one_model_load(app, image, tmp_path):
    from gradio_client import Client, handle_file

    url, log = app
    results: dict[str, tuple] = {}

    def call(classes: str) -> None:
        client = Client(url, verbose=False)
        results[classes] = client.predict(handle_file(str(image)), classes, "op", "threshold", 0.3, 0.5,
                                          api_name="/segment")

    threads = [threading.Thread(target=call, args=(c,)) for c in ("sky, road", "car, tree, sign")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert set(results) == {"sky, road", "car, tree, sign"}
    for classes, (status, _overlay, table, mask, doc, *_) in results.items():
        assert status.startswith("Segmented"), status
        names = [r[0] for r in table["data"]]
        assert names == ["background"] + [c.strip() for c in classes.split(",")]
        assert Image.open(mask).size == Image.open(image).size
        assert json.loads(Path(doc).read_text())["model"]["mode"] == "op"
    assert len(re.findall(r"models loaded", log.read_text())) == 1

    # A file that is not an image: a message, and the app goes on serving.
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    status = Client(url, verbose=False).predict(handle_file(str(text)), "car", api_name="/segment")[0]
    assert "notes.txt is not an image dslo can read" in status


def test_missing_weights_show_the_error_in_the_page(browser, image, tmp_path):
    """No CLIP on the machine: the app starts anyway and the page says why it cannot segment."""
    env_home = tmp_path / "empty-hf-home"
    env_home.mkdir()
    old = os.environ.get("HF_HOME")
    os.environ["HF_HOME"] = str(env_home)  # inherited by the app: no cached clip-b16 there
    try:
        with running_app(["--model", "offline", "--device", "cpu"], tmp_path / "app.log") as url:
            page = browser.new_page()
            page.goto(url)
            banner = page.locator("#dslo-load-error").inner_text()
            assert "WeightsNotFoundError" in banner and "--logits DIR" in banner
            status = segment_in_page(page, "car, road", image)
            assert "WeightsNotFoundError" in status and "--logits DIR" in status
            assert "Traceback" not in page.content()
            page.close()
    finally:
        if old is None:
            os.environ.pop("HF_HOME")
        else:
            os.environ["HF_HOME"] = old

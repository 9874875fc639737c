"""dslo app without a browser: the request logic (AppService), the class box, the head's views and
the install hint. A tiny random CLIP (real loader) with CLIP's own attention keeps these to
seconds; the browser and the real CLI are in test_app_browser.py."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dslo.app.service import AppService, background_spec, parse_class_box
from dslo.classes import read_classes_file
from dslo.request import ModelChoice


@pytest.fixture(scope="module")
def service(clip_dir, tmp_path_factory):
    models = ModelChoice("offline", logits=str(clip_dir), attention="clip", device="cpu", max_side=64)
    return AppService(models, work_dir=tmp_path_factory.mktemp("work"), log=lambda msg: None)


def _variant(service, mode, theta):
    """The loaded models as a segmenter of their own with this mode and θ: what `dslo segment
    --mode MODE --set nms_threshold=θ` would build (the reference the app must equal)."""
    from dslo.segmenter import Segmenter

    seg = service.segmenter
    return Segmenter(seg.logits_model, seg.attention_model, mode=mode,
                     head=seg.head.replace(nms_threshold=theta), max_side=seg.max_side, info=seg.info)


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    """A 96 x 128 picture (larger than the service's max side of 64) saved as PNG."""
    rng = np.random.default_rng(0)
    img = np.zeros((96, 128, 3), np.uint8)
    img[:48] = (200, 40, 40)
    img[48:, :64] = (40, 200, 40)
    img[48:, 64:] = (40, 40, 200)
    img = np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "street.png"
    Image.fromarray(img).save(path)
    return path


# --- the class box: exactly the CLI's syntax ------------------------------------------------------

def test_one_line_is_the_classes_option():
    assert parse_class_box("car, road ,  sky") == [["car"], ["road"], ["sky"]]


def test_several_lines_are_a_pasted_classes_file(tmp_path):
    text = "# street\nperson, man, woman\n\nroad\ncar, vehicle\n"
    f = tmp_path / "classes.txt"
    f.write_text(text)
    assert parse_class_box(text) == read_classes_file(f) == [
        ["person", "man", "woman"], ["road"], ["car", "vehicle"]]


@pytest.mark.parametrize("text, match", [
    ("", "no classes given"), ("   \n# only a comment\n", "no classes given"),
    ("car, , road", "empty"), ("car, Car", "duplicate class name 'Car'"),
    ("car\nroad\ncar", "duplicate class name 'car'"),
])
def test_bad_class_boxes_say_what_is_wrong(text, match):
    with pytest.raises(ValueError, match=match):
        parse_class_box(text)


def test_background_choice_is_the_cli_value():
    assert background_spec("none", 0.3) == "none"
    assert background_spec("stuff", 0.3) == "stuff"
    assert background_spec("threshold", 0.3) == "0.3"
    assert background_spec("0.4", None) == "0.4"  # the CLI's own form passes through


# --- requests ---------------------------------------------------------------------------------------

def test_a_request_gives_the_files_of_dslo_segment(service, picture):
    out = service.segment(picture, "red, green, blue", "op", "none", 0.5, 0.5)
    assert out.ok, out.message
    assert sum(r[1] for r in out.table) == 96 * 128
    assert sum(r[2] for r in out.table) == pytest.approx(100, abs=0.05)
    assert [r[0] for r in out.table] == ["red", "green", "blue"]
    # The same files `dslo segment street.png` writes (write_outputs), for the same settings.
    seg = _variant(service, "op", 0.5)
    ref = seg.predict(picture, "red, green, blue")
    mask = Image.open(out.files["mask"])
    assert mask.mode == "P" and mask.size == (128, 96)
    np.testing.assert_array_equal(np.array(mask), ref.labels)
    doc = json.loads(out.files["json"].read_text())
    # stamped with the request `dslo segment --mode op --set nms_threshold=0.5` records
    request = service.request([["red"], ["green"], ["blue"]], "none", "op", 0.5).record()
    assert doc.pop("request") == json.loads(json.dumps(request)) and doc.pop("request_id")
    assert doc == json.loads(json.dumps(ref.to_dict(image_name="street.png")))
    assert doc["model"]["mode"] == "op" and doc["model"]["head"]["nms_threshold"] == 0.5
    # Larger than max_side: said so; the mask and the table are at full size anyway.
    assert "models saw it at 64×48" in out.message
    assert out.overlay.size[1] == 96
    assert out.coarse is not None and out.seeds is not None
    assert [c for _, c in out.heat] == [ref.class_names[i] for i in ref.score_class_ids]


def test_settings_of_a_request_do_not_leak_into_the_next(service, picture):
    a = service.segment(picture, "red, green", "mv", "threshold", 0.9, 0.3)
    b = service.segment(picture, "red, green", "mv", "none", 0.5, 0.5)
    assert a.ok and b.ok
    da, db = (json.loads(o.files["json"].read_text()) for o in (a, b))
    assert da["classes"][0] == "background" and da["model"]["head"]["nms_threshold"] == 0.3
    assert db["classes"] == ["red", "green"] and db["model"]["head"]["nms_threshold"] == 0.5
    assert service.segmenter.head.nms_threshold == 0.5  # the loaded segmenter is never changed


@pytest.mark.parametrize("image, classes, match", [
    (None, "car", "no image"),
    ("PICTURE", "", "no classes given"),
    ("PICTURE", "car, road, car", "duplicate class name"),
    ("TEXT", "car", "notes.txt is not an image dslo can read"),
    ("TRUNCATED", "car", "cannot read broken.png: image file is truncated"),
    ("PICTURE", "background, car", "named 'background'"),  # with a background policy
])
def test_bad_requests_get_a_message_and_the_app_keeps_serving(service, picture, tmp_path, image,
                                                              classes, match):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    broken = tmp_path / "broken.png"
    data = picture.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    path = {"PICTURE": picture, "TEXT": text, "TRUNCATED": broken, None: None}[image]
    out = service.segment(path, classes, "mv", "stuff", 0.5, 0.5)
    assert not out.ok and out.message.startswith("**Error:**") and match in out.message
    assert "Traceback" not in out.message
    assert service.segment(picture, "red, green", "mv", "none", 0.5, 0.5).ok


def test_a_bad_setting_is_a_message(service, picture):
    out = service.segment(picture, "red, green", "xx", "none", 0.5, 0.5)
    assert not out.ok and "unknown head mode 'xx'" in out.message
    out = service.segment(picture, "red, green", "mv", "sometimes", 0.5, 0.5)
    assert not out.ok and "unknown background" in out.message
    out = service.segment(picture, "red, green", "mv", "none", 0.5, 1.5)
    assert not out.ok and "nms_threshold" in out.message


def test_missing_weights_still_serve_the_error(tmp_path, picture, monkeypatch):
    import dslo.models
    monkeypatch.setattr(dslo.models, "weights_available", lambda name: False)
    svc = AppService(ModelChoice("offline"), work_dir=tmp_path, log=lambda m: None)
    assert svc.segmenter is None and "WeightsNotFoundError" in svc.load_error
    out = svc.segment(picture, "car", "mv", "none", 0.5, 0.5)
    assert not out.ok and "--logits DIR" in out.message and "make_tiny_clip" in out.message


def test_an_unexpected_failure_is_one_line_and_logged(tmp_path, picture):
    logged = []

    class Broken:
        head, max_side, background, info = None, None, None, {}
        logits_model = attention_model = None

        def encode(self, image):
            return 1 / 0

        decode = encode

    svc = AppService(ModelChoice("offline"), work_dir=tmp_path, log=logged.append, segmenter=Broken())
    out = svc.segment(picture, "car", "mv", "none", 0.5, 0.5)
    assert out.message.startswith("**Error:** an internal error (ZeroDivisionError")
    assert "Traceback" in logged[-1] and "Traceback" not in out.message


# --- how the head saw it: the head's own functions on the head's own input --------------------------

def test_views_follow_the_head(service, picture):
    from dslo.app import views
    from dslo.head import nms

    seg = _variant(service, "mv", 0.5)
    res = seg.predict(picture, "red, green, blue")
    assert res.logits.shape[0] == 3 and res.grid is not None
    L = torch.nn.functional.interpolate(res.logits[None].float(), size=res.grid, mode="bilinear",
                                        align_corners=False)[0]
    _, keep = nms(L, 40.0, 0.5)
    pic, seeded = views.seeds(res)
    assert seeded == pytest.approx(keep.any(0).float().mean().item())
    assert pic.size == (64, 48)  # the image as the models saw it
    coarse = views.coarse_argmax(res)
    assert coarse.size[1] == 48 and coarse.size[0] > 64  # with its legend
    heat = views.heat_maps(res)
    assert len(heat) == len(res.score_class_ids) and all(im.size == (64, 48) for im, _ in heat)


def test_class_table_counts_every_class():
    labels = np.array([[0, 0, 2], [2, 2, 2]])
    assert __import__("dslo.app.views", fromlist=["x"]).class_table(labels, ["a", "b", "c"]) == [
        ["a", 2, 33.33], ["b", 0, 0.0], ["c", 4, 66.67]]


# --- the page ------------------------------------------------------------------------------------------

def test_the_page_builds_shows_a_load_error_and_passes_uploads_as_they_are(tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    import dslo.app
    import dslo.models
    from dslo.app.page import build_page
    package = Path(dslo.app.__file__).parent
    before = sorted(package.iterdir())
    monkeypatch.setattr(dslo.models, "weights_available", lambda name: False)
    svc = AppService(ModelChoice("offline"), work_dir=tmp_path, log=lambda m: None)
    page = build_page(svc, examples=[], start_mode="op")
    assert sorted(package.iterdir()) == before  # nothing written beside the package (no .pyi)
    by_id = {getattr(b, "elem_id", None): b for b in page.blocks.values()}
    assert by_id["dslo-mode"].value == "op"  # `dslo app --mode op`
    assert "WeightsNotFoundError" in by_id["dslo-load-error"].value
    image = by_id["dslo-image"]
    upload = tmp_path / "notes.txt"
    upload.write_text("not an image")
    # The uploaded file itself reaches the handler (which reports it), not Gradio's decoder.
    assert image.preprocess(image.data_model(path=str(upload), orig_name="notes.txt")) == str(upload)


# --- the optional extra --------------------------------------------------------------------------------

def test_only_the_page_imports_gradio():
    """The base install stays light: the CLI (with `dslo app` registered), the request logic and the
    views load without importing Gradio."""
    import subprocess

    code = ("import sys, dslo, dslo.cli, dslo.app.service, dslo.app.views; dslo.cli.build_parser(); "
            "print('gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_without_gradio_dslo_app_prints_the_install_hint(monkeypatch, capsys):
    from dslo.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now raises ImportError
    assert main(["app", "--model", "offline"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == 'dslo app: error: dslo app needs Gradio, an optional extra: pip install "dslo[app]"'


def test_a_busy_port_fails_before_the_models_load(capsys):
    import socket

    from dslo.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["app", "--model", "offline", "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dslo app: error: cannot listen on 127.0.0.1:{port}") and "--port" in err


def test_a_theta_mode_or_class_change_runs_no_model_pass(service, picture):
    """The service keeps the image's encoding: only a new image runs the models."""
    first = service.segment(picture, "red, green", "mv", "none", 0.5, 0.5)
    passes = service.model_passes
    for mode, theta, classes in (("op", 0.3, "red, green"), ("mv", 0.7, "red, green, blue"),
                                 ("op", 0.5, "blue, red")):
        out = service.segment(picture, classes, mode, "stuff", 0.5, theta)
        assert out.ok, out.message
    assert service.model_passes == passes
    assert first.ok


def test_the_mode_flag_is_the_pages_starting_mode_and_only_the_pages_modes(capsys):
    pytest.importorskip("gradio")
    from dslo.cli import main

    assert main(["app", "--model", "offline", "--mode", "none"]) == 1  # refused before any model loads
    assert "--mode none: the page offers mv, op" in capsys.readouterr().err

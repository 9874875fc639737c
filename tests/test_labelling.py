"""Pre-labels for labelling tools, checked against the tools' own code: Label Studio's SDK
decodes the brush RLE (and its encoder gives the same bytes), the CVAT SDK validates the
auto-annotation function's spec and output and decodes its masks, the CVAT archive is read back.
Every label map must equal what `dslo segment` wrote (its STEM.png) for the same image."""

import io
import json
import logging
import zipfile

import numpy as np
import pytest
from PIL import Image
from standins import colour_picture, colour_segmenter, save_image

from dslo.cli import main
from dslo.labelling.brush import brush_rle
from dslo.labelling.export import CONFIG_FILE, TASKS_FILE, export_cvat, read_output_folder
from dslo.labelling.label_config import LabelConfigError, default_label_config, parse_label_config
from dslo.request import ModelChoice, SegmentRequest

brush = pytest.importorskip("label_studio_sdk.converter.brush")

CONFIG = ('<View><Image name="img" value="$photo"/><BrushLabels name="paint" toName="img">'
          '<Label value="red"/><Label value="green, lime"/><Label value="blue"/></BrushLabels></View>')


def _ls_mask(region) -> np.ndarray:
    """A brushlabels region decoded by Label Studio's SDK: its alpha channel, (H, W)."""
    h, w = region["original_height"], region["original_width"]
    return brush.decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3]


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (96, 128), (300, 300), (40000, 2)])
def test_brush_rle_is_the_sdks_encoding(shape):
    rng = np.random.default_rng(shape[0])
    masks = [np.zeros(shape, bool), np.ones(shape, bool), rng.random(shape) > 0.5]
    blob = np.zeros(shape, bool)
    blob[shape[0] // 4: shape[0] // 2 + 1, shape[1] // 3:] = True
    for mask in masks + [blob]:
        ours = brush_rle(mask)
        assert ours == brush.mask2rle(mask.astype(np.uint8) * 255)  # byte for byte
        decoded = brush.decode_rle(ours).reshape(*shape, 4)
        assert np.array_equal(decoded[:, :, 3], mask * 255)  # a 0/255 mask: it renders
        assert (decoded == decoded[:, :, :1]).all()  # RGBA all equal, as the SDK writes


def test_label_config_is_parsed_and_checked():
    t = parse_label_config(CONFIG)
    assert (t.from_name, t.to_name, t.value, t.labels) == ("paint", "img", "photo", ("red", "green, lime", "blue"))
    assert parse_label_config(default_label_config(["a", 'b "c"'])).labels == ("a", 'b "c"')
    bad = {
        "<View><Image name='i' value='$i'/></View>": "no <BrushLabels>",
        "<View><Image name='i' value='$i'/><BrushLabels name='b' toName='x'><Label value='a'/></BrushLabels></View>":
            "not an <Image>",
        "<View><Image name='i' value='$i'/><BrushLabels name='b' toName='i'></BrushLabels></View>": "no <Label",
        "<View><Image name='i' value='$i'/><BrushLabels name='b' toName='i'><Label value='a'/></BrushLabels>"
        "<BrushLabels name='c' toName='i'><Label value='a'/></BrushLabels></View>": "--control",
        "<View><Image name='i' value='$i'/><BrushLabels name='b' toName='i'><Label value='a'/><Label value='a'/>"
        "</BrushLabels></View>": "more than once",
        '<!DOCTYPE v [<!ENTITY a "aaaa">]><View>&a;</View>': "DOCTYPE",
        "<View>": "not valid XML",
        "": "empty",
    }
    for xml, words in bad.items():
        with pytest.raises(LabelConfigError, match=words.replace("(", r"\(")):
            parse_label_config(xml)
    with pytest.raises(LabelConfigError, match="no <BrushLabels> control named 'nope'"):
        parse_label_config(CONFIG, control="nope")


@pytest.fixture
def colour_run(tmp_path, fake_models):
    """`dslo segment --format label-studio` on two colour pictures (one in a subfolder)."""
    img, _ = colour_picture(60, 90)
    save_image(tmp_path / "in" / "one.png", img)
    save_image(tmp_path / "in" / "sub" / "two.png", img[:, ::-1].copy())
    (tmp_path / "config.xml").write_text(CONFIG)
    (tmp_path / "classes.txt").write_text("red\ngreen, lime\nblue\n")  # "green, lime": one class, two names
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "in"), "--classes-file", str(tmp_path / "classes.txt"), "-o", str(out),
            "--max-side",
            "0", "--quiet", "--format", "label-studio", "--save", "mask", "--url-prefix", "/data/local-files/?d=in/",
            "--label-config", str(tmp_path / "config.xml")]
    return tmp_path, out, args


def test_segment_format_label_studio_writes_the_masks_of_dslo_segment(colour_run, capsys):
    tmp_path, out, args = colour_run
    assert main(args) == 0
    tasks = json.loads((out / TASKS_FILE).read_text())
    assert not (out / CONFIG_FILE).exists()  # the project's config was given
    assert [t["data"]["photo"] for t in tasks] == ["/data/local-files/?d=in/one.png", "/data/local-files/?d=in/sub/two.png"]
    for task, stem in zip(tasks, ["one", "sub/two"], strict=True):
        ids = np.array(Image.open(out / f"{stem}.png"))
        (pred,) = task["predictions"]
        assert pred["model_version"].startswith("dslo-")
        seen = np.zeros(ids.shape, bool)
        for region in pred["result"]:
            assert (region["from_name"], region["to_name"], region["type"]) == ("paint", "img", "brushlabels")
            assert (region["original_width"], region["original_height"], region["image_rotation"]) == (90, 60, 0)
            label = region["value"]["brushlabels"][0]
            cid = ["red", "green, lime", "blue"].index(label)
            assert np.array_equal(_ls_mask(region) == 255, ids == cid), label
            seen |= ids == cid
        assert seen.all()  # every pixel in one region: nothing dropped
    before = (out / TASKS_FILE).read_bytes()
    assert main(args) == 0  # resumed: nothing to segment, the same import file
    assert "0 segmented, 2 already done" in capsys.readouterr().err
    assert (out / TASKS_FILE).read_bytes() == before
    # the export of the existing folder writes the same tasks
    again = tmp_path / "again.json"
    assert main(["export", "label-studio", str(out), "-o", str(again), "--url-prefix", "/data/local-files/?d=in/",
                 "--label-config", str(tmp_path / "config.xml")]) == 0
    assert again.read_bytes() == before


def test_label_studio_export_refuses_what_it_cannot_map(colour_run, tmp_path):
    _, out, args = colour_run
    (tmp_path / "other.xml").write_text(CONFIG.replace("blue", "purple"))
    (tmp_path / "broken.xml").write_text("<View><Image name='i' value='$i'/></View>")
    args[-1] = str(tmp_path / "broken.xml")
    assert main(args) == 1  # refused before any model loads
    assert not out.exists()
    assert main(["segment", str(tmp_path / "in"), "--classes", "red, green, blue", "-o", str(out), "--quiet",
                 "--max-side", "0"]) == 0
    assert main(["export", "label-studio", str(out), "-o", str(tmp_path / "t.json"),
                 "--label-config", str(tmp_path / "other.xml")]) == 1
    assert not (tmp_path / "t.json").exists()


def test_cvat_archive_reads_back_as_dslo_segments_masks(tmp_path, fake_models):
    img, _ = colour_picture(60, 90)
    save_image(tmp_path / "in" / "one.png", img)
    save_image(tmp_path / "in" / "sub" / "two.png", img[::-1].copy())
    for background in ("none", "stuff"):
        out = tmp_path / f"out-{background}"
        assert main(["segment", str(tmp_path / "in"), "--classes", "red, green, blue", "-o", str(out), "--quiet",
                     "--max-side", "0", "--background", background]) == 0
        zpath = tmp_path / f"{background}.zip"
        assert main(["export", "cvat", str(out), "--output", str(zpath)]) == 0
        with zipfile.ZipFile(zpath) as z:
            lines = z.read("labelmap.txt").decode().splitlines()
            assert lines[0].startswith("# label:color_rgb")
            colours = {}
            for line in lines[1:]:
                name, rgb, _, _ = line.split(":")
                colours[tuple(int(v) for v in rgb.split(","))] = name
            assert list(colours.values())[0] == "background" and list(colours)[0] == (0, 0, 0)
            assert len(colours) == 4  # background + 3 classes, no colour shared
            assert z.read("ImageSets/Segmentation/default.txt").decode().split() == ["one", "sub/two"]
            for stem in ("one", "sub/two"):
                rgb = np.array(Image.open(io.BytesIO(z.read(f"SegmentationClass/{stem}.png"))).convert("RGB"))
                names = np.array([colours[tuple(px)] for px in rgb.reshape(-1, 3)]).reshape(rgb.shape[:2])
                ids = np.array(Image.open(out / f"{stem}.png"))
                doc = json.loads((out / f"{stem}.json").read_text())
                assert np.array_equal(names, np.array(doc["classes"])[ids])


def test_read_output_folder_refuses_mixed_requests(tmp_path, fake_models):
    img, _ = colour_picture(30, 30)
    save_image(tmp_path / "a" / "x.png", img)
    save_image(tmp_path / "b" / "y.png", img)
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "a"), "--classes", "red, green", "-o", str(out), "-q"]) == 0
    assert main(["segment", str(tmp_path / "b"), "--classes", "red, blue", "-o", str(out), "-q"]) == 0
    with pytest.raises(ValueError, match="export the outputs of one request at a time"):
        export_cvat(out, tmp_path / "m.zip")
    with pytest.raises(ValueError, match="no dslo segment results"):
        list(read_output_folder(tmp_path / "a"))


def test_cvat_function_with_the_sdks_types(tmp_path):
    cvataa = pytest.importorskip("cvat_sdk.auto_annotation")
    from cvat_sdk import models
    from cvat_sdk.auto_annotation.driver import _AnnotationMapper, _DetectionFunctionContextImpl
    from cvat_sdk.masks import decode_mask

    from dslo.labelling.cvat_function import DsloFunction, create

    img, _ = colour_picture(60, 90)
    save_image(tmp_path / "x.png", img)
    request = SegmentRequest.create([["red"], ["green"], ["blue"]], "stuff", ModelChoice(device="cpu"))
    fn = DsloFunction(request, colour_segmenter("stuff"))  # the request's segmenter: its background
    assert isinstance(fn.spec, cvataa.DetectionFunctionSpec)
    assert [(lab.name, lab.id, lab.type) for lab in fn.spec.labels] == [("red", 0, "mask"), ("green", 1, "mask"),
                                                                       ("blue", 2, "mask")]
    shapes = fn.detect(_DetectionFunctionContextImpl(frame_name="x.png"), Image.open(tmp_path / "x.png"))
    # what `dslo segment` writes for this image, classes and settings
    expected = colour_segmenter("stuff").predict(img, request.class_lists).labels
    assert {s.label_id + 1 for s in shapes} == set(np.unique(expected)) - {0}  # no shape for the background
    for s in shapes:
        assert s.type.value == "mask" and s.frame == 0
        assert np.array_equal(decode_mask(s.points, image_width=90, image_height=60), expected == s.label_id + 1)
    # the driver's own validation, mapping onto a task whose labels have other ids
    ds_labels = [models.Label._from_openapi_data(name=n, id=10 + i, type="any", attributes=[], sublabels=[],
                                                 color="#ffffff", has_parent=False)
                 for i, n in enumerate(["blue", "green", "red"])]
    mapper = _AnnotationMapper(logging.getLogger("test"), fn.spec.labels, ds_labels, allow_unmatched_labels=False,
                               conv_mask_to_poly=False)
    _, mapped = mapper.validate_and_remap(shapes, 7)
    assert len(mapped) == len(shapes) and all(s.frame == 7 and s.label_id in (10, 11, 12) for s in mapped)
    polys = fn.detect(_DetectionFunctionContextImpl(frame_name="x.png", conv_mask_to_poly=True), img)
    assert polys and all(p.type.value == "polygon" and len(p.points) >= 6 for p in polys)
    # cvat-cli's -p parameters are checked before any model loads
    with pytest.raises(ValueError, match="nms_treshold"):
        create("red,green|lime", model="offline", settings="nms_treshold=0.4")
    # the settings text is read as `dslo segment --set` reads it (fusion=none stays text: the paper's readout)
    from dslo.cli import parse_setting

    text = "fusion=none; fusion_levels=0,4,16; recover_threshold=none"
    fn = create("red,green|lime", model="offline", settings=text)
    assert fn.request.models.settings == dict(parse_setting(t.strip()) for t in text.split(";"))
    assert fn.request.models.settings["fusion"] == "none"

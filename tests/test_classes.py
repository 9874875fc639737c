from pathlib import Path

import pytest
from conftest import DATA

from dslo.classes import (
    DEFAULT_STUFF_WORDS,
    BackgroundPolicy,
    class_names,
    normalize_classes,
    parse_background,
    parse_class_string,
    read_classes_file,
)


def test_comma_string_is_one_class_per_comma():
    assert parse_class_string(" cat,dog ,  potted   plant") == [["cat"], ["dog"], ["potted plant"]]


def test_list_items_may_carry_synonyms_like_a_file_line():
    got = normalize_classes(["cat", "dining table, table", ["person", "man", "woman"]])
    assert got == [["cat"], ["dining table", "table"], ["person", "man", "woman"]]
    assert class_names(got) == ["cat", "dining table", "person"]


def test_file_one_class_per_line_synonyms_by_comma(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("\ufeff# a comment line\nsky\nbuilding, house\n\n  road,street \n  # another\n", encoding="utf-8")
    expected = [["sky"], ["building", "house"], ["road", "street"]]
    assert read_classes_file(f) == expected
    assert normalize_classes(f) == expected  # a Path means a file
    assert normalize_classes(str(f)) == expected  # an existing .txt path string too


def test_real_classes_file_reads():
    f = DATA / "fixtures" / "ADEChallengeData2016" / "classes.txt"
    if not f.is_file():
        pytest.skip("shared data not available")
    classes = read_classes_file(f)
    # ADE20K shares synonyms between classes ("screen door, screen" / "blind, screen"): allowed
    assert len(classes) == 150 and classes[1] == ["building", "edifice"]


def test_the_packaged_benchmark_class_files_read_the_same_as_dslo_eval():
    from dslo.eval.classes import read_class_file

    root = Path(__file__).resolve().parents[1] / "src" / "dslo" / "eval" / "classnames"
    files = sorted(root.glob("*.txt"))
    if not files:
        pytest.skip("no packaged class-name files")
    for f in files:
        assert [c[0] for c in read_classes_file(f)] == [c[0] for c in read_class_file(f)], f.name


def test_default_stuff_words_are_the_standard_background_line():
    root = Path(__file__).resolve().parents[1] / "src" / "dslo" / "eval" / "classnames"
    f = root / "voc21.txt"
    if not f.is_file():
        pytest.skip("no packaged voc21 class-name file")
    assert tuple(read_classes_file(f)[0]) == DEFAULT_STUFF_WORDS


@pytest.mark.parametrize(
    "text, needle",
    [("cat,,dog", "class 2 is empty"), ("cat, dog,", "class 3 is empty"), ("  ", "no classes"),
     ("cat, Cat", "duplicate class name 'Cat'"), ("car, dog, car", "classes 1 and 3")],
)
def test_bad_strings_are_rejected_with_the_reason(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_class_string(text)


def test_bad_files_name_file_and_line(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("cat\ndog, , puppy\n")
    with pytest.raises(ValueError, match=r"c.txt, line 2"):
        read_classes_file(f)
    f.write_text("cat, kitty\ncat\n")
    with pytest.raises(ValueError, match="duplicate class name 'cat' in classes 1 and 2"):
        read_classes_file(f)
    f.write_text("\n\n")
    with pytest.raises(ValueError, match="no classes"):
        read_classes_file(f)
    with pytest.raises(FileNotFoundError, match="classes file not found"):
        read_classes_file(tmp_path / "missing.txt")


def test_bad_lists():
    with pytest.raises(ValueError, match="empty"):
        normalize_classes(["cat", ""])
    assert normalize_classes([["cat", "kitty", "Cat"]]) == [["cat", "kitty"]]
    assert normalize_classes(["screen door, screen", "blind, screen"])[1] == ["blind", "screen"]
    with pytest.raises(ValueError, match="duplicate class name 'Dog' in classes 1 and 2"):
        normalize_classes([["dog", "puppy"], ["Dog"]])
    with pytest.raises(ValueError, match="no classes"):
        normalize_classes([])
    with pytest.raises(TypeError):
        normalize_classes(42)


def test_background_specs():
    assert parse_background(None).kind == "none"
    assert parse_background("none").kind == "none"
    stuff = parse_background("stuff")
    assert stuff.kind == "stuff" and stuff.words == DEFAULT_STUFF_WORDS
    assert parse_background("stuff", "sky, grass").words == ("sky", "grass")
    assert parse_background(["sky", "wall"]).words == ("sky", "wall")
    t = parse_background(0.4)
    assert (t.kind, t.threshold, t.scale) == ("threshold", 0.4, 40.0)
    assert parse_background("threshold:0.6").threshold == 0.6
    assert parse_background("0.7").threshold == 0.7
    assert parse_background(t) is t
    for bad in ("sometimes", 1.5, 0.0):
        with pytest.raises(ValueError):
            parse_background(bad)


def test_background_records_and_stuff_words_skip_user_classes():
    stuff = BackgroundPolicy("stuff", ("sky", "wall", "road"))
    assert stuff.describe() == {"policy": "stuff", "class_id": 0, "words": ["sky", "wall", "road"]}
    assert stuff.stuff_class([["car"], ["Road", "street"]]) == ["sky", "wall"]
    with pytest.raises(ValueError, match="every background stuff word"):
        BackgroundPolicy("stuff", ("sky",)).stuff_class([["sky"]])
    assert BackgroundPolicy("threshold", threshold=0.5).describe()["threshold"] == 0.5
    assert BackgroundPolicy().describe() == {"policy": "none"}


def test_the_threshold_background_reads_the_heads_evidence_scale():
    """dslo.classes is a leaf and cannot import the head: its recorded scale is the head's."""
    from dslo.classes import THRESHOLD_SCALE
    from dslo.head import EVIDENCE_SCALE

    assert THRESHOLD_SCALE == EVIDENCE_SCALE

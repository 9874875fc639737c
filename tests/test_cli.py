"""`dslo segment` / `dslo refine` / `dslo models`: input discovery, outputs, resumability and bad
input, with the colour stand-in models of standins.py (fast; the real-model end-to-end runs are
in test_cli_e2e.py)."""

import json
from pathlib import Path
import os

import numpy as np
import pytest
import torch
from PIL import Image
from standins import ColourAffinity, colour_picture
from standins import file_tree as _tree
from standins import save_image as _save

from dslo.cli import main
from dslo.inputs import discover as discover_inputs
from dslo.outputs import class_colors, decode_rle

# --- input discovery -----------------------------------------------------------------------------


def test_discovery_files_folders_globs(tmp_path):
    img, _ = colour_picture(16, 16)
    a = _save(tmp_path / "in" / "a.png", img)
    _save(tmp_path / "in" / "sub" / "deep" / "b.jpg", img)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    _save(tmp_path / "other" / "c.png", img)

    ims, errs = discover_inputs([str(tmp_path / "in")])
    assert errs == [] and [str(i.stem) for i in ims] == ["a", "sub/deep/b"]

    ims, errs = discover_inputs([str(a)])
    assert [str(i.stem) for i in ims] == ["a"]

    ims, errs = discover_inputs([str(tmp_path / "in" / "**" / "*.jpg")])
    assert [str(i.stem) for i in ims] == ["sub/deep/b"]  # mirrored below the glob's fixed part

    # a folder and a glob over the same files: each file once
    ims, errs = discover_inputs([str(tmp_path / "in"), str(tmp_path / "in" / "*.png"), str(tmp_path / "other")])
    assert sorted(str(i.stem) for i in ims) == ["a", "c", "sub/deep/b"]

    ims, errs = discover_inputs([str(tmp_path / "missing.png"), str(tmp_path / "nothing*.png")])
    assert ims == [] and "no such file" in errs[0] and "matched no images" in errs[1]


def test_discovery_separates_same_stem_and_reports_real_collisions(tmp_path):
    img, _ = colour_picture(16, 16)
    _save(tmp_path / "in" / "photo.png", img)
    _save(tmp_path / "in" / "photo.jpg", img)
    ims, errs = discover_inputs([str(tmp_path / "in")])
    assert errs == [] and sorted(str(i.stem) for i in ims) == ["photo.jpg", "photo.png"]

    x1 = _save(tmp_path / "d1" / "x.png", img)
    x2 = _save(tmp_path / "d2" / "x.png", img)
    ims, errs = discover_inputs([str(x1), str(x2)])
    assert len(ims) == 1 and "would overwrite" in errs[0] and "common parent folder" in errs[0]


def test_discovery_never_reads_the_output_folder(tmp_path):
    img, _ = colour_picture(16, 16)
    _save(tmp_path / "in" / "a.png", img)
    _save(tmp_path / "in" / "out" / "a.png", img)  # a mask written by an earlier run
    ims, _ = discover_inputs([str(tmp_path / "in")], exclude=tmp_path / "in" / "out")
    assert [str(i.stem) for i in ims] == ["a"]


# --- dslo segment --------------------------------------------------------------------------------


def test_segment_folder_writes_every_output(tmp_path, fake_models, capsys):
    img, truth = colour_picture(60, 90)
    _save(tmp_path / "in" / "one.png", img)
    _save(tmp_path / "in" / "sub" / "two.jpg", img[:, ::-1].copy(), quality=95)
    out = tmp_path / "out"
    rc = main(["segment", str(tmp_path / "in"), "--classes", "red, green, blue", "--background", "stuff",
               "--save", "mask,overlay,json,scores", "-o", str(out), "--max-side", "0", "--quiet"])
    assert rc == 0
    assert _tree(out) == ["one.json", "one.overlay.png", "one.png", "one.scores.pt",
                          "sub/two.json", "sub/two.overlay.png", "sub/two.png", "sub/two.scores.pt"]
    mask = Image.open(out / "one.png")
    assert mask.mode == "P" and mask.size == (90, 60)
    pal = np.array(mask.getpalette()[: 4 * 3]).reshape(4, 3)
    assert np.array_equal(pal, class_colors(4, 0))
    ids = np.array(mask)
    assert ((ids == truth + 1) | (truth == 2)).mean() > 0.95  # blue may be 'sky' (background) or blue

    doc = json.loads((out / "one.json").read_text())
    assert doc["image"] == str(tmp_path / "in" / "one.png")
    assert (doc["width"], doc["height"]) == (90, 60)
    assert doc["classes"] == ["background", "red", "green", "blue"]
    assert doc["model"]["background"]["policy"] == "stuff"
    assert sum(s["area"] for s in doc["segments"]) == 90 * 60
    for s in doc["segments"]:
        assert np.array_equal(decode_rle(s["rle"]), ids == s["class_id"])
    ov = Image.open(out / "one.overlay.png")
    assert ov.size[0] > 90 and ov.size[1] >= 60  # legend panel beside the image
    rec = torch.load(out / "sub" / "two.scores.pt")
    assert rec["image_size"] == [60, 90]
    err = capsys.readouterr().err
    assert "2 segmented, 0 already done (skipped), 0 failed" in err
    assert fake_models[0][2]["background"].kind == "stuff"


def test_rerun_skips_without_loading_models_and_overwrite_redoes(tmp_path, fake_models, capsys):
    img, _ = colour_picture(40, 40)
    _save(tmp_path / "in" / "a.png", img)
    args = ["segment", str(tmp_path / "in"), "--classes", "red, green", "-o", str(tmp_path / "out"), "-q"]
    assert main(args) == 0
    mtime = (tmp_path / "out" / "a.png").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert len(fake_models) == 1  # second run: nothing to do, no model loaded
    assert "0 segmented, 1 already done" in capsys.readouterr().err
    assert (tmp_path / "out" / "a.png").stat().st_mtime_ns == mtime
    # asking for an output that does not exist yet makes the image pending again
    assert main(args + ["--save", "mask,scores"]) == 0 and (tmp_path / "out" / "a.scores.pt").is_file()
    assert main(args + ["--overwrite"]) == 0
    assert len(fake_models) == 3
    assert not [p for p in os.listdir(tmp_path / "out") if p.endswith(".tmp")]


def test_corrupt_file_is_reported_and_the_batch_continues(tmp_path, fake_models, capsys):
    img, _ = colour_picture(40, 48)
    _save(tmp_path / "in" / "a.png", img)
    good = _save(tmp_path / "in" / "c.jpg", img, quality=90).read_bytes()
    (tmp_path / "in" / "b.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (tmp_path / "in" / "d.png").write_bytes(b"this is not a png")
    rc = main(["segment", str(tmp_path / "in"), "--classes", "red, green", "-o", str(tmp_path / "out"), "-q"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "skipped" in err and "b.jpg" in err and "d.png" in err
    assert "2 segmented, 0 already done (skipped), 2 failed" in err
    # the failures are listed beside the outputs, as the Ray engine lists them (one failure policy)
    assert _tree(tmp_path / "out") == ["a.json", "a.overlay.png", "a.png", "c.json", "c.overlay.png", "c.png",
                                       "dslo-failures.jsonl"]
    failures = [json.loads(line) for line in (tmp_path / "out" / "dslo-failures.jsonl").read_text().splitlines()]
    assert sorted(Path(f["image"]).name for f in failures) == ["b.jpg", "d.png"]
    assert all(f["error"].startswith("cannot read image ") for f in failures)


def test_awkward_image_formats_are_converted(tmp_path, fake_models):
    rgb, _ = colour_picture(32, 48)
    inp = tmp_path / "in"
    _save(inp / "grey.png", np.asarray(Image.fromarray(rgb).convert("L")))
    _save(inp / "rgba.png", np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]))
    _save(inp / "pal.png", np.asarray(Image.fromarray(rgb).convert("P").convert("RGB")))
    Image.fromarray(rgb).convert("P").save(inp / "pal_mode.png")
    Image.fromarray(np.asarray(Image.fromarray(rgb).convert("L")).astype(np.uint16) * 257).save(inp / "deep16.png")
    # EXIF orientation 6 (rotate 90° clockwise to display): a 32×48 file shows as 48×32
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(inp / "rotated.jpg", exif=exif.tobytes(), quality=95)
    rc = main(["segment", str(inp), "--classes", "red, green, blue", "-o", str(tmp_path / "out"), "-q"])
    assert rc == 0
    for stem in ("grey", "rgba", "pal", "pal_mode", "deep16"):
        assert Image.open(tmp_path / "out" / f"{stem}.png").size == (48, 32), stem
    assert Image.open(tmp_path / "out" / "rotated.png").size == (32, 48)
    doc = json.loads((tmp_path / "out" / "rotated.json").read_text())
    assert (doc["width"], doc["height"]) == (32, 48)


def test_large_image_is_downscaled_and_mask_is_full_size(tmp_path, fake_models):
    img, truth = colour_picture(300, 450)
    _save(tmp_path / "big.png", img)
    rc = main(["segment", str(tmp_path / "big.png"), "--classes", "red, green, blue", "--max-side", "150",
               "-o", str(tmp_path / "out"), "-q", "--save", "mask,json"])
    assert rc == 0
    mask = np.array(Image.open(tmp_path / "out" / "big.png"))
    assert mask.shape == (300, 450) and (mask == truth).mean() > 0.95
    doc = json.loads((tmp_path / "out" / "big.json").read_text())
    assert doc["model"]["input_size"] == [100, 150] and doc["model"]["max_side"] == 150


def test_classes_file_and_settings_reach_the_segmenter(tmp_path, fake_models):
    img, _ = colour_picture(40, 40)
    _save(tmp_path / "a.png", img)
    cf = tmp_path / "classes.txt"
    cf.write_text("red, crimson\ngreen\n")
    rc = main(["segment", str(tmp_path / "a.png"), "--classes-file", str(cf), "--model", "paper-op",
               "--logits", "some/clip", "--attention", "focus-s14", "--mode", "op", "--device", "cpu",
               "--set", "nms_threshold=0.6", "--set", "upsample=bilinear", "-o", str(tmp_path / "o"), "-q"])
    assert rc == 0
    name, device, ov = fake_models[0]
    assert (name, device) == ("paper-op", "cpu")
    assert ov["logits"] == "some/clip" and ov["attention"] == "focus-s14" and ov["mode"] == "op"
    assert ov["nms_threshold"] == 0.6 and ov["upsample"] == "bilinear" and ov["max_side"] == 1024
    doc = json.loads((tmp_path / "o" / "a.json").read_text())
    assert doc["synonyms"] == [["red", "crimson"], ["green"]]


@pytest.mark.parametrize(
    "extra, needle",
    [(["--classes", "cat,,dog"], "class 2 is empty"),
     (["--classes", "cat, Cat"], "duplicate class name"),
     (["--classes", "cat", "--background", "often"], "unknown background"),
     (["--classes", "cat", "--model", "defualt"], "did you mean default")],
)
def test_bad_arguments_give_clear_errors(tmp_path, extra, needle, capsys):
    img, _ = colour_picture(16, 16)
    _save(tmp_path / "a.png", img)
    rc = main(["segment", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "-q", *extra])
    assert rc == 1
    assert needle in capsys.readouterr().err


def test_argparse_rejects_conflicting_or_missing_options(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["segment", "x.png", "-o", str(tmp_path), "--classes", "a", "--classes-file", "f.txt"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["segment", "x.png", "-o", str(tmp_path), "--classes", "a", "--save", "mask,pdf"])


def test_no_images_is_an_error(tmp_path, capsys):
    rc = main(["segment", str(tmp_path / "nope"), "--classes", "a", "-o", str(tmp_path / "o")])
    assert rc == 1 and "no such file or folder" in capsys.readouterr().err


# --- dslo refine and dslo models ----------------------------------------------------------------


def test_refine_cli_reproduces_the_head(tmp_path, monkeypatch):
    from dslo.head import refine

    img, _ = colour_picture(48, 64)
    _save(tmp_path / "im.png", img)
    L = torch.rand(3, 5, 7)
    np.save(tmp_path / "l.npy", L.numpy())
    monkeypatch.setattr("dslo.models.create_attention_model", lambda name, device="auto", **kw: ColourAffinity())
    for mode in ("mv", "op"):
        out = tmp_path / mode
        rc = main(["refine", "--logits-file", str(tmp_path / "l.npy"), "--image", str(tmp_path / "im.png"),
                   "--classes", "a, b, c", "--attention", "focus-s14", "--mode", mode, "-o", str(out),
                   "--save", "mask,json"])
        assert rc == 0
        A, grid = ColourAffinity().affinity(img)
        ref = refine(L, A, img, mode=mode, grid=grid)
        assert np.array_equal(np.array(Image.open(out / "im.png")), ref.labels.numpy())
        assert json.loads((out / "im.json").read_text())["model"]["mode"] == mode
    # a .pt file holding a dict and a batch dimension reads the same
    torch.save({"logits": L[None]}, tmp_path / "l.pt")
    rc = main(["refine", "--logits-file", str(tmp_path / "l.pt"), "--image", str(tmp_path / "im.png"),
               "--classes", "a, b, c", "--attention", "focus-s14", "-o", str(tmp_path / "pt"), "--save", "mask"])
    assert rc == 0
    assert np.array_equal(np.array(Image.open(tmp_path / "pt" / "im.png")),
                          np.array(Image.open(tmp_path / "mv" / "im.png")))


def test_refine_cli_checks_the_logits(tmp_path, capsys):
    img, _ = colour_picture(16, 16)
    _save(tmp_path / "im.png", img)
    np.save(tmp_path / "l.npy", np.zeros((2, 4, 4), np.float32))
    base = ["refine", "--logits-file", str(tmp_path / "l.npy"), "--image", str(tmp_path / "im.png"),
            "-o", str(tmp_path / "o")]
    assert main(base + ["--classes", "a, b, c"]) == 1
    assert "2 class maps but 3 classes" in capsys.readouterr().err
    np.save(tmp_path / "l.npy", np.zeros((4, 4), np.float32))
    assert main(base + ["--classes", "a, b"]) == 1
    assert "must be (K, h, w)" in capsys.readouterr().err


def test_models_lists_presets_and_registry(capsys, monkeypatch):
    import dslo.models

    monkeypatch.setattr(dslo.models, "weights_available", lambda name: name == "focus-s14")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for word in ("paper-mv", "paper-op", "default", "offline", "clip-b16", "sd2", "focus-s14", "needs --logits DIR"):
        assert word in out
    assert main(["models", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["models"]["attention"]["focus-s14"] is True and info["models"]["logits"]["clip-b16"] is False
    assert info["presets"]["offline"]["ready"] is True and info["presets"]["default"]["ready"] is False


def test_a_bad_setting_is_one_line_without_a_traceback(tmp_path, capsys):
    img = _save(tmp_path / "in" / "a.png", colour_picture()[0])
    for setting, message in (("nms_treshold=0.6", "did you mean nms_threshold"),
                             ("eps=0", "eps must be > 0")):
        code = main(["segment", str(img), "--classes", "red, green", "--set", setting,
                     "-o", str(tmp_path / "out"), "-q"])
        err = capsys.readouterr().err
        assert code == 1 and message in err and "Traceback" not in err
        assert len([line for line in err.splitlines() if "error:" in line]) == 1

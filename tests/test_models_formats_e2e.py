"""create_segmenter end to end on every logits-model format dslo reads, with tiny random stand-ins
placed where the loader looks: a local folder passed as logits=DIR (format read from its files),
and registry keys resolved offline through a Hugging Face cache (HF_HUB_CACHE)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import dslo
from dslo.testing import make_tiny_clip, make_tiny_dinov2, make_tiny_openclip, make_tiny_siglip

MAKERS = {
    "clip": lambda p: make_tiny_clip(p),  # transformers CLIP, as MetaCLIP's repos
    "openclip": lambda p: make_tiny_openclip(p, quick_gelu=True),
    "siglip": lambda p: make_tiny_siglip(p, variant="siglip"),
    "siglip2": lambda p: make_tiny_siglip(p, variant="siglip2"),
    "siglip2-naflex": lambda p: make_tiny_siglip(p, variant="siglip2-naflex"),
}


def _picture() -> np.ndarray:
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :32] = (200, 30, 30)
    img[:, 32:] = (30, 200, 30)
    return img


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    return make_tiny_dinov2(tmp_path_factory.mktemp("dinov2") / "dinov2", registers=4)


@pytest.mark.parametrize("fmt", list(MAKERS))
def test_segmenter_on_a_folder_of_each_format(tmp_path, dinov2_dir, fmt):
    from dslo.segmenter import create_segmenter

    folder = MAKERS[fmt](tmp_path / fmt)
    seg = create_segmenter("default", device="cpu", logits=str(folder), attention=str(dinov2_dir),
                           logits_options={"short_side": 64}, attention_options={"short_side": 56})
    r = seg.predict(_picture(), ["red", "green"])
    assert r.labels.shape == (48, 64) and set(np.unique(r.labels)) <= {0, 1}
    assert seg.info["logits"] == str(folder)


def _into_cache(cache: Path, repo: str, folder: Path) -> None:
    """``folder`` as the snapshot of ``repo`` in a Hugging Face cache."""
    snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)


@pytest.mark.slow
def test_registry_keys_through_a_hugging_face_cache(tmp_path):
    """Registry keys of each format load offline from a Hugging Face cache holding stand-ins
    under their Hub ids (DFN's weights as open_clip_pytorch_model.bin, as that repository ships
    them), with the default preset's DINOv2 (also a stand-in); `dslo models` sees them."""
    from safetensors.torch import load_file

    cache = tmp_path / "hub"
    made = {key: MAKERS[fmt](tmp_path / key) for key, fmt in (
        ("metaclip-b16", "clip"), ("laion-b16", "openclip"), ("dfn-b16", "openclip"), ("siglip-b16", "siglip"),
        ("siglip2-b16", "siglip2"), ("siglip2-b16-naflex", "siglip2-naflex"))}
    dfn = made["dfn-b16"]
    torch.save(load_file(str(dfn / "open_clip_model.safetensors")), dfn / "open_clip_pytorch_model.bin")
    (dfn / "open_clip_model.safetensors").unlink()
    from dslo.models import get_entry

    for key, folder in made.items():
        _into_cache(cache, get_entry(key).source, folder)
    _into_cache(cache, get_entry("dinov2-reg-b14").source, make_tiny_dinov2(tmp_path / "dinov2", registers=4))
    script = textwrap.dedent(f"""
        import socket
        def refuse(*a, **k):
            raise OSError("network disabled in this test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        import json, numpy as np
        from dslo.segmenter import create_segmenter
        from dslo.cli.models import collect
        img = np.zeros((48, 64, 3), np.uint8); img[:, 32:] = 200
        available = collect()["models"]["logits"]
        for key in {sorted(made)!r}:
            assert available[key], key
            seg = create_segmenter("default", device="cpu", logits=key, logits_options={{"short_side": 64}},
                                   attention_options={{"short_side": 56}})
            r = seg.predict(img, ["dark", "bright"])
            print(key, type(seg.logits_model).__name__, r.labels.shape)
        assert not available["siglip-so400m-14"]
    """)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "PYTHONPATH": str(Path(dslo.__file__).parents[1]),
           "DSLO_TEXT_CACHE": "0"}
    for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DSLO_OFFLINE"):
        env.pop(v, None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert set(lines) == set(made)
    assert all("(48, 64)" in v for v in lines.values())
    assert "ClipLogitsModel" in lines["laion-b16"] and "SiglipLogitsModel" in lines["siglip2-b16"]

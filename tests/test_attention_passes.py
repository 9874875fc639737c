"""Attention passes compute only what is read: SDPA in the blocks whose attention is not used,
the explicit matrix only in the chosen blocks, nothing after the last chosen block. The affinity
must equal the one built from transformers' eager attention maps (what dslo computed before) —
on focus-s14's real weights and on tiny random models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dslo.models import create_attention_model
from dslo.models.common import patch_affinity
from dslo.testing import make_tiny_dino, make_tiny_dinov2

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CAMVID_IMAGE = DATA / "camvid" / "test" / "0001TP_008550.png"


def eager_affinity(src, image, layers, layer_weights=None):
    """The affinity from every block's eager attention (output_attentions), combined by hand."""
    x = src.pixel_values(image)
    kw = {"interpolate_pos_encoding": True} if src.model.config.model_type == "vit" else {}
    src.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            att = src.model(pixel_values=x, output_attentions=True, **kw).attentions
    finally:
        src.model.set_attn_implementation("sdpa")
    lw = layer_weights or [1.0] * len(layers)
    mix = sum(w / sum(lw) * att[i][0] for w, i in zip(lw, layers, strict=False))
    return patch_affinity(mix, num_prefix=src.num_prefix)


def mlp_calls(src):
    """Count, per block, how often its MLP ran."""
    blocks = [m for m in src.model.modules() if isinstance(m, torch.nn.ModuleList)
              and len(m) == src.model.config.num_hidden_layers][0]
    calls = [0] * len(blocks)
    handles = [b.mlp.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, b in enumerate(blocks)]
    return calls, handles


@pytest.fixture(scope="module")
def focus(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSLO_CACHE_DIR", str(tmp_path_factory.mktemp("dslo-cache")))
        yield create_attention_model("focus-s14", device="cpu", short_side=224)


@pytest.fixture(scope="module")
def real_image():
    if not CAMVID_IMAGE.is_file():
        pytest.skip(f"real images not available ({DATA} absent)")
    from dslo.imageio import read_image_file

    return read_image_file(CAMVID_IMAGE)


def test_focus_real_weights_equal_eager_attention(focus, real_image):
    assert focus.model.config._attn_implementation == "sdpa"
    A, _ = focus.affinity(real_image)
    torch.testing.assert_close(A, eager_affinity(focus, real_image, [11]), atol=1e-5, rtol=0)
    several = create_attention_model("focus-s14", device="cpu", short_side=224, layers=(3, 7, -1),
                                     layer_weights=(0.2, 0.3, 0.5))
    A3, _ = several.affinity(real_image)
    torch.testing.assert_close(A3, eager_affinity(several, real_image, [3, 7, 11], [0.2, 0.3, 0.5]),
                               atol=1e-5, rtol=0)


def test_nothing_runs_after_the_last_chosen_block(focus, real_image):
    src = create_attention_model("focus-s14", device="cpu", short_side=224, layers=(2, 5))
    calls, handles = mlp_calls(src)
    try:
        src.affinity(real_image)
    finally:
        for h in handles:
            h.remove()
    assert calls == [1, 1, 1, 1, 1] + [0] * 7  # blocks 0-4 in full; block 5 only up to its attention


@pytest.mark.parametrize("registers", [0, 4])
@pytest.mark.parametrize("layers", [(-1,), (0, 2), (1,)])
def test_tiny_random_models_equal_eager_attention(tmp_path, registers, layers):
    d = make_tiny_dinov2(tmp_path / "m", registers=registers, num_layers=3)
    src = create_attention_model(d, device="cpu", short_side=56, layers=layers)
    image = np.random.default_rng(0).integers(0, 256, size=(60, 100, 3), dtype=np.uint8)
    A, _ = src.affinity(image)
    torch.testing.assert_close(A, eager_affinity(src, image, [i % 3 for i in layers]), atol=1e-5, rtol=0)


def test_tiny_dino_equals_eager_attention(tmp_path):
    src = create_attention_model(make_tiny_dino(tmp_path / "dino"), device="cpu", short_side=48)
    image = np.random.default_rng(1).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    torch.testing.assert_close(src.affinity(image)[0], eager_affinity(src, image, [1]), atol=1e-5, rtol=0)

"""SD2 attention source on a tiny random Stable-Diffusion-2-shaped diffusers checkpoint (UNet + VAE
+ text encoder) saved and loaded through the real loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from dslo.models import WeightsNotFoundError, create_attention_model  # noqa: E402
from dslo.models.sd2 import _upsample_attention  # noqa: E402
from dslo.testing import make_tiny_sd2  # noqa: E402

RES = 128  # tiny input: 16×16 latents, so up_blocks.3 gives a 16×16 grid (N = 256)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return make_tiny_sd2(tmp_path_factory.mktemp("sd2") / "tiny-sd2")


@pytest.fixture(scope="module")
def src(sd_dir):
    return create_attention_model("sd2", device="cpu", model_id=str(sd_dir), resolution=RES, stop_early=False)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(2).integers(0, 256, size=(60, 100, 3), dtype=np.uint8)


def test_processor_only_on_chosen_layers(src):
    from dslo.models.sd2 import StoringAttnProcessor

    hooked = {n for n, m in src.unet.named_modules() if isinstance(getattr(m, "processor", None), StoringAttnProcessor)}
    assert hooked == {"up_blocks.3.attentions.0.transformer_blocks.0.attn1",
                      "up_blocks.3.attentions.1.transformer_blocks.0.attn1"}


def test_stored_attention_equals_manual_softmax(src, image):
    inputs = {}
    handles = []
    for path in src.settings.layers:
        for key in src.keys[path]:
            mod = src.unet.get_submodule(key)
            handles.append(mod.register_forward_pre_hook(
                lambda m, args, kwargs, key=key: inputs.__setitem__(key, args[0] if args else kwargs["hidden_states"]),
                with_kwargs=True))
    try:
        maps = src.attention_maps(image)
    finally:
        for h in handles:
            h.remove()
    assert set(maps) == set(inputs) and len(maps) == 2
    for key, x in inputs.items():
        attn = src.unet.get_submodule(key)
        with torch.no_grad():
            q, k = attn.to_q(x[0]), attn.to_k(x[0])
        d = q.shape[-1] // attn.heads
        q = q.view(-1, attn.heads, d).transpose(0, 1)
        k = k.view(-1, attn.heads, d).transpose(0, 1)
        manual = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1).mean(0)
        assert maps[key].shape == (256, 256)
        torch.testing.assert_close(maps[key], manual, atol=1e-6, rtol=1e-5)


def test_unet_output_unchanged(src, sd_dir, image):
    from diffusers import UNet2DConditionModel

    plain = UNet2DConditionModel.from_pretrained(sd_dir, subfolder="unet").eval()
    lat = src.latents(image)
    t = torch.tensor([0])
    with torch.no_grad():
        ref = plain(lat, t, encoder_hidden_states=src.prompt_embeds).sample
        src.store.stop_when_full = False
        got = src.unet(lat, t, encoder_hidden_states=src.prompt_embeds).sample
    assert len(src.store.maps) == 2  # the hooked layers did run and record
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_affinity_rows_grid_and_weights(src, image):
    A, (h, w) = src.affinity(image)  # non-square image: squashed to a square grid
    assert (h, w) == (16, 16) == src.grid_for(image.shape[:2])
    assert A.shape == (256, 256) and A.dtype == torch.float32
    torch.testing.assert_close(A.sum(1), torch.ones(256), atol=1e-5, rtol=0)
    maps = src.attention_maps(image)
    k0, k1 = src.keys["up_blocks.3.attentions.0"][0], src.keys["up_blocks.3.attentions.1"][0]
    torch.testing.assert_close(A, 0.5 * maps[k0] + 0.5 * maps[k1], atol=1e-6, rtol=1e-5)


def test_defaults_follow_spec(sd_dir):
    m = create_attention_model(sd_dir, device="cpu")  # a diffusers directory as the source
    s = m.settings
    assert (s.resolution, s.timestep, s.prompt) == (512, 0, "")
    assert s.layers == ("up_blocks.3.attentions.0", "up_blocks.3.attentions.1") and m._weights == [0.5, 0.5]
    assert m.grid_for((480, 640)) == (64, 64)


def test_stop_early_gives_the_same_maps(sd_dir, src, image):
    early = create_attention_model("sd2", device="cpu", model_id=str(sd_dir), resolution=RES)
    assert early.settings.stop_early
    a, b = early.attention_maps(image), src.attention_maps(image)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_noise_option(sd_dir, src, image):
    from diffusers import DDPMScheduler

    clean = src.latents(image)
    noisy = create_attention_model("sd2", device="cpu", model_id=str(sd_dir), resolution=RES, timestep=100,
                                   noise_seed=3)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    eps = torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    a = sched.alphas_cumprod[100]
    torch.testing.assert_close(noisy.latents(image), a.sqrt() * clean + (1 - a).sqrt() * eps, atol=1e-5, rtol=1e-4)
    assert src.settings.noise_seed is None  # default: noise-free, the latents are the posterior mode
    with pytest.raises(ValueError, match="timestep"):
        create_attention_model("sd2", device="cpu", model_id=str(sd_dir), timestep=1000)


def test_mixed_resolution_layers(sd_dir, image):
    s = create_attention_model("sd2", device="cpu", model_id=str(sd_dir), resolution=RES,
                               layers=("up_blocks.2", "up_blocks.3.attentions.1.transformer_blocks.0.attn1"),
                               layer_weights=(1, 3))
    assert s.grid_for((60, 100)) == (16, 16)
    A, grid = s.affinity(image)
    assert grid == (16, 16) and A.shape == (256, 256)
    torch.testing.assert_close(A.sum(1), torch.ones(256), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no module"):
        create_attention_model("sd2", device="cpu", model_id=str(sd_dir), layers=("up_blocks.9",))


def test_upsample_attention_properties():
    uniform = torch.full((16, 16), 1 / 16)
    torch.testing.assert_close(_upsample_attention(uniform, 8), torch.full((64, 64), 1 / 64))
    a = torch.softmax(torch.randn(16, 16), -1)
    up = _upsample_attention(a, 8).view(8, 8, 64)
    torch.testing.assert_close(up[0, 0], up[1, 1])  # queries repeat within a coarse cell
    torch.testing.assert_close(up.sum(-1), torch.ones(8, 8))


def test_missing_model_names_the_setting(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="DSLO_SD2_MODEL"):
        create_attention_model("sd2", device="cpu", model_id=str(tmp_path / "no-such-sd2"))


def test_model_id_from_the_environment(sd_dir, monkeypatch):
    from dslo.models import weights_available
    from dslo.models.registry import SD2_DEFAULT_MODEL, describe_model

    monkeypatch.delenv("DSLO_SD2_MODEL", raising=False)
    assert SD2_DEFAULT_MODEL in describe_model("sd2")
    monkeypatch.setenv("DSLO_SD2_MODEL", str(sd_dir))
    assert str(sd_dir) in describe_model("sd2") and weights_available("sd2")
    m = create_attention_model("sd2", device="cpu", resolution=RES)
    assert m.affinity(np.zeros((20, 30, 3), np.uint8))[0].shape == (256, 256)


def test_batched_pass_and_early_stop_give_the_same_affinity(src, sd_dir, image):
    """One VAE + UNet pass over two images equals two single passes; stopping after the last
    chosen layer (its output and the rest of the UNet skipped) changes nothing read."""
    other = np.random.default_rng(5).integers(0, 256, size=(80, 80, 3), dtype=np.uint8)
    A, grid = src.affinity_batch([image, other])
    for a, im in zip(A, [image, other], strict=False):
        ref, g = src.affinity(im)
        assert g == grid
        torch.testing.assert_close(a, ref, atol=1e-6, rtol=1e-5)
    early = create_attention_model("sd2", device="cpu", model_id=str(sd_dir), resolution=RES, stop_early=True)
    calls = []
    last = early.unet.get_submodule(early.keys["up_blocks.3.attentions.1"][-1])
    handle = last.to_out[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        torch.testing.assert_close(early.affinity(image)[0], A[0], atol=1e-6, rtol=1e-5)
    finally:
        handle.remove()
    assert calls == []  # the last chosen layer's output projection never ran

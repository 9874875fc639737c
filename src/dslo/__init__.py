"""dslo: training-free open-vocabulary semantic segmentation (Direct Segmentation without Logits
Optimization, CVPR 2026).

Importing the package is cheap and has no side effects: the model registry and segmenter are
imported on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "list_models",
    "create_logits_model",
    "create_attention_model",
    "create_segmenter",
    "list_presets",
    "get_preset",
    "Preset",
    "SettingsError",
]

_LAZY = {
    "list_models": "dslo.models.registry",
    "create_logits_model": "dslo.models.registry",
    "create_attention_model": "dslo.models.registry",
    "create_segmenter": "dslo.segmenter",
    "list_presets": "dslo.presets",
    "get_preset": "dslo.presets",
    "Preset": "dslo.presets",
    "SettingsError": "dslo.errors",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dslo' has no attribute {name!r}")

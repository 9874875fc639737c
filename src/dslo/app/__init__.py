"""``dslo app``: a web page to segment an image with your own class names (Gradio).

Gradio is an optional extra (``pip install "dslo[app]"``): only :mod:`dslo.app.page` imports it,
so the request logic (:mod:`dslo.app.service`) and the pictures (:mod:`dslo.app.views`) work and
are tested without it.
"""

from __future__ import annotations

INSTALL_HINT = 'dslo app needs Gradio, an optional extra: pip install "dslo[app]"'


def require_gradio() -> None:
    """Fail with a one-line install hint when Gradio is missing."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None

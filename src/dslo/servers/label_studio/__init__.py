"""``dslo label-studio``: a Label Studio ML backend that pre-labels ``BrushLabels`` projects with
dslo (``pip install "dslo[labelstudio]"``).

- :mod:`~dslo.servers.label_studio.sources`: which images a task may name, read with caps.
- :mod:`~dslo.servers.label_studio.worker`: a worker process: models loaded once, the engines'
  per-image step, the Label Studio prediction (:mod:`dslo.labelling.label_studio`).
- :mod:`~dslo.servers.label_studio.backend`: configs, requests, the bounded and budgeted dispatch.
- :mod:`~dslo.servers.label_studio.app`: the HTTP routes (Starlette), auth, body cap, errors.

:func:`serve` runs it with uvicorn. docs/labelling.md has the workflow.
"""

from __future__ import annotations

from dslo.servers.label_studio.backend import Backend, BackendSettings
from dslo.servers.label_studio.sources import FetchLimits, ImagePolicy

__all__ = ["Backend", "BackendSettings", "FetchLimits", "ImagePolicy", "serve"]


def serve(settings: BackendSettings, host: str = "127.0.0.1", port: int = 9090, log=None) -> None:
    """Start the workers (models loaded, or a load error raised now), then serve until stopped
    (Ctrl+C or SIGTERM: the workers are stopped too)."""
    import signal

    from dslo.servers.label_studio.app import INSTALL_HINT, create_app

    try:
        import uvicorn
    except ImportError as exc:
        raise RuntimeError(INSTALL_HINT) from exc
    backend = Backend(settings, log) if log else Backend(settings)
    app = create_app(backend)

    def stop(signum, frame):  # uvicorn re-raises the signal once it has shut down: then end here
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        backend.warm_up()
        backend.log(f"serving on http://{host}:{port}/ ({settings.max_concurrent} worker(s); Ctrl+C stops)")
        # limit_concurrency: connections beyond it get 503 at once instead of piling up
        uvicorn.run(app, host=host, port=port, log_level="warning", limit_concurrency=256,
                    server_header=False, date_header=False)
    finally:
        backend.close()
        signal.signal(signal.SIGTERM, previous)

"""Engines: run a :class:`dslo.request.SegmentRequest` over many images and write its outputs.

- :func:`dslo.engines.local.run_local`: this process.
- :func:`dslo.engines.ray.run_ray`: a Ray cluster (optional extra ``dslo[ray]``).

Both take the same request and items (:mod:`dslo.inputs`), plan the same resume
(:mod:`dslo.engines.plan`), run the same per-image step with the same failure policy
(:mod:`dslo.engines.step`), write through the same writer (:func:`dslo.outputs.write_result`) and
return the same :class:`~dslo.engines.summary.RunSummary`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dslo.engines.summary import FAILURES_FILE, RunSummary
from dslo.inputs import InputItem
from dslo.request import SegmentRequest

__all__ = ["ENGINES", "FAILURES_FILE", "RunSummary", "run"]

ENGINES = ("local", "ray")


def run(request: SegmentRequest, items: Sequence[InputItem], engine: str = "local", **options: Any) -> RunSummary:
    """Run ``request`` over ``items`` on ``engine``; ``options``: the engine's keyword arguments
    (``progress``, ``log``; Ray: ``options=RayOptions(...)``)."""
    from dslo.errors import check_choice

    check_choice("engine", engine, ENGINES)
    if engine == "ray":
        from dslo.engines.ray import run_ray

        return run_ray(request, items, **options)
    from dslo.engines.local import run_local

    return run_local(request, items, **options)

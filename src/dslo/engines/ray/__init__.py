"""The Ray engine (``dslo segment --engine ray``, ``pip install "dslo[ray]"``): the local engine's
job on a Ray cluster, the same outputs byte for byte, plus ``--format parquet`` rows.

- :mod:`dslo.engines.ray.driver`: Ray start-up, resume, the pipeline, progress, summary.
- :mod:`dslo.engines.ray.worker`: the Ray Data stages (read bytes; one segmenter per actor).
- :mod:`dslo.engines.ray.vocabulary`: the text embeddings computed once on the driver.
- :mod:`dslo.engines.ray.parquet`: ``--format parquet`` rows (path, size, classes, RLE segments).

Nothing here imports Ray at module level except the driver's entry point, which fails at once
with the install command when it is missing.
"""

from dslo.engines.ray.driver import RayOptions, run_ray

__all__ = ["RayOptions", "run_ray"]

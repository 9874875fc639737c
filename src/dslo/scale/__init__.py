"""``dslo segment --engine ray``: the same job as the local engine, run on a Ray cluster.

- :mod:`dslo.scale.inputs`: files, folders, globs, list files and URIs → images with output stems.
- :mod:`dslo.scale.plan`: what is already done (resume), the vocabulary's text embeddings.
- :mod:`dslo.scale.worker`: the Ray Data stages (read bytes; one segmenter per actor).
- :mod:`dslo.scale.parquet`: ``--format parquet`` rows (path, size, classes, RLE segments).
- :mod:`dslo.scale.engine`: the driver (Ray start-up, the pipeline, progress, summary).

Ray is optional (``pip install "dslo[ray]"``); nothing here imports it at module level except the
driver's entry point, which fails at once with the install command when it is missing.
"""

from dslo.scale.engine import ENGINES, add_engine_args, run_ray

__all__ = ["ENGINES", "add_engine_args", "run_ray"]

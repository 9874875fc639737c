"""Evaluation harness: dataset readers, class-name files, MMSegmentation-exact metrics,
per-benchmark protocols and the (resumable, data-parallel) evaluation loop."""

from __future__ import annotations

from dslo.eval.classes import read_class_file
from dslo.eval.datasets import BENCHMARKS, DatasetLayoutError, SegDataset, get_dataset, list_datasets
from dslo.eval.metrics import IoUAccumulator
from dslo.eval.protocol import describe_segmenter, eval_request
from dslo.eval.runner import Shard, evaluate
from dslo.eval.scoring import score_predictions

__all__ = [
    "BENCHMARKS",
    "DatasetLayoutError",
    "IoUAccumulator",
    "SegDataset",
    "Shard",
    "describe_segmenter",
    "eval_request",
    "evaluate",
    "get_dataset",
    "list_datasets",
    "read_class_file",
    "score_predictions",
]

"""dslo as a FiftyOne model (``pip install "dslo[fiftyone]"``): ``fo.Segmentation`` label maps,
the ones ``dslo segment`` writes for the same image and settings.

    import fiftyone as fo
    from dslo.labelling.fiftyone_model import DsloModel, apply

    model = DsloModel(["car", "road", "person"], model="offline", logits="/models/clip")
    apply(dataset, model, "dslo")  # dataset.apply_model + dataset.mask_targets["dslo"]

``apply_model`` alone works too; FiftyOne then does not know the class names until
``dataset.mask_targets[field] = model.mask_targets`` is set (``apply`` does both). The model reads
each sample's file with dslo's own reader (EXIF orientation applied, as ``dslo segment`` does),
not FiftyOne's decoded array, so the pixels, and so the labels, are the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dslo.labelling.single import RequestSegmenter
from dslo.request import ModelChoice, SegmentRequest

__all__ = ["DsloModel", "apply"]


try:
    import fiftyone.core.models as fom
except ImportError as exc:
    raise RuntimeError('the FiftyOne model needs FiftyOne; install it with pip install "dslo[fiftyone]"') from exc


class DsloModel(fom.SamplesMixin, fom.Model):
    """A FiftyOne image model giving ``fo.Segmentation``: ``classes`` as ``dslo segment
    --classes`` reads them (a list, or a text with commas), ``background``, and a
    :class:`dslo.request.ModelChoice`'s fields as keywords (``model`` for its preset);
    ``segmenter``: use this one instead of loading the request's (tests)."""

    def __init__(self, classes: Any, background: object = None, *, model: str = "default",
                 segmenter: Any = None, **choice: Any) -> None:
        fom.SamplesMixin.__init__(self)
        self.request = SegmentRequest.create(classes, background, ModelChoice(preset=model, **choice))
        self._run = RequestSegmenter(self.request, segmenter)
        self._preprocess = False
        self.needs_fields = {"filepath": "filepath"}

    @property
    def mask_targets(self) -> dict[int, str]:
        """Pixel value -> class name (with a background policy, 0 is ``background``)."""
        names = [c[0] for c in self.request.class_lists]
        if self.request.background.has_background:
            names = ["background"] + names
        return dict(enumerate(names))

    @property
    def media_type(self) -> str:
        return "image"

    @property
    def ragged_batches(self) -> bool:
        return True

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self) -> bool:
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        self._preprocess = value

    def predict(self, arg, sample=None):
        import fiftyone as fo

        from dslo.imageio import read_image_file, to_rgb_array

        if sample is not None and getattr(sample, "filepath", None):
            result = self._run(lambda: read_image_file(sample.filepath))
        else:
            result = self._run(lambda: to_rgb_array(arg))
        dtype = np.uint8 if len(result.class_names) <= 256 else np.uint16
        return fo.Segmentation(mask=result.labels.astype(dtype))

    def predict_all(self, args, samples=None):
        samples = samples if samples is not None else [None] * len(args)
        return [self.predict(a, s) for a, s in zip(args, samples, strict=True)]


def apply(dataset, model: DsloModel, label_field: str = "dslo", **kwargs: Any) -> None:
    """``dataset.apply_model(model, label_field)`` and the field's ``mask_targets``."""
    dataset.apply_model(model, label_field=label_field, **kwargs)
    dataset.mask_targets = {**(dataset.mask_targets or {}), label_field: model.mask_targets}
    dataset.save()

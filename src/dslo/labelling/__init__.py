"""Pre-labels in the tools people label with: Label Studio, CVAT and FiftyOne.

Every route here adapts the one request (:class:`dslo.request.SegmentRequest`), the engines and
their per-image step (:mod:`dslo.engines.step`), and converts the label maps ``dslo segment``
writes, never segments differently:

- :mod:`dslo.labelling.brush`: Label Studio's brush RLE of a mask.
- :mod:`dslo.labelling.label_config`: the ``BrushLabels`` control of a labelling config.
- :mod:`dslo.labelling.label_studio`: predictions and tasks in Label Studio's JSON.
- :mod:`dslo.labelling.export`: an output folder of ``dslo segment`` as a Label Studio import file
  or a CVAT "Segmentation mask 1.1" archive.
- :mod:`dslo.labelling.cvat_function`: an auto-annotation function module for ``cvat-cli``.
- :mod:`dslo.labelling.fiftyone_model`: a FiftyOne model for ``dataset.apply_model``.

The Label Studio ML backend (a network server) lives in :mod:`dslo.servers.label_studio`.
"""

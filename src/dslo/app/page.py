"""The Gradio page of ``dslo app``: inputs on the left, results on the right, the head's steps below.

Only layout and wiring live here; what a request does is :class:`dslo.app.service.AppService`.
Element ids (``dslo-*``) are stable: the browser tests and the README's screenshot use them.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from dslo.app.service import BACKGROUNDS, MODES, AppService, Outcome

API_NAME = "segment"  # Client(...).predict(..., api_name="/segment")
MAX_EXAMPLES = 24

INTRO = """# dslo: segment an image into your own classes
Training-free open-vocabulary segmentation (DSLO). Upload, drop or paste an image, name the classes,
press **Segment**. Classes use the CLI's syntax: `car, road, sky` (a class per comma), or paste a
classes file (a class per line, synonyms separated by commas: `person, man, woman`)."""

HEAD_HELP = """**How the head saw it.** Left: CLIP's coarse evidence alone, each patch labelled with its
best class (no head). Middle: the NMS seeds the head starts from (grey: no class survived at that
patch). Below: the head's score of every class it kept, dark blue (low) to yellow (high)."""


def _keep_upload(default_preprocess):
    """``gr.Image``'s preprocessing, except that an uploaded file reaches the handler as it is (its
    path: no re-encoding), so the app reads exactly the bytes ``dslo segment`` would, and a file
    that is not an image reaches the handler, which says so in the page instead of failing inside
    Gradio. (Set on the instance: a ``gr.Image`` subclass would make Gradio write a ``.pyi`` stub
    beside this module at import, which fails in a read-only install.) Gradio has already checked
    that the path is one of its uploads when this runs."""

    def preprocess(payload):
        if payload is not None and payload.path and not str(payload.url or "").startswith("data:"):
            return str(payload.path)
        return default_preprocess(payload)

    return preprocess


def build_page(service: AppService, examples: list[Path] | None = None,
               nms_threshold: float = 0.5, start_mode: str = "mv") -> gr.Blocks:
    """The app's ``gr.Blocks`` (not launched); ``start_mode`` and ``nms_threshold`` are the page's
    starting values."""
    # Gradio keeps uploads and results in its cache: files older than an hour are removed hourly.
    with gr.Blocks(title="dslo", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(INTRO)
        if service.load_error:
            gr.Markdown(service.load_error_markdown(), elem_id="dslo-load-error")
        with gr.Row():
            with gr.Column(scale=2):
                image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"],
                                 elem_id="dslo-image")
                image.preprocess = _keep_upload(image.preprocess)
                classes = gr.Textbox(label="Classes", lines=2, elem_id="dslo-classes",
                                     placeholder="car, road, sky, building, tree, person")
                with gr.Row():
                    mode = gr.Radio([(label, key) for key, label in MODES.items()], value=start_mode,
                                    label="Head", elem_id="dslo-mode")
                    background = gr.Radio(list(BACKGROUNDS), value="none", label="Background",
                                          elem_id="dslo-background",
                                          info="none: every pixel gets one of your classes; stuff: a "
                                               "'background' class of stuff words; threshold: "
                                               "low-confidence pixels become background")
                with gr.Row():
                    bg_threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.05,
                                             label="Background threshold (CLIP class probability)",
                                             elem_id="dslo-bg-threshold")
                    nms = gr.Slider(0.05, 1.0, value=nms_threshold, step=0.05,
                                    label="NMS threshold θ", elem_id="dslo-nms")
                button = gr.Button("Segment", variant="primary", elem_id="dslo-segment")
                if examples:
                    shown = examples[:MAX_EXAMPLES]
                    gr.Examples([[str(p)] for p in shown], inputs=[image], label="Examples",
                                example_labels=[p.name for p in shown], examples_per_page=12,
                                elem_id="dslo-examples")
            with gr.Column(scale=3):
                status = gr.Markdown(label="Status", elem_id="dslo-status")
                overlay = gr.Image(label="Segmentation", type="pil", format="png",
                                   interactive=False, elem_id="dslo-overlay")
                table = gr.Dataframe(headers=["class", "pixels", "share %"],
                                     datatype=["str", "number", "number"], type="array",
                                     label="Classes and pixel shares", interactive=False,
                                     elem_id="dslo-table")
                with gr.Row():
                    mask_file = gr.DownloadButton("Mask (palette PNG)", elem_id="dslo-mask")
                    json_file = gr.DownloadButton("JSON", elem_id="dslo-json")
        with gr.Accordion("How the head saw it", open=True, elem_id="dslo-head"):
            gr.Markdown(HEAD_HELP)
            with gr.Row():
                coarse = gr.Image(label="CLIP arg-max (no head)", type="pil", format="png",
                                  interactive=False, elem_id="dslo-coarse")
                seeds = gr.Image(label="NMS seeds", type="pil", format="png", interactive=False,
                                 elem_id="dslo-seeds")
            heat = gr.Gallery(label="Head scores per kept class", columns=4, height=300,
                              object_fit="contain", format="png",
                              elem_id="dslo-heat")

        # The parameter names are the API's (Client.predict keywords).
        def run(image, classes, mode, background, background_threshold, nms_threshold):
            out: Outcome = service.segment(image, classes, mode, background, background_threshold,
                                           nms_threshold)
            return (out.message, out.overlay, out.table or None, out.files.get("mask"),
                    out.files.get("json"), out.coarse, out.seeds, out.heat or None)

        button.click(run, [image, classes, mode, background, bg_threshold, nms],
                     [status, overlay, table, mask_file, json_file, coarse, seeds, heat],
                     api_name=API_NAME, concurrency_limit=1)
    return page

"""What the app does for one request, without Gradio: read the image, parse the classes exactly as
the CLI does, segment with the shared models, write the same files ``dslo segment`` writes, and
turn every user error into a message for the page.

The service holds the run's :class:`dslo.request.ModelChoice` (from ``dslo app``'s flags); each
page request becomes a :class:`dslo.request.SegmentRequest` (its classes, background, head mode
and NMS threshold), whose provenance record the files carry, as ``dslo segment``'s do. The models
are loaded once, before the first request; requests run one at a time (a lock: one model, one
device). The model passes of the last images are kept (:meth:`dslo.segmenter.Segmenter.encode`),
so changing the classes, the mode, the background or θ decodes again without a model pass.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from dslo.app import views
from dslo.imageio import IMAGE_SUFFIXES, ImageReadError, read_image_file
from dslo.outputs import output_location, write_result
from dslo.request import ModelChoice, SegmentRequest

if TYPE_CHECKING:
    from dslo.segmenter import Encoding, Segmenter

MODES = {"mv": "M.V. (maximum velocity)", "op": "O.P. (optimal path)"}
BACKGROUNDS = ("none", "stuff", "threshold")
DOWNLOADS = ("mask", "json")  # the files of `dslo segment` offered for download
KEEP_REQUESTS = 64  # request folders kept for download; older ones are removed
KEEP_ENCODINGS = 4  # images whose model passes are kept (a few sessions changing settings)


@dataclass
class Outcome:
    """Everything the page shows for one request. On an error only ``message`` is set."""

    message: str
    ok: bool = False
    overlay: Image.Image | None = None
    table: list[list] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)  # "mask" / "json" → file
    coarse: Image.Image | None = None
    seeds: Image.Image | None = None
    heat: list[tuple[Image.Image, str]] = field(default_factory=list)


class UserError(ValueError):
    """A request the app cannot serve, with a message for the page."""


def parse_class_box(text: str | None) -> list[list[str]]:
    """The class box in the CLI's syntax: one line is ``--classes`` (a class per comma); several
    lines are a pasted classes file (a class per line, synonyms comma-separated, ``#`` comments
    and blank lines skipped), read by the same parser as ``--classes-file``."""
    from dslo.classes import parse_class_lines, parse_class_string

    text = text or ""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) <= 1:
        return parse_class_string(lines[0] if lines else "")
    return parse_class_lines(text, "the class box")


def background_spec(policy: str | None, threshold: float | None) -> str:
    """The page's background choice as the CLI's ``--background`` value."""
    policy = (policy or "none").strip().lower()
    if policy == "threshold":
        return str(float(threshold if threshold is not None else 0.5))
    return policy  # none, stuff, or already a CLI value such as "0.5"


class AppService:
    """Loads the models once and serves requests one at a time.

    models: the run's model choice (``dslo app``'s flags); the page chooses the mode and the
    background per request. Missing weights do not stop the app: the error's text (with its
    fixes) is kept and shown on the page instead. ``segmenter``: use this one instead of loading
    the models' (tests).
    """

    def __init__(self, models: ModelChoice, work_dir: str | Path | None = None,
                 log: Callable[[str], None] | None = None, segmenter: Any = None) -> None:
        from dslo.models import WeightsNotFoundError

        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._lock = threading.Lock()
        self.models = models
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="dslo-app-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.segmenter: Segmenter | None = segmenter
        self.load_error: str | None = None
        self._encodings: OrderedDict[str, Encoding] = OrderedDict()  # image digest -> its model passes
        self.model_passes = 0  # images encoded (a settings change on a kept image adds none)
        self._count = 0
        t0 = time.perf_counter()
        if self.segmenter is None:
            try:
                # the loaded segmenter keeps the preset's mode; each request decodes with its own
                self.segmenter = models.replace(mode=None).create_segmenter()
            except WeightsNotFoundError as exc:
                self.load_error = f"{type(exc).__name__}: {exc}"
                self._log(f"dslo app: models not loaded: {self.load_error}")
                return
        self._log(f"dslo app: models loaded in {time.perf_counter() - t0:.1f} s: {self.segmenter!r}")

    def load_error_markdown(self) -> str:
        if self.load_error is None:
            return ""
        return ("**Error:** the models could not be loaded, so this app cannot segment yet. "
                "Restart it once the weights are available:\n\n```\n" + self.load_error + "\n```")

    def request(self, classes: list[list[str]], background: str, mode: str,
                nms_threshold: float | None) -> SegmentRequest:
        """The request a page submission makes: the run's models with this mode and θ (the record
        ``dslo segment`` would stamp into its files for the same flags)."""
        settings = dict(self.models.settings)
        if nms_threshold is not None:
            settings.pop("nms_threshold", None)
            settings["nms_threshold"] = float(nms_threshold)
        return SegmentRequest.create(classes, background, self.models.replace(mode=mode, settings=settings))

    def segment(self, image_path: str | Path | None, classes: str | None, mode: str = "mv",
                background: str | None = "none", background_threshold: float | None = 0.5,
                nms_threshold: float | None = 0.5) -> Outcome:
        """One request → an :class:`Outcome`; never raises for bad input."""
        try:
            with self._lock:
                return self._segment(image_path, classes, mode, background, background_threshold,
                                     nms_threshold)
        except (UserError, ImageReadError, ValueError, TypeError, FileNotFoundError) as exc:
            return Outcome(f"**Error:** {exc}")
        except RuntimeError as exc:  # e.g. WeightsNotFoundError, out of memory
            return Outcome(f"**Error:** {type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug: the page says so in one line, the log has the traceback
            self._log("dslo app: request failed:\n" + traceback.format_exc())
            return Outcome(f"**Error:** an internal error ({type(exc).__name__}: {exc}); the "
                           "server log has the details.")

    def _encoding(self, seg: Segmenter, rgb) -> Encoding:
        """The model passes of this image: kept from an earlier request, or computed now."""
        key = hashlib.sha256(repr(rgb.shape).encode() + rgb.tobytes()).hexdigest()
        if key in self._encodings:
            self._encodings.move_to_end(key)
            return self._encodings[key]
        enc = seg.encode(rgb)
        self.model_passes += 1
        self._encodings[key] = enc
        while len(self._encodings) > KEEP_ENCODINGS:
            self._encodings.popitem(last=False)
        return enc

    def _segment(self, image_path, classes_text, mode, background, background_threshold,
                 nms_threshold) -> Outcome:
        seg = self.segmenter
        if seg is None:
            return Outcome(self.load_error_markdown())
        if not image_path:
            raise UserError("no image: upload one, paste one or pick an example")
        path = Path(image_path)
        classes = parse_class_box(classes_text)
        if mode not in MODES:
            raise UserError(f"unknown head mode {mode!r}; choose {' or '.join(MODES)}")
        try:
            rgb = read_image_file(path)  # what `dslo segment` reads; a clear message for a non-image
        except ImageReadError as exc:
            cause = exc.__cause__
            if isinstance(cause, UnidentifiedImageError):
                raise UserError(f"{path.name} is not an image dslo can read (use one of "
                                f"{', '.join(IMAGE_SUFFIXES)})") from None
            raise UserError(f"cannot read {path.name}: {cause or exc}") from None
        request = self.request(classes, background_spec(background, background_threshold), mode, nms_threshold)
        head = {} if nms_threshold is None else {"nms_threshold": float(nms_threshold)}
        result = seg.decode(self._encoding(seg, rgb), request.class_lists, request.background, mode=mode, **head)

        out_dir = self._request_dir()
        # The JSON names the image by its file name, as `dslo segment NAME` run beside it would.
        write_result(result, out_dir, path.stem, DOWNLOADS, image_name=path.name, request=request.record())
        seeds = views.seeds(result)
        notes = [f"Segmented **{path.name}** ({result.size[1]}×{result.size[0]}) into "
                 f"{len(result.class_names)} classes with {MODES[mode]}."]
        h, w = result.model["input_size"]
        if (h, w) != tuple(result.size):
            notes.append(f"The image is larger than the app's limit (max side {seg.max_side} px): "
                         f"the models saw it at {w}×{h}; the mask and the table are at full size.")
        if seeds is not None and result.grid is not None:
            notes.append(f"Seeds: {100 * seeds[1]:.0f} % of the {result.grid[0]}×{result.grid[1]} patches "
                         f"survived NMS (θ = {result.model['head']['nms_threshold']}).")
        return Outcome(
            message=" ".join(notes), ok=True, overlay=result.overlay(),
            table=views.class_table(result.labels, result.class_names),
            files={k: Path(output_location(out_dir, path.stem, k)) for k in DOWNLOADS},
            coarse=views.coarse_argmax(result), seeds=None if seeds is None else seeds[0],
            heat=views.heat_maps(result),
        )

    def _request_dir(self) -> Path:
        self._count += 1
        d = Path(tempfile.mkdtemp(prefix=f"{self._count:06d}-", dir=self.work_dir))
        old = sorted(p for p in self.work_dir.iterdir() if p.is_dir())[:-KEEP_REQUESTS]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)
        return d

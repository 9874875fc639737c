"""``dslo refine``: the DSLO head as a plug-in on another method's logits.

Give it a ``(K, h, w)`` logits file (``.npy`` or ``.pt``) from any segmentation method, the image
and the K class names; it computes the attention affinity of the image and runs the head
(``dslo.head.refine``), writing the same outputs as ``dslo segment``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dslo.cli._args import add_model_args, model_choice
from dslo.cli.segment import add_class_args, add_output_args, read_class_args


def load_logits(path: str | Path):
    """Read a ``(K, h, w)`` float tensor from ``.npy`` or ``.pt``/``.pth``.

    A ``.pt`` file may hold the tensor itself or a dict with one tensor (or a ``"logits"`` key);
    a leading batch dimension of 1 is dropped.
    """
    import numpy as np
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"logits file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            t = torch.from_numpy(np.load(path, allow_pickle=False))
        elif suffix in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
                if "logits" in tensors:
                    obj = tensors["logits"]
                elif len(tensors) == 1:
                    obj = next(iter(tensors.values()))
                else:
                    raise ValueError(
                        f"{path} holds a dict with tensors {sorted(tensors)}; save the (K, h, w) "
                        "logits alone or under the key 'logits'"
                    )
            if not isinstance(obj, torch.Tensor):
                raise ValueError(f"{path} holds a {type(obj).__name__}, not a tensor")
            t = obj
        else:
            raise ValueError(f"logits file {path} must end in .npy, .pt or .pth")
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or unsafe (pickled code) files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read logits file {path}: {first} (expected a (K, h, w) float "
                         "tensor saved with numpy.save or torch.save)") from exc
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"logits in {path} must be (K, h, w); got shape {tuple(t.shape)}")
    if not (t.is_floating_point()):
        raise ValueError(f"logits in {path} must be floating point; got {t.dtype}")
    if 0 in t.shape:
        raise ValueError(f"logits in {path} are empty: shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"logits in {path} contain NaN or infinite values")
    return t.float()


def _digest(path: Path) -> str:
    from dslo.hashing import file_digest

    return file_digest(path)[:20]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "refine",
        help="run the DSLO head on another method's logits",
        description="Refine a (K, h, w) logits map from any method with the DSLO head: attention "
                    "affinity of the image + optimal path / maximum velocity + joint bilateral "
                    "upsampling. Writes the same outputs as `dslo segment`.",
    )
    p.add_argument("--logits-file", required=True, type=Path, metavar="FILE",
                   help="(K, h, w) class logits, .npy or .pt, classes in the order given")
    p.add_argument("--image", required=True, type=Path, metavar="IMG", help="the image the logits belong to")
    add_class_args(p)
    p.add_argument("--attention", default="dinov2-reg-b14", metavar="NAME|DIR",
                   help="attention model (default dinov2-reg-b14; focus-s14 runs offline)")
    p.add_argument("--background", default="none", metavar="POLICY",
                   help="none (default) or a probability threshold on softmax(40 * logits), e.g. 0.5")
    add_model_args(p, models=False, mode_default="mv")
    add_output_args(p)
    p.set_defaults(func=run, mode="mv")


def run(args: argparse.Namespace) -> int:
    from dslo.classes import parse_background
    from dslo.cli._args import quiet_libraries
    from dslo.engines.plan import check_output_location, check_output_names, plan_resume, remove_files, stale_error
    from dslo.imageio import to_rgb_array
    from dslo.inputs import InputItem
    from dslo.models import create_attention_model
    from dslo.models.registry import check_model_name
    from dslo.models.weights import resolve_device
    from dslo.outputs import write_result
    from dslo.segmenter import Segmenter

    classes = read_class_args(args)
    background = parse_background(args.background)
    logits = load_logits(args.logits_file)  # NaN, shape and type checked before any model loads
    if logits.shape[0] != len(classes):
        raise ValueError(
            f"{args.logits_file} has {logits.shape[0]} class maps but {len(classes)} classes were "
            "given; pass the classes in the order of the logits"
        )
    # the head's own defaults (no preset: the logits come from elsewhere), checked with --set
    # (and --accel against --device)
    head = model_choice(args, preset="").head_settings()
    to_rgb_array(args.image)  # a missing or broken image fails now, not after the model loads
    request = {
        "command": "refine", "classes": [list(c) for c in classes], "background": background.describe(),
        "logits_file": str(args.logits_file), "logits_sha256": _digest(args.logits_file),
        "attention": str(args.attention), "mode": args.mode, "head": head,
        "attention_options": dict(sorted(dict(args.attention_options).items())), "max_side": args.max_side or None,
        **({"accel": args.accel} if args.accel != "none" else {}),
    }
    check_output_location(args.output)
    image = InputItem(str(args.image.resolve()), str(args.image), args.image.stem)
    names = check_output_names([image], args.output)
    if names.errors:
        raise ValueError(names.errors[0])
    plan = plan_resume([image], args.output, args.save, request, overwrite=args.overwrite)
    if plan.stale:
        raise stale_error(plan, 1, args.output)
    if plan.done:
        print(f"dslo refine: outputs for {args.image} made by this same request exist in {args.output}; "
              "use --overwrite to redo", file=sys.stderr)
        return 0
    if args.quiet:
        quiet_libraries()
    device = resolve_device(args.device)
    check_model_name("attention", args.attention)
    attention = create_attention_model(args.attention, device=str(device), **dict(args.attention_options))
    seg = Segmenter(None, attention, mode=args.mode, head_settings=dict(args.settings),
                    max_side=args.max_side or None, background=background, accel=args.accel,
                    info={"preset": None, "logits": f"file:{args.logits_file}",
                          "attention": str(args.attention), "device": str(device)})
    result = seg.refine(logits.to(device), args.image, classes)
    write_result(result, args.output, image.stem, args.save, image_name=image.name, request=request)
    remove_files(plan.remove.get(image.stem, ()))
    print(f"dslo refine: wrote {', '.join(args.save)} for {args.image} -> {args.output}", file=sys.stderr)
    return 0

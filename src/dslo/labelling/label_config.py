"""The part of a Label Studio labelling config dslo fills: a ``BrushLabels`` control, the
``Image`` it draws on, and its ``Label`` values (the classes).

    <View>
      <Image name="image" value="$image"/>
      <BrushLabels name="tag" toName="image">
        <Label value="car"/><Label value="road, street"/>
      </BrushLabels>
    </View>

Each ``Label`` value is one class, read by dslo's class rule (commas separate synonyms: the label
``road, street`` is segmented as "road" or "street" and written back as ``road, street``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

__all__ = ["BrushTarget", "LabelConfigError", "parse_label_config", "default_label_config", "MAX_CONFIG_BYTES"]

MAX_CONFIG_BYTES = 1 << 20  # a labelling config is a few KB; a megabyte is a generous cap


class LabelConfigError(ValueError):
    """A labelling config dslo cannot pre-label, with what to change."""


@dataclass(frozen=True)
class BrushTarget:
    """Where predictions go: ``from_name`` (the BrushLabels control), ``to_name`` (its Image),
    ``value`` (the task data key holding the image URL, ``image`` for ``$image``), ``labels`` (the
    Label values, in config order: class id i of a request made from them is ``labels[i]``)."""

    from_name: str
    to_name: str
    value: str
    labels: tuple[str, ...]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_label_config(xml: str, control: str | None = None) -> BrushTarget:
    """The ``BrushLabels`` control of ``xml`` (the one named ``control`` when given; otherwise the
    only one), checked: its ``toName`` names an ``Image`` of the config, it has at least one
    ``Label`` and no label is given twice. :class:`LabelConfigError` saying what is wrong."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("the labelling config is empty; give a config with a <BrushLabels> control")
    if len(xml.encode("utf-8", "replace")) > MAX_CONFIG_BYTES:
        raise LabelConfigError(f"the labelling config is larger than {MAX_CONFIG_BYTES // 1024} KB")
    if re.search(r"<!(DOCTYPE|ENTITY)", xml, re.IGNORECASE):
        # no DTDs: entity expansion is how an XML document asks a parser for gigabytes
        raise LabelConfigError("the labelling config declares a DOCTYPE or ENTITY; Label Studio configs have none")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"the labelling config is not valid XML ({exc})") from None
    images = {el.get("name"): el for el in root.iter() if _local(el.tag) == "Image" and el.get("name")}
    brushes = [el for el in root.iter() if _local(el.tag) == "BrushLabels"]
    if not brushes:
        raise LabelConfigError("the labelling config has no <BrushLabels> control; dslo writes brush masks: add "
                               '<BrushLabels name="tag" toName="image"> with one <Label value="..."/> per class')
    names = [b.get("name") or "" for b in brushes]
    if control is not None:
        if control not in names:
            raise LabelConfigError(f"no <BrushLabels> control named {control!r} in the labelling config "
                                   f"(it has {', '.join(repr(n) for n in names)})")
        brush = brushes[names.index(control)]
    elif len(brushes) > 1:
        raise LabelConfigError(f"the labelling config has {len(brushes)} <BrushLabels> controls "
                               f"({', '.join(repr(n) for n in names)}); choose one with --control NAME")
    else:
        brush = brushes[0]
    from_name = brush.get("name") or ""
    if not from_name:
        raise LabelConfigError("the <BrushLabels> control has no name attribute")
    to_name = (brush.get("toName") or "").split(",")[0].strip()
    if to_name not in images:
        known = ", ".join(repr(n) for n in images) or "none"
        raise LabelConfigError(f"<BrushLabels name={from_name!r}> points to toName={to_name!r}, which is not an "
                               f"<Image> of the config (Image names: {known})")
    value = (images[to_name].get("value") or "").strip()
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(f'<Image name={to_name!r}> needs value="$key" (the task data key of the image URL)')
    labels = [(el.get("value") or "").strip() for el in brush.iter() if _local(el.tag) == "Label"]
    if not labels:
        raise LabelConfigError(f"<BrushLabels name={from_name!r}> has no <Label value=\"...\"/>: "
                               "add one per class to pre-label")
    if any(not lab for lab in labels):
        raise LabelConfigError(f"<BrushLabels name={from_name!r}> has a <Label> without a value")
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise LabelConfigError(f"<BrushLabels name={from_name!r}> lists {', '.join(map(repr, dup))} more than once")
    return BrushTarget(from_name, to_name, value[1:], tuple(labels))


def default_label_config(labels: list[str], from_name: str = "tag", to_name: str = "image",
                         value: str = "image") -> str:
    """A labelling config with one ``BrushLabels`` control over the given labels (what a project
    for ``dslo segment --format label-studio`` output can use)."""
    from xml.sax.saxutils import quoteattr

    items = "\n".join(f"    <Label value={quoteattr(lab)}/>" for lab in labels)
    return (f"<View>\n  <Image name={quoteattr(to_name)} value={quoteattr('$' + value)}/>\n"
            f"  <BrushLabels name={quoteattr(from_name)} toName={quoteattr(to_name)}>\n{items}\n"
            "  </BrushLabels>\n</View>\n")

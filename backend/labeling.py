"""What Label Studio sends, translated: the labeling config's tag names, and the annotator's
smart keypoints (percent of the image) as core ``Click``s (pixels).

Percent p of a side of S pixels is the point p / 100 * S of the continuous image, where pixel
i spans [i, i + 1); a point at exactly 100 % is moved onto the last pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from label_studio_tools.core.label_config import parse_config

from focuscut_core import Click

from . import settings as settings_module
from .errors import RequestError


@dataclass(frozen=True)
class BrushTag:
    name: str  # the BrushLabels tag's name (a result's from_name)
    image: str  # the Image tag it draws on (to_name)
    labels: tuple[str, ...]


@dataclass(frozen=True)
class LabelConfig:
    """The parts of a labeling config that click-to-mask needs."""

    images: dict  # Image tag name -> the task data key of its URL ("$image" -> "image")
    brushes: tuple[BrushTag, ...]
    keypoints: frozenset  # names of KeyPointLabels tags

    def brush_for(self, image: str, label: str) -> BrushTag:
        """The BrushLabels tag on ``image`` that has ``label`` (422 if none has)."""
        for brush in self.brushes:
            if brush.image == image and label in brush.labels:
                return brush
        raise RequestError(f"no BrushLabels tag on image {image!r} has the label {label!r} "
                           "(the keypoint and brush labels must have the same values)", 422)


def parse_label_config(xml) -> LabelConfig:
    """A labeling config (XML text) -> its Image, BrushLabels and KeyPointLabels names.

    400 if it is not XML, 422 if it has no Image or no BrushLabels on an Image.
    """
    if not isinstance(xml, str) or not xml.strip():
        raise RequestError("label_config (the project's labeling config) is missing", 400)
    try:
        tags = parse_config(xml)
    except Exception as exc:  # label_studio_tools raises its own XML error types
        raise RequestError(f"label_config is not a valid labeling config: {exc}", 400) from exc
    images, brushes, keypoints = {}, [], set()
    for name, tag in tags.items():
        inputs = [i for i in tag.get("inputs", []) if i.get("type") == "Image"]
        for to_name, inp in zip(tag.get("to_name", []), inputs):
            images[to_name] = inp.get("value")
        if tag.get("type") == "BrushLabels" and inputs:
            brushes.append(BrushTag(name, tag["to_name"][0], tuple(tag.get("labels", ()))))
        elif tag.get("type") == "KeyPointLabels":
            keypoints.add(name)
    if not images:
        raise RequestError("the labeling config has no Image tag", 422)
    if not brushes:
        raise RequestError("the labeling config has no BrushLabels tag on an Image", 422)
    return LabelConfig(images, tuple(brushes), frozenset(keypoints))


@dataclass(frozen=True)
class Point:
    """One smart keypoint as sent: ``x``, ``y`` in percent of the image width and height."""

    x: float
    y: float
    is_positive: bool


@dataclass(frozen=True)
class ClickRequest:
    """The keypoints of the clicked label, in click order, and where they were put."""

    label: str
    keypoint_tag: str  # from_name of the keypoints
    image: str  # to_name: the Image tag
    points: tuple[Point, ...]


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{what} must be a number, got {type(value).__name__}", 400)
    try:
        value = float(value)
    except OverflowError:  # a JSON integer with hundreds of digits
        value = math.inf if value > 0 else -math.inf
    if not math.isfinite(value):
        raise RequestError(f"{what} is not finite ({value})", 422)
    if not 0.0 <= value <= 100.0:
        raise RequestError(f"{what} = {value} is outside the image (percent must be in [0, 100])", 422)
    return value


def _label(value: dict, i: int) -> str:
    labels = value.get("keypointlabels") or value.get("labels")
    if not isinstance(labels, list) or not labels or not isinstance(labels[0], str):
        raise RequestError(f"context.result[{i}] has no keypointlabels label", 400)
    return labels[0]


def parse_context(context, max_clicks: int | None = None) -> ClickRequest | None:
    """The clicks of an interactive request's ``context`` (None when it has no keypoints).

    The clicked label is the last keypoint's; only keypoints of that label and tag count.
    ``is_positive`` false marks a negative click; a missing flag means positive. More than
    ``max_clicks`` keypoints (default FOCUSCUT_MAX_CLICKS) is refused (422): each costs a
    network pass, and thousands would hold a worker past gunicorn's timeout.
    """
    if max_clicks is None:
        max_clicks = settings_module.get().max_clicks
    if context is None:
        return None
    if not isinstance(context, dict):
        raise RequestError("context must be an object with a 'result' list", 400)
    results = context.get("result")
    if results is None:
        return None
    if not isinstance(results, list):
        raise RequestError("context.result must be a list", 400)
    items = []
    for i, item in enumerate(results):
        if not isinstance(item, dict):
            raise RequestError(f"context.result[{i}] must be an object", 400)
        if str(item.get("type", "")).lower() != "keypointlabels":
            continue
        value = item.get("value")
        if not isinstance(value, dict):
            raise RequestError(f"context.result[{i}].value must be an object", 400)
        positive = item.get("is_positive", True)
        if positive is None:
            positive = True
        if not isinstance(positive, bool):
            raise RequestError(f"context.result[{i}].is_positive must be true or false", 400)
        point = Point(_number(value.get("x"), f"context.result[{i}].value.x"),
                      _number(value.get("y"), f"context.result[{i}].value.y"), positive)
        items.append((_label(value, i), item.get("from_name"), item.get("to_name"), point))
        if len(items) > max_clicks:
            raise RequestError(f"context.result has over {max_clicks} keypoints: at most {max_clicks} clicks "
                               f"per object (FOCUSCUT_MAX_CLICKS)", 422)
    if not items:
        return None
    label, tag, image, _ = items[-1]
    if not isinstance(image, str) or not image:
        raise RequestError("the keypoints have no to_name (the Image tag they were put on)", 400)
    points = tuple(p for lab, t, img, p in items if (lab, t, img) == (label, tag, image))
    return ClickRequest(label, tag, image, points)


def percent_to_pixels(p: float, size: int) -> float:
    """Percent [0, 100] of a side of ``size`` pixels -> a pixel coordinate in [0, size)."""
    v = p / 100.0 * size
    return v if v < size else math.nextafter(float(size), 0.0)


def to_clicks(points, height: int, width: int) -> list[Click]:
    """Core clicks (float pixels, row then column) for points in percent of an HxW image."""
    return [Click(percent_to_pixels(p.y, height), percent_to_pixels(p.x, width), p.is_positive) for p in points]

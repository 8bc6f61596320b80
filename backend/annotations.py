"""A Label Studio project's corrected masks as training samples.

Reads the project export (``GET /api/projects/<id>/export?exportType=JSON`` through
label-studio-sdk: a JSON list of tasks with ``annotations[].result[]``), takes each task's most
recent non-cancelled annotation and turns every ``brushlabels`` region into one sample
``(image HxWx3 uint8, mask HxW uint8 with 0 background / 255 object)``. Anything unusable is
skipped and counted by reason, never fatal.
"""
from __future__ import annotations

import json
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

import cv2
import numpy as np
from label_studio_sdk.converter.brush import decode_rle

from focuscut_core.views import as_rgb_uint8

HOLDOUT_BUCKETS = 4  # one task in four (by a stable hash of its id) is held out for evaluation


@dataclass
class Sample:
    task: int
    image: np.ndarray  # HxWx3 uint8
    mask: np.ndarray   # HxW uint8, 0 / 255


@dataclass
class ProjectSamples:
    samples: list[Sample] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> number of regions or annotations
    annotations: int = 0  # annotations read (one per annotated task)


def fetch_export(base_url: str, api_key: str, project: str, timeout: float = 60.0) -> list[dict]:
    """All annotated tasks of ``project`` as Label Studio exports them (JSON)."""
    from label_studio_sdk.client import LabelStudio

    client = LabelStudio(base_url=base_url, api_key=api_key, timeout=timeout)
    chunks = client.projects.exports.download_sync(id=int(project), export_type="JSON")
    return json.loads(b"".join(chunks))


def latest_annotation(task: dict) -> dict | None:
    """The task's most recently updated annotation that was not cancelled (skipped)."""
    kept = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not kept:
        return None
    return max(kept, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id") or 0))


def decode_region(result: dict, max_pixels: int = 50_000_000) -> np.ndarray:
    """HxW uint8 0/255 mask of one brushlabels result; ValueError if its RLE does not decode.

    The RLE's header (its first 4 bytes: the number of values) must be H*W*4 with H*W at most
    ``max_pixels``: the decoder allocates and fills that many values, so an annotation that
    claims 4 billion would take the worker's memory.
    """
    value = result.get("value") or {}
    height, width = int(result["original_height"]), int(result["original_width"])
    rle = value.get("rle")
    if not 0 < height * width <= max_pixels or height <= 0:
        raise ValueError(f"brush region of {height}x{width} pixels is empty or over {max_pixels}")
    if not isinstance(rle, list) or len(rle) < 4 or not all(isinstance(b, int) and 0 <= b < 256 for b in rle[:4]):
        raise ValueError("brush RLE is not a list of bytes")
    declared = int.from_bytes(bytes(rle[:4]), "big")
    if declared != height * width * 4:
        raise ValueError(f"brush RLE holds {declared} values, not {height}x{width}x4")
    try:
        rgba = np.asarray(decode_rle(value["rle"]), dtype=np.uint8)
        alpha = rgba.reshape(height, width, 4)[:, :, 3]
    except Exception as exc:  # the decoder raises anything from IndexError to ValueError on bad input
        raise ValueError(f"brush RLE does not decode to {height}x{width}: {exc}") from exc
    return np.where(alpha > 127, 255, 0).astype(np.uint8)


def task_image_url(task: dict) -> str | None:
    """The first string in the task data that looks like an image reference."""
    data = task.get("data") or {}
    value = data.get("image")
    if isinstance(value, str):
        return value
    return next((v for v in data.values() if isinstance(v, str) and (v.startswith(("/", "http")))), None)


def downscale(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` with its long side at most ``max_side`` px (area interpolation; None: as is)."""
    scale = max_side / max(image.shape[:2]) if max_side else 1.0
    if scale >= 1:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def build_samples(tasks: Iterable[dict], load_image: Callable[[str], np.ndarray],
                  max_side: int | None = None) -> ProjectSamples:
    """Samples from exported ``tasks``; ``load_image(url)`` returns an image array or raises.
    With ``max_side``, images and masks are downscaled to that long side (px) as they are read, so
    a large project does not hold its full-resolution images in memory."""
    out = ProjectSamples()
    for task in tasks:
        annotation = latest_annotation(task)
        if annotation is None:
            continue
        out.annotations += 1
        regions = [r for r in annotation.get("result") or [] if r.get("type") == "brushlabels"]
        if not regions:
            out.skipped["no_brush_region"] += 1
            continue
        url = task_image_url(task)
        try:
            full = as_rgb_uint8(np.asarray(load_image(url)))
        except Exception:
            out.skipped["image_unavailable"] += 1
            continue
        image = downscale(full, max_side)
        for region in regions:
            try:
                mask = decode_region(region)
            except (ValueError, KeyError, TypeError):
                out.skipped["corrupt_rle"] += 1
                continue
            if mask.shape != full.shape[:2]:
                out.skipped["size_mismatch"] += 1
            elif not mask.any():
                out.skipped["empty_mask"] += 1
            else:
                small = cv2.resize(mask, image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
                out.samples.append(Sample(int(task["id"]), image, small))
    return out


def is_holdout(task_id: int) -> bool:
    """Stable across jobs: a held-out task is never trained on by any version."""
    return zlib.crc32(str(task_id).encode()) % HOLDOUT_BUCKETS == 0


def split(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """(train, held-out). With no held-out task but two or more tasks, the last task is held out."""
    train = [s for s in samples if not is_holdout(s.task)]
    held = [s for s in samples if is_holdout(s.task)]
    tasks = sorted({s.task for s in samples})
    if not held and len(tasks) >= 2:
        train = [s for s in samples if s.task != tasks[-1]]
        held = [s for s in samples if s.task == tasks[-1]]
    return train, held

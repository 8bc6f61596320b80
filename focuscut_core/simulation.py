"""Training samples: augmented global views with simulated clicks, and focus patches (Algorithm 1).

Pure functions of (arrays, numpy Generator). Images are HxWx3 uint8, masks HxW uint8 with
0 / 255 / 128 (ignored). A view is square, ``size`` x ``size`` pixels; clicks are in its pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from .clicks import IGNORE_LABEL, Click
from .views import PAD_RGB, crop_square, resize


@dataclass
class View:
    """One network input before encoding: ``rgb`` (SxSx3 uint8), ``gt`` (SxS uint8 0/255/128),
    ``prev`` (SxS bool previous mask), ``clicks`` in view pixels."""

    rgb: np.ndarray
    gt: np.ndarray
    prev: np.ndarray
    clicks: list


def augment(image: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator,
            scale_range=(0.75, 1.4), min_object_px: int = 64, tries: int = 10,
            short_side: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random scale, horizontal flip and a ``size``-square crop holding part of the object.

    The image is scaled so its short side is ``short_side`` (0: ``size``) pixels times a factor
    from ``scale_range``; the crop is padded with the mean colour (mask: ignored) where the image is
    smaller. A ``short_side`` above ``size`` trains on smaller crops at the inference scale.
    """
    scale = (short_side or size) * rng.uniform(*scale_range) / min(mask.shape)
    h, w = max(1, round(mask.shape[0] * scale)), max(1, round(mask.shape[1] * scale))
    image, mask = resize(image, h, w), resize(mask, h, w, nearest=True)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    half = size // 2
    best = None
    for _ in range(tries):
        row, col = _crop_centre(h, size, rng), _crop_centre(w, size, rng)
        gt = crop_square(mask, row, col, half, IGNORE_LABEL)[:size, :size]
        count = int((gt == 255).sum())
        if best is None or count > best[0]:
            best = (count, row, col, gt)
        if count >= min_object_px:
            break
    _, row, col, gt = best
    rgb = crop_square(np.ascontiguousarray(image), row, col, half, PAD_RGB)[:size, :size]
    return np.ascontiguousarray(rgb), np.ascontiguousarray(gt)


def _crop_centre(length: int, size: int, rng: np.random.Generator) -> int:
    """Centre of a crop of ``size`` (top = centre - size // 2): inside when it fits, else centred."""
    half = size // 2
    if length >= size:
        return int(rng.integers(half, length - size + half + 1))
    return half + (length - size) // 2


def global_clicks(gt: np.ndarray, rng: np.random.Generator, max_extra_pos: int = 2, max_neg: int = 3,
                  neg_band=(5, 40)) -> list[Click]:
    """Initial clicks for a global view: a positive click well inside the object (where the distance
    to its border is at least half the maximum), 0..max_extra_pos more positives inside, and
    0..max_neg negatives in the background within ``neg_band`` pixels of the object."""
    obj = gt == 255
    inside = ndimage.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
    clicks = [_pick(rng, inside >= 0.5 * inside.max(), True)]
    for _ in range(int(rng.integers(0, max_extra_pos + 1))):
        clicks.append(_pick(rng, inside >= 3, True))
    outside = ndimage.distance_transform_edt(~obj)
    band = (outside >= neg_band[0]) & (outside <= neg_band[1]) & (gt == 0)
    for _ in range(int(rng.integers(0, max_neg + 1))):
        clicks.append(_pick(rng, band, False))
    return [c for c in clicks if c is not None]


def _pick(rng: np.random.Generator, region: np.ndarray, positive: bool) -> Click | None:
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        return None
    i = int(rng.integers(ys.size))
    return Click(ys[i] + 0.5, xs[i] + 0.5, positive)


def degrade_mask(gt: np.ndarray, rng: np.random.Generator, max_kernel_ratio: float = 0.08) -> np.ndarray:
    """A coarse previous mask from a ground truth (bool HxW): random dilations and erosions with
    kernels up to ``max_kernel_ratio`` of the side, applied in random order (as CascadePSP)."""
    mask = (gt == 255).astype(np.uint8)
    side = max(3, int(max_kernel_ratio * min(mask.shape)))
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(1, side + 1))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        mask = cv2.dilate(mask, kernel) if rng.random() < 0.5 else cv2.erode(mask, kernel)
    return mask.astype(bool)


def focus_patch(image: np.ndarray, gt: np.ndarray, size: int, rng: np.random.Generator,
                alpha=(0.2, 0.8), beta=(-0.3, 0.3), max_extra_pos: int = 3, max_neg: int = 3) -> View | None:
    """Algorithm 1: a square patch around a jittered boundary point of the object, resized to
    ``size``, with a degraded previous mask and clicks (the centre always, plus 0..3 positives and
    0..3 negatives inside). None when the mask has no object."""
    obj = gt == 255
    area = int(obj.sum())
    if area == 0:
        return None
    radius = max(2, int(round(rng.uniform(*alpha) * np.sqrt(area))))
    boundary = obj & ~ndimage.binary_erosion(obj)
    ys, xs = np.nonzero(boundary)
    i = int(rng.integers(ys.size))
    row = int(round(ys[i] + rng.uniform(*beta) * radius))
    col = int(round(xs[i] + rng.uniform(*beta) * radius))
    patch_gt = crop_square(gt, row, col, radius, IGNORE_LABEL)
    patch_rgb = crop_square(image, row, col, radius, PAD_RGB)
    side = 2 * radius + 1
    scale = size / side
    rgb = resize(patch_rgb, size, size)
    view_gt = resize(patch_gt, size, size, nearest=True)
    prev = resize(degrade_mask(patch_gt, rng).astype(np.uint8), size, size, nearest=True).astype(bool)
    centre_label = patch_gt[radius, radius]
    clicks = [Click((radius + 0.5) * scale, (radius + 0.5) * scale, centre_label == 255)]
    for positive, count in ((True, rng.integers(0, max_extra_pos + 1)), (False, rng.integers(0, max_neg + 1))):
        region = view_gt == (255 if positive else 0)
        for _ in range(int(count)):
            c = _pick(rng, region, positive)
            if c is not None:
                clicks.append(c)
    return View(rgb, view_gt, prev, clicks)

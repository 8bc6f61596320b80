"""Segmentation metrics of the interactive-segmentation protocol.

``pred`` is an HxW bool mask; ``gt`` an HxW uint8 mask (0, 255, 128 = ignored). Ignored pixels
count in no metric. Distances are in pixels.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from .clicks import IGNORE_LABEL


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of the object, over non-ignored pixels (1.0 when both are empty)."""
    valid = gt != IGNORE_LABEL
    obj = gt == 255
    inter = np.count_nonzero(pred & obj & valid)
    union = np.count_nonzero((pred | obj) & valid)
    return 1.0 if union == 0 else inter / union


def _inner_boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` px of its border (the image edge counts as border)."""
    if width <= 0 or not mask.any():
        return np.zeros_like(mask)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    eroded = cv2.erode(np.pad(mask.astype(np.uint8), 1), kernel)[1:-1, 1:-1].astype(bool)
    return mask & ~eroded


def boundary_iou(pred: np.ndarray, gt: np.ndarray, dilation_ratio: float = 0.02) -> float:
    """Boundary IoU (Cheng et al., CVPR 2021): IoU of the masks' inner bands of width
    ``dilation_ratio`` x the image diagonal (at least 1 px)."""
    width = max(1, int(round(dilation_ratio * np.hypot(*gt.shape))))
    valid = gt != IGNORE_LABEL
    g = _inner_boundary(gt == 255, width) & valid
    p = _inner_boundary(pred, width) & valid
    union = np.count_nonzero(g | p)
    return 1.0 if union == 0 else np.count_nonzero(g & p) / union


def _contour(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def assd(pred: np.ndarray, gt: np.ndarray) -> float:
    """Average symmetric surface distance between the masks' contours, px. When one mask is empty
    and the other is not, the image diagonal; 0 when both are empty."""
    obj = gt == 255
    cp, cg = _contour(pred), _contour(obj)
    if not cp.any() and not cg.any():
        return 0.0
    if not cp.any() or not cg.any():
        return float(np.hypot(*gt.shape))
    to_g = ndimage.distance_transform_edt(~cg)
    to_p = ndimage.distance_transform_edt(~cp)
    distances = np.concatenate([to_g[cp], to_p[cg]])
    return float(distances.mean())


def noc(ious, threshold: float, max_clicks: int = 20) -> int:
    """Clicks needed to reach IoU >= threshold (``ious[k]`` after click k + 1); max_clicks if never."""
    for k, value in enumerate(ious[:max_clicks]):
        if value >= threshold:
            return k + 1
    return max_clicks

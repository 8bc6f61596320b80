"""The focus view's decisions: Algorithm 2 (whether and how far to focus) and the range update of
Algorithm 3 (progressive focus). Pure functions over HxW bool masks; distances are Chebyshev
(chessboard) distances in pixels of the masks they are given.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class FocusDecision:
    focus: bool
    radius: int  # half side of the square crop, pixels; the crop is (2r+1) wide


def focus_decision(prev_mask: np.ndarray, mask: np.ndarray, point: tuple[int, int],
                   lam: float = 0.2, omega: float = 1.75, min_radius: int = 5) -> FocusDecision:
    """Algorithm 2 for a click at pixel ``point`` = (row, col).

    If the click's pixel changed between ``prev_mask`` (P') and ``mask`` (P), A is the
    4-connected changed region holding it: focus only when |A| < lam * |P|, with r~ the largest
    Chebyshev distance from the click to A. Otherwise always focus, with r~ the Chebyshev
    distance from the click to the nearest pixel of P' of the other class (the previous
    boundary). r = max(min_radius, round(omega * r~)).
    """
    row, col = point
    changed = (prev_mask != mask).astype(np.uint8)
    if changed[row, col]:
        region = np.zeros((changed.shape[0] + 2, changed.shape[1] + 2), np.uint8)
        area, _, _, (x, y, w, h) = cv2.floodFill(changed, region, (col, row), 2, flags=4)
        focus = area < lam * float(mask.sum())
        r_tilde = max(row - y, y + h - 1 - row, col - x, x + w - 1 - col)
    else:
        focus = True
        r_tilde = distance_to_other_class(prev_mask, point)
    return FocusDecision(bool(focus), max(min_radius, int(round(omega * r_tilde))))


def distance_to_other_class(mask: np.ndarray, point: tuple[int, int]) -> int:
    """Chebyshev distance from ``point`` to the nearest pixel whose class differs from its own.

    Searches squares of doubling size, so the cost follows the distance, not the image. When the
    whole mask is one class there is no boundary: the distance to the farthest image corner.
    """
    row, col = point
    height, width = mask.shape
    own = mask[row, col]
    radius = 8
    while True:
        y0, y1 = max(0, row - radius), min(height, row + radius + 1)
        x0, x1 = max(0, col - radius), min(width, col + radius + 1)
        ys, xs = np.nonzero(mask[y0:y1, x0:x1] != own)
        if ys.size:
            return int(np.maximum(np.abs(ys + y0 - row), np.abs(xs + x0 - col)).min())
        if y0 == 0 and x0 == 0 and y1 == height and x1 == width:
            return max(row, height - 1 - row, col, width - 1 - col)
        radius *= 2


def progressive_radius(prev_patch: np.ndarray, patch: np.ndarray, radius: int, first_radius: int,
                       erode_px: float, omega_hat: float = 1.1, min_ratio: float = 0.2) -> int:
    """One range update of Algorithm 3 on a (2r+1)-square patch centred on the click.

    A^ = (prev_patch != patch) eroded by ``erode_px`` pixels (Euclidean distance to the region's
    border above erode_px). When A^ is empty, 0 (stop). Else omega_hat times the largest Chebyshev
    distance from the centre to A^, kept within [min_ratio * first_radius, radius].
    """
    changed = (prev_patch != patch).astype(np.uint8)
    if not changed.any():
        return 0
    depth = cv2.distanceTransform(np.pad(changed, 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    ys, xs = np.nonzero(depth > erode_px)
    if ys.size == 0:
        return 0
    centre = patch.shape[0] // 2
    r_tilde = int(np.maximum(np.abs(ys - centre), np.abs(xs - centre)).max())
    lower = max(1, int(round(min_ratio * first_radius)))
    return int(min(radius, max(lower, round(omega_hat * r_tilde))))


def fast_pfs_radii(radius: int, rounds: int = 3, shrink: float = 0.8, min_radius: int = 1) -> list[int]:
    """The fast PFS ranges: r, shrink*r, shrink^2*r, ... (``rounds`` of them, rounded, >= min_radius)."""
    return [max(min_radius, int(round(radius * shrink**t))) for t in range(rounds)]

"""Clicks, their Gaussian maps, and the robot user of the evaluation protocol.

Coordinates are pixels of the image they refer to, ``y`` (row) then ``x`` (column), as floats;
pixel ``(r, c)`` covers ``[r, r + 1) x [c, c + 1)`` and a click at ``(r + 0.5, c + 0.5)`` is
its centre. Masks are HxW arrays.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

IGNORE_LABEL = 128
CLICK_SIGMA = 10.0  # px of the network input: full width at half maximum of the Gaussian


@dataclass(frozen=True)
class Click:
    """One click: ``y``, ``x`` in pixels of its image; ``is_positive`` marks the object."""

    y: float
    x: float
    is_positive: bool = True

    def __post_init__(self):
        # Plain Python numbers whatever the caller passed: a numpy float64 scalar would make the
        # click maps' float32 arithmetic run in float64, so the same click would give another mask.
        object.__setattr__(self, "y", float(self.y))
        object.__setattr__(self, "x", float(self.x))
        object.__setattr__(self, "is_positive", bool(self.is_positive))

    def pixel(self) -> tuple[int, int]:
        """The (row, column) of the pixel under the click."""
        return int(math.floor(self.y)), int(math.floor(self.x))

    def to_list(self) -> list:
        return [self.y, self.x, self.is_positive]

    @classmethod
    def from_list(cls, item) -> "Click":
        return cls(float(item[0]), float(item[1]), bool(item[2]))


def validate_clicks(clicks, height: int, width: int) -> None:
    """ValueError unless every click is finite and lies inside an HxW image."""
    for i, c in enumerate(clicks):
        if not (math.isfinite(c.y) and math.isfinite(c.x)):
            raise ValueError(f"click {i} has a non-finite coordinate (y={c.y}, x={c.x})")
        if not (0 <= c.y < height and 0 <= c.x < width):
            raise ValueError(f"click {i} at (y={c.y}, x={c.x}) lies outside the {height}x{width} image")


def click_maps(clicks, height: int, width: int, scale_y: float = 1.0, scale_x: float = 1.0,
               offset_y: float = 0.0, offset_x: float = 0.0, sigma: float = CLICK_SIGMA) -> np.ndarray:
    """Positive and negative Gaussian click maps, ``(2, height, width)`` float32 in [0, 1].

    A click at image point (y, x) lands at map point ((y - offset_y) * scale_y, (x - offset_x) *
    scale_x); clicks that land outside the map still reach into it. Each map is
    exp(-4 ln2 d^2 / sigma^2) of the Euclidean distance d to the nearest click of its polarity.
    """
    maps = np.zeros((2, height, width), np.float32)
    rows = np.arange(height, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(width, dtype=np.float32)[None, :] + 0.5
    for channel, positive in ((0, True), (1, False)):
        points = [((c.y - offset_y) * scale_y, (c.x - offset_x) * scale_x)
                  for c in clicks if c.is_positive == positive]
        if not points:
            continue
        nearest = np.full((height, width), np.inf, np.float32)
        for py, px in points:
            np.minimum(nearest, (rows - py) ** 2 + (cols - px) ** 2, out=nearest)
        maps[channel] = np.exp(-4.0 * math.log(2.0) * np.minimum(nearest, 255.0 ** 2) / sigma**2)
    return maps


def click_reach(sigma: float = CLICK_SIGMA) -> float:
    """Distance (map px) beyond which a click adds exactly 0 to a float32 click map."""
    return sigma * math.sqrt(104.0 / (4.0 * math.log(2.0)))


def next_robot_click(pred: np.ndarray, gt: np.ndarray, clicked: np.ndarray | None = None) -> Click | None:
    """The robot user's next click, or None when the prediction has no error.

    ``pred`` is a bool HxW mask; ``gt`` a uint8 HxW mask (0, 255, 128 = ignored). The click goes to
    the pixel deepest inside the false-negative or false-positive region (Euclidean distance
    transform of the region padded by 1 px, so the image border counts as region border),
    skipping pixels already clicked (``clicked``, bool HxW). Positive when the false-negative
    maximum is larger; ties go negative; the first maximum in row-major order is taken.
    """
    valid = gt != IGNORE_LABEL
    obj = gt == 255
    false_neg = obj & ~pred & valid
    false_pos = ~obj & pred & valid
    fn_dist = _inner_distance(false_neg)
    fp_dist = _inner_distance(false_pos)
    if clicked is not None:
        fn_dist[clicked] = 0
        fp_dist[clicked] = 0
    fn_max, fp_max = float(fn_dist.max()), float(fp_dist.max())
    if max(fn_max, fp_max) <= 0:
        return None
    positive = fn_max > fp_max
    dist = fn_dist if positive else fp_dist
    row, col = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return Click(row + 0.5, col + 0.5, positive)


def _inner_distance(region: np.ndarray) -> np.ndarray:
    padded = np.pad(region, 1, constant_values=False)
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]

"""Image geometry for the two views: Zoom-In boxes for the global view, square focus crops.

Boxes are ``(y0, x0, y1, x1)`` integer pixel bounds, half-open, in full-resolution image pixels.
Arrays are HxW or HxWxC, row-major.
"""
from __future__ import annotations

import cv2
import numpy as np

Box = tuple[int, int, int, int]
PAD_RGB = (124, 116, 104)  # ImageNet mean colour: padding that normalises to zero


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any image array (HxW gray, HxWx1, HxWx3 RGB, HxWx4 RGBA; uint8, uint16 or float in [0, 1])
    as a contiguous HxWx3 uint8 RGB array. Raises ValueError for anything else."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {image.shape}")
    image = image[:, :, :3]
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype.kind == "f":
        if not np.isfinite(image).all():
            raise ValueError("image has non-finite values")
        image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    elif image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        raise ValueError(f"unsupported image dtype {image.dtype}")
    return np.ascontiguousarray(image)


def short_side_size(height: int, width: int, short_side: int, multiple: int = 8,
                    max_long_side: int | None = None) -> tuple[int, int]:
    """(h, w) with the short side resized to ``short_side`` (long side capped), rounded to ``multiple``."""
    scale = short_side / min(height, width)
    if max_long_side is not None:
        scale = min(scale, max_long_side / max(height, width))
    return (max(multiple, int(round(height * scale / multiple)) * multiple),
            max(multiple, int(round(width * scale / multiple)) * multiple))


def mask_box(mask: np.ndarray) -> Box | None:
    """Tight box of the True pixels of an HxW mask, or None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def box_iou(a: Box, b: Box) -> float:
    inter_h = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_w = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_h * inter_w
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return inter / float(area(a) + area(b) - inter)


def zoom_in_box(mask: np.ndarray, positive_points, previous: Box | None,
                expand: float = 0.4, min_ratio: float = 0.5) -> Box:
    """The global view's Zoom-In box (RITM's rule) over an HxW image.

    The box of ``mask`` united with the positive click pixels ``positive_points`` [(row, col)],
    made square with side max(bh, bw) + ``expand`` * min(bh, bw), at least ``min_ratio`` *
    min(H, W) and at most max(H, W), centred on that box and shifted/clipped into the image.
    ``previous`` is returned instead while it holds every positive click and overlaps the new
    box with IoU >= 0.5.
    """
    height, width = mask.shape
    box = mask_box(mask)
    ys = [p[0] for p in positive_points] + ([box[0], box[2] - 1] if box else [])
    xs = [p[1] for p in positive_points] + ([box[1], box[3] - 1] if box else [])
    if not ys:
        return 0, 0, height, width
    y0, y1, x0, x1 = min(ys), max(ys) + 1, min(xs), max(xs) + 1
    bh, bw = y1 - y0, x1 - x0
    side = max(bh, bw) + expand * min(bh, bw)
    side = int(round(min(max(side, min_ratio * min(height, width)), max(height, width))))
    new = (_place(y0 + y1, side, height), _place(x0 + x1, side, width))
    new_box = (new[0][0], new[1][0], new[0][1], new[1][1])
    if previous is not None and box_iou(previous, new_box) >= 0.5 and all(
        previous[0] <= p[0] < previous[2] and previous[1] <= p[1] < previous[3] for p in positive_points
    ):
        return previous
    return new_box


def _place(twice_centre: int, side: int, limit: int) -> tuple[int, int]:
    """A segment of length ``side`` centred at twice_centre / 2, shifted into [0, limit)."""
    side = min(side, limit)
    start = int(round(twice_centre / 2 - side / 2))
    start = min(max(start, 0), limit - side)
    return start, start + side


def crop_square(array: np.ndarray, row: int, col: int, radius: int, fill=0, copy: bool = True) -> np.ndarray:
    """The (2r+1)x(2r+1) square centred on pixel (row, col); outside the image it is ``fill``.
    With ``copy=False`` a square lying wholly inside is a read-only view of ``array``."""
    side = 2 * radius + 1
    src, dst = square_overlap(array.shape[:2], row, col, radius)
    if not copy and (dst[0].stop - dst[0].start, dst[1].stop - dst[1].start) == (side, side):
        view = array[src]
        view.flags.writeable = False
        return view
    out = np.empty((side, side) + array.shape[2:], array.dtype)
    out[...] = fill
    out[dst] = array[src]
    return out


def square_overlap(shape: tuple[int, int], row: int, col: int, radius: int):
    """Slices (image, square) of the part of the square around (row, col) inside an HxW image."""
    height, width = shape
    y0, x0 = row - radius, col - radius
    y1, x1 = row + radius + 1, col + radius + 1
    iy0, ix0, iy1, ix1 = max(y0, 0), max(x0, 0), min(y1, height), min(x1, width)
    if iy0 >= iy1 or ix0 >= ix1:
        empty = (slice(0, 0), slice(0, 0))
        return empty, empty
    return (slice(iy0, iy1), slice(ix0, ix1)), (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))


def resize(array: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
    """Resize an HxW or HxWxC array to (height, width): area when shrinking, bilinear otherwise."""
    if array.shape[:2] == (height, width):
        return array
    if nearest:
        mode = cv2.INTER_NEAREST
    elif height * width < array.shape[0] * array.shape[1]:
        mode = cv2.INTER_AREA
    else:
        mode = cv2.INTER_LINEAR
    return cv2.resize(array, (width, height), interpolation=mode)


def resized_square(image: np.ndarray, row: int, col: int, radius: int, size: int, fill) -> np.ndarray:
    """``resize(crop_square(image, row, col, radius, fill), size, size)`` for an HxWxC uint8 image,
    without copying the padding of a square that reaches past the image and is shrunk: the area
    average (OpenCV's INTER_AREA) is summed from the part inside; equal up to rounding."""
    side = 2 * radius + 1
    src, dst = square_overlap(image.shape[:2], row, col, radius)
    if side <= size or (dst[0].stop - dst[0].start, dst[1].stop - dst[1].start) == (side, side):
        return resize(crop_square(image, row, col, radius, fill, copy=False), size, size)
    fill = np.asarray(fill, np.float64)
    across = _area_shrink(image[src], side, size, dst[1].start, 1, fill)
    out = _area_shrink(across, side, size, dst[0].start, 0, fill)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _area_shrink(values: np.ndarray, side: int, size: int, offset: int, axis: int, fill) -> np.ndarray:
    """Area averages (float64) of ``size`` equal cells over an axis of ``side`` pixels, of which
    pixels [offset, offset + n) are ``values`` (n along ``axis``) and the rest are ``fill``."""
    n = values.shape[axis]
    cell = side / size
    edges = np.clip(np.arange(size + 1) * cell - offset, 0, n)  # cell edges, in pixels of ``values``
    lower = np.minimum(np.floor(edges).astype(np.intp), n - 1)
    frac = edges - lower  # the sum up to an edge: whole pixels before ``lower``, then a part of it
    whole = np.add.reduceat(values, lower, axis=axis, dtype=np.float64).take(np.arange(size), axis=axis)
    whole = np.where(_along(lower[1:] == lower[:-1], axis, values.ndim), 0.0, whole)  # reduceat: not 0 there
    part = values.take(lower, axis=axis) * _along(frac, axis, values.ndim)
    inside = whole + np.diff(part, axis=axis)
    return (inside + fill * (cell - _along(np.diff(edges), axis, values.ndim))) / cell


def _along(vector: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """A 1-D array shaped to broadcast along ``axis`` of an ``ndim``-dimensional array."""
    shape = [1] * ndim
    shape[axis] = vector.size
    return vector.reshape(shape)


def nearest_square(mask: np.ndarray, row: int, col: int, radius: int, size: int) -> np.ndarray:
    """``resize(crop_square(mask, row, col, radius, False), size, size, nearest=True)`` for an HxW
    bool mask, read straight from ``mask`` at the size x size sampled pixels (no (2r+1)-square copy)."""
    side = 2 * radius + 1
    step = 1.0 / (size / side)  # OpenCV's nearest-neighbour mapping: source = floor(dest * step)
    offsets = np.minimum(np.floor(np.arange(size) * step).astype(np.intp), side - 1) - radius
    rows, cols = row + offsets, col + offsets
    inside_rows = (rows >= 0) & (rows < mask.shape[0])
    inside_cols = (cols >= 0) & (cols < mask.shape[1])
    out = np.zeros((size, size), bool)
    out[np.ix_(inside_rows, inside_cols)] = mask[np.ix_(rows[inside_rows], cols[inside_cols])]
    return out


def resize_window(array: np.ndarray, height: int, width: int, rows: slice, cols: slice) -> np.ndarray:
    """``resize(array, height, width)[rows, cols]`` for an hxw float32 array; when enlarging to over
    4x the window's area, only the window is computed (bilinear with OpenCV's half-pixel mapping,
    border pixels replicated): below that, OpenCV's whole resize is the faster."""
    window_area = (rows.stop - rows.start) * (cols.stop - cols.start)
    if height * width < array.shape[0] * array.shape[1] or height * width <= 4 * window_area:
        return resize(array, height, width)[rows, cols]
    y0, y1, wy = _linear_taps(array.shape[0], height, rows)
    x0, x1, wx = _linear_taps(array.shape[1], width, cols)
    across = array[:, x0] * (1 - wx) + array[:, x1] * wx
    return across[y0] * (1 - wy)[:, None] + across[y1] * wy[:, None]


def _linear_taps(source: int, dest: int, window: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (lower, upper) and upper weights of bilinear taps for dest pixels ``window``."""
    centres = (np.arange(window.start, window.stop) + 0.5) * (source / dest) - 0.5
    lower = np.floor(centres)
    weight = (centres - lower).astype(np.float32)
    weight[lower < 0] = 0.0
    lower = np.clip(lower, 0, source - 1).astype(np.intp)
    return lower, np.minimum(lower + 1, source - 1), weight

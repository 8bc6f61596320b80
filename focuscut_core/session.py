"""One image being annotated, click by click, as the paper's Fig. 2.

Each click: the global view (Zoom-In box around the object, short side resized, previous mask
as the 6th channel) gives P; from the 2nd click on, Algorithm 2 decides whether the click becomes
a focus point and at which range; then every focus point is re-run on square crops of the
full-resolution image (one crop; standard PFS; or fast PFS), and the crops' probabilities
replace the global ones inside them, averaged where crops overlap.

A focus point's result depends only on the image, the global mask inside its crop and the clicks
that reach the crop; when none of these changed since it last ran, its stored result is reused
instead of re-running the network (``focus_reuse_tolerance`` may allow a few changed mask pixels).

All coordinates are full-resolution image pixels (row, col). A focus point's square may reach
past the image (its crop is padded); its result is kept, and in fast PFS computed, only for the
part inside. The current prediction is kept as uint8 probabilities (p * 255), so a saved and
restored state continues exactly.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .clicks import Click, click_reach, validate_clicks
from .focus import fast_pfs_radii, focus_decision, progressive_radius
from .predictor import Predictor, view_input
from .views import (PAD_RGB, Box, as_rgb_uint8, crop_square, nearest_square, resize, resize_window, resized_square,
                    short_side_size, square_overlap, zoom_in_box)

MODES = ("global", "focus", "pfs", "fast_pfs")
FLIPS = ("none", "global", "all")
STATE_FORMAT = 1


@dataclass(frozen=True)
class InferenceConfig:
    """Inference settings; the defaults are the paper's, except the view sizes (the network's own)
    and the test-time flip of the global view (fewer clicks on held-out images)."""

    mode: str = "fast_pfs"  # one of MODES: global view only, + focus view, + PFS, + fast PFS
    short_side: int | None = None  # global view: short side of the network input, px (None: the
    # network's training crop size, so objects fill the view as they filled its training crops)
    max_long_side: int = 1280  # global view: cap on the long side for extreme aspect ratios, px
    focus_size: int | None = None  # side of the focus view's network input, px (None: the training crop size)
    zoom_expand: float = 0.4  # Zoom-In: side = max(bh, bw) + zoom_expand * min(bh, bw)
    zoom_min_ratio: float = 0.5  # Zoom-In: side >= zoom_min_ratio * min(H, W)
    lam: float = 0.2  # Algorithm 2: focus only if the changed region < lam * object area
    omega: float = 1.75  # Algorithm 2: r = omega * r~
    min_radius: int = 5  # smallest focus range, px
    pfs_rounds: int = 3  # Algorithm 3: T
    omega_hat: float = 1.1  # Algorithm 3: r^ = omega_hat * r~
    erode_px: float = 2.0  # Algorithm 3: epsilon, in focus-view network pixels
    pfs_min_ratio: float = 0.2  # PFS ranges never below this fraction of the first range
    fast_shrink: float = 0.8  # fast PFS: each round's range is this times the previous
    max_focus_points: int | None = None  # re-run only the latest N focus points (None: all)
    focus_reuse_tolerance: float | None = 0.0  # reuse a focus result if at most this share of its
    # crop's global mask changed (and no click reaching the crop did); 0: identical inputs; None: never
    flip: str = "global"  # one of FLIPS: views also run mirrored left-right, probabilities averaged
    # (test-time flip, not in the paper): none (the paper's), the global view only (nearly free), or
    # every view (twice the network time; on held-out images no better than the global view alone)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.flip not in FLIPS:
            raise ValueError(f"flip must be one of {FLIPS}, got {self.flip!r}")

    def sized_for(self, input_size: int) -> "InferenceConfig":
        """This config with unset view sizes set to a network's training crop size (px)."""
        return replace(self, short_side=self.short_side or input_size, focus_size=self.focus_size or input_size)


@dataclass
class _FocusResult:
    """What a focus point (row, col, radius) gave, and the inputs it gave it for; arrays cover the
    point's window: the part of its (2r+1)-square inside the image (``_window``)."""

    prev: np.ndarray  # bool: the global mask in the window
    clicks: tuple  # the clicks that reach the crop, as (y, x, is_positive)
    patch: np.ndarray  # uint8: probability * 255 pasted in the window


@dataclass
class _Snapshot:
    probs: np.ndarray  # HxW uint8, probability * 255
    zoom_box: Box | None
    focus_points: list = field(default_factory=list)  # [(row, col, radius)]


class Session:
    """Interactive segmentation of one HxW image: ``add_click``, ``undo``, ``mask``, ``to_bytes``."""

    def __init__(self, predictor: Predictor, image: np.ndarray, config: InferenceConfig = InferenceConfig()):
        self.predictor = predictor
        self.config = config.sized_for(predictor.input_size)
        self.image = as_rgb_uint8(image)
        self.height, self.width = self.image.shape[:2]
        self.clicks: list[Click] = []
        self._now = _Snapshot(np.zeros((self.height, self.width), np.uint8), None)
        self._history: list[_Snapshot] = []
        self._view_cache: tuple[Box, tuple[int, int], np.ndarray] | None = None
        self._focus_results: dict[tuple[int, int, int], _FocusResult] = {}
        self._crop_rgb: dict[tuple[int, int, int], np.ndarray] = {}  # (row, col, radius) -> resized crop
        self.focus_runs = (0, 0)  # the last click's (focus points, of which re-run)

    # --- what the user sees -------------------------------------------------------------
    @property
    def probabilities(self) -> np.ndarray:
        """HxW float32 in [0, 1]."""
        return self._now.probs.astype(np.float32) / 255.0

    @property
    def mask(self) -> np.ndarray:
        """HxW bool: probability >= 0.5."""
        return self._now.probs >= 128

    @property
    def confidence(self) -> float:
        """Mean probability inside the mask, 0 when it is empty."""
        inside = self._now.probs[self._now.probs >= 128]
        return float(inside.mean()) / 255.0 if inside.size else 0.0

    @property
    def focus_points(self) -> list[tuple[int, int, int]]:
        return list(self._now.focus_points)

    # --- clicks -------------------------------------------------------------------------
    def add_click(self, click: Click) -> np.ndarray:
        """Add one click (ValueError if outside the image or non-finite); returns the new mask."""
        validate_clicks([click], self.height, self.width)
        prev_mask = self.mask
        self._history.append(self._now)
        self.clicks.append(click)
        global_probs, zoom_box = self._global_view(prev_mask)
        points = list(self._now.focus_points)
        if self.config.mode != "global" and len(self.clicks) >= 2:
            decision = focus_decision(prev_mask, global_probs >= 0.5, click.pixel(), self.config.lam,
                                      self.config.omega, self.config.min_radius)
            if decision.focus:
                points.append((*click.pixel(), decision.radius))
        probs = self._focus_views(global_probs, points) if self.config.mode != "global" else global_probs
        self._now = _Snapshot(_quantise(probs), zoom_box, points)
        return self.mask

    def undo(self) -> np.ndarray:
        """Remove the last click; returns the mask as it was before it."""
        if not self.clicks:
            return self.mask
        self.clicks.pop()
        if self._history:
            self._now = self._history.pop()
        else:  # restored from a state without history: replay what is left
            remaining, self.clicks = self.clicks, []
            self._now = _Snapshot(np.zeros((self.height, self.width), np.uint8), None)
            for c in remaining:
                self.add_click(c)
        return self.mask

    def forget_undo(self) -> None:
        """Drop the undo history (one HxW array per click); ``undo`` then replays instead."""
        self._history.clear()

    # --- the global view ----------------------------------------------------------------
    def _global_view(self, prev_mask: np.ndarray) -> tuple[np.ndarray, Box]:
        """P at full resolution (float32) from the Zoom-In view, and the box used."""
        positives = [c.pixel() for c in self.clicks if c.is_positive]
        full = (0, 0, self.height, self.width)
        if len(self.clicks) == 1:  # first click: whole image, then zoomed on that first mask
            probs = self._run_global(full, prev_mask)
            prev_mask = probs >= 0.5
            box = zoom_in_box(prev_mask, positives, None, self.config.zoom_expand, self.config.zoom_min_ratio)
            if box == full:
                return probs, box
        else:
            box = zoom_in_box(prev_mask, positives, self._now.zoom_box, self.config.zoom_expand,
                              self.config.zoom_min_ratio)
        return self._run_global(box, prev_mask), box

    def _run_global(self, box: Box, prev_mask: np.ndarray) -> np.ndarray:
        y0, x0, y1, x1 = box
        h, w = short_side_size(y1 - y0, x1 - x0, self.config.short_side, max_long_side=self.config.max_long_side)
        if self._view_cache is None or self._view_cache[:2] != (box, (h, w)):
            self._view_cache = (box, (h, w), resize(self.image[y0:y1, x0:x1], h, w))
        rgb = self._view_cache[2]
        prev = resize(prev_mask[y0:y1, x0:x1].astype(np.uint8), h, w, nearest=True)
        x = view_input(rgb, prev, self.clicks, h / (y1 - y0), w / (x1 - x0), y0, x0)
        probs = np.zeros((self.height, self.width), np.float32)
        probs[y0:y1, x0:x1] = resize(self.predictor([x], self.config.flip != "none")[0], y1 - y0, x1 - x0)
        return probs

    # --- the focus view -----------------------------------------------------------------
    def _focus_views(self, global_probs: np.ndarray, points: list) -> np.ndarray:
        """Global probabilities with every focus point's patch pasted in (overlaps averaged)."""
        if self.config.max_focus_points is not None:
            points = points[len(points) - self.config.max_focus_points:] if self.config.max_focus_points else []
        global_mask = global_probs >= 0.5
        # views into this click's global mask, which is never written again
        inputs = {p: (global_mask[_window(global_mask.shape, p)], self._clicks_reaching(p)) for p in points}
        stale = [p for p in dict.fromkeys(points) if not self._reusable(p, *inputs[p])]
        if stale:
            if self.config.mode == "fast_pfs":
                patches = self._fast_pfs(global_probs, stale)
            else:
                rounds = self.config.pfs_rounds if self.config.mode == "pfs" else 1
                patches = self._progressive(global_probs, stale, rounds)
            for p, patch in zip(stale, patches):
                self._focus_results[p] = _FocusResult(*inputs[p], _quantise(patch))
        self._focus_results = {p: self._focus_results[p] for p in points}
        centres = {(row, col) for row, col, _ in points}
        self._crop_rgb = {k: v for k, v in self._crop_rgb.items() if k[:2] in centres}
        self.focus_runs = (len(points), len(stale))
        if not points:
            return global_probs
        windows = [_window(global_probs.shape, p) for p in points]
        y0, x0 = min(w[0].start for w in windows), min(w[1].start for w in windows)
        y1, x1 = max(w[0].stop for w in windows), max(w[1].stop for w in windows)
        total = np.zeros((y1 - y0, x1 - x0), np.float32)  # over the windows' bounding box only
        count = np.zeros(total.shape, np.uint16)
        for p, (rows, cols) in zip(points, windows):
            inside = slice(rows.start - y0, rows.stop - y0), slice(cols.start - x0, cols.stop - x0)
            total[inside] += self._focus_results[p].patch / np.float32(255.0)
            count[inside] += 1
        out = global_probs.copy()
        covered = count > 0
        out[y0:y1, x0:x1][covered] = total[covered] / count[covered]
        return out

    def _clicks_reaching(self, point: tuple[int, int, int]) -> tuple:
        """The clicks whose Gaussians reach the point's largest crop (all its PFS rounds' crops)."""
        row, col, radius = point
        side = 2 * radius + 1
        reach = radius + 1 + click_reach() * side / self.config.focus_size  # image px from the centre
        return tuple((c.y, c.x, c.is_positive) for c in self.clicks
                     if max(abs(c.y - row - 0.5), abs(c.x - col - 0.5)) <= reach)

    def _reusable(self, point: tuple[int, int, int], prev: np.ndarray, clicks: tuple) -> bool:
        old = self._focus_results.get(point)
        if old is None or old.clicks != clicks or self.config.focus_reuse_tolerance is None:
            return False
        return np.count_nonzero(old.prev != prev) <= self.config.focus_reuse_tolerance * prev.size

    def _run_crops(self, global_mask: np.ndarray, crops) -> list[np.ndarray]:
        """The network's probabilities (focus_size x focus_size) on each focus crop."""
        return self.predictor(self._crop_inputs(global_mask, crops), self.config.flip == "all")

    def _crop_inputs(self, global_mask: np.ndarray, crops) -> list[np.ndarray]:
        """Network inputs for square crops [(row, col, radius, prev_mask_patch or None)]."""
        size = self.config.focus_size
        inputs = []
        for row, col, radius, prev in crops:
            side = 2 * radius + 1
            rgb = self._crop_rgb.get((row, col, radius))
            if rgb is None:  # a focus point's crops recur at every later click: resized once
                rgb = resized_square(self.image, row, col, radius, size, PAD_RGB)
                self._crop_rgb[row, col, radius] = rgb
            if prev is None:  # sampled from the global mask, as resizing its padded crop would
                prev = nearest_square(global_mask, row, col, radius, size)
            else:
                prev = resize(prev.astype(np.uint8), size, size, nearest=True)
            inputs.append(view_input(rgb, prev, self.clicks, size / side, size / side, row - radius, col - radius))
        return inputs

    def _progressive(self, global_probs: np.ndarray, points: list, rounds: int) -> list[np.ndarray]:
        """Algorithm 3 for every point, the points of one round batched; each point's patch in its
        window (the rounds see the whole (2R+1)-squares: a round's previous mask is the last one's
        output, outside the image too)."""
        global_mask = global_probs >= 0.5
        patches = [crop_square(global_probs, r0, c0, rad, 0.0) for r0, c0, rad in points]
        radii = [rad for _, _, rad in points]
        active = list(range(len(points)))
        for t in range(rounds):
            crops = []
            for i in active:
                row, col, first = points[i]
                inner = _centre(patches[i], first, radii[i])
                crops.append((row, col, radii[i], inner >= 0.5))
            outs = [resize(p, 2 * c[2] + 1, 2 * c[2] + 1)
                    for p, c in zip(self._run_crops(global_mask, crops), crops)]
            still = []
            for i, (row, col, radius, prev), out in zip(active, crops, outs):
                _centre(patches[i], points[i][2], radius)[...] = out
                erode = self.config.erode_px * (2 * radius + 1) / self.config.focus_size
                nxt = progressive_radius(prev, out >= 0.5, radius, points[i][2], erode,
                                         self.config.omega_hat, self.config.pfs_min_ratio)
                if nxt:
                    radii[i] = nxt
                    still.append(i)
            active = still
            if not active:
                break
        return [patch[square_overlap(global_probs.shape, *p)[1]] for patch, p in zip(patches, points)]

    def _fast_pfs(self, global_probs: np.ndarray, points: list) -> list[np.ndarray]:
        """Fast PFS: ranges r, 0.8r, 0.64r, all with the global mask as previous, one batch; each
        point's patch in its window, the crops' outputs resized only there."""
        global_mask = global_probs >= 0.5
        crops, owners = [], []
        for i, (row, col, radius) in enumerate(points):
            for rad in fast_pfs_radii(radius, self.config.pfs_rounds, self.config.fast_shrink):
                crops.append((row, col, rad, None))
                owners.append(i)
        outs = self._run_crops(global_mask, crops)
        windows = [_window(global_probs.shape, p) for p in points]
        patches = [np.empty((rows.stop - rows.start, cols.stop - cols.start), np.float32) for rows, cols in windows]
        for i, (row, col, rad, _), out in zip(owners, crops, outs):  # the full range first, finer ones override
            (rows, cols), in_square = square_overlap(global_probs.shape, row, col, rad)
            top, left = windows[i][0].start, windows[i][1].start
            patches[i][rows.start - top:rows.stop - top, cols.start - left:cols.stop - left] = resize_window(
                out, 2 * rad + 1, 2 * rad + 1, *in_square)
        return patches

    # --- state --------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The session's state as bytes: a JSON header, then the zlib-compressed probabilities. Not
        the image, the undo history or the focus results kept for reuse (they can be as large as
        the image several times over; a restored session re-runs its focus points once)."""
        header = {
            "format": STATE_FORMAT,
            "shape": [self.height, self.width],
            "clicks": [c.to_list() for c in self.clicks],
            "zoom_box": self._now.zoom_box,
            "focus_points": self._now.focus_points,
            "config": asdict(self.config),
        }
        head = json.dumps(header).encode()
        return len(head).to_bytes(4, "big") + head + zlib.compress(self._now.probs.tobytes(), 1)

    @classmethod
    def from_bytes(cls, predictor: Predictor, image: np.ndarray, data: bytes,
                   config: InferenceConfig | None = None) -> "Session":
        """Continue a session saved by ``to_bytes`` on the same image (ValueError if it does not fit)."""
        try:
            size = int.from_bytes(data[:4], "big")
            header = json.loads(data[4:4 + size])
            probs = np.frombuffer(zlib.decompress(data[4 + size:]), np.uint8)
            if header.get("format") != STATE_FORMAT:
                raise ValueError(f"session state format {header.get('format')} is not {STATE_FORMAT}")
            session = cls(predictor, image, config or InferenceConfig(**header["config"]))
            if [session.height, session.width] != header["shape"] or probs.size != session.height * session.width:
                raise ValueError(f"session state is for a {header['shape']} image, not {session.height}x{session.width}")
            probs = probs.reshape(session.height, session.width).copy()
            session.clicks = [Click.from_list(c) for c in header["clicks"]]
            box = header["zoom_box"]
            session._now = _Snapshot(probs, tuple(box) if box else None, [tuple(p) for p in header["focus_points"]])
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, zlib.error, UnicodeDecodeError) as exc:
            raise ValueError(f"not a usable session state: {exc}") from exc
        return session


def replay(predictor: Predictor, image: np.ndarray, clicks, config: InferenceConfig = InferenceConfig()) -> Session:
    """A new session with ``clicks`` added in order (the same masks as clicking them one by one)."""
    session = Session(predictor, image, config)
    validate_clicks(clicks, session.height, session.width)
    for c in clicks:
        session.add_click(c)
    return session


def _quantise(probs: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)


def _window(shape: tuple[int, int], point: tuple[int, int, int]) -> tuple[slice, slice]:
    """Image slices of the part of a focus point's (2r+1)-square inside an HxW image."""
    return square_overlap(shape, *point)[0]


def _centre(patch: np.ndarray, outer: int, inner: int) -> np.ndarray:
    """View of the (2*inner+1)-square at the centre of a (2*outer+1)-square patch."""
    off = outer - inner
    return patch[off: off + 2 * inner + 1, off: off + 2 * inner + 1]

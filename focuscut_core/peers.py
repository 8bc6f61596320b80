"""Baselines the evaluator runs beside FocusCut with the same robot clicks."""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from .clicks import Click, validate_clicks
from .views import as_rgb_uint8


class GrabCutSession:
    """OpenCV's GrabCut driven by clicks, with the same ``add_click`` -> HxW bool mask as Session.

    Seeds: a disk of ``seed_radius`` px around each positive click is sure foreground, around each
    negative click sure background. Every other pixel starts as probable foreground when it is
    nearer to a positive click than to any negative click and to the image border (the usual GrabCut
    assumption that the border is background), else probable background. ``iterations`` of GrabCut
    then run from scratch on every click.
    """

    def __init__(self, image: np.ndarray, seed_radius: int = 5, iterations: int = 5):
        self.image = cv2.cvtColor(as_rgb_uint8(image), cv2.COLOR_RGB2BGR)
        self.height, self.width = self.image.shape[:2]
        self.seed_radius, self.iterations = seed_radius, iterations
        self.clicks: list[Click] = []
        self.mask = np.zeros((self.height, self.width), bool)

    def add_click(self, click: Click) -> np.ndarray:
        validate_clicks([click], self.height, self.width)
        self.clicks.append(click)
        seeds = self._seeds()
        if not (seeds == cv2.GC_FGD).any() and not (seeds == cv2.GC_PR_FGD).any():
            self.mask = np.zeros_like(self.mask)
            return self.mask
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            cv2.grabCut(self.image, seeds, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error:  # a class with too few pixels for its colour model: keep the seeds
            pass
        self.mask = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
        return self.mask

    def _seeds(self) -> np.ndarray:
        shape = (self.height, self.width)

        def distance_to(points):
            if not points:
                return np.full(shape, np.inf)
            seeds = np.ones(shape, bool)
            for row, col in points:
                seeds[row, col] = False
            return ndimage.distance_transform_edt(seeds)

        positives = [c.pixel() for c in self.clicks if c.is_positive]
        negatives = [c.pixel() for c in self.clicks if not c.is_positive]
        d_pos, d_neg = distance_to(positives), distance_to(negatives)
        rows, cols = np.indices(shape)
        d_border = np.minimum.reduce([rows, cols, self.height - 1 - rows, self.width - 1 - cols]).astype(float)
        seeds = np.where((d_pos < d_neg) & (d_pos < d_border), cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
        seeds[d_pos <= self.seed_radius] = cv2.GC_FGD
        seeds[d_neg <= self.seed_radius] = cv2.GC_BGD
        return seeds

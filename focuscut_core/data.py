"""Datasets in the shared layout: ``<set>/images/<id>.jpg|png`` and ``<set>/masks/<id>[__k].png``.

Masks are HxW uint8: 0 background, 255 object, 128 ignored. Images load as HxWx3 uint8 RGB.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def data_root() -> Path:
    """$FOCUSCUT_DATA_DIR, else ``../shared/data`` beside the repository."""
    env = os.environ.get("FOCUSCUT_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@dataclass(frozen=True)
class Sample:
    """One object: its image file, its mask file, and the set it comes from."""

    image: Path
    mask: Path
    source: str

    @property
    def name(self) -> str:
        return self.mask.stem


def list_samples(set_dir: str | Path, source: str | None = None) -> list[Sample]:
    """Every (image, mask) pair of a set folder, sorted by mask name."""
    set_dir = Path(set_dir)
    images = {p.stem: p for p in (set_dir / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    samples = []
    for mask in sorted((set_dir / "masks").glob("*.png")):
        image = images.get(mask.stem.split("__")[0])
        if image is None:
            raise FileNotFoundError(f"{mask} has no image in {set_dir / 'images'}")
        samples.append(Sample(image, mask, source or set_dir.name))
    if not samples:
        raise FileNotFoundError(f"no masks under {set_dir / 'masks'}")
    return samples


def load_image(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_mask(path: str | Path) -> np.ndarray:
    """HxW uint8 with values 0, 128, 255 (anything else > 128 counts as object, < 128 as background)."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"cannot read mask {path}")
    out = np.where(mask > 128, 255, 0).astype(np.uint8)
    out[mask == 128] = 128
    return out


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    image, mask = load_image(sample.image), load_mask(sample.mask)
    if image.shape[:2] != mask.shape:
        raise ValueError(f"{sample.mask} is {mask.shape}, its image is {image.shape[:2]}")
    return image, mask

"""Small real networks and images for core tests (random weights: CI cannot train)."""
import cv2
import numpy as np
import torch

from focuscut_core.network import FocusCutNet, NetworkSpec
from focuscut_core.predictor import Predictor


def tiny_predictor(seed: int = 0) -> Predictor:
    torch.manual_seed(seed)
    return Predictor(FocusCutNet(NetworkSpec()), torch.device("cpu"), version="random")


class ScriptedPredictor(Predictor):
    """A real Predictor whose outputs are a function of its inputs: ``fn(x (6, h, w)) -> (h, w)``.
    Lets a test steer the session's control flow; records how many inputs each network call got
    (a test-time flip doubles them)."""

    def __init__(self, fn, input_size: int = 384):
        super().__init__(FocusCutNet(NetworkSpec(input_size=input_size)), torch.device("cpu"), version="scripted")
        self.fn, self.calls = fn, []

    def _batched(self, inputs):
        self.calls.append(len(inputs))
        return [self.fn(x).astype(np.float32) for x in inputs]


def blob_image(height: int = 48, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipse on a dark textured background, and its uint8 mask (0/255)."""
    rng = np.random.default_rng(1)
    rows, cols = np.indices((height, width))
    inside = ((rows - height / 2) / (height / 3)) ** 2 + ((cols - width / 2) / (width / 4)) ** 2 <= 1
    image = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
    image[inside] = (220, 180, 40)
    return image, np.where(inside, 255, 0).astype(np.uint8)


def write_training_set(root) -> None:
    """A training data root (``FOCUSCUT_DATA_DIR``) with two sources, ``alpha`` and ``beta``, of one blob each."""
    image, gt = blob_image(80, 100)
    for source in ("alpha", "beta"):
        (root / "train" / source / "images").mkdir(parents=True)
        (root / "train" / source / "masks").mkdir(parents=True)
        cv2.imwrite(str(root / "train" / source / "images" / "a.jpg"), image[:, :, ::-1])
        cv2.imwrite(str(root / "train" / source / "masks" / "a__0.png"), gt)

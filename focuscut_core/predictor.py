"""Running the network on prepared views: input tensors in, probabilities out."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from .clicks import click_maps
from .network import IMAGENET_MEAN, IMAGENET_STD, FocusCutNet, select_device

_MEAN = np.array(IMAGENET_MEAN, np.float32) * 255.0
_STD = np.array(IMAGENET_STD, np.float32) * 255.0


def network_input(rgb: np.ndarray, maps: np.ndarray, prev_mask: np.ndarray) -> np.ndarray:
    """``(6, h, w)`` float32 from an hxwx3 uint8 view, its ``(2, h, w)`` click maps and its hxw
    previous mask (bool or {0, 1})."""
    normalised = ((rgb.astype(np.float32) - _MEAN) / _STD).transpose(2, 0, 1)
    return np.concatenate([normalised, maps, prev_mask[None].astype(np.float32)], axis=0)


def view_input(rgb: np.ndarray, prev_mask: np.ndarray, clicks, scale_y: float, scale_x: float,
               offset_y: float, offset_x: float) -> np.ndarray:
    """Network input of a view whose pixel (i, j) is image point (offset + (i, j) / scale)."""
    maps = click_maps(clicks, rgb.shape[0], rgb.shape[1], scale_y, scale_x, offset_y, offset_x)
    return network_input(rgb, maps, prev_mask)


@dataclass
class Predictor:
    """A network in eval mode on a device, shared by every session of a process.

    ``version`` names the weights (reported to clients). Calls are serialised by a lock, so
    threads may share one predictor.
    """

    net: FocusCutNet
    device: torch.device = field(default_factory=select_device)
    version: str = "untrained"

    def __post_init__(self):
        self.net = self.net.to(self.device).eval()
        self._lock = threading.Lock()

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Probabilities (h x w float32) for each ``(6, h, w)`` input; same sizes run as one batch."""
        outputs: list[np.ndarray | None] = [None] * len(inputs)
        by_size: dict[tuple, list[int]] = {}
        for i, x in enumerate(inputs):
            by_size.setdefault(x.shape, []).append(i)
        with self._lock, torch.inference_mode():
            for indices in by_size.values():
                batch = torch.from_numpy(np.stack([inputs[i] for i in indices])).to(self.device)
                probs = torch.sigmoid(self.net(batch))[:, 0].float().cpu().numpy()
                for i, p in zip(indices, probs):
                    outputs[i] = p
        return outputs

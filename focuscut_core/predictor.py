"""Running the network on prepared views: input tensors in, probabilities out."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

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
    max_batch: int = 3  # inputs per network pass: bounds the activations held (a fast-PFS point is 3 crops)

    def __post_init__(self):
        self.net = self.net.to(self.device).eval()
        self._lock = threading.Lock()

    @property
    def input_size(self) -> int:
        """Side (px) of the crops the network was trained on: the default size of inference views."""
        return self.net.spec.input_size

    def __call__(self, inputs: list[np.ndarray], flip: bool = False) -> list[np.ndarray]:
        """Probabilities (h x w float32) for each ``(6, h, w)`` input. With ``flip`` each input also
        runs mirrored left-right and the two maps are averaged (test-time flip: twice the network time)."""
        if not flip:
            return self._batched(inputs)
        probs = self._batched(list(inputs) + [x[:, :, ::-1] for x in inputs])  # views: batching copies them
        return [(p + mirrored[:, ::-1]) / 2 for p, mirrored in zip(probs[:len(inputs)], probs[len(inputs):])]

    def _batched(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """``__call__`` without flip: same sizes run batched, at most ``max_batch`` at a time."""
        outputs: list[np.ndarray | None] = [None] * len(inputs)
        by_size: dict[tuple, list[int]] = {}
        for i, x in enumerate(inputs):
            by_size.setdefault(x.shape, []).append(i)
        with self._lock:
            for same_size in by_size.values():
                for start in range(0, len(same_size), self.max_batch):
                    indices = same_size[start:start + self.max_batch]
                    probs = self._probabilities(np.stack([inputs[i] for i in indices]))
                    for i, p in zip(indices, probs):
                        outputs[i] = p
        return outputs

    def _probabilities(self, batch: np.ndarray) -> np.ndarray:
        """``(N, 6, h, w)`` float32 -> ``(N, h, w)`` float32 probabilities."""
        with torch.inference_mode():
            logits = self.net(torch.from_numpy(batch).to(self.device))
            return torch.sigmoid(logits)[:, 0].float().cpu().numpy()


class OnnxPredictor(Predictor):
    """The same network run by ONNX Runtime on the CPU (several times faster than eager torch on
    a few busy cores). The graph is exported once per set of weights and cached on disk under
    ``cache_dir`` ($FOCUSCUT_ONNX_CACHE, else ~/.cache/focuscut/onnx)."""

    def __init__(self, net: FocusCutNet, version: str = "untrained", cache_dir: str | Path | None = None):
        super().__init__(net, torch.device("cpu"), version)
        import onnxruntime

        path = _exported_graph(self.net, Path(cache_dir or os.environ.get("FOCUSCUT_ONNX_CACHE")
                                              or Path.home() / ".cache" / "focuscut" / "onnx"))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning: a few % slower alone, but gunicorn workers and
        # an RQ worker sharing the cores no longer burn each other's time.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _probabilities(self, batch: np.ndarray) -> np.ndarray:
        logits = self._session.run(None, {"input": np.ascontiguousarray(batch, np.float32)})[0]
        return (1.0 / (1.0 + np.exp(-logits[:, 0]))).astype(np.float32)


def _exported_graph(net: FocusCutNet, cache_dir: Path) -> Path:
    """The ONNX file of ``net`` (dynamic batch and size), exported unless the cache has it."""
    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    path = cache_dir / f"focuscut-{digest.hexdigest()[:24]}.onnx"
    if path.is_file():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    dynamic = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), torch.zeros(1, 6, 384, 384), str(tmp), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": dynamic, "logits": dynamic},
                          opset_version=17, dynamo=False)
    os.replace(tmp, path)
    return path


RUNTIMES = ("auto", "torch", "onnx")


def make_predictor(net: FocusCutNet, device: torch.device, version: str, runtime: str | None = None) -> Predictor:
    """A Predictor for ``net`` on ``device``: ``runtime`` ($FOCUSCUT_RUNTIME) 'torch', 'onnx', or
    'auto' (ONNX Runtime on the CPU when installed, torch otherwise)."""
    runtime = runtime or os.environ.get("FOCUSCUT_RUNTIME") or "auto"
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "onnx" and device.type != "cpu":
        raise ValueError("the onnx runtime runs on the CPU only")
    if runtime == "auto":
        runtime = "onnx" if device.type == "cpu" and importlib.util.find_spec("onnxruntime") else "torch"
    return OnnxPredictor(net, version) if runtime == "onnx" else Predictor(net, device, version)

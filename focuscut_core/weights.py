"""Model weight files: fp16 state dicts with the network spec and metadata, and the shipped default.

A weights file is a ``torch.save``d dict ``{"spec": {...}, "state": {name: tensor}, "meta": {...}}``.
Files are written atomically (temporary file, fsync, rename).
"""
from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from .network import FocusCutNet, NetworkSpec, select_device
from .predictor import Predictor, make_predictor

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "focuscut_mnv2.pt"


def save_weights(path: str | Path, net: FocusCutNet, meta: dict | None = None, half: bool = True) -> Path:
    """Write ``net``'s weights (fp16 floats when ``half``) atomically to ``path``."""
    path = Path(path)
    state = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in net.state_dict().items()}
    payload = {"spec": asdict(net.spec), "state": state, "meta": dict(meta or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_weights(path: str | Path) -> tuple[FocusCutNet, dict]:
    """The network stored at ``path`` (float32, on the CPU) and its metadata."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
        spec = NetworkSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload["spec"].items()})
        net = FocusCutNet(spec)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state"].items()})
    except (OSError, KeyError, RuntimeError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path} is not a FocusCut weights file: {exc}") from exc
    return net, payload.get("meta", {})


def load_predictor(path: str | Path | None = None, device: str | None = None,
                   runtime: str | None = None) -> Predictor:
    """A Predictor for the weights at ``path`` ($FOCUSCUT_WEIGHTS, else the shipped default);
    ``runtime`` as in ``make_predictor`` (ONNX Runtime on the CPU by default)."""
    path = Path(path or os.environ.get("FOCUSCUT_WEIGHTS") or DEFAULT_WEIGHTS)
    net, meta = load_weights(path)
    return make_predictor(net, select_device(device), str(meta.get("version", path.stem)), runtime)

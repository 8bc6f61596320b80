"""FocusCut (CVPR 2022) interactive segmentation: network, click-by-click inference, training and
robot-user evaluation. Knows nothing of Label Studio."""
from .clicks import Click, next_robot_click
from .network import FocusCutNet, NetworkSpec, build_network, select_device
from .predictor import Predictor
from .session import FLIPS, MODES, InferenceConfig, Session, replay
from .weights import DEFAULT_WEIGHTS, load_predictor, load_weights, save_weights

__all__ = [
    "Click", "next_robot_click", "FocusCutNet", "NetworkSpec", "build_network", "select_device",
    "Predictor", "MODES", "FLIPS", "InferenceConfig", "Session", "replay", "DEFAULT_WEIGHTS", "load_predictor",
    "load_weights", "save_weights",
]

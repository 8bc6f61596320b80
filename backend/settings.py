"""Every setting of the backend, read from the environment (one place, documented defaults).

``load()`` reads the environment each time it is called; code that wants the process's
settings calls ``get()``, which reads them once.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from focuscut_core import InferenceConfig


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def _str(name: str, default: str | None = None) -> str | None:
    raw = os.environ.get(name, "").strip()
    return raw or default


@dataclass(frozen=True)
class Settings:
    label_studio_url: str | None  # LABEL_STUDIO_URL: base for /data/upload/... and /data/local-files/...
    label_studio_api_key: str | None  # LABEL_STUDIO_API_KEY: sent as "Authorization: Token <key>"
    redis_url: str | None  # REDIS_URL: shared session cache (and fit queue); unset: in-process LRU
    model_dir: Path  # FOCUSCUT_MODEL_DIR: <project>/manifest.json + versions/*.pt
    weights: str | None  # FOCUSCUT_WEIGHTS: default weights file (else the shipped one)
    device: str | None  # FOCUSCUT_DEVICE: "cpu", "cuda", "cuda:1"; unset: CUDA when present
    mode: str  # FOCUSCUT_MODE: global | focus | pfs | fast_pfs
    flip: str  # FOCUSCUT_FLIP: test-time flip of the views: none | global | all
    max_focus_points: int | None  # FOCUSCUT_MAX_FOCUS_POINTS: re-run only the latest N focus points per click (unset: all, as the paper)
    focus_reuse: float | None  # FOCUSCUT_FOCUS_REUSE: share of a focus crop's mask that may change for its last result to be reused (0: identical inputs only; "off": never)
    cache_dir: Path  # FOCUSCUT_CACHE_DIR: downloaded images
    cache_max_mb: float  # FOCUSCUT_CACHE_MAX_MB: size cap of cache_dir
    max_pixels: int  # FOCUSCUT_MAX_PIXELS: larger images are refused (checked from the header)
    max_image_mb: float  # FOCUSCUT_MAX_IMAGE_MB: larger downloads are refused
    fetch_timeout: float  # FOCUSCUT_FETCH_TIMEOUT: seconds, per image request
    session_cache: bool  # FOCUSCUT_SESSION_CACHE: "off" replays every click sequence from scratch
    session_ttl: int  # FOCUSCUT_SESSION_TTL: seconds a click state lives in Redis
    session_lru_mb: float  # FOCUSCUT_SESSION_LRU_MB: size of the in-process session cache
    live_sessions: int  # FOCUSCUT_LIVE_SESSIONS: sessions each worker keeps alive for the next click (0: none)
    train_min_annotations: int  # FOCUSCUT_TRAIN_MIN_ANNOTATIONS
    train_max_steps: int  # FOCUSCUT_TRAIN_MAX_STEPS
    train_max_seconds: float  # FOCUSCUT_TRAIN_MAX_SECONDS
    retrain_interval: float  # FOCUSCUT_RETRAIN_INTERVAL: seconds
    train_eval_samples: int  # FOCUSCUT_TRAIN_EVAL_SAMPLES: held-out masks evaluated before/after a fit
    train_eval_clicks: int  # FOCUSCUT_TRAIN_EVAL_CLICKS: robot clicks per held-out mask (NoC cap)
    train_eval_mode: str  # FOCUSCUT_TRAIN_EVAL_MODE: inference mode of that evaluation (default FOCUSCUT_MODE)
    allowed_hosts: tuple  # FOCUSCUT_ALLOWED_HOSTS: image hosts besides Label Studio (backend/url_policy.py)
    max_body_mb: float  # FOCUSCUT_MAX_BODY_MB: larger request bodies are refused (413)
    max_clicks: int  # FOCUSCUT_MAX_CLICKS: more clicks in one request are refused (422)
    basic_auth_user: str | None  # BASIC_AUTH_USER
    basic_auth_pass: str | None  # BASIC_AUTH_PASS


def inference_config(s: Settings, mode: str | None = None) -> InferenceConfig:
    """The core's inference settings for serving (``mode`` overrides FOCUSCUT_MODE)."""
    return InferenceConfig(mode=mode or s.mode, max_focus_points=s.max_focus_points,
                           focus_reuse_tolerance=s.focus_reuse, flip=s.flip)


def load() -> Settings:
    """The settings as the environment gives them now (ValueError for an unparsable number)."""
    return Settings(
        label_studio_url=_str("LABEL_STUDIO_URL"),
        label_studio_api_key=_str("LABEL_STUDIO_API_KEY"),
        redis_url=_str("REDIS_URL"),
        model_dir=Path(_str("FOCUSCUT_MODEL_DIR", "./models")),
        weights=_str("FOCUSCUT_WEIGHTS"),
        device=_str("FOCUSCUT_DEVICE"),
        mode=_str("FOCUSCUT_MODE", "fast_pfs"),
        flip=_str("FOCUSCUT_FLIP", InferenceConfig.flip),
        max_focus_points=_int("FOCUSCUT_MAX_FOCUS_POINTS", 0) or None,
        focus_reuse=None if _str("FOCUSCUT_FOCUS_REUSE", "0").lower() == "off" else _float("FOCUSCUT_FOCUS_REUSE", 0.0),
        cache_dir=Path(_str("FOCUSCUT_CACHE_DIR", os.path.expanduser("~/.cache/focuscut/images"))),
        cache_max_mb=_float("FOCUSCUT_CACHE_MAX_MB", 1024.0),
        max_pixels=_int("FOCUSCUT_MAX_PIXELS", 50_000_000),
        max_image_mb=_float("FOCUSCUT_MAX_IMAGE_MB", 200.0),
        fetch_timeout=_float("FOCUSCUT_FETCH_TIMEOUT", 30.0),
        session_cache=_str("FOCUSCUT_SESSION_CACHE", "on").lower() not in ("off", "0", "false", "no"),
        session_ttl=_int("FOCUSCUT_SESSION_TTL", 3600),
        session_lru_mb=_float("FOCUSCUT_SESSION_LRU_MB", 256.0),
        live_sessions=_int("FOCUSCUT_LIVE_SESSIONS", 8),
        train_min_annotations=_int("FOCUSCUT_TRAIN_MIN_ANNOTATIONS", 5),
        train_max_steps=_int("FOCUSCUT_TRAIN_MAX_STEPS", 500),
        train_max_seconds=_float("FOCUSCUT_TRAIN_MAX_SECONDS", 600.0),
        retrain_interval=_float("FOCUSCUT_RETRAIN_INTERVAL", 600.0),
        train_eval_samples=_int("FOCUSCUT_TRAIN_EVAL_SAMPLES", 10),
        train_eval_clicks=_int("FOCUSCUT_TRAIN_EVAL_CLICKS", 20),
        train_eval_mode=_str("FOCUSCUT_TRAIN_EVAL_MODE", _str("FOCUSCUT_MODE", "fast_pfs")),
        allowed_hosts=tuple(h for h in (_str("FOCUSCUT_ALLOWED_HOSTS", "") or "").replace(" ", ",").split(",") if h),
        max_body_mb=_float("FOCUSCUT_MAX_BODY_MB", 32.0),
        max_clicks=_int("FOCUSCUT_MAX_CLICKS", 100),
        basic_auth_user=_str("BASIC_AUTH_USER"),
        basic_auth_pass=_str("BASIC_AUTH_PASS"),
    )


@functools.lru_cache(maxsize=1)
def get() -> Settings:
    """This process's settings, read once."""
    return load()

"""Model versions, read side: which weights serve a project, loaded once per process.

Layout (written by ``backend/publish.py``)::

    $FOCUSCUT_MODEL_DIR/<project_id>/manifest.json   {"project", "current", "versions": [...]}
    $FOCUSCUT_MODEL_DIR/<project_id>/versions/<version>.pt

No manifest, or ``current`` null: the default weights (FOCUSCUT_WEIGHTS or the shipped file),
whose version is their own. ``PredictorCache.get(project)`` stats the manifest on every call
and re-reads it only when it changed, so a published version is served from the next request.
A manifest or weights file that cannot be read leaves the project on what it served before.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

from focuscut_core import load_predictor

log = logging.getLogger(__name__)


def project_id(project) -> str | None:
    """The numeric id as a string, from "<id>.<created_ts>", an int, or {"id": ...}."""
    if isinstance(project, dict):
        project = project.get("id")
    if project is None or isinstance(project, bool):
        return None
    text = str(project).strip().split(".", 1)[0]
    return text if text.isascii() and text.isdigit() else None


def manifest_path(model_dir: Path, project: str) -> Path:
    return Path(model_dir) / project / "manifest.json"


def current_version(project, model_dir: Path) -> tuple[str | None, Path | None]:
    """(version, weights path) the project's manifest names as current; (None, None) for the
    default weights. ValueError if the manifest exists but is unreadable or inconsistent."""
    pid = project_id(project)
    if pid is None:
        return None, None
    path = manifest_path(model_dir, pid)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    current = manifest.get("current") if isinstance(manifest, dict) else None
    if current is None:
        return None, None
    for entry in manifest.get("versions", []):
        if isinstance(entry, dict) and entry.get("version") == current:
            return current, path.parent / entry.get("file", f"versions/{current}.pt")
    raise ValueError(f"{path}: current version {current!r} is not among its versions")


def published_versions(project, model_dir: Path) -> list[str]:
    """The versions the project's manifest lists, oldest first ([] without a readable manifest)."""
    pid = project_id(project)
    try:
        manifest = json.loads(manifest_path(model_dir, pid).read_text()) if pid else {}
    except (OSError, ValueError):
        return []
    entries = manifest.get("versions", []) if isinstance(manifest, dict) else []
    return [e["version"] for e in entries if isinstance(e, dict) and isinstance(e.get("version"), str)]


def _signature(path: Path):
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class PredictorCache:
    """Per-process predictors: the default one plus up to ``max_loaded`` project versions."""

    def __init__(self, model_dir: Path, weights: str | None = None, device: str | None = None,
                 max_loaded: int = 4):
        self.model_dir, self.weights, self.device, self.max_loaded = Path(model_dir), weights, device, max_loaded
        self._default = None
        self._loaded: OrderedDict[Path, object] = OrderedDict()  # weights path -> Predictor
        self._projects: dict[str, tuple] = {}  # project id -> (manifest signature, Predictor)
        self._lock = threading.RLock()

    def default(self):
        """The default predictor (loaded on first use, after any fork)."""
        with self._lock:
            if self._default is None:
                self._default = load_predictor(self.weights, self.device)
                log.info("loaded default weights %s on %s", self._default.version, self._default.device)
            return self._default

    def get(self, project):
        """The predictor serving ``project`` now; its ``version`` is the model_version to report."""
        pid = project_id(project)
        if pid is None:
            return self.default()
        sig = _signature(manifest_path(self.model_dir, pid))
        with self._lock:
            known = self._projects.get(pid)
            if known is not None and known[0] == sig:
                return known[1]
            predictor = self._resolve(pid, known[1] if known else None)
            self._projects[pid] = (sig, predictor)
            return predictor

    def _resolve(self, pid: str, previous):
        try:
            version, path = current_version(pid, self.model_dir)
            if version is None:
                return self.default()
            return self._load(Path(path), version)
        except ValueError as exc:
            fallback = previous or self.default()
            log.error("project %s: %s; serving %s", pid, exc, fallback.version)
            return fallback

    def _load(self, path: Path, version: str):
        key = path.resolve()
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        if not os.path.exists(key):
            raise ValueError(f"weights file {path} of version {version} is missing")
        predictor = load_predictor(key, self.device)
        predictor.version = version
        self._loaded[key] = predictor
        while len(self._loaded) > self.max_loaded:
            self._loaded.popitem(last=False)
        log.info("loaded version %s from %s", version, path)
        return predictor

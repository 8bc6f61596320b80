"""One interactive click, end to end: context -> pixel clicks -> image -> session (restored or
replayed) -> mask -> one Label Studio brushlabels region.

``Segmenter.predict`` returns the prediction (or None when there are no clicks) and fills
``stats`` with what the request cost: seconds spent fetching the image, running the network
and encoding the RLE; how many clicks were replayed ("steps") and network calls made.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict

import numpy as np

from focuscut_core import InferenceConfig, Session

from . import brush_rle, labeling, session_store
from .errors import RequestError
from .images import ImageFetcher
from .registry import PredictorCache

log = logging.getLogger(__name__)


class _CountingPredictor:
    """A predictor that counts its network calls and the seconds they take."""

    def __init__(self, predictor):
        self.predictor, self.calls, self.seconds = predictor, 0, 0.0

    def __call__(self, inputs, flip: bool = False):
        start = time.perf_counter()
        try:
            return self.predictor(inputs, flip)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name):
        return getattr(self.predictor, name)


def _image_data_url(task, config: labeling.LabelConfig, image_tag: str):
    if not isinstance(task, dict):
        raise RequestError("each task must be an object", 400)
    data = task.get("data")
    key = config.images.get(image_tag)
    if key is None:
        raise RequestError(f"the keypoints' to_name {image_tag!r} is not an Image tag of the labeling config", 422)
    if not isinstance(data, dict) or data.get(key) in (None, ""):
        raise RequestError(f"task {task.get('id')} has no image: its data has no {key!r} field", 422)
    return data[key]


class Segmenter:
    """Click-to-mask for a process: shares the predictors, the image fetcher and the session store."""

    def __init__(self, predictors: PredictorCache, fetcher: ImageFetcher, store, config: InferenceConfig,
                 live_sessions: int = 8):
        self.predictors, self.fetcher, self.store, self.config = predictors, fetcher, store, config
        self.live = session_store.LiveSessions(live_sessions)

    def model_version(self, project) -> str:
        return self.predictors.get(project).version

    def predict(self, task, label_config, context, project, stats: dict) -> dict | None:
        """The brush prediction for ``task``'s clicks in ``context``; None if there are none."""
        t_start = time.perf_counter()
        clicked = labeling.parse_context(context)
        if clicked is None:
            return None
        config = labeling.parse_label_config(label_config)
        if config.keypoints and clicked.keypoint_tag not in config.keypoints:
            raise RequestError(f"the keypoints' from_name {clicked.keypoint_tag!r} is not a KeyPointLabels tag", 422)
        brush = config.brush_for(clicked.image, clicked.label)
        reference = _image_data_url(task, config, clicked.image)
        predictor = self.predictors.get(project)

        t = time.perf_counter()
        image, image_digest = self.fetcher.load_with_digest(reference)
        stats["fetch_s"] = time.perf_counter() - t
        height, width = image.shape[:2]
        clicks = labeling.to_clicks(clicked.points, height, width)

        counted = _CountingPredictor(predictor)
        session = self._session(counted, image, image_digest, clicks, task.get("id"), clicked.label, stats)
        stats.update(net_calls=counted.calls, net_s=counted.seconds)

        t = time.perf_counter()
        rle = brush_rle.encode(session.mask)
        stats["rle_s"] = time.perf_counter() - t
        score = session.confidence
        stats["total_s"] = time.perf_counter() - t_start
        region = {
            "from_name": brush.name, "to_name": clicked.image, "type": "brushlabels",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"format": "rle", "rle": rle, "brushlabels": [clicked.label]},
            "score": score,
        }
        return {"result": [region], "score": score, "model_version": predictor.version}

    def _session(self, predictor, image: np.ndarray, image_digest: str, clicks, task_id, label: str,
                 stats: dict) -> Session:
        """The session after ``clicks``: continued from the longest stored prefix, else replayed."""
        scope = {"task": task_id, "image": image_digest,
                 "shape": image.shape, "version": predictor.version, "config": asdict(self.config),
                 "label": label}
        keys = session_store.prefix_keys(scope, clicks)
        t = time.perf_counter()
        session, start = self.live.take(keys)
        stats["live_session"] = session is not None
        if session is not None:
            session.predictor = predictor
        found = [None] * start + self.store.get_many(keys[start:])
        for k in range(len(keys), start, -1):
            if found[k - 1] is None:
                continue
            try:
                candidate = Session.from_bytes(predictor, image, found[k - 1], self.config)
            except Exception as exc:  # a damaged stored state costs a replay, never the request
                log.warning("session cache: stored state unusable (%s: %s); ignoring it", type(exc).__name__, exc)
                continue
            if candidate.clicks == clicks[:k]:
                session, start = candidate, k
                break
        if session is None:
            session = Session(predictor, image, self.config)
        stats.update(cache=self.store.kind, cache_hit_clicks=start, steps=len(clicks) - start)
        new_states = {}
        for k in range(start, len(clicks)):
            try:
                session.add_click(clicks[k])
            except ValueError as exc:
                raise RequestError(f"click {k}: {exc}", 422) from exc
            if self.store.kind != "off":
                new_states[keys[k]] = session.to_bytes()
        self.store.put_many(new_states)
        if keys:
            session.forget_undo()
            self.live.put(keys[-1], session)
        stats["session_s"] = time.perf_counter() - t
        stats["focus_points"], stats["focus_re_run"] = session.focus_runs  # of the last click computed
        return session

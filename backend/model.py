"""The label-studio-ml model class: one object per request (as label-studio-ml makes them),
sharing one ``Segmenter`` per process (network, image fetcher, session store).

Nothing here touches the network or CUDA at import: the predictor is loaded on the first
request, i.e. in each gunicorn worker after the fork.
"""
from __future__ import annotations

import threading

from label_studio_ml.model import LabelStudioMLBase


from . import session_store
from . import settings as settings_module
from .errors import RequestError
from .images import ImageFetcher
from .registry import PredictorCache, project_id
from .segment import Segmenter


class _PerProcess:
    """This process's ``Segmenter``, built from the settings on first use, once even when two
    threads ask at the same time (so the network is loaded once); ``cache_clear`` forgets it."""

    def __init__(self):
        self._segmenter: Segmenter | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Segmenter:
        with self._lock:
            if self._segmenter is None:
                s = settings_module.get()
                self._segmenter = Segmenter(PredictorCache(s.model_dir, s.weights, s.device),
                                            ImageFetcher.from_settings(s), session_store.from_settings(s),
                                            settings_module.inference_config(s), s.live_sessions)
            return self._segmenter

    @property
    def built(self) -> bool:
        return self._segmenter is not None

    def cache_clear(self) -> None:
        with self._lock:
            self._segmenter = None


segmenter = _PerProcess()


class FocusCutBackend(LabelStudioMLBase):
    """Click-to-mask: smart KeyPointLabels clicks in, one BrushLabels region out.

    ``project`` (Label Studio's "<id>.<created_ts>") selects the model version; after
    ``predict``, ``stats`` holds the request's timing and cache breakdown.
    """

    def __init__(self, label_config=None, train_output=None, project=None, **kwargs):
        try:
            super().__init__(label_config=label_config, train_output=train_output, **kwargs)
        except Exception as exc:  # label-studio-ml parses the config and raises its own XML errors
            raise RequestError(f"label_config is not a valid labeling config: {exc}", 400) from exc
        self.project = project
        self.stats: dict = {}

    @property
    def model_version(self) -> str:
        """The version serving this project now (hot-reloaded when a new one is published)."""
        return segmenter().model_version(self.project)

    def predict(self, tasks, context=None, **kwargs) -> list[dict]:
        """Predictions for an interactive click: ``[prediction]`` for ``tasks[0]`` and the
        keypoints in ``context["result"]``; ``[]`` without keypoints (plain pre-annotation)."""
        if not isinstance(tasks, list) or not tasks:
            raise RequestError("'tasks' must be a non-empty list of tasks", 400)
        prediction = segmenter().predict(tasks[0], self.label_config, context, self.project, self.stats)
        return [prediction] if prediction else []

    def fit(self, tasks, workdir=None, event: str = "START_TRAINING", **kwargs) -> dict:
        """Queue fine-tuning for this project (never trains in the request): backend.fit_queue."""
        from . import fit_queue

        s = settings_module.get()
        pid = project_id(self.project)
        if not s.redis_url or pid is None:
            raise RequestError("training needs REDIS_URL on the backend and a project id", 503)
        return fit_queue.request_training(fit_queue.connect(s.redis_url), pid, event, s)

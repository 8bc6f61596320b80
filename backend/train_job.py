"""The RQ job that fine-tunes one project's model (runs in ``rq worker ... focuscut``).

Steps, each visible in ``job.meta["stage"]``: check that the model directory is writable;
fetch the project export from Label Studio; build samples from the latest annotation of each
task (unusable ones skipped and counted); split off the held-out tasks; evaluate the current
version on them (NoC@90 over FOCUSCUT_TRAIN_EVAL_SAMPLES masks, FOCUSCUT_TRAIN_EVAL_CLICKS robot
clicks, FOCUSCUT_TRAIN_EVAL_MODE); fine-tune it for at most FOCUSCUT_TRAIN_MAX_STEPS steps /
FOCUSCUT_TRAIN_MAX_SECONDS; evaluate again; publish a new version only if NoC@90 did not rise.

``job.meta`` carries the progress: stage, step, max_steps, loss, samples_train, samples_holdout,
skipped, noc90_before, noc90_after, version. Any exception fails the job with its message (RQ
retries it once); a job killed mid-way publishes nothing, since publication is the last step and
is atomic (``backend.publish``).
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import httpx
from label_studio_sdk.core.api_error import ApiError
from rq import get_current_job

from focuscut_core import load_weights, select_device
from focuscut_core.predictor import Predictor
from focuscut_core.weights import DEFAULT_WEIGHTS

from . import annotations, fit_queue, publish
from . import settings as settings_module
from .url_policy import redact

log = logging.getLogger(__name__)
MAX_SIDE = 640  # samples are downscaled to this long side (px): bounded CPU time per step and per click


class TrainingError(RuntimeError):
    """The job cannot run (configuration, model directory); its message is the job's error."""


class Reporter:
    """Writes progress into the current RQ job's meta (at most once a second, unless forced)."""

    def __init__(self, job):
        self.job, self.meta, self._last = job, {}, 0.0

    def __call__(self, force: bool = True, **values) -> None:
        self.meta.update(values)
        if self.job is None:
            return
        self.job.meta.update(values)
        now = time.monotonic()
        if force or now - self._last >= 1.0:
            self.job.save_meta()
            self._last = now


def check_writable(directory: Path) -> None:
    """TrainingError unless files can be created in ``directory`` (created if missing)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
    except OSError as exc:
        raise TrainingError(f"model directory {directory} is not writable ({exc.strerror or exc}); "
                            f"nothing was trained and the current version is kept") from exc


def current_weights(model_dir: Path, project: str, default: str | None) -> tuple[str | None, Path]:
    """(version name or None for the default, weights path) the project is served with now."""
    manifest = publish.read_manifest(model_dir, project)
    if manifest["current"] is None:
        return None, Path(default or DEFAULT_WEIGHTS)
    entry = next(v for v in manifest["versions"] if v["version"] == manifest["current"])
    return entry["version"], model_dir / project / entry["file"]


def fine_tune_project(project: str, settings, load_image, report) -> dict:
    """Everything but the queue bookkeeping; returns the job's result."""
    from focuscut_core.evaluate import evaluate_samples
    from focuscut_core.train import fine_tune

    model_dir = Path(settings.model_dir)
    check_writable(model_dir / project / "versions")
    if not settings.label_studio_url or not settings.label_studio_api_key:
        raise TrainingError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set for the worker "
                            "to read the project's annotations")
    report(stage="fetching")
    try:
        tasks = annotations.fetch_export(settings.label_studio_url, settings.label_studio_api_key, project)
    except (httpx.HTTPError, ApiError, ValueError) as exc:
        detail = f"HTTP {exc.status_code}" if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
        raise TrainingError(f"cannot read project {project}'s annotations from Label Studio at "
                            f"{redact(settings.label_studio_url)} ({detail}); nothing was trained, the current "
                            f"version is kept, and the job can be retried") from exc
    data = annotations.build_samples(tasks, load_image, max_side=MAX_SIDE)
    train, held = annotations.split(data.samples)
    report(annotations=data.annotations, skipped=dict(data.skipped), samples_train=len(train),
           samples_holdout=len(held))
    if not train or not held:
        return {"published": False, "version": None, "annotations": data.annotations,
                "skipped": dict(data.skipped),
                "reason": f"{len(data.samples)} usable masks in {len({s.task for s in data.samples})} tasks: "
                          f"need masks in at least 2 tasks (one held out for evaluation)"}
    train_pairs = [(s.image, s.mask) for s in train]
    held_pairs = [(s.image, s.mask) for s in held[:settings.train_eval_samples]]

    parent, path = current_weights(model_dir, project, settings.weights)
    net, meta = load_weights(path)
    parent = parent or str(meta.get("version", path.stem))
    device = select_device(settings.device)
    config = settings_module.inference_config(settings, settings.train_eval_mode)
    clicks = settings.train_eval_clicks

    report(stage="evaluating_before", parent=parent)
    # stop_iou: the robot stops once a mask reaches 90 % IoU (NoC@90, the gate, is unchanged)
    before = evaluate_samples(Predictor(net, device, version=parent), held_pairs, config, max_clicks=clicks,
                              stop_iou=0.9)
    report(noc90_before=before["noc90"], stage="training", step=0, max_steps=settings.train_max_steps)
    t0 = time.monotonic()
    net = fine_tune(net, train_pairs, max_steps=settings.train_max_steps, max_seconds=settings.train_max_seconds,
                    progress=lambda step, loss: report(force=False, step=step, loss=round(float(loss), 5)),
                    device=device)
    train_seconds = time.monotonic() - t0
    report(stage="evaluating_after", train_seconds=round(train_seconds, 1))
    after = evaluate_samples(Predictor(net, device, version="candidate"), held_pairs, config, max_clicks=clicks,
                             stop_iou=0.9)
    metrics = {"noc90_before": before["noc90"], "noc90_after": after["noc90"], "noc85_before": before["noc85"],
               "noc85_after": after["noc85"], "miou_per_click_before": before["miou_per_click"],
               "miou_per_click_after": after["miou_per_click"], "samples_train": len(train_pairs),
               "samples_holdout": len(held_pairs),
               "annotations": data.annotations, "skipped": dict(data.skipped), "eval_mode": config.mode,
               "eval_clicks": clicks,
               "steps": int(report.meta.get("step", 0)),
               "train_seconds": round(train_seconds, 1)}
    report(noc90_after=after["noc90"])
    if after["noc90"] > before["noc90"]:
        return {"published": False, "version": None, "parent": parent, **metrics,
                "reason": f"NoC@90 on the held-out tasks would rise from {before['noc90']:.2f} to "
                          f"{after['noc90']:.2f}: version {parent} is kept"}
    report(stage="publishing")
    try:
        version = publish.publish(model_dir, project, net, parent=parent, metrics=metrics)
    except publish.PublishError as exc:
        raise TrainingError(str(exc)) from exc
    return {"published": True, "version": version, "parent": parent, **metrics}


def train_project(project: str) -> dict:
    """RQ entry point (``backend.train_job.train_project``): fine-tune and publish ``project``."""
    from .images import ImageFetcher

    settings = settings_module.load()
    job = get_current_job()
    report = Reporter(job)
    conn = job.connection if job else fit_queue.connect(settings.redis_url)
    seen = int(conn.get(fit_queue.key("new", project)) or 0)
    report(stage="starting", new_annotations_seen=seen, worker_pid=os.getpid())
    result = fine_tune_project(project, settings, ImageFetcher.from_settings(settings).load, report)
    report(stage="done", version=result.get("version"))
    log.info("project %s: %s", project, {k: result.get(k) for k in
                                         ("published", "version", "noc90_before", "noc90_after", "steps", "reason")})
    fit_queue.finish(conn, project, job.id if job else None, seen, settings)
    return result

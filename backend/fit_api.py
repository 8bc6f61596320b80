"""HTTP side of fine-tuning: Label Studio's webhooks, job status, model versions, rollback.

    POST /webhook                      {action, project, annotation?, task?} from Label Studio
                                       ANNOTATION_CREATED / ANNOTATION_UPDATED / START_TRAINING
                                       -> 201 {"status": "queued"|"coalesced"|"waiting", "job_id", ...}
                                       other actions -> 200 {"status": "ignored"}; Redis down -> 503
    GET  /jobs/<job_id>                id, state, stage, progress (step, loss), NoC before/after, error
    GET  /projects/<id>/jobs           the project's recent jobs and its new-annotation counter
    GET  /projects/<id>/versions       the project's manifest (current version, all versions)
    POST /projects/<id>/rollback       {"version": optional} -> {"current": ...}

Nothing here trains: the webhook only counts and enqueues (``backend.fit_queue``), so it answers
within Label Studio's one-second webhook timeout. ``register(app)`` adds the routes and replaces
label-studio-ml's own /webhook view (which would fork a training process per event).
"""
from __future__ import annotations

import functools

import redis
from flask import Blueprint, Flask, jsonify, request
from rq.exceptions import NoSuchJobError
from rq.job import Job

from . import fit_queue, publish
from . import settings as settings_module
from .registry import project_id

blueprint = Blueprint("focuscut_fit", __name__)


def error(message: str, status: int):
    return jsonify({"error": message}), status


@functools.lru_cache(maxsize=4)
def _connection(url: str) -> redis.Redis:
    return fit_queue.connect(url)


def redis_or_503():
    """(connection, None) or (None, a 503 answer) when fit is not configured."""
    url = settings_module.get().redis_url
    if not url:
        return None, error("REDIS_URL is not set on the backend: training (fit) is disabled; "
                           "predictions work without it", 503)
    return _connection(url), None


def annotation_count(data: dict) -> int:
    """One per annotation event; zero for a cancelled (skipped) annotation."""
    annotation = data.get("annotation")
    return 0 if isinstance(annotation, dict) and annotation.get("was_cancelled") else 1


@blueprint.route("/webhook", methods=["POST"])
def webhook():
    data = request.get_json(silent=True)
    if not isinstance(data, dict) or not isinstance(data.get("action"), str):
        return error("expected a JSON object with an 'action' (a Label Studio webhook)", 400)
    action = data["action"]
    if action not in fit_queue.TRAIN_EVENTS:
        return jsonify({"status": "ignored", "action": action}), 200
    project = project_id(data.get("project"))
    if project is None:
        return error(f"webhook {action} has no usable project id: {data.get('project')!r}", 400)
    conn, failure = redis_or_503()
    if failure:
        return failure
    count = annotation_count(data) if action in fit_queue.ANNOTATION_EVENTS else 0
    try:
        outcome = fit_queue.request_training(conn, project, action, settings_module.get(), count=count)
    except fit_queue.RedisUnavailable as exc:
        return error(str(exc), 503)
    return jsonify(outcome), 201


@blueprint.route("/jobs/<job_id>", methods=["GET"])
def job(job_id: str):
    conn, failure = redis_or_503()
    if failure:
        return failure
    try:
        return jsonify(fit_queue.job_status(Job.fetch(job_id, connection=conn)))
    except NoSuchJobError:
        return error(f"no job {job_id!r} (unknown, or its result expired)", 404)
    except redis.RedisError as exc:
        return error(f"Redis is unreachable ({type(exc).__name__}): job status is unavailable", 503)


@blueprint.route("/projects/<project>/jobs", methods=["GET"])
def project_jobs(project: str):
    if not (project.isascii() and project.isdigit()):
        return error(f"project must be a numeric id, got {project!r}", 400)
    conn, failure = redis_or_503()
    if failure:
        return failure
    try:
        pending = fit_queue.pending_job(conn, project)
        return jsonify({"project": project, "jobs": fit_queue.project_jobs(conn, project),
                        "pending_job": pending.id if pending else None,
                        "new_annotations": int(conn.get(fit_queue.key("new", project)) or 0),
                        "min_annotations": settings_module.get().train_min_annotations})
    except redis.RedisError as exc:
        return error(f"Redis is unreachable ({type(exc).__name__}): job status is unavailable", 503)


@blueprint.route("/projects/<project>/versions", methods=["GET"])
def versions(project: str):
    try:
        return jsonify(publish.read_manifest(settings_module.get().model_dir, project))
    except publish.PublishError as exc:
        return error(str(exc), 400)


@blueprint.route("/projects/<project>/rollback", methods=["POST"])
def rollback(project: str):
    body = request.get_json(silent=True) if request.data else {}
    if not isinstance(body, dict) or not isinstance(body.get("version", ""), (str, type(None))):
        return error('expected an empty body or {"version": "<id>-v<n>"}', 400)
    try:
        current = publish.rollback(settings_module.get().model_dir, project, body.get("version"))
    except publish.PublishError as exc:
        return error(str(exc), 409 if project.isascii() and project.isdigit() else 400)
    return jsonify({"project": project, "current": current})


def register(app: Flask) -> None:
    """Add the fit routes to ``app``; its /webhook (label-studio-ml's) becomes ours."""
    if "webhook" in app.view_functions:
        app.view_functions["webhook"] = webhook
    app.register_blueprint(blueprint)

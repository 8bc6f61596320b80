"""The HTTP app Label Studio talks to (our own Flask app, in place of label-studio-ml's).

label-studio-ml 1.0.9's app answers /predict only in the process that saw /setup, and turns
bad input into 500s with tracebacks. Here every request builds its own ``FocusCutBackend``
from the request, so any gunicorn worker answers, and every failure is a JSON
``{"error": ...}``: 4xx for bad input, never a traceback.

    GET  /, /health   {"status": "UP", "model_class": "FocusCutBackend"}
    POST /setup       {project, schema, ...}               -> {"model_version"}
    POST /predict     {tasks, project, label_config, params: {context}}
                      -> {"results": [prediction...], "model_version"}; header X-FocusCut-Stats:
                      JSON timings (fetch_s, net_s, session_s, rle_s, total_s), cache use (cache,
                      cache_hit_clicks, steps, net_calls) and the worker's pid
    GET  /versions    {project} (a JSON body, as Label Studio sends it) -> {"versions", "current"}
    GET  /metrics     {}
    + the fit routes (/webhook, /jobs/..., /projects/...) of ``backend.fit_api``

Every route but /health takes BASIC_AUTH_USER/PASS when they are set (``backend.auth``); bodies
are JSON only and at most FOCUSCUT_MAX_BODY_MB (``backend.limits``); the debugger is never on.
"""
from __future__ import annotations

import json
import logging
import os

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException


from . import auth, fit_api
from . import settings as settings_module
from .errors import RequestError
from .labeling import parse_label_config
from .limits import RequestLimits
from .model import FocusCutBackend, segmenter
from .registry import published_versions

log = logging.getLogger(__name__)


def _body() -> dict:
    data = request.get_json(force=True, silent=True)
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object", 400)
    return data


def health():
    return jsonify({"status": "UP", "model_class": FocusCutBackend.__name__})


def setup():
    data = _body()
    schema = data.get("schema")
    model = FocusCutBackend(project=data.get("project"))
    if schema:  # refuse a config click-to-mask cannot serve now, not at the first click
        parse_label_config(schema)
    return jsonify({"model_version": model.model_version})


def predict():
    data = _body()
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise RequestError("'params' must be an object", 400)
    context = params.get("context", data.get("context"))
    model = FocusCutBackend(label_config=data.get("label_config"), project=data.get("project"))
    results = model.predict(data.get("tasks"), context=context)
    version = results[0]["model_version"] if results else model.model_version
    response = jsonify({"results": results, "model_version": version})
    if model.stats:
        model.stats["pid"] = os.getpid()
        response.headers["X-FocusCut-Stats"] = json.dumps(model.stats)
        log.info("predict project=%r %s", data.get("project"), model.stats)  # %r: no forged log lines
    return response


def versions():
    """Label Studio's model-version list (GET with a JSON body {"project": "<id>.<ts>"})."""
    data = request.get_json(force=True, silent=True)
    project = data.get("project") if isinstance(data, dict) else request.args.get("project")
    model = FocusCutBackend(project=project)
    published = published_versions(project, settings_module.get().model_dir)
    default = segmenter().predictors.default().version
    return jsonify({"versions": [default, *published], "current": model.model_version})


def metrics():
    return jsonify({})


def _request_error(exc: RequestError):
    log.info("%s %r -> %d: %r", request.method, request.path, exc.status, exc.message)
    return jsonify({"error": exc.message}), exc.status


def _http_error(exc: HTTPException):
    return jsonify({"error": f"{exc.name}: {exc.description}"}), exc.code


def _too_deep(exc: RecursionError):
    return jsonify({"error": "the request body is nested too deeply to parse"}), 400


def _unexpected(exc: Exception):
    log.exception("%s %r failed", request.method, request.path)
    return jsonify({"error": f"internal error ({type(exc).__name__}); see the backend log"}), 500


def create_app() -> Flask:
    """The Flask app; checks the settings (a bad FOCUSCUT_MODE or FOCUSCUT_FLIP fails here, at worker start)."""
    s = settings_module.get()
    settings_module.inference_config(s)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    app = Flask("focuscut_backend")
    app.debug = False  # FLASK_DEBUG in the environment must not turn on debug behaviour
    app.add_url_rule("/", "index", health, methods=["GET"])
    app.add_url_rule("/health", "health", health, methods=["GET"])
    app.add_url_rule("/setup", "setup", setup, methods=["POST"])
    app.add_url_rule("/predict", "predict", predict, methods=["POST"])
    app.add_url_rule("/versions", "versions", versions, methods=["GET", "POST"])
    app.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])
    fit_api.register(app)
    app.register_error_handler(RequestError, _request_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(RecursionError, _too_deep)  # json gives up on deep nesting this way
    app.register_error_handler(Exception, _unexpected)
    auth.install(app, s.basic_auth_user, s.basic_auth_pass)
    app.wsgi_app = RequestLimits(app.wsgi_app, int(s.max_body_mb * (1 << 20)))
    return app

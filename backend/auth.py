"""Optional HTTP basic auth, the label-studio-ml convention: with BASIC_AUTH_USER and
BASIC_AUTH_PASS set, every route but /health answers 401 unless the request carries them
(Label Studio sends them when the ML backend's "Authentication" is set to basic auth).

Credentials are compared in constant time and never logged or echoed.
"""
from __future__ import annotations

import hmac

from flask import Flask, jsonify, request

OPEN_PATHS = frozenset({"/health"})  # Label Studio's health check; says nothing but "UP"


def _equal(given: str | None, expected: str) -> bool:
    return hmac.compare_digest((given or "").encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


def install(app: Flask, user: str | None, password: str | None) -> None:
    """Require ``user``/``password`` on ``app``'s routes; nothing when both are unset.
    ValueError when only one is set (a half-configured lock would be silently open)."""
    if not user and not password:
        return
    if not (user and password):
        raise ValueError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")

    def require_credentials():
        if request.path in OPEN_PATHS:
            return None
        auth = request.authorization
        # both comparisons always run: the time taken says nothing about which one failed
        ok = auth is not None and auth.type == "basic"
        ok = _equal(auth.username if ok else None, user) & _equal(auth.password if ok else None, password) & ok
        if ok:
            return None
        response = jsonify({"error": "authentication required: this backend uses HTTP basic auth "
                                     "(set the user and password in Label Studio's ML backend settings)"})
        response.headers["WWW-Authenticate"] = 'Basic realm="focuscut"'
        return response, 401

    app.before_request(require_credentials)

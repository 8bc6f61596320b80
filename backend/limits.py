"""WSGI middleware that bounds what a request may make the backend read, before Flask parses it.

- a body over ``max_bytes`` (FOCUSCUT_MAX_BODY_MB): 413 at once when Content-Length says so, or
  as soon as a chunked body passes the limit (Werkzeug 2.0.2 reads chunked bodies without bound);
- form and multipart bodies: 415. Every route takes JSON, and Werkzeug 2.0.2's multipart parser
  is where its denial-of-service advisories are (docs/SECURITY.md), so it is never reached.
"""
from __future__ import annotations

import json

from werkzeug.exceptions import RequestEntityTooLarge

_FORM_TYPES = ("multipart/", "application/x-www-form-urlencoded")


class _CappedInput:
    """A wsgi.input that raises 413 once more than ``limit`` bytes have been read."""

    def __init__(self, stream, limit: int):
        self.stream, self.left = stream, limit

    def _count(self, data: bytes) -> bytes:
        self.left -= len(data)
        if self.left < 0:
            raise RequestEntityTooLarge("the request body is over the limit (FOCUSCUT_MAX_BODY_MB)")
        return data

    def read(self, size: int = -1) -> bytes:
        return self._count(self.stream.read(size if size is not None and size >= 0 else self.left + 1))

    def readline(self, size: int = -1) -> bytes:
        return self._count(self.stream.readline(size if size is not None and size >= 0 else self.left + 1))

    def __iter__(self):
        return iter(self.readline, b"")


class RequestLimits:
    """Wraps a WSGI ``app``; see the module docstring."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    @staticmethod
    def _refuse(start_response, status: str, message: str):
        body = json.dumps({"error": message}).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                ("Connection", "close")])
        return [body]

    def __call__(self, environ, start_response):
        ctype = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        if ctype.startswith(_FORM_TYPES):
            return self._refuse(start_response, "415 Unsupported Media Type",
                                f"{ctype} bodies are not accepted: send JSON (application/json)")
        length = environ.get("CONTENT_LENGTH", "").strip()
        if length:
            if not (length.isascii() and length.isdigit()):
                return self._refuse(start_response, "400 Bad Request", "Content-Length is not a number")
            if int(length) > self.max_bytes:
                return self._refuse(start_response, "413 Request Entity Too Large",
                                    f"the request body is {int(length)} bytes, over the limit of "
                                    f"{self.max_bytes} (FOCUSCUT_MAX_BODY_MB)")
        else:
            environ["wsgi.input"] = _CappedInput(environ["wsgi.input"], self.max_bytes)
        return self.app(environ, start_response)

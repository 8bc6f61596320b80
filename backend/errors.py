"""The one exception type that becomes a JSON error answer: ``{"error": message}`` with ``status``."""
from __future__ import annotations


class RequestError(Exception):
    """A request the backend cannot serve, and why, for the client.

    ``status``: 400 malformed request, 422 well-formed but unusable (clicks outside the image, a
    file that is not an image, too many pixels), 502/504 the image host failed or timed out.
    """

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status

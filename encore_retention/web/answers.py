"""Answers every area of the web app gives alike."""

from __future__ import annotations

from flask import Response, jsonify, request

RETRY_AFTER_SECONDS = 5


def unavailable(error: str, detail: str):
    """A 503 with Retry-After: plain text for a browser, JSON `{"error", "detail"}` for the rest."""
    if request.accept_mimetypes.accept_html and not request.accept_mimetypes.accept_json:
        response = Response(detail + "\n", status=503, content_type="text/plain; charset=utf-8")
    else:
        response = jsonify(error=error, detail=detail)
        response.status_code = 503
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response

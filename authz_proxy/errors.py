"""The proxy's refusals and their rendering as the TAMS error body.

Exception tree (each class carries its HTTP status)::

    ProxyError                  500, never raised on purpose
    ├── BadRequest              400 body or query the proxy cannot judge (not JSON, bad tag value, bad cursor)
    ├── Unauthorized            401 no token or a token that does not verify (adds WWW-Authenticate)
    ├── Forbidden               403 the caller may see the resource but not do this to it
    ├── NotFound                404 unknown route, unknown resource, or one the caller may not see
    ├── MethodNotAllowed        405 a known path with a method the API does not define
    ├── PayloadTooLarge         413 a body over the proxy's limit
    └── BadGateway              502 the upstream store could not be reached or refused the proxy

Handlers raise these; ``error_middleware`` in ``app.py`` renders each one with ``error_body``.
"""

from __future__ import annotations

import datetime
from typing import Any

__all__ = [
    "BadGateway",
    "BadRequest",
    "Forbidden",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "ProxyError",
    "Unauthorized",
    "error_body",
]


def error_body(error_type: str, summary: str) -> dict[str, Any]:
    """The spec's error object (``schemas/error.json``)."""
    now = datetime.datetime.now(datetime.UTC)
    return {
        "type": error_type,
        "summary": summary,
        "time": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
    }


class ProxyError(Exception):
    """Root of the proxy's refusals; ``status`` is the HTTP status it is rendered with."""

    status: int = 500

    def __init__(self, summary: str) -> None:
        super().__init__(summary)
        self.summary = summary

    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict[str, Any]:
        return error_body(type(self).__name__, self.summary)


class BadRequest(ProxyError):
    status = 400


class Unauthorized(ProxyError):
    """``bearer_error`` is the RFC 6750 error code, None when no token was sent at all."""

    status = 401

    def __init__(self, summary: str, bearer_error: str | None = "invalid_token") -> None:
        super().__init__(summary)
        self.bearer_error = bearer_error

    def headers(self) -> dict[str, str]:
        challenge = 'Bearer realm="tams"'
        if self.bearer_error:
            # The summary is our own fixed text, never token content, so it is safe to echo.
            challenge += f', error="{self.bearer_error}", error_description="{self.summary}"'
        return {"WWW-Authenticate": challenge}


class Forbidden(ProxyError):
    status = 403


class NotFound(ProxyError):
    status = 404


class MethodNotAllowed(ProxyError):
    status = 405

    def __init__(self, summary: str, allowed: list[str]) -> None:
        super().__init__(summary)
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class PayloadTooLarge(ProxyError):
    status = 413


class BadGateway(ProxyError):
    status = 502

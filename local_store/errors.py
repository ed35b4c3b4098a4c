"""Store exceptions and their rendering as the TAMS error body.

Exception tree (each class carries its HTTP status as a class attribute)::

    StoreError                      500, never raised on purpose
    ├── BadRequest                  400 malformed JSON, schema failures, bad query values
    │   ├── InvalidTimerange        400 a timerange/timestamp that does not parse
    │   ├── SegmentOverlap          400 a segment overlaps one already stored
    │   └── NoContainer             400 storage/segments on a Flow without `container`
    ├── Unauthorized                401 no or bad credentials (adds WWW-Authenticate)
    ├── Forbidden                   403 scope missing, read_only Flow, bad signature
    ├── NotFound                    404
    │   ├── FlowNotFound
    │   ├── SourceNotFound
    │   └── ObjectNotFound
    ├── Conflict                    409 an object's bytes already exist and differ
    ├── PayloadTooLarge             413
    └── ServiceUnavailable          503 injected faults

Handlers and the database raise these; ``error_middleware`` in ``app.py`` renders every one of
them (and aiohttp's own HTTP exceptions, such as 404 for an unknown route) with
``error_body``. Every JSON answer, error or not, goes out through ``json_response`` with the one
Content-Type the spec names, ``application/json``.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from aiohttp import web

__all__ = [
    "BadRequest",
    "Conflict",
    "FlowNotFound",
    "Forbidden",
    "InvalidTimerange",
    "NoContainer",
    "NotFound",
    "ObjectNotFound",
    "PayloadTooLarge",
    "SegmentOverlap",
    "ServiceUnavailable",
    "SourceNotFound",
    "StoreError",
    "Unauthorized",
    "error_body",
    "json_response",
    "utc_now_iso",
]


def utc_now_iso() -> str:
    """The current UTC time as an RFC 3339 date-time with a ``Z`` suffix."""
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="microseconds").replace("+00:00", "Z")


def error_body(error_type: str, summary: str) -> dict[str, Any]:
    """The spec's error object (``schemas/error.json``)."""
    return {"type": error_type, "summary": summary, "time": utc_now_iso()}


def json_response(body: Any, status: int = 200, headers: Any = None) -> web.Response:
    """A JSON answer with Content-Type ``application/json`` (no charset parameter: JSON is UTF-8)."""
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        headers=headers,
        content_type="application/json",
    )


class StoreError(Exception):
    """Root of the store's exceptions; ``status`` is the HTTP status it is rendered with."""

    status: int = 500

    def __init__(self, summary: str) -> None:
        super().__init__(summary)
        self.summary = summary

    @property
    def error_type(self) -> str:
        return type(self).__name__

    def body(self) -> dict[str, Any]:
        return error_body(self.error_type, self.summary)


class BadRequest(StoreError):
    status = 400


class InvalidTimerange(BadRequest):
    pass


class SegmentOverlap(BadRequest):
    pass


class NoContainer(BadRequest):
    def __init__(self, flow_id: str) -> None:
        super().__init__(f"Flow {flow_id} has no container set")


class Unauthorized(StoreError):
    status = 401

    def __init__(self, summary: str, *, bearer_error: str | None = None) -> None:
        super().__init__(summary)
        self.bearer_error = bearer_error


class Forbidden(StoreError):
    status = 403


class NotFound(StoreError):
    status = 404


class FlowNotFound(NotFound):
    def __init__(self, flow_id: str) -> None:
        super().__init__(f"Flow {flow_id} does not exist")


class SourceNotFound(NotFound):
    def __init__(self, source_id: str) -> None:
        super().__init__(f"Source {source_id} does not exist")


class ObjectNotFound(NotFound):
    def __init__(self, object_id: str) -> None:
        super().__init__(f"Object {object_id!r} does not exist")


class Conflict(StoreError):
    status = 409


class PayloadTooLarge(StoreError):
    status = 413


class ServiceUnavailable(StoreError):
    status = 503

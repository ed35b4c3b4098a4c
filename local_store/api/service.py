"""``/``, ``/service`` and ``/service/storage-backends``.

``/service`` reports the API version (8.2), ``min_object_timeout`` (the garbage collection grace,
never below the spec's 300 s), the event stream mechanisms (webhooks) and, as an extension the
schema allows, ``storage_backends``: the same list ``/service/storage-backends`` serves (clients
should use that endpoint; the copy is for people reading ``/service``).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from mediatimestamp.immutable import Timestamp

from .. import schemas
from ..errors import (
    BadRequest,
)
from ..state import Store
from .common import (
    json_body,
    json_response,
    paging_headers,
    query_bool,
    query_limit,
    query_offset_page,
    query_tags,
    store_of,
)

__all__ = ["routes"]

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()

API_VERSION = "8.2"
SERVICE_VERSION = "local_store 1.0"


# --- service ---------------------------------------------------------------------------------------


@routes.get("/")
async def get_root(request: web.Request) -> web.Response:
    return json_response(["service", "flows", "sources", "flow-delete-requests"])


def _seconds(value: float) -> str:
    """Seconds as a TAMS timestamp (whole nanoseconds, so exact for any decimal option)."""
    return str(Timestamp.from_nanosec(round(value * 1_000_000_000)))


def service_body(store: Store) -> dict[str, Any]:
    timeout = store.config.min_object_timeout
    body: dict[str, Any] = {
        "type": "urn:x-tams:service.local-store",
        "api_version": API_VERSION,
        "service_version": SERVICE_VERSION,
        "min_object_timeout": _seconds(timeout),
        "min_presigned_url_timeout": _seconds(min(store.config.presigned_url_ttl, timeout)),
        "event_stream_mechanisms": [
            {
                "name": "webhooks",
                "docs": "https://bbc.github.io/tams/8.2/index.html#/operations/POST_webhooks",
            }
        ],
        "storage_backends": [store.backend.describe()],
    }
    body["name"] = store.service_name if store.service_name is not None else "Local TAMS store"
    body["description"] = (
        store.service_description
        if store.service_description is not None
        else "The embedded TAMS store of the TAMS toolkit (SQLite metadata, media files on local disk)"
    )
    return body


@routes.get("/service")
async def get_service(request: web.Request) -> web.Response:
    return json_response(service_body(store_of(request)))


@routes.post("/service")
async def post_service(request: web.Request) -> web.Response:
    store = store_of(request)
    body = await json_body(request)
    schemas.check(body, "service-post.json", "service update")
    if not isinstance(body, dict):
        raise BadRequest("The service update must be a JSON object")
    changes: dict[str, str | None] = {}
    if "name" in body:
        store.service_name = body["name"]
        changes["service_name"] = body["name"]
    if "description" in body:
        store.service_description = body["description"]
        changes["service_description"] = body["description"]
    await store.db.set_settings(changes)
    return json_response(service_body(store))


@routes.get("/service/storage-backends")
async def get_storage_backends(request: web.Request) -> web.Response:
    store = store_of(request)
    limit = query_limit(request, store, lenient=True)
    offset = query_offset_page(request)
    reverse = bool(query_bool(request, "reverse_order", False))
    backends = [store.backend.describe()]
    for tag in query_tags(request):
        if tag.exists is not False:  # the local backend has no tags
            backends = []
    if reverse:
        backends.reverse()
    page = backends[offset : offset + limit]
    next_key = f"o{offset + limit}" if len(backends) > offset + limit else None
    return json_response(page, headers=paging_headers(request, limit, len(page), next_key, reverse))

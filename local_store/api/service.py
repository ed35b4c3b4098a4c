"""``/``, ``/service`` and ``/service/storage-backends``."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

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
    return json_response(["service", "flows", "sources"])


def service_body(store: Store) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "urn:x-tams:service.local-store",
        "api_version": API_VERSION,
        "service_version": SERVICE_VERSION,
        "min_object_timeout": f"{store.config.min_object_timeout}:0",
        "min_presigned_url_timeout": f"{min(store.config.presigned_url_ttl, store.config.min_object_timeout)}:0",
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
    limit = query_limit(request, store)
    offset = query_offset_page(request)
    query_bool(request, "reverse_order")
    backends = [store.backend.describe()]
    for tag in query_tags(request):
        if tag.exists is not False:
            backends = []
    page = backends[offset : offset + limit]
    return json_response(page, headers=paging_headers(request, limit, len(page), None))

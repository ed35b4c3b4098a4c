"""``/objects/{id}`` and the media bytes served at ``/objects-data/...`` (presigned or with credentials)."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from ..auth import check_scope
from ..errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    ObjectNotFound,
    PayloadTooLarge,
    utc_now_iso,
)
from ..objects import (
    EXPIRES_PARAM,
    SIGNATURE_PARAM,
    object_id_from_path,
)
from .common import (
    UrlFilter,
    get_urls,
    json_response,
    paging_headers,
    query_limit,
    query_offset_page,
    store_of,
)

__all__ = ["routes"]

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()


# --- objects ---------------------------------------------------------------------------------------


@routes.get("/objects/{object_id}")
async def get_object(request: web.Request) -> web.Response:
    store = store_of(request)
    object_id = request.match_info["object_id"]
    limit = query_limit(request, store)
    offset = query_offset_page(request)
    filters = UrlFilter.from_request(request)
    record = await store.db.get_object(object_id, offset, limit + 1)
    if record is None:
        raise ObjectNotFound(object_id)
    flows = record["referenced_by_flows"]
    next_key = f"o{offset + limit}" if len(flows) > limit else None
    body: dict[str, Any] = {"id": object_id, "referenced_by_flows": flows[:limit]}
    if record["first_referenced_by_flow"]:
        body["first_referenced_by_flow"] = record["first_referenced_by_flow"]
    if record["role"] == "media" and record["timerange"] is not None:
        body["timerange"] = record["timerange"]
    if record["key_frame_count"] is not None:
        body["key_frame_count"] = record["key_frame_count"]
    urls = get_urls(
        store,
        object_id,
        bool(record["controlled"]),
        record["content_type"],
        record["urls"],
        filters,
    )
    if urls or filters.labels is None:
        body["get_urls"] = urls
    init = record.get("init")
    if init:
        init_body: dict[str, Any] = {"id": init["id"]}
        init_urls = get_urls(
            store,
            init["id"],
            bool(init["controlled"]),
            init["content_type"],
            record["init_urls"],
            filters,
        )
        if init_urls or filters.labels is None:
            init_body["get_urls"] = init_urls
        body["init_object"] = init_body
    headers = paging_headers(request, limit, len(body["referenced_by_flows"]), next_key)
    del headers["X-Paging-Count"]  # /objects sends only Link, Limit and NextKey
    return json_response(body, headers=headers)


# --- media bytes -----------------------------------------------------------------------------------


async def authorise_media(request: web.Request, method: str, object_id: str, content_type: str) -> None:
    """Presigned (signature in the query) or API credentials; raises 401/403."""
    store = store_of(request)
    if SIGNATURE_PARAM in request.query or EXPIRES_PARAM in request.query:
        problem = store.signer.verify(
            method,
            object_id,
            content_type,
            request.query.get(EXPIRES_PARAM),
            request.query.get(SIGNATURE_PARAM),
        )
        if problem is not None:
            logger.info("refused presigned %s of an object: %s", method, problem)
            raise Forbidden(f"Presigned URL refused: {problem}")
        return
    principal = await store.auth.authenticate(request)
    request["principal"] = principal
    check_scope(principal, method, "/objects-data/{object_id}")


def media_object_id(request: web.Request) -> str:
    object_id = object_id_from_path(request.match_info["object_id"])
    if object_id is None:
        raise NotFound(f"No media object at {request.path}")
    return object_id


@routes.put("/objects-data/{object_id}")
async def put_object_data(request: web.Request) -> web.Response:
    store = store_of(request)
    object_id = media_object_id(request)
    content_type = request.content_type.lower()
    await authorise_media(request, "PUT", object_id, content_type)
    record = await store.db.object_for_upload(object_id)
    if record is None or not record["controlled"]:
        raise ObjectNotFound(object_id)
    if record["content_type"] and record["content_type"] != content_type:
        raise BadRequest(f"This object must be uploaded with Content-Type {record['content_type']}")
    if request.content_length is not None and request.content_length > store.config.max_object_bytes:
        raise PayloadTooLarge(f"Objects are limited to {store.config.max_object_bytes} bytes")
    try:
        outcome = await store.files.write(
            object_id,
            request.content.iter_chunked(1 << 16),
            store.config.max_object_bytes,
        )
    except FileExistsError as exc:
        raise Conflict(f"Object {object_id!r} already holds different bytes; objects are never overwritten") from exc
    except OverflowError as exc:
        raise PayloadTooLarge(str(exc)) from exc
    await store.db.record_upload(object_id, outcome.size, utc_now_iso())
    return web.Response(status=201 if outcome.created else 200)


@routes.get("/objects-data/{object_id}")
async def get_object_data(request: web.Request) -> web.StreamResponse:
    store = store_of(request)
    object_id = media_object_id(request)
    record = await store.db.object_for_upload(object_id)
    content_type = (record or {}).get("content_type") or ""
    await authorise_media(request, "GET", object_id, content_type)
    if record is None or not record["controlled"] or not store.files.exists(object_id):
        raise ObjectNotFound(object_id)
    return web.FileResponse(
        store.files.path_for(object_id),
        headers={
            "Content-Type": content_type or "application/octet-stream",
            "Cache-Control": "private, max-age=60",
        },
    )

"""``/objects/{id}``, its ``instances``, and the media bytes served at ``/objects-data/...``
(presigned or with credentials)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from aiohttp import web

from .. import schemas
from ..auth import check_scope
from ..bodies import add_get_urls
from ..database import PageAfter
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
    WriteOutcome,
    object_id_from_path,
)
from ..state import Store
from .common import (
    check_http_url,
    check_string,
    check_uuid,
    json_body,
    json_response,
    page_token,
    paging_headers,
    query_limit,
    query_page_after,
    query_tags,
    store_of,
    url_filter,
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
    after = query_page_after(request, "referenced_by_flows")
    filters = url_filter(request)
    flow_tags = query_tags(request, prefix="flow_")
    record = await store.db.get_object(object_id, after.id if after is not None else None, limit, flow_tags)
    if record is None:
        raise ObjectNotFound(object_id)
    next_flow = record["next_flow"]
    next_key = page_token("referenced_by_flows", PageAfter(None, next_flow) if next_flow is not None else None)
    body: dict[str, Any] = {"id": object_id, "referenced_by_flows": record["referenced_by_flows"]}
    if record["first_referenced_by_flow"]:
        body["first_referenced_by_flow"] = record["first_referenced_by_flow"]
    if record["role"] == "media" and record["timerange"] is not None:
        body["timerange"] = record["timerange"]
    if record["key_frame_count"] is not None:
        body["key_frame_count"] = record["key_frame_count"]
    add_get_urls(body, store, object_id, bool(record["controlled"]), record["content_type"], record["urls"], filters)
    init = record.get("init")
    if init:
        init_body: dict[str, Any] = {"id": init["id"]}
        add_get_urls(init_body, store, init["id"], bool(init["controlled"]), init["content_type"], record["init_urls"], filters)
        body["init_object"] = init_body
    headers = paging_headers(request, limit, len(body["referenced_by_flows"]), next_key)
    del headers["X-Paging-Count"]  # /objects sends only Link, Limit and NextKey
    return json_response(body, headers=headers)


# --- instances -------------------------------------------------------------------------------------


@routes.post("/objects/{object_id}/instances")
async def post_instance(request: web.Request) -> web.Response:
    """Add an instance: ``{"url", "label"}`` registers an uncontrolled URL; ``{"storage_id"}``
    asks for a controlled copy on that backend. The local store has one backend, so a copy is
    only possible for an object it does not hold yet: the store fetches the bytes from one of
    the object's uncontrolled URLs and keeps them (synchronously, then 201)."""
    store = store_of(request)
    object_id = request.match_info["object_id"]
    body = await json_body(request)
    if not isinstance(body, dict):
        raise BadRequest("The instance must be a JSON object")
    schemas.check(body, "objects-instances-post.json", "object instance")
    if "storage_id" in body:
        if body["storage_id"] != store.backend.id:
            raise BadRequest(f"Unknown storage_id {body['storage_id']}")
        await copy_to_local_storage(store, object_id)
        return web.Response(status=201)
    url = check_http_url(body["url"], "url")
    label = check_string(body["label"], "label")
    if not label:
        raise BadRequest("label must not be empty")
    if label == store.backend.label:
        raise BadRequest(f"The label {label!r} belongs to a storage backend")
    await store.db.add_uncontrolled_instance(object_id, url, label)
    return web.Response(status=201)


async def copy_to_local_storage(store: Store, object_id: str) -> None:
    instances = await store.db.object_instances(object_id)
    if instances["controlled"]:
        raise BadRequest(f"Object {object_id!r} already has an instance on storage {store.backend.id}")
    if instances["removal_pending"]:
        raise BadRequest(f"The previous local instance of {object_id!r} is still being removed; retry")
    sources = [url for url, _ in instances["urls"]]
    if not sources:
        raise BadRequest(f"Object {object_id!r} has no instance to copy from")
    failures: list[str] = []
    for source in sources:
        try:
            outcome = await _fetch_into(store, object_id, source)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            failures.append(type(exc).__name__)
            continue
        except _FetchRefused as exc:
            failures.append(str(exc))
            continue
        if await store.db.set_controlled(object_id, outcome.size, utc_now_iso()):
            return
        if outcome.created:  # lost a race (object gone or copied meanwhile): keep nothing stray
            await asyncio.to_thread(store.files.path_for(object_id).unlink, missing_ok=True)
        raise BadRequest(f"Object {object_id!r} changed while it was being copied; retry")
    raise BadRequest(f"Could not copy object {object_id!r} from any of its instances ({', '.join(failures)})")


class _FetchRefused(Exception):
    pass


async def _fetch_into(store: Store, object_id: str, url: str) -> WriteOutcome:
    timeout = aiohttp.ClientTimeout(total=300, sock_connect=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, allow_redirects=True) as response,
    ):
        if response.status != 200:
            raise _FetchRefused(f"HTTP {response.status}")
        try:
            return await store.files.write(object_id, response.content.iter_chunked(1 << 16), store.config.max_object_bytes)
        except FileExistsError as exc:
            raise _FetchRefused("different bytes are already stored") from exc
        except OverflowError as exc:
            raise _FetchRefused("too large") from exc


@routes.delete("/objects/{object_id}/instances")
async def delete_instance(request: web.Request) -> web.Response:
    """Remove the instance named by ``storage_id`` (the controlled copy) or ``label``; the last
    instance is refused (400): remove an object by deleting the segments that use it."""
    store = store_of(request)
    object_id = request.match_info["object_id"]
    storage_id = request.query.get("storage_id")
    label = request.query.get("label")
    if storage_id is None and label is None:
        raise BadRequest("Give storage_id or label")
    if storage_id is not None:
        check_uuid(storage_id, "storage_id")
    if label is not None and not label:
        raise BadRequest("label must not be empty")
    controlled = await store.db.remove_instance(
        object_id,
        storage_id=storage_id,
        label=label,
        backend_id=store.backend.id,
        backend_label=store.backend.label,
    )
    if controlled:
        await asyncio.to_thread(store.files.path_for(object_id).unlink, missing_ok=True)
        await store.db.file_removals_done([object_id])
    return web.Response(status=204)


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
    if not await store.db.record_upload(object_id, outcome.size, utc_now_iso()):
        # Garbage-collected while the bytes were arriving: they must not stay behind.
        await asyncio.to_thread(store.files.path_for(object_id).unlink, missing_ok=True)
        await store.db.file_removals_done([object_id])
        raise ObjectNotFound(object_id)
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

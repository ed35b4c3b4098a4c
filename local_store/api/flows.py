"""``/flows``, ``/flows/{id}``, a Flow's properties as their own resources, and storage allocation.

A Flow PUT naming a Flow Profile gets the Profile's technical metadata (``apply_profile``);
DELETE is synchronous and recorded under ``/flow-delete-requests`` (``delete_flow``).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from aiohttp import web

from .. import schemas
from ..bodies import flow_body
from ..database import (
    DELETE_VALUE,
    FlowQuery,
)
from ..errors import (
    BadRequest,
    FlowNotFound,
    NotFound,
    utc_now_iso,
)
from ..objects import (
    object_url_path,
)
from ..state import Store
from ..timing import (
    INT64_MAX,
    Span,
    make_timerange,
)
from .common import (
    MIME_RE,
    check_string,
    check_tag,
    check_uuid,
    json_body,
    json_response,
    keyset_listing,
    listing_name,
    path_uuid,
    principal_of,
    query_bool,
    query_format,
    query_int,
    query_limit,
    query_mime,
    query_tags,
    query_timerange,
    query_uuid_list,
    store_of,
)

__all__ = ["routes"]

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()

FLOW_STATUSES = frozenset({"awaiting_content", "ingesting", "replication_in_progress", "closed_complete"})
# The technical metadata a Flow Profile holds (flow-technical.json and the format variants).
PROFILE_FIELDS = frozenset({"format", "codec", "container", "avg_bit_rate", "segment_duration", "container_mapping", "essence_parameters"})

# Server-managed fields are ignored on PUT (timerange MUST be), so they are not validated either.
SERVER_MANAGED_FLOW_FIELDS = (
    "created",
    "metadata_updated",
    "segments_updated",
    "collected_by",
    "timerange",
)


# --- flows -----------------------------------------------------------------------------------------


async def flow_timerange_text(store: Store, flow_id: str, clip: Span | None, clip_given: bool) -> str:
    bounds = await store.db.flow_timerange(flow_id)
    if bounds is None:
        return "()"
    start_ns, incl_start, end_ns, incl_end = bounds
    timerange = make_timerange(start_ns, end_ns, incl_start, incl_end)
    if clip_given:
        if clip is None:
            return "()"
        timerange = timerange.intersect_with(clip.to_timerange(start_ns, end_ns))
    return str(timerange)


@routes.get("/flows")
async def get_flows(request: web.Request) -> web.Response:
    store = store_of(request)
    limit = query_limit(request, store)
    source_id = request.query.get("source_id")
    if source_id is not None:
        check_uuid(source_id, "source_id")
    sort_by = request.query.get("sort_by")
    if sort_by is not None and sort_by not in ("created", "metadata_updated", "label"):
        raise BadRequest(f"Unsupported sort_by {sort_by!r}")
    profile_id = request.query.get("profile_id")
    if profile_id is not None:
        check_uuid(profile_id, "profile_id")
    status = request.query.get("status")
    if status is not None and status not in FLOW_STATUSES:
        raise BadRequest(f"Unknown Flow status {status[:60]!r}")
    given, span = query_timerange(request)
    query = FlowQuery(
        source_id=source_id,
        timerange=span if given and span is not None else None,
        timerange_empty=given and span is None,
        format=query_format(request),
        codec=query_mime(request, "codec"),
        label=request.query.get("label"),
        status=status,
        frame_width=query_int(request, "frame_width"),
        frame_height=query_int(request, "frame_height"),
        init_segments=query_bool(request, "init_segments"),
        profile_id=profile_id,
        tags=query_tags(request),
        collected_by=query_uuid_list(request, "collected_by_ids"),
        sort_by=sort_by,
        reverse_order=bool(query_bool(request, "reverse_order", False)),
    )
    return await keyset_listing(
        request,
        listing_name("flows", sort_by or "created", query.reverse_order),
        limit,
        query.reverse_order,
        lambda after: store.db.list_flows(query, after, limit),
        flow_body,
    )


@routes.get("/flows/{flow_id}")
async def get_flow(request: web.Request) -> web.Response:
    store = store_of(request)
    flow_id = path_uuid(request, "flow_id", "Flow id")
    include = bool(query_bool(request, "include_timerange", False))
    clip_given, clip = query_timerange(request)
    record = await store.db.get_flow(flow_id)
    if record is None:
        raise FlowNotFound(flow_id)
    timerange = await flow_timerange_text(store, flow_id, clip, clip_given) if include else None
    return json_response(flow_body(record, timerange))


@routes.put("/flows/{flow_id}")
async def put_flow(request: web.Request) -> web.Response:
    store = store_of(request)
    flow_id = check_uuid(request.match_info["flow_id"], "Flow id")  # creating: a bad id is bad input
    body = await json_body(request)
    if not isinstance(body, dict):
        raise BadRequest("The Flow must be a JSON object")
    # Server-managed fields are ignored on PUT (timerange MUST be), so they are not validated.
    doc = {k: v for k, v in body.items() if k not in SERVER_MANAGED_FLOW_FIELDS}
    schemas.check(doc, "flow-put.json", "Flow")
    if doc["id"] != flow_id:
        raise BadRequest(f"The Flow id in the body ({doc['id']}) differs from the path ({flow_id})")
    doc = await apply_profile(store, doc)
    essence = doc.get("essence_parameters") or {}
    for name in ("frame_width", "frame_height"):  # kept in SQLite INTEGER columns for the filters
        if isinstance(essence.get(name), int) and abs(essence[name]) > INT64_MAX:
            raise BadRequest(f"essence_parameters.{name} is out of range")
    principal = principal_of(request)
    created = await store.db.put_flow(flow_id, doc, principal.name, utc_now_iso(), source_label=doc.get("label"))
    if not created:
        return web.Response(status=204)
    record = await store.db.get_flow(flow_id)
    assert record is not None
    return json_response(flow_body(record), status=201)


async def apply_profile(store: Store, doc: dict[str, Any]) -> dict[str, Any]:
    """A Flow PUT naming a Flow Profile gets the Profile's technical metadata (normalised on
    write, so a GET shows it); ``profile_id: ""`` unlinks a Flow from its Profile."""
    profile_id = doc.get("profile_id")
    if profile_id is None:
        return doc
    if profile_id == "":
        return {k: v for k, v in doc.items() if k != "profile_id"}
    given = sorted(PROFILE_FIELDS.intersection(doc))
    if given:
        raise BadRequest(f"A Flow using a Profile may not also give its technical metadata ({', '.join(given)})")
    profile = await store.db.get_profile(profile_id)
    if profile is None:
        raise BadRequest(f"Unknown Flow Profile {profile_id}")
    return {**profile["flow_metadata"], **doc}


@routes.delete("/flows/{flow_id}")
async def delete_flow(request: web.Request) -> web.Response:
    """Delete a Flow, synchronously.

    The spec lets a store answer 204 (done) or 202 with a deletion request to poll. Here the
    Flow, its segments and (with its last Flow) its Source go in one transaction, so the answer
    is always 204: a client must handle 204 anyway, and a 202 for work already finished would
    only make it poll. The request is still recorded (``status: done``) under
    ``/flow-delete-requests`` for monitoring. Objects no other Flow uses are removed by the
    garbage collector after the grace period.
    """
    flow_id = path_uuid(request, "flow_id", "Flow id")
    store = store_of(request)
    await store.db.delete_flow(flow_id, principal_of(request).name, utc_now_iso())
    return web.Response(status=204)


# --- Flow properties as their own resources ----------------------------------------------


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false")
    return value


def _check_bit_rate(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"{name} must be a non-negative integer (kbit/s)")
    return value


def _check_collection(value: Any, name: str) -> list[Any]:
    schemas.check(value, "flow-collection.json", name)
    return value


FLOW_PROPERTIES = {
    "label": check_string,
    "description": check_string,
    "read_only": _check_bool,
    "max_bit_rate": _check_bit_rate,
    "avg_bit_rate": _check_bit_rate,
    "flow_collection": _check_collection,
}
FLOW_PROPERTY_ROUTE = "/flows/{flow_id}/{name:" + "|".join(FLOW_PROPERTIES) + "}"


async def _flow_doc(request: web.Request) -> tuple[str, dict[str, Any]]:
    flow_id = path_uuid(request, "flow_id", "Flow id")
    record = await store_of(request).db.get_flow(flow_id)
    if record is None:
        raise FlowNotFound(flow_id)
    return flow_id, record["doc"]


@routes.get(FLOW_PROPERTY_ROUTE)
async def get_flow_property(request: web.Request) -> web.Response:
    _, doc = await _flow_doc(request)
    name = request.match_info["name"]
    if name == "read_only":
        return json_response(bool(doc.get("read_only", False)))
    if doc.get(name) is None:
        raise NotFound(f"The Flow has no {name}")
    return json_response(doc[name])


@routes.put(FLOW_PROPERTY_ROUTE)
async def put_flow_property(request: web.Request) -> web.Response:
    flow_id = path_uuid(request, "flow_id", "Flow id")
    name = request.match_info["name"]
    value = FLOW_PROPERTIES[name](await json_body(request), name)
    store = store_of(request)
    await store.db.update_flow_property(flow_id, (name,), value, principal_of(request).name, utc_now_iso())
    return web.Response(status=204)


async def delete_flow_property(request: web.Request) -> web.Response:
    flow_id = path_uuid(request, "flow_id", "Flow id")
    name = request.match_info["name"]
    if name == "read_only":
        raise web.HTTPMethodNotAllowed("DELETE", ["GET", "HEAD", "PUT"])
    store = store_of(request)
    await store.db.update_flow_property(flow_id, (name,), DELETE_VALUE, principal_of(request).name, utc_now_iso())
    return web.Response(status=204)


routes.delete(FLOW_PROPERTY_ROUTE)(delete_flow_property)


@routes.get("/flows/{flow_id}/tags")
async def get_flow_tags(request: web.Request) -> web.Response:
    _, doc = await _flow_doc(request)
    return json_response(doc.get("tags") or {})


@routes.get("/flows/{flow_id}/tags/{name}")
async def get_flow_tag(request: web.Request) -> web.Response:
    _, doc = await _flow_doc(request)
    name = request.match_info["name"]
    tags = doc.get("tags") or {}
    if name not in tags:
        raise NotFound(f"The Flow has no tag {name!r}")
    return json_response(tags[name])


@routes.put("/flows/{flow_id}/tags/{name}")
async def put_flow_tag(request: web.Request) -> web.Response:
    flow_id = path_uuid(request, "flow_id", "Flow id")
    name = request.match_info["name"]
    value = check_tag(await json_body(request), name)
    store = store_of(request)
    await store.db.update_flow_property(flow_id, ("tags", name), value, principal_of(request).name, utc_now_iso())
    return web.Response(status=204)


@routes.delete("/flows/{flow_id}/tags/{name}")
async def delete_flow_tag(request: web.Request) -> web.Response:
    flow_id = path_uuid(request, "flow_id", "Flow id")
    path = ("tags", request.match_info["name"])
    store = store_of(request)
    await store.db.update_flow_property(flow_id, path, DELETE_VALUE, principal_of(request).name, utc_now_iso())
    return web.Response(status=204)


# --- storage ---------------------------------------------------------------------------------------


@routes.post("/flows/{flow_id}/storage")
async def post_storage(request: web.Request) -> web.Response:
    store = store_of(request)
    flow_id = path_uuid(request, "flow_id", "Flow id")
    body = await json_body(request, optional=True)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequest("The storage request must be a JSON object")
    schemas.check(body, "flow-storage-post.json", "storage request")
    if "content-type" in body and "content_type" in body and body["content-type"] != body["content_type"]:
        raise BadRequest("content_type and content-type differ")
    content_type = body.get("content_type", body.get("content-type"))
    if content_type is not None and (not isinstance(content_type, str) or not MIME_RE.match(content_type)):
        raise BadRequest(f"Invalid content_type {content_type!r}")
    storage_id = body.get("storage_id")
    if storage_id is not None and storage_id != store.backend.id:
        raise BadRequest(f"Unknown storage_id {storage_id}")
    presigned = body.get("presigned", True)
    if "object_ids" in body:
        object_ids = body["object_ids"]
        if not object_ids:
            raise BadRequest("object_ids must not be empty")
        if len(object_ids) > store.config.max_storage_limit:
            raise BadRequest(f"At most {store.config.max_storage_limit} object_ids per request")
        if any(not oid for oid in object_ids) or len(set(object_ids)) != len(object_ids):
            raise BadRequest("object_ids must be distinct non-empty strings")
    else:
        limit = body.get("limit", 10)
        if limit < 1:
            raise BadRequest("limit must be a positive integer")
        object_ids = [str(uuid.uuid4()) for _ in range(min(limit, store.config.max_storage_limit))]
    flow = await store.db.get_flow(flow_id)
    if flow is None:
        raise FlowNotFound(flow_id)
    if not flow["container"]:
        raise BadRequest(f"Flow {flow_id} has no container set")
    if content_type is None:
        content_type = flow["container"]
    await store.db.allocate_objects(flow_id, object_ids, content_type.lower(), utc_now_iso())
    media_objects = []
    for object_id in object_ids:
        url = store.base_url + object_url_path(object_id)
        if presigned:
            url += "?" + store.signer.sign("PUT", object_id, content_type.lower())
        media_objects.append(
            {
                "object_id": object_id,
                "put_url": {"url": url, "content-type": content_type},
                "presigned": presigned,
            }
        )
    return json_response({"media_objects": media_objects}, status=201)

"""``/sources`` and a Source's properties (label, description, tags) as their own resources.

There is no PUT or DELETE of a Source: a Source is created by the first Flow PUT that names it
and deleted with its last Flow. ``source_collection``/``collected_by`` are inferred from the
Flow collections of the Sources' Flows.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from ..bodies import source_body
from ..database import (
    DELETE_VALUE,
    SourceQuery,
)
from ..errors import (
    BadRequest,
    NotFound,
    SourceNotFound,
    utc_now_iso,
)
from .common import (
    check_string,
    check_tag,
    json_body,
    json_response,
    keyset_listing,
    listing_name,
    path_uuid,
    principal_of,
    query_bool,
    query_format,
    query_limit,
    query_tags,
    query_uuid_list,
    store_of,
)

__all__ = ["routes"]

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()


# --- sources ---------------------------------------------------------------------------------------


@routes.get("/sources")
async def get_sources(request: web.Request) -> web.Response:
    store = store_of(request)
    limit = query_limit(request, store)
    sort_by = request.query.get("sort_by")
    if sort_by is not None and sort_by not in ("created", "updated", "label"):
        raise BadRequest(f"Unsupported sort_by {sort_by!r}")
    query = SourceQuery(
        label=request.query.get("label"),
        format=query_format(request),
        tags=query_tags(request),
        collected_by=query_uuid_list(request, "collected_by_ids"),
        sort_by=sort_by,
        reverse_order=bool(query_bool(request, "reverse_order", False)),
    )
    return await keyset_listing(
        request,
        listing_name("sources", sort_by or "created", query.reverse_order),
        limit,
        query.reverse_order,
        lambda after: store.db.list_sources(query, after, limit),
        source_body,
    )


@routes.get("/sources/{source_id}")
async def get_source(request: web.Request) -> web.Response:
    source_id = path_uuid(request, "source_id", "Source id")
    record = await store_of(request).db.get_source(source_id)
    if record is None:
        raise SourceNotFound(source_id)
    return json_response(source_body(record))


SOURCE_PROPERTY_ROUTE = "/sources/{source_id}/{name:label|description}"


async def _source(request: web.Request) -> tuple[str, dict[str, Any]]:
    source_id = path_uuid(request, "source_id", "Source id")
    record = await store_of(request).db.get_source(source_id)
    if record is None:
        raise SourceNotFound(source_id)
    return source_id, record


@routes.get(SOURCE_PROPERTY_ROUTE)
async def get_source_property(request: web.Request) -> web.Response:
    _, record = await _source(request)
    name = request.match_info["name"]
    if record[name] is None:
        raise NotFound(f"The Source has no {name}")
    return json_response(record[name])


@routes.put(SOURCE_PROPERTY_ROUTE)
async def put_source_property(request: web.Request) -> web.Response:
    source_id = path_uuid(request, "source_id", "Source id")
    name = request.match_info["name"]
    value = check_string(await json_body(request), name)
    await store_of(request).db.update_source_property(source_id, (name,), value, principal_of(request).name, utc_now_iso())
    return web.Response(status=204)


@routes.delete(SOURCE_PROPERTY_ROUTE)
async def delete_source_property(request: web.Request) -> web.Response:
    source_id = path_uuid(request, "source_id", "Source id")
    name = request.match_info["name"]
    await store_of(request).db.update_source_property(source_id, (name,), DELETE_VALUE, principal_of(request).name, utc_now_iso())
    return web.Response(status=204)


@routes.get("/sources/{source_id}/tags")
async def get_source_tags(request: web.Request) -> web.Response:
    _, record = await _source(request)
    return json_response(record["tags"])


@routes.get("/sources/{source_id}/tags/{name}")
async def get_source_tag(request: web.Request) -> web.Response:
    _, record = await _source(request)
    name = request.match_info["name"]
    if name not in record["tags"]:
        raise NotFound(f"The Source has no tag {name!r}")
    return json_response(record["tags"][name])


@routes.put("/sources/{source_id}/tags/{name}")
async def put_source_tag(request: web.Request) -> web.Response:
    source_id = path_uuid(request, "source_id", "Source id")
    name = request.match_info["name"]
    value = check_tag(await json_body(request), name)
    await store_of(request).db.update_source_property(source_id, ("tags", name), value, principal_of(request).name, utc_now_iso())
    return web.Response(status=204)


@routes.delete("/sources/{source_id}/tags/{name}")
async def delete_source_tag(request: web.Request) -> web.Response:
    source_id = path_uuid(request, "source_id", "Source id")
    path = ("tags", request.match_info["name"])
    await store_of(request).db.update_source_property(source_id, path, DELETE_VALUE, principal_of(request).name, utc_now_iso())
    return web.Response(status=204)

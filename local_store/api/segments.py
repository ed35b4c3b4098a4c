"""``/flows/{id}/segments``: list (with ``get_urls``), register, delete."""

from __future__ import annotations

import logging
import re
from typing import Any

from aiohttp import web
from mediatimestamp.immutable import Timestamp

from .. import schemas
from ..bodies import segment_body
from ..database import (
    NewSegment,
    SegmentQuery,
)
from ..errors import (
    BadRequest,
    InvalidTimerange,
    PayloadTooLarge,
    StoreError,
    utc_now_iso,
)
from ..timing import (
    Span,
    make_timerange,
    parse_timerange,
    parse_timestamp,
    stored_range,
)
from .common import (
    check_uuid,
    json_body,
    json_response,
    paging_headers,
    principal_of,
    query_bool,
    query_limit,
    query_timerange,
    store_of,
    url_filter,
)

__all__ = ["routes"]

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()


# --- segments --------------------------------------------------------------------------------------


def segment_page_key(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not re.fullmatch(r"s-?[0-9]{1,20}", raw):
        raise BadRequest(f"Invalid page key {raw[:40]!r}")
    return int(raw[1:])


@routes.get("/flows/{flow_id}/segments")
async def get_segments(request: web.Request) -> web.Response:
    store = store_of(request)
    flow_id = check_uuid(request.match_info["flow_id"], "Flow id")
    limit = query_limit(request, store)
    given, span = query_timerange(request)
    reverse = bool(query_bool(request, "reverse_order", False))
    include_ot = bool(query_bool(request, "include_object_timerange", False))
    filters = url_filter(request)
    after = segment_page_key(request.query.get("page"))
    if given and span is None:
        rows: list[dict[str, Any]] = []
        next_first = None
    else:
        query = SegmentQuery(
            span=span,
            object_id=request.query.get("object_id"),
            reverse_order=reverse,
            after=after,
            limit=limit,
        )
        rows, next_first = await store.db.list_segments(flow_id, query)
    body = [segment_body(store, row, filters, include_ot) for row in rows]
    next_key = f"s{next_first}" if next_first is not None else None
    headers = paging_headers(request, limit, len(body), next_key)
    headers["X-Paging-Reverse-Order"] = "true" if reverse else "false"
    if rows:
        first_row, last_row = (rows[-1], rows[0]) if reverse else (rows[0], rows[-1])
        page_range = make_timerange(
            first_row["start_ns"],
            last_row["end_ns"],
            bool(first_row["incl_start"]),
            bool(last_row["incl_end"]),
        )
        headers["X-Paging-Timerange"] = str(page_range)
    else:
        headers["X-Paging-Timerange"] = "()"
    return json_response(body, headers=headers)


def parse_segment(item: dict[str, Any]) -> NewSegment:
    parsed = parse_timerange(item["timerange"])
    timerange = stored_range(parsed, "segment timerange")
    ts_offset = parse_timestamp(item["ts_offset"]) if "ts_offset" in item else Timestamp()
    object_timerange = None
    if "object_timerange" in item:
        object_timerange = stored_range(parse_timerange(item["object_timerange"]), "object_timerange")
    last_duration = None
    if "last_duration" in item:
        last_duration = parse_timestamp(item["last_duration"])
        if last_duration < Timestamp():
            raise InvalidTimerange("last_duration cannot be negative")
    if not item["object_id"]:
        raise BadRequest("object_id must not be empty")
    init_object_id = item.get("init_object_id")
    if init_object_id is not None and (not init_object_id or init_object_id == item["object_id"]):
        raise BadRequest("init_object_id must be a non-empty id different from object_id")
    return NewSegment(
        object_id=item["object_id"],
        timerange=timerange,
        ts_offset_ns=ts_offset.to_nanosec(),
        timerange_text=str(parsed),
        ts_offset_text=str(ts_offset),
        object_timerange=object_timerange,
        last_duration_text=str(last_duration) if last_duration is not None else None,
        sample_offset=item.get("sample_offset"),
        sample_count=item.get("sample_count"),
        key_frame_count=item.get("key_frame_count"),
        init_object_id=init_object_id,
        get_urls=tuple((u["url"], u["label"]) for u in item.get("get_urls", [])),
    )


@routes.post("/flows/{flow_id}/segments")
async def post_segments(request: web.Request) -> web.Response:
    store = store_of(request)
    flow_id = check_uuid(request.match_info["flow_id"], "Flow id")
    body = await json_body(request)
    single = isinstance(body, dict)
    items = [body] if single else body
    if not isinstance(items, list):
        raise BadRequest("Send one segment object or a list of them")
    if not items:
        return web.Response(status=201)  # the schema allows an empty list: nothing to do
    if len(items) > 10000:
        raise PayloadTooLarge("At most 10000 segments per request")
    parsed: list[NewSegment] = []
    for index, item in enumerate(items):
        what = "segment" if single else f"segment [{index}]"
        if not isinstance(item, dict):
            raise BadRequest(f"Invalid {what}: not a JSON object")
        schemas.check(item, "flow-segment-post.json", what)
        try:
            parsed.append(parse_segment(item))
        except StoreError as exc:
            raise BadRequest(f"Invalid {what}: {exc.summary}") from exc
    failed = await store.db.post_segments(flow_id, parsed, utc_now_iso(), single=single)
    if failed:
        return json_response({"failed_segments": failed}, status=200)
    return web.Response(status=201)


@routes.delete("/flows/{flow_id}/segments")
async def delete_segments(request: web.Request) -> web.Response:
    """Delete the segments wholly inside ``timerange`` (default: all), synchronously: one
    transaction, then 204 (see ``flows.delete_flow`` for why never 202). The request is recorded
    under ``/flow-delete-requests``; objects left unreferenced are garbage-collected later."""
    store = store_of(request)
    flow_id = check_uuid(request.match_info["flow_id"], "Flow id")
    given, span = query_timerange(request)
    if not given:
        span = Span(None, None)
    object_id = request.query.get("object_id")
    if object_id is not None and not object_id:
        raise BadRequest("object_id must not be empty")
    deleted, _ = await store.db.delete_segments(
        flow_id,
        span,
        object_id,
        timerange_text=str(parse_timerange(request.query["timerange"])) if given else "_",
        principal=principal_of(request).name,
        now=utc_now_iso(),
    )
    logger.info("deleted %d segments of flow %s", deleted, flow_id)
    return web.Response(status=204)

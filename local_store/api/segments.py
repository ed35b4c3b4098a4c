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
    error_body,
    utc_now_iso,
)
from ..timing import (
    INT64_MAX,
    Span,
    check_ns,
    make_timerange,
    parse_timerange,
    parse_timestamp,
    stored_range,
)
from .common import (
    check_http_url,
    check_string,
    json_body,
    json_response,
    paging_headers,
    path_uuid,
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
    """The ``first_hns`` a segment page starts at, from ``s<first_hns>``; 400 if not an int64."""
    if raw is None:
        return None
    if not re.fullmatch(r"s-?[0-9]{1,19}", raw) or abs(int(raw[1:])) > INT64_MAX:
        raise BadRequest(f"Invalid page key {raw[:40]!r}")
    return int(raw[1:])


@routes.get("/flows/{flow_id}/segments")
async def get_segments(request: web.Request) -> web.Response:
    store = store_of(request)
    flow_id = path_uuid(request, "flow_id", "Flow id")
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


def parse_segment(item: dict[str, Any], backend_label: str) -> NewSegment:
    """A schema-valid segment POST item as the database takes it; ``StoreError`` (400) if its
    values are unusable: times or counts out of the store's range, an empty or unbounded
    timerange, bad ``get_urls``."""
    parsed = parse_timerange(item["timerange"])
    timerange = stored_range(parsed, "segment timerange")
    ts_offset = parse_timestamp(item["ts_offset"], "ts_offset") if "ts_offset" in item else Timestamp()
    offset_ns = ts_offset.to_nanosec()
    # timerange - ts_offset is the object's own timeline (the default object_timerange).
    for bound in (timerange.start_ns, timerange.end_ns):
        check_ns(bound - offset_ns, "segment timerange minus ts_offset")
    object_timerange = None
    if "object_timerange" in item:
        object_timerange = stored_range(parse_timerange(item["object_timerange"]), "object_timerange")
    last_duration = None
    if "last_duration" in item:
        last_duration = parse_timestamp(item["last_duration"], "last_duration")
        if last_duration < Timestamp():
            raise InvalidTimerange("last_duration cannot be negative")
        if str(last_duration) != item["last_duration"]:  # e.g. "-0:0": keep exactly what was sent
            raise InvalidTimerange(f"last_duration {item['last_duration']!r} is not in canonical secs:nanos form")
    for name in ("sample_offset", "sample_count", "key_frame_count"):
        value = item.get(name)
        if value is not None and not -INT64_MAX <= value <= INT64_MAX:
            raise BadRequest(f"{name} is out of range")
    if not item["object_id"]:
        raise BadRequest("object_id must not be empty")
    init_object_id = item.get("init_object_id")
    if init_object_id is not None and (not init_object_id or init_object_id == item["object_id"]):
        raise BadRequest("init_object_id must be a non-empty id different from object_id")
    return NewSegment(
        object_id=item["object_id"],
        timerange=timerange,
        ts_offset_ns=offset_ns,
        timerange_text=str(parsed),
        ts_offset_text=str(ts_offset),
        object_timerange=object_timerange,
        last_duration_text=str(last_duration) if last_duration is not None else None,
        sample_offset=item.get("sample_offset"),
        sample_count=item.get("sample_count"),
        key_frame_count=item.get("key_frame_count"),
        init_object_id=init_object_id,
        get_urls=parse_get_urls(item.get("get_urls", []), backend_label),
    )


def parse_get_urls(items: list[dict[str, Any]], backend_label: str) -> tuple[tuple[str, str], ...]:
    """Uncontrolled ``get_urls`` of a segment POST, checked as ``POST /objects/{id}/instances``
    checks an instance: absolute http(s) URLs, non-empty labels that are not a storage backend's,
    each label once."""
    urls: list[tuple[str, str]] = []
    labels: set[str] = set()
    for index, entry in enumerate(items):
        url = check_http_url(entry["url"], f"get_urls[{index}].url")
        label = check_string(entry["label"], f"get_urls[{index}].label")
        if not label:
            raise BadRequest(f"get_urls[{index}].label must not be empty")
        if label == backend_label:
            raise BadRequest(f"The label {label!r} belongs to a storage backend")
        if label in labels:
            raise BadRequest(f"The label {label!r} appears more than once in get_urls")
        labels.add(label)
        urls.append((url, label))
    return tuple(urls)


@routes.post("/flows/{flow_id}/segments")
async def post_segments(request: web.Request) -> web.Response:
    store = store_of(request)
    flow_id = path_uuid(request, "flow_id", "Flow id")
    body = await json_body(request)
    single = isinstance(body, dict)
    items = [body] if single else body
    if not isinstance(items, list):
        raise BadRequest("Send one segment object or a list of them")
    if not items:
        return web.Response(status=201)  # the schema allows an empty list: nothing to do
    if len(items) > 10000:
        raise PayloadTooLarge("At most 10000 segments per request")
    # A body that is not segment-shaped is refused whole (400). A well-formed item whose values
    # cannot be stored (a time out of range, bad get_urls) fails alone: in a bulk POST it is
    # listed in failed_segments with the database's refusals, and the rest are still stored.
    parsed: list[NewSegment] = []
    failed: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        what = "segment" if single else f"segment [{index}]"
        if not isinstance(item, dict):
            raise BadRequest(f"Invalid {what}: not a JSON object")
        schemas.check(item, "flow-segment-post.json", what)
    for item in items:
        try:
            parsed.append(parse_segment(item, store.backend.label))
        except StoreError as exc:
            if single:
                refusal = InvalidTimerange if isinstance(exc, InvalidTimerange) else BadRequest
                raise refusal(f"Invalid segment: {exc.summary}") from exc
            failed.append(
                {
                    "object_id": item["object_id"],
                    "timerange": item["timerange"],
                    "error": error_body(exc.error_type, f"Invalid segment: {exc.summary}"),
                }
            )
    # Called even when every item failed: it still answers 404/403 for the Flow itself.
    failed += await store.db.post_segments(flow_id, parsed, utc_now_iso(), single=single)
    if failed:
        return json_response({"failed_segments": failed}, status=200)
    return web.Response(status=201)


@routes.delete("/flows/{flow_id}/segments")
async def delete_segments(request: web.Request) -> web.Response:
    """Delete the segments wholly inside ``timerange`` (default: all), synchronously: one
    transaction, then 204 (see ``flows.delete_flow`` for why never 202). The request is recorded
    under ``/flow-delete-requests``; objects left unreferenced are garbage-collected later."""
    store = store_of(request)
    flow_id = path_uuid(request, "flow_id", "Flow id")
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

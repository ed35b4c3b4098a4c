"""``/flow-delete-requests`` and ``/flow-delete-requests/{id}``: records of deletions.

The store deletes Flows and segments synchronously (204; see ``flows.delete_flow``), so every
record here is already ``done`` with ``timerange_remaining: "()"``. Records are kept for
``delete_request_ttl`` (a day) and then removed by the garbage collection sweep; ``expiry``
says when.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..errors import BadRequest, NotFound
from .common import (
    json_response,
    keyset_listing,
    listing_name,
    query_bool,
    query_limit,
    store_of,
)

__all__ = ["routes"]

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()


@routes.get("/flow-delete-requests")
async def get_delete_requests(request: web.Request) -> web.Response:
    store = store_of(request)
    limit = query_limit(request, store, lenient=True)
    sort_by = request.query.get("sort_by", "created")
    if sort_by not in ("created", "expiry"):
        raise BadRequest(f"Unsupported sort_by {sort_by[:40]!r}")
    reverse = bool(query_bool(request, "reverse_order", False))
    return await keyset_listing(
        request,
        listing_name("flow-delete-requests", sort_by, reverse),
        limit,
        reverse,
        lambda after: store.db.list_delete_requests(sort_by, reverse, after, limit),
    )


@routes.get("/flow-delete-requests/{request_id}")
async def get_delete_request(request: web.Request) -> web.Response:
    request_id = request.match_info["request_id"]
    record = await store_of(request).db.get_delete_request(request_id)
    if record is None:
        raise NotFound(f"Flow delete request {request_id[:80]!r} does not exist")
    return json_response(record)

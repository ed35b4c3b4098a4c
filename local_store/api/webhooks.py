"""``/service/webhooks`` and ``/service/webhooks/{id}``: registering event receivers.

Every filter and transformation of the spec is supported (``flow_ids``, ``source_ids``,
``flow_collected_by_ids``, ``source_collected_by_ids``, ``accept_get_urls``,
``accept_storage_ids``, ``presigned``, ``verbose_storage``, ``include_object_timerange``), so no
registration is refused for asking for one. Delivery, retries and the ``error`` status are in
``events.py``.

Choices where the spec leaves room:

* The receiver URL must be an absolute ``http``/``https`` URL with a host; anything else is 400.
  Loopback and private addresses are allowed: this is a local development store, and its
  receivers usually run on the same machine (a deployed store would need SSRF rules here).
* ``api_key_value`` is write-only: GET never shows it. A PUT that leaves it out keeps the stored
  value as long as ``api_key_name`` is unchanged (a client cannot read it back to resend it).
* Webhooks are visible to the principal that registered them, and to admins (``tams-api/admin``)
  who see all; to anyone else another's webhook does not exist (404), as the spec suggests
  ("avoid displaying URLs to users other than those who have suitable permissions").
* PUT of an unknown id is 404 (the spec's PUT updates; POST creates). PUT answers 201 with the
  webhook, as the spec says.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from aiohttp import web

from .. import schemas
from ..auth import ADMIN, Principal
from ..errors import BadRequest, NotFound, utc_now_iso
from .common import (
    check_http_url,
    json_body,
    json_response,
    keyset_listing,
    listing_name,
    path_uuid,
    principal_of,
    query_bool,
    query_limit,
    query_tags,
    store_of,
)

__all__ = ["routes", "webhook_body"]

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()

HEADER_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
# Headers the store sets itself (or that would break the request if a client chose them).
RESERVED_HEADERS = frozenset({"content-type", "content-length", "host", "transfer-encoding", "connection"})


def webhook_body(record: dict[str, Any]) -> dict[str, Any]:
    """A webhook as ``webhook-get.json`` describes it (never with its ``api_key_value``)."""
    body = {k: v for k, v in record["doc"].items() if k != "api_key_value"}
    body["id"] = record["id"]
    body["status"] = record["status"]
    if record["error"]:
        body["error"] = record["error"]
    return body


def _owner_filter(principal: Principal) -> str | None:
    """None (everyone's webhooks) for admins, else the caller's own only."""
    return None if principal.has(ADMIN) else principal.name


def _check_registration(body: Any, schema_file: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("The webhook must be a JSON object")
    schemas.check(body, schema_file, "webhook")
    check_http_url(body["url"], "The webhook url")
    name = body.get("api_key_name")
    if name is not None and (not HEADER_TOKEN.match(name) or name.lower() in RESERVED_HEADERS):
        raise BadRequest(f"api_key_name {name[:60]!r} cannot be used as an HTTP header name")
    if "api_key_value" in body:
        if name is None:
            raise BadRequest("api_key_value needs api_key_name")
        if any(c in body["api_key_value"] for c in "\r\n\0"):
            raise BadRequest("api_key_value cannot hold line breaks")
    return body


def _doc(body: dict[str, Any]) -> dict[str, Any]:
    """What is stored: the registration minus id and status (kept in their own columns)."""
    return {k: v for k, v in body.items() if k not in ("id", "status")}


@routes.get("/service/webhooks")
async def get_webhooks(request: web.Request) -> web.Response:
    store = store_of(request)
    limit = query_limit(request, store, lenient=True)
    reverse = bool(query_bool(request, "reverse_order", False))
    return await keyset_listing(
        request,
        listing_name("webhooks", "url", reverse),
        limit,
        reverse,
        lambda after: store.db.list_webhooks(_owner_filter(principal_of(request)), query_tags(request), reverse, after, limit),
        webhook_body,
    )


@routes.post("/service/webhooks")
async def post_webhook(request: web.Request) -> web.Response:
    store = store_of(request)
    body = _check_registration(await json_body(request), "webhook-post.json")
    status = body.get("status", "created")
    record = await store.db.create_webhook(str(uuid.uuid4()), _doc(body), status, principal_of(request).name, utc_now_iso())
    store.hub.upsert(record)
    return json_response(webhook_body(record), status=201)


async def _visible_webhook(request: web.Request) -> dict[str, Any]:
    webhook_id = path_uuid(request, "webhook_id", "Webhook id")
    record = await store_of(request).db.get_webhook(webhook_id)
    owner = _owner_filter(principal_of(request))
    if record is None or (owner is not None and record["owner"] != owner):
        raise NotFound(f"Webhook {webhook_id} does not exist")
    return record


@routes.get("/service/webhooks/{webhook_id}")
async def get_webhook(request: web.Request) -> web.Response:
    return json_response(webhook_body(await _visible_webhook(request)))


@routes.put("/service/webhooks/{webhook_id}")
async def put_webhook(request: web.Request) -> web.Response:
    store = store_of(request)
    webhook_id = path_uuid(request, "webhook_id", "Webhook id")
    body = _check_registration(await json_body(request), "webhook-put.json")
    if body["id"] != webhook_id:
        raise BadRequest(f"The webhook id in the body ({body['id']}) differs from the path ({webhook_id})")
    record = await store.db.replace_webhook(webhook_id, _doc(body), body["status"], _owner_filter(principal_of(request)))
    store.hub.upsert(record)
    return json_response(webhook_body(record), status=201)


@routes.delete("/service/webhooks/{webhook_id}")
async def delete_webhook(request: web.Request) -> web.Response:
    store = store_of(request)
    webhook_id = path_uuid(request, "webhook_id", "Webhook id")
    await store.db.delete_webhook(webhook_id, _owner_filter(principal_of(request)))
    store.hub.remove(webhook_id)
    return web.Response(status=204)

"""Request parsing and response shaping shared by the API route modules.

Query values, paging headers, JSON bodies and the ``get_urls`` of objects are handled the
same way by every endpoint; route modules raise ``errors.StoreError`` subclasses, which
``app.error_middleware`` renders as the spec's error body.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from yarl import URL

from ..auth import Principal
from ..bodies import UrlFilter, get_urls
from ..database import (
    Page,
    PageAfter,
    TagFilter,
)
from ..errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    json_response,
)
from ..state import STORE, Store
from ..timing import (
    Span,
    parse_timerange,
    span_of,
)

__all__ = [
    "MIME_RE",
    "UUID_RE",
    "FORMATS",
    "UrlFilter",
    "check_http_url",
    "check_string",
    "check_tag",
    "check_uuid",
    "path_uuid",
    "get_urls",
    "json_body",
    "json_response",
    "keyset_listing",
    "paging_headers",
    "principal_of",
    "query_bool",
    "query_format",
    "query_mime",
    "query_uuid_list",
    "query_int",
    "query_limit",
    "query_offset_page",
    "query_page_after",
    "listing_name",
    "page_token",
    "query_tags",
    "query_timerange",
    "store_of",
    "url_filter",
]

logger = logging.getLogger(__name__)


UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
MIME_RE = re.compile(
    r"^(application|audio|font|example|image|message|model|multipart|text|video|x-(?:[0-9A-Za-z!#$%&'*+.^_`|~-]+))"
    r"/([0-9A-Za-z!#$%&'*+.^_`|~-]+)$"
)


# --- small parsers -------------------------------------------------------------------------------


def store_of(request: web.Request) -> Store:
    return request.app[STORE]


def principal_of(request: web.Request) -> Principal:
    return request["principal"]


def check_uuid(value: str, what: str) -> str:
    if not UUID_RE.match(value):
        raise BadRequest(f"{what} {value!r} is not a valid UUID")
    return value


def path_uuid(request: web.Request, name: str, what: str) -> str:
    """The UUID in path parameter ``name`` of an existing resource. One that is not a UUID names
    nothing the store could hold, so it is a 404 (the answer the spec lists for every such path),
    not a 400. (Routes that create the resource, PUT /flows/{id} and POST
    /service/profiles/{id}, refuse a bad id as bad input with ``check_uuid``.)"""
    value = request.match_info[name]
    if not UUID_RE.match(value):
        raise NotFound(f"{what} {value!r} does not exist (not a UUID)")
    return value


def query_bool(request: web.Request, name: str, default: bool | None = None) -> bool | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise BadRequest(f"Query parameter {name} must be true or false, not {raw!r}")


def query_int(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if not re.fullmatch(r"-?[0-9]{1,18}", raw):
        raise BadRequest(f"Query parameter {name} must be an integer, not {raw[:40]!r}")
    return int(raw)


def query_limit(request: web.Request, store: Store, *, lenient: bool = False) -> int:
    """The page size: ``limit`` capped at the store's maximum; 400 unless a positive integer.

    ``lenient`` is for the listings whose spec documents no 400 (webhooks, storage backends,
    flow delete requests): there ``limit`` is brought into the store's range instead, a value
    below 1 giving pages of one and one that is not an integer the default page size."""
    if lenient:
        try:
            limit = query_int(request, "limit")
        except BadRequest:
            limit = None
        if limit is not None:
            limit = max(limit, 1)
    else:
        limit = query_int(request, "limit")
        if limit is not None and limit < 1:
            raise BadRequest(f"limit must be a positive integer, not {limit}")
    if limit is None:
        return store.config.default_limit
    return min(limit, store.config.max_limit)


def query_timerange(request: web.Request, name: str = "timerange") -> tuple[bool, Span | None]:
    """(given, span); ``span`` is None for a timerange covering nothing (e.g. ``()``)."""
    raw = request.query.get(name)
    if raw is None:
        return False, None
    return True, span_of(parse_timerange(raw))


def query_tags(request: web.Request, prefix: str = "") -> tuple[TagFilter, ...]:
    filters: list[TagFilter] = []
    for key, value in request.query.items():
        if key.startswith(prefix + "tag."):
            name = key[len(prefix) + 4 :]
            filters.append(TagFilter(name=name, values=tuple(value.split(","))))
        elif key.startswith(prefix + "tag_exists."):
            name = key[len(prefix) + 11 :]
            exists = query_bool(request, key)
            filters.append(TagFilter(name=name, exists=exists))
    return tuple(filters)


def query_uuid_list(request: web.Request, name: str) -> tuple[str, ...] | None:
    """A comma-separated UUID list (``collected_by_ids``); empty means "none" (``()``)."""
    raw = request.query.get(name)
    if raw is None:
        return None
    if raw == "":
        return ()
    return tuple(check_uuid(value, name) for value in raw.split(","))


FORMATS = frozenset(
    {
        "urn:x-nmos:format:video",
        "urn:x-tam:format:image",
        "urn:x-nmos:format:audio",
        "urn:x-nmos:format:data",
        "urn:x-nmos:format:multi",
    }
)


def query_format(request: web.Request, allowed: frozenset[str] = FORMATS) -> str | None:
    value = request.query.get("format")
    if value is not None and value not in allowed:
        raise BadRequest(f"Unknown format {value[:80]!r}")
    return value


def query_mime(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is not None and not re.fullmatch(r"[^\s/]+/[^\s/]+", value):
        raise BadRequest(f"{name} must be a MIME type, not {value[:80]!r}")
    return value


def check_http_url(value: Any, what: str) -> str:
    """An absolute http(s) URL with a host (webhook receivers, uncontrolled instances)."""
    if not isinstance(value, str) or len(value) > 4096:
        raise BadRequest(f"{what} must be an http or https URL")
    try:
        url = URL(value)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"{what} is not a valid URL") from exc
    if url.scheme not in ("http", "https") or not url.host or not url.is_absolute():
        raise BadRequest(f"{what} must be an absolute http or https URL")
    return value


def query_offset_page(request: web.Request) -> int:
    raw = request.query.get("page")
    if raw is None:
        return 0
    if not re.fullmatch(r"o[0-9]{1,12}", raw):
        raise BadRequest(f"Invalid page key {raw[:40]!r}")
    return int(raw[1:])


# Keyset page tokens: "k" + base64url of the JSON [listing, sort value, id]. ``listing`` names the
# listing and sort the key belongs to (e.g. "flows:created" or "sources:label:reverse"), so a
# token from one listing or order is not read in another.
PAGE_TOKEN_RE = re.compile(r"k[A-Za-z0-9_-]{1,4096}")


def page_token(listing: str, after: PageAfter | None) -> str | None:
    """The page token of ``after`` (None: there is no next page)."""
    if after is None:
        return None
    payload = json.dumps([listing, after.value, after.id], separators=(",", ":"), ensure_ascii=False)
    return "k" + base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def query_page_after(request: web.Request, listing: str) -> PageAfter | None:
    """Where this page starts, from the ``page`` token the previous page's Link gave; 400 for a
    token that is malformed or belongs to another sort order."""
    raw = request.query.get("page")
    if raw is None:
        return None
    if not PAGE_TOKEN_RE.fullmatch(raw):
        raise BadRequest(f"Invalid page key {raw[:40]!r}")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(raw[1:] + "=" * (-len(raw[1:]) % 4)))
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise BadRequest(f"Invalid page key {raw[:40]!r}") from exc
    if not isinstance(decoded, list) or len(decoded) != 3 or not isinstance(decoded[1], str | None) or not isinstance(decoded[2], str):
        raise BadRequest(f"Invalid page key {raw[:40]!r}")
    if decoded[0] != listing:
        raise BadRequest("The page key belongs to a listing in another order: follow the Link header of the previous page")
    return PageAfter(decoded[1], decoded[2])


def listing_name(resource: str, sort_by: str, reverse: bool) -> str:
    """What a page token records about the listing and order it was made for."""
    return f"{resource}:{sort_by}" + (":reverse" if reverse else "")


async def json_body(request: web.Request, *, optional: bool = False) -> Any:
    if request.content_length is not None and request.content_length > request.app[STORE].config.max_body_bytes:
        raise PayloadTooLarge("The request body is too large")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge("The request body is too large") from exc
    if not raw.strip():
        if optional:
            return None
        raise BadRequest("A JSON request body is required")
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"Malformed JSON body: {str(exc)[:200]}") from exc
    except ValueError as exc:  # an integer of more digits than Python converts (4300 by default)
        raise BadRequest("Malformed JSON body: a number has too many digits") from exc
    if SURROGATE_ESCAPE.search(raw):
        # JSON lets "\ud800" through, but a lone surrogate is not text: it could not be stored
        # or sent on. Checked only when such an escape appears, so normal bodies pay nothing.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadRequest("Malformed JSON body: a string holds an unpaired surrogate") from exc
    return value


SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def paging_headers(
    request: web.Request,
    limit: int,
    count: int,
    next_key: str | None,
    reverse: bool | None = None,
) -> dict[str, str]:
    """The spec's paging headers; ``reverse`` (if given) adds X-Paging-Reverse-Order."""
    headers = {"X-Paging-Limit": str(limit), "X-Paging-Count": str(count)}
    if reverse is not None:
        headers["X-Paging-Reverse-Order"] = "true" if reverse else "false"
    if next_key is not None:
        headers["X-Paging-NextKey"] = next_key
        next_url = request.url.update_query(page=next_key)
        headers["Link"] = f'<{next_url}>; rel="next"'
    return headers


async def keyset_listing(
    request: web.Request,
    listing: str,
    limit: int,
    reverse: bool,
    fetch: Callable[[PageAfter | None], Awaitable[Page]],
    body: Callable[[dict[str, Any]], Any] | None = None,
) -> web.Response:
    """The response of a keyset-paged listing: the page ``fetch`` returns after the request's
    page token for ``listing``, each record made a body by ``body``, with the paging headers."""
    records, after = await fetch(query_page_after(request, listing))
    page = records if body is None else [body(r) for r in records]
    headers = paging_headers(request, limit, len(page), page_token(listing, after), reverse)
    return json_response(page, headers=headers)


# --- get_urls ---------------------------------------------------------------------------------------


def url_filter(request: web.Request) -> UrlFilter:
    """The get_urls query filters: accept_get_urls, accept_storage_ids, presigned,
    verbose_storage and the storage_backend_tag filters."""
    raw_labels = request.query.get("accept_get_urls")
    labels = None if raw_labels is None else frozenset(x for x in raw_labels.split(",") if x)
    raw_ids = request.query.get("accept_storage_ids")
    storage_ids = None
    if raw_ids:
        storage_ids = frozenset(check_uuid(x, "storage id") for x in raw_ids.split(","))
    backend_ok = True
    for tag in query_tags(request, prefix="storage_backend_"):
        # The local backend has no tags: it matches only "tag does not exist".
        if tag.exists is not False:
            backend_ok = False
    return UrlFilter(
        labels=labels,
        storage_ids=storage_ids,
        presigned=query_bool(request, "presigned"),
        verbose=bool(query_bool(request, "verbose_storage", False)),
        backend_ok=backend_ok,
    )


def check_string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a JSON string")
    return value


def check_tag(value: Any, name: str) -> str | list[str]:
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return value
    raise BadRequest(f"Tag {name} must be a string or a list of strings")

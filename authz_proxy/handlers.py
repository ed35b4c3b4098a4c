"""The proxy's request handlers, one per ``rules.Kind``, and the helpers they share.

Each handler gets a ``Ctx`` (the request, its route, the verified caller, and a per-request
``Lookups`` cache), looks up what the decision needs, decides with ``rules``, and only then
forwards the request upstream. Bodies the proxy judges are parsed strictly (no duplicate keys,
no NaN) and re-serialised, so the store receives exactly what was judged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp import web

from .config import ProxyConfig
from .errors import BadGateway, BadRequest, Forbidden, NotFound, PayloadTooLarge
from .listing import Cursor, CursorCodec, UpPage, fill_page
from .rules import (
    AUTH_CLASSES,
    Caller,
    Kind,
    Perm,
    Resource,
    RouteRule,
    Verdict,
    class_change_needs,
    decide,
    may_change_classes,
    may_create_with,
    may_read_some,
    parse_auth_classes,
    permissions,
    resource_classes,
    upstream_path,
    writable_classes,
)
from .tokens import TokenVerifier
from .upstream import Lookups, Upstream, UpstreamAnswer, UpstreamReply, encode_query

__all__ = ["HANDLERS", "Ctx", "ProxyState", "StreamBroken"]

logger = logging.getLogger(__name__)

# Request headers worth passing upstream; everything else (cookies, the caller's
# Authorization, hop-by-hop headers) stays here.
FORWARD_REQUEST_HEADERS = ("Accept", "Accept-Language", "If-Match", "If-None-Match", "If-Modified-Since")
# Response headers passed back to the caller.
FORWARD_RESPONSE_HEADERS = (
    "Content-Type", "Location", "Link", "Retry-After", "ETag", "Last-Modified", "Cache-Control",
    "Content-Language", "Content-Disposition", "Vary",
)
LOOKUP_CONCURRENCY = 8


@dataclass
class ProxyState:
    config: ProxyConfig
    upstream: Upstream
    verifier: TokenVerifier
    cursors: CursorCodec
    # Flow delete request id -> the classes of the Flow it deletes (the Flow may be gone when
    # the request is read back).
    delete_requests: OrderedDict[str, frozenset[str]] = field(default_factory=OrderedDict)

    def remember_delete_request(self, request_id: str, classes: frozenset[str]) -> None:
        self.delete_requests[request_id] = classes
        while len(self.delete_requests) > self.config.delete_request_memory:
            self.delete_requests.popitem(last=False)


@dataclass
class Ctx:
    """One request being decided."""

    request: web.Request
    rule: RouteRule
    params: dict[str, str]
    caller: Caller
    caller_auth: str
    state: ProxyState
    lookups: Lookups

    @property
    def method(self) -> str:
        return self.rule.method

    @property
    def path(self) -> str:
        return upstream_path(self.rule.template, self.params)

    @property
    def resource_id(self) -> str:
        assert self.rule.id_param is not None
        return self.params[self.rule.id_param]

    @property
    def query(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.request.rel_url.query.items() if k != "access_token"]

    @property
    def upstream(self) -> Upstream:
        return self.state.upstream

    def public_base(self) -> str:
        configured = self.state.config.public_url
        return configured.rstrip("/") if configured else f"{self.request.scheme}://{self.request.host}"

    def admin_may(self, *perms: Perm) -> bool:
        """Admins pass without a look-up, when their token claims what the route needs."""
        return self.caller.admin_group and frozenset(perms) <= self.caller.claimed()


# ---------------------------------------------------------------------------------------
# Small helpers: bodies, decisions, responses


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_json_body(raw: bytes) -> Any:
    """A request body as JSON, strictly: UTF-8, no duplicate keys, no NaN/Infinity."""
    if not raw.strip():
        raise BadRequest("A JSON body is required")
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequest("The body is not valid JSON") from exc


async def read_json(ctx: Ctx) -> Any:
    try:
        raw = await ctx.request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge("The body is too large") from exc
    return parse_json_body(raw)


def dump_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def is_tag_value(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def check_tags(tags: object) -> dict[str, Any]:
    if not isinstance(tags, dict) or not all(is_tag_value(v) for v in tags.values()):
        raise BadRequest("tags must be an object whose values are strings or lists of strings")
    return tags


def classes_from_tags(tags: dict[str, Any] | None) -> frozenset[str]:
    if not tags or AUTH_CLASSES not in tags:
        return frozenset()
    try:
        return parse_auth_classes(tags[AUTH_CLASSES])
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc


_NOUN = {Resource.FLOW: "Flow", Resource.SOURCE: "Source", Resource.WEBHOOK: "Webhook",
         Resource.OBJECT: "Object", Resource.DELETE_REQUEST: "Flow delete request"}


def need(caller: Caller, classes: Iterable[str], perms: Iterable[Perm], what: Resource, ident: str,
         why: str | None = None) -> None:
    """Raise NotFound (no permission at all) or Forbidden (not enough) unless allowed."""
    perms = frozenset(perms)
    verdict = decide(permissions(caller, classes), perms)
    if verdict is Verdict.HIDE:
        raise NotFound(f"{_NOUN[what]} {ident} not found")
    if verdict is Verdict.FORBID:
        wanted = ", ".join(p.value for p in Perm if p in perms)
        raise Forbidden(why or f"This needs {wanted} permission on {_NOUN[what]} {ident}")


def need_class_change(caller: Caller, old: frozenset[str], new: frozenset[str], what: Resource, ident: str) -> None:
    """Changing auth_classes: read, write and delete on the resource as it is (each class added
    or removed hands out or takes away all three), and each added class one the caller can
    write, so nobody moves a resource into a class they do not belong to."""
    need(caller, old, class_change_needs(old, new), what, ident,
         f"Changing a {_NOUN[what]}'s auth_classes needs read, write and delete permission on it")
    if not may_change_classes(caller, old, new):
        raise Forbidden("auth_classes may only gain classes the caller can write")


async def resource(ctx: Ctx, what: Resource, ident: str) -> dict[str, Any] | None:
    if what is Resource.FLOW:
        return await ctx.lookups.flow(ident)
    if what is Resource.SOURCE:
        return await ctx.lookups.source(ident)
    if what is Resource.WEBHOOK:
        return await ctx.lookups.webhook(ident)
    raise AssertionError(f"no look-up for {what}")


async def gather_limited(coros: Iterable[Awaitable[Any]]) -> list[Any]:
    semaphore = asyncio.Semaphore(LOOKUP_CONCURRENCY)

    async def one(coro: Awaitable[Any]) -> Any:
        async with semaphore:
            return await coro

    return list(await asyncio.gather(*(one(c) for c in coros)))


def rewrite_url(ctx: Ctx, value: str) -> str:
    base = ctx.upstream.base
    if value.startswith(base):
        return ctx.public_base() + value[len(base):]
    return value


def response_headers(ctx: Ctx, upstream_headers: Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name in FORWARD_RESPONSE_HEADERS:
        value = upstream_headers.get(name)
        if value is None:
            continue
        if name == "Location":
            value = rewrite_url(ctx, value)
        elif name == "Link":
            value = value.replace("<" + ctx.upstream.base, "<" + ctx.public_base())
        headers[name] = value
    for name, value in upstream_headers.items():
        if name.lower().startswith("x-paging-"):
            headers[name] = value
    return headers


def reply_response(ctx: Ctx, reply: UpstreamReply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body or None, headers=response_headers(ctx, reply.headers))


def json_reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=dump_json(body), content_type="application/json", headers=headers)


def forward_headers(ctx: Ctx, has_body: bool) -> dict[str, str]:
    headers = {name: ctx.request.headers[name] for name in FORWARD_REQUEST_HEADERS if name in ctx.request.headers}
    if has_body:
        headers["Content-Type"] = "application/json"
    return headers


async def send(ctx: Ctx, *, body: Any = None, query: Sequence[tuple[str, str]] | None = None) -> UpstreamReply:
    """Send the request being handled upstream (``body`` re-serialised) and return the answer."""
    data = dump_json(body) if body is not None else None
    return await ctx.upstream.call(
        ctx.method, ctx.path, query=ctx.query if query is None else query, body=data,
        headers=forward_headers(ctx, data is not None), caller_auth=ctx.caller_auth,
    )


async def forward(ctx: Ctx, *, body: Any = None) -> web.StreamResponse:
    """Send the request upstream and hand the answer back; body-less requests are streamed."""
    if body is not None or ctx.method not in ("GET", "HEAD", "DELETE"):
        return reply_response(ctx, await send(ctx, body=body))
    async with ctx.upstream.stream(ctx.method, ctx.path, query=ctx.query, headers=forward_headers(ctx, False),
                                   caller_auth=ctx.caller_auth) as (reply, response):
        if response is None:
            return reply_response(ctx, reply)
        out = web.StreamResponse(status=reply.status, headers=response_headers(ctx, reply.headers))
        if response.content_length is not None and not reply.headers.get("Content-Encoding"):
            # (a compressed answer arrives decompressed, so its length would be wrong)
            out.content_length = response.content_length
        await out.prepare(ctx.request)
        if ctx.method != "HEAD":
            try:
                async for chunk in response.content.iter_chunked(1 << 16):
                    await out.write(chunk)
            except (TimeoutError, aiohttp.ClientError) as exc:
                logger.warning("%s %s: the store's answer broke off: %s", ctx.method, ctx.rule.template,
                               type(exc).__name__)
                raise StreamBroken() from exc
        await out.write_eof()
        return out


class StreamBroken(Exception):
    """The upstream body broke off after the answer started: the connection must be cut."""


# ---------------------------------------------------------------------------------------
# Handlers, one per rules.Kind


async def handle_open(ctx: Ctx) -> web.StreamResponse:
    return await forward(ctx)


async def handle_admin(ctx: Ctx) -> web.StreamResponse:
    if not ctx.caller.is_admin:
        raise Forbidden("Only administrators may do this")
    body = await read_json(ctx) if ctx.method in ("POST", "PUT") else None
    return await forward(ctx, body=body)


async def handle_guarded(ctx: Ctx) -> web.StreamResponse:
    assert ctx.rule.perm is not None
    body = await read_json(ctx) if ctx.method in ("POST", "PUT") else None
    if not ctx.admin_may(ctx.rule.perm):
        found = await resource(ctx, ctx.rule.resource, ctx.resource_id)
        need(ctx.caller, resource_classes(found), {ctx.rule.perm}, ctx.rule.resource, ctx.resource_id)
    return await forward(ctx, body=body)


async def handle_get_guarded(ctx: Ctx) -> web.StreamResponse:
    """GET/HEAD of a Flow, Source or webhook: the look-up (made with the caller's query, e.g.
    include_timerange) is itself the answer, so one upstream call does both (plus look-ups of
    any collection members, which are shown only when readable)."""
    if ctx.admin_may(Perm.READ):
        return await forward(ctx)
    found = await ctx.lookups.get(ctx.path, ctx.query)
    need(ctx.caller, resource_classes(found), {Perm.READ}, ctx.rule.resource, ctx.resource_id)
    (shown,) = await hide_unreadable_references(ctx, ctx.rule.resource, [found])
    return json_reply(shown)


async def handle_collection_get(ctx: Ctx) -> web.StreamResponse:
    """GET/HEAD of a Flow's flow_collection: only the members the caller can read. (HEAD is
    judged on the GET, so it answers as GET would.)"""
    if ctx.admin_may(Perm.READ):
        return await forward(ctx)
    flow = await ctx.lookups.flow(ctx.resource_id)
    need(ctx.caller, resource_classes(flow), {Perm.READ}, Resource.FLOW, ctx.resource_id)
    reply = await ctx.upstream.call("GET", ctx.path, query=ctx.query, headers=forward_headers(ctx, False),
                                    caller_auth=ctx.caller_auth)
    if reply.status != 200:
        return reply_response(ctx, reply)
    members = reply.json()
    if not isinstance(members, list):
        raise BadGateway("The store's flow_collection is not a JSON list")
    readable = await readable_ids(ctx, Resource.FLOW, [i for i in map(reference_id, members) if i is not None])
    kept = [m for m in members if reference_id(m) in readable]
    if not kept:
        # as the store answers a Flow without a collection, so hidden members go unnoticed
        raise NotFound("The Flow has no flow_collection")
    return json_reply(kept)


# Fields of a Flow or Source naming others of its kind: a Flow's members and the Flows
# collecting it, a Source's likewise. Unfiltered they would tell a caller that hidden ones exist.
REFERENCE_FIELDS: dict[Resource, tuple[str, ...]] = {
    Resource.FLOW: ("flow_collection", "collected_by"),
    Resource.SOURCE: ("source_collection", "collected_by"),
}


def reference_id(entry: object) -> str | None:
    """The id in a collection entry (``{"id": ..., "role": ...}``) or a collected_by entry (the id)."""
    if isinstance(entry, dict):
        entry = entry.get("id")
    return entry if isinstance(entry, str) else None


async def readable_ids(ctx: Ctx, what: Resource, ids: Iterable[str], known: Iterable[str] = ()) -> set[str]:
    """Those of ``ids`` naming a Flow or Source the caller can read (``known``: ids already
    known to be readable, not looked up again)."""
    readable = set(known)
    wanted = [i for i in dict.fromkeys(ids) if i not in readable]
    found = await gather_limited(resource(ctx, what, i) for i in wanted)
    readable.update(i for i, item in zip(wanted, found, strict=True)
                    if Perm.READ in permissions(ctx.caller, resource_classes(item)))
    return readable


async def hide_unreadable_references(ctx: Ctx, what: Resource, items: Sequence[Any],
                                     known: Iterable[str] = ()) -> list[Any]:
    """Copies of ``items`` (Flows or Sources the caller may read) whose collection fields name
    only what the caller can read; a field left empty is dropped, so a resource collected only
    by hidden ones looks like one not collected at all."""
    fields = REFERENCE_FIELDS.get(what, ())
    if not any(isinstance(item, dict) and name in item for item in items for name in fields):
        return list(items)
    ids = [i for item in items if isinstance(item, dict) for name in fields
           if isinstance(item.get(name), list) for i in map(reference_id, item[name]) if i is not None]
    readable = await readable_ids(ctx, what, ids, known)
    out: list[Any] = []
    for item in items:
        if isinstance(item, dict):
            item = dict(item)
            for name in fields:
                if name not in item:
                    continue
                value = item.pop(name)
                kept = [e for e in value if reference_id(e) in readable] if isinstance(value, list) else []
                if kept:
                    item[name] = kept
        out.append(item)
    return out


async def handle_flow_put(ctx: Ctx) -> web.StreamResponse:
    body = await read_json(ctx)
    if not isinstance(body, dict):
        raise BadRequest("The Flow must be a JSON object")
    source_id = body.get("source_id")
    if not isinstance(source_id, str):
        raise BadRequest("The Flow needs a source_id")
    tags = check_tags(body["tags"]) if "tags" in body else None
    new_classes = classes_from_tags(tags)
    flow_id = ctx.resource_id
    caller = ctx.caller
    # The Source is looked up even for admins: a new one must inherit the Flow's classes.
    source = await ctx.lookups.source(source_id)
    if not ctx.admin_may(Perm.WRITE):
        existing = await ctx.lookups.flow(flow_id)
        if existing is not None:
            old_classes = resource_classes(existing)
            need(caller, old_classes, {Perm.WRITE}, Resource.FLOW, flow_id)
            need_class_change(caller, old_classes, new_classes, Resource.FLOW, flow_id)
            if source is not None and source_id != existing.get("source_id"):
                need(caller, resource_classes(source), {Perm.WRITE}, Resource.SOURCE, source_id)
        else:
            if source is not None:
                # AppNote 0016: no adding Flows to someone else's Source.
                need(caller, resource_classes(source), {Perm.WRITE}, Resource.SOURCE, source_id,
                     f"A new Flow on Source {source_id} needs write permission on that Source")
            if not may_create_with(caller, new_classes):
                raise Forbidden("A new Flow must carry auth_classes, each one the caller can write")
        await check_collection(ctx, body.get("flow_collection"))
    reply = await send(ctx, body=body)
    if reply.status in (200, 201, 204) and source is None and new_classes:
        await inherit_source_classes(ctx, source_id, new_classes)
    return reply_response(ctx, reply)


async def inherit_source_classes(ctx: Ctx, source_id: str, classes: frozenset[str]) -> None:
    """A new Source takes its auth_classes from the Flow that created it (AppNote 0016), or
    nobody but admins could read it."""
    created = await ctx.upstream.call("GET", "/sources/" + quote(source_id, safe=""), caller_auth=ctx.caller_auth)
    if created.status == 200 and resource_classes(created.json()):
        return  # the store copied them already
    reply = await ctx.upstream.call(
        "PUT", f"/sources/{quote(source_id, safe='')}/tags/{AUTH_CLASSES}", body=dump_json(sorted(classes)),
        headers={"Content-Type": "application/json"}, caller_auth=ctx.caller_auth,
    )
    if reply.status >= 300:
        logger.warning("could not give new Source %s its Flow's auth_classes (store answered %d)",
                       source_id, reply.status)


async def check_collection(ctx: Ctx, collection: object) -> None:
    """Members of a flow_collection must be Flows the caller can read."""
    if collection is None:
        return
    if not isinstance(collection, list) or not all(
        isinstance(item, dict) and isinstance(item.get("id"), str) for item in collection
    ):
        raise BadRequest("flow_collection must be a list of objects with an id")
    ids = list(dict.fromkeys(item["id"] for item in collection))
    flows = await gather_limited(ctx.lookups.flow(i) for i in ids)
    for ident, flow in zip(ids, flows, strict=True):
        need(ctx.caller, resource_classes(flow), {Perm.READ}, Resource.FLOW, ident)


async def handle_collection_put(ctx: Ctx) -> web.StreamResponse:
    body = await read_json(ctx)
    if not isinstance(body, list):
        raise BadRequest("flow_collection must be a JSON list")
    if not ctx.admin_may(Perm.WRITE):
        flow = await ctx.lookups.flow(ctx.resource_id)
        need(ctx.caller, resource_classes(flow), {Perm.WRITE}, Resource.FLOW, ctx.resource_id)
        await check_collection(ctx, body)
    return await forward(ctx, body=body)


async def handle_flow_delete(ctx: Ctx) -> web.StreamResponse:
    flow = await ctx.lookups.flow(ctx.resource_id)
    classes = resource_classes(flow)
    if not ctx.admin_may(Perm.DELETE):
        need(ctx.caller, classes, {Perm.DELETE}, Resource.FLOW, ctx.resource_id)
    reply = await send(ctx)
    if reply.status == 202:
        request_body = reply.json()
        if isinstance(request_body, dict) and isinstance(request_body.get("id"), str):
            ctx.state.remember_delete_request(request_body["id"], classes)
    return reply_response(ctx, reply)


async def handle_tag_change(ctx: Ctx) -> web.StreamResponse:
    """PUT/DELETE of one tag on a Flow or Source; auth_classes changes need every permission
    they hand out or take away."""
    name = ctx.params["name"]
    value = None
    if ctx.method == "PUT":
        value = await read_json(ctx)
        if not is_tag_value(value):
            raise BadRequest("A tag value must be a string or a list of strings")
    new_classes = frozenset[str]()
    if name == AUTH_CLASSES and value is not None:
        new_classes = classes_from_tags({AUTH_CLASSES: value})
    if not ctx.admin_may(Perm.WRITE):
        found = await resource(ctx, ctx.rule.resource, ctx.resource_id)
        old_classes = resource_classes(found)
        need(ctx.caller, old_classes, {Perm.WRITE}, ctx.rule.resource, ctx.resource_id)
        if name == AUTH_CLASSES:
            need_class_change(ctx.caller, old_classes, new_classes, ctx.rule.resource, ctx.resource_id)
    return await forward(ctx, body=value)


async def handle_segments_get(ctx: Ctx) -> web.StreamResponse:
    if not ctx.admin_may(Perm.READ):
        flow = await ctx.lookups.flow(ctx.resource_id)
        need(ctx.caller, resource_classes(flow), {Perm.READ}, Resource.FLOW, ctx.resource_id)
    return await forward(ctx)


async def handle_segments_post(ctx: Ctx) -> web.StreamResponse:
    """Registering segments needs write on the Flow and, for each object reused, read access
    to that object (AppNote 0016): an object used only by Flows the caller cannot read is, to
    the caller, hidden, so the answer is the 404 an unknown object gets from ``GET /objects``.
    Each distinct object costs upstream look-ups, so a non-admin request may name at most
    ``config.max_segment_objects`` of them (400 beyond that)."""
    body = await read_json(ctx)
    segments = [body] if isinstance(body, dict) else body
    if not isinstance(segments, list) or not all(isinstance(s, dict) for s in segments):
        raise BadRequest("Send a segment object or a list of them")
    object_ids: list[str] = []
    for segment in segments:
        for key in ("object_id", "init_object_id"):
            if key in segment:
                if not isinstance(segment[key], str):
                    raise BadRequest(f"{key} must be a string")
                object_ids.append(segment[key])
    if not ctx.admin_may(Perm.WRITE):
        flow_id = ctx.resource_id
        flow = await ctx.lookups.flow(flow_id)
        need(ctx.caller, resource_classes(flow), {Perm.WRITE}, Resource.FLOW, flow_id)
        distinct = list(dict.fromkeys(object_ids))
        most = ctx.state.config.max_segment_objects
        if len(distinct) > most:
            raise BadRequest(f"A segment POST may name at most {most} distinct objects; send fewer segments at a time")
        usable = await gather_limited(object_usable(ctx, oid, flow_id) for oid in distinct)
        refused = [oid for oid, ok in zip(distinct, usable, strict=True) if not ok]
        if refused:
            raise object_not_found(refused[0])
    return await forward(ctx, body=body)


async def object_refs(ctx: Ctx, object_id: str) -> Any:
    """Pages of an object's referenced_by_flows (async iterator of lists); nothing when the
    object is not registered."""
    path: str | None = f"/objects/{quote(object_id, safe='')}?{encode_query([('limit', '1000')])}"
    while path is not None:
        reply = await ctx.upstream.call("GET", path, caller_auth=ctx.caller_auth)
        if reply.status == 404:
            return
        if reply.status != 200:
            raise UpstreamAnswer(reply)
        body = reply.json()
        refs = body.get("referenced_by_flows") if isinstance(body, dict) else None
        if not isinstance(refs, list):
            raise BadGateway("The store's object has no referenced_by_flows list")
        yield [r for r in refs if isinstance(r, str)]
        path = relative_next(ctx, reply, path)


def relative_next(ctx: Ctx, reply: UpstreamReply, current: str) -> str | None:
    """The store's next-page link as a path on the store, refusing links elsewhere."""
    if reply.next_url is None:
        return None
    base = ctx.upstream.base
    if not reply.next_url.startswith(base + "/"):
        raise BadGateway("The store's paging link points somewhere else")
    nxt = reply.next_url[len(base):]
    if nxt == current:
        raise BadGateway("The store's paging link points at the same page")
    return nxt


async def object_usable(ctx: Ctx, object_id: str, flow_id: str) -> bool:
    """May the caller register a segment using this object? Yes for an object not registered
    yet, one this Flow already uses, or one used by a Flow the caller can read."""
    registered = False
    async for refs in object_refs(ctx, object_id):
        registered = True
        if flow_id in refs:
            return True
        flows = await gather_limited(ctx.lookups.flow(ref) for ref in refs)
        if any(Perm.READ in permissions(ctx.caller, resource_classes(f)) for f in flows):
            return True
    return not registered


async def handle_storage_post(ctx: Ctx) -> web.StreamResponse:
    body = await read_json(ctx)
    if not isinstance(body, dict):
        raise BadRequest("The storage request must be a JSON object")
    if not ctx.admin_may(Perm.WRITE):
        flow = await ctx.lookups.flow(ctx.resource_id)
        need(ctx.caller, resource_classes(flow), {Perm.WRITE}, Resource.FLOW, ctx.resource_id)
    return await forward(ctx, body=body)


async def handle_object_get(ctx: Ctx) -> web.StreamResponse:
    if ctx.admin_may(Perm.READ):
        return await forward(ctx)

    def refs_of(body: Any) -> list[Any]:
        refs = body.get("referenced_by_flows") if isinstance(body, dict) else None
        if not isinstance(refs, list):
            raise BadGateway("The store's object has no referenced_by_flows list")
        return refs

    if not may_read_some(ctx.caller):
        raise object_not_found(ctx.resource_id)
    try:
        items, next_cursor, first_page = await paged(ctx, refs_of, readable_flow_ids(ctx), lambda ref: str(ref))
    except UpstreamAnswer as exc:
        if exc.reply.status != 404:
            raise
        items, next_cursor, first_page = [], None, None  # unknown answers exactly like hidden
    if not items:
        raise object_not_found(ctx.resource_id)
    assert first_page is not None
    body = dict(first_page.body)
    body["referenced_by_flows"] = items
    first_ref = body.get("first_referenced_by_flow")
    if isinstance(first_ref, str) and first_ref not in items and not (await readable_flow_ids(ctx)([first_ref]))[0]:
        del body["first_referenced_by_flow"]
    headers = paging_headers(ctx, len(items), next_cursor, first_page, count_header=False)
    return json_reply(body, headers=headers)


def object_not_found(object_id: str) -> NotFound:
    """The one refusal for an object that does not exist or that the caller may not see."""
    return NotFound(f"Object {object_id} not found")


def readable_flow_ids(ctx: Ctx) -> Callable[[Sequence[Any]], Awaitable[list[bool]]]:
    async def check(ids: Sequence[Any]) -> list[bool]:
        flows = await gather_limited(ctx.lookups.flow(str(i)) for i in ids)
        return [Perm.READ in permissions(ctx.caller, resource_classes(f)) for f in flows]

    return check


async def handle_object_instances(ctx: Ctx) -> web.StreamResponse:
    """An object's instances serve every Flow that uses it, so changing them needs write
    permission on all of those Flows."""
    body = None
    if ctx.method == "POST":
        body = await read_json(ctx)
        if not isinstance(body, dict):
            raise BadRequest("The instance must be a JSON object")
    if not ctx.admin_may(Perm.WRITE):
        refs: list[str] = []
        async for page in object_refs(ctx, ctx.resource_id):
            refs.extend(page)
        flows = await gather_limited(ctx.lookups.flow(r) for r in dict.fromkeys(refs))
        granted = [permissions(ctx.caller, resource_classes(f)) for f in flows]
        if not any(granted):
            raise object_not_found(ctx.resource_id)
        if not all(Perm.WRITE in g for g in granted):
            raise Forbidden("Changing an object's instances needs write permission on every Flow that uses it")
    return await forward(ctx, body=body)


async def handle_delete_request_get(ctx: Ctx) -> web.StreamResponse:
    if ctx.admin_may(Perm.DELETE):
        return await forward(ctx)
    found = await ctx.lookups.get(ctx.path)
    classes = ctx.state.delete_requests.get(ctx.resource_id)
    if found is not None and classes is None and isinstance(found.get("flow_id"), str):
        classes = resource_classes(await ctx.lookups.flow(found["flow_id"]))
    need(ctx.caller, classes or frozenset(), {Perm.DELETE}, Resource.DELETE_REQUEST, ctx.resource_id)
    if found is None:
        raise NotFound(f"Flow delete request {ctx.resource_id} not found")
    return json_reply(found)


# --- listings ------------------------------------------------------------------------------


def parse_limit(ctx: Ctx) -> int:
    config = ctx.state.config
    raw = ctx.request.rel_url.query.get("limit")
    if raw is None:
        return config.default_limit
    try:
        limit = int(raw)
    except ValueError as exc:
        raise BadRequest("limit must be a positive integer") from exc
    if limit < 1:
        raise BadRequest("limit must be a positive integer")
    return min(limit, config.max_limit)


async def paged(
    ctx: Ctx,
    items_of: Callable[[Any], list[Any]],
    permitted: Callable[[Sequence[Any]], Awaitable[list[bool]]],
    id_of: Callable[[Any], str | None],
) -> tuple[list[Any], Cursor | None, UpPage | None]:
    """One filtered page of the listing at ``ctx.path``."""
    limit = parse_limit(ctx)
    filters = [(k, v) for k, v in ctx.query if k not in ("page", "limit")]
    token = ctx.request.rel_url.query.get("page")
    cursor = ctx.state.cursors.decode(token) if token else None
    if cursor is not None and urlsplit(cursor.up).path != ctx.path:
        raise BadRequest("The page token belongs to another listing")
    config = ctx.state.config
    up_limit = config.upstream_page_size or min(config.max_limit, max(limit * 2, 100))
    first = ctx.path + "?" + encode_query([*filters, ("limit", str(up_limit))])

    async def fetch(up: str) -> UpPage:
        reply = await ctx.upstream.call("GET", up, caller_auth=ctx.caller_auth)
        if reply.status != 200:
            raise UpstreamAnswer(reply)
        body = reply.json()
        return UpPage(items_of(body), relative_next(ctx, reply, up), body, dict(reply.headers))

    items, next_cursor, first_page = await fill_page(fetch, permitted, id_of, first=first, limit=limit,
                                                     cursor=cursor)
    return items, next_cursor, first_page


def paging_headers(ctx: Ctx, count: int, next_cursor: Cursor | None, first_page: UpPage | None, *,
                   count_header: bool = True) -> dict[str, str]:
    """The proxy's own paging headers (ADR 0010) for a filtered page."""
    limit = parse_limit(ctx)
    headers = {"X-Paging-Limit": str(limit)}
    if count_header:
        headers["X-Paging-Count"] = str(count)
    if first_page is not None:
        for name, value in first_page.headers.items():
            if name.lower() == "x-paging-reverse-order":
                headers["X-Paging-Reverse-Order"] = value
    if next_cursor is not None:
        token = ctx.state.cursors.encode(next_cursor)
        filters = [(k, v) for k, v in ctx.query if k not in ("page", "limit")]
        query = encode_query([*filters, ("limit", str(limit)), ("page", token)])
        headers["X-Paging-NextKey"] = token
        headers["Link"] = f'<{ctx.public_base()}{ctx.path}?{query}>; rel="next"'
    return headers


async def handle_list(ctx: Ctx) -> web.StreamResponse:
    if ctx.admin_may(Perm.READ):
        return await forward(ctx)

    def items_of(body: Any) -> list[Any]:
        if not isinstance(body, list):
            raise BadGateway("The store's listing is not a JSON list")
        return body

    async def readable(items: Sequence[Any]) -> list[bool]:
        return [isinstance(i, dict) and Perm.READ in permissions(ctx.caller, resource_classes(i)) for i in items]

    def id_of(item: Any) -> str | None:
        ident = item.get("id") if isinstance(item, dict) else None
        return ident if isinstance(ident, str) else None

    if may_read_some(ctx.caller):
        items, next_cursor, first_page = await paged(ctx, items_of, readable, id_of)
        on_page = [i for i in map(id_of, items) if i is not None]
        items = await hide_unreadable_references(ctx, ctx.rule.resource, items, known=on_page)
    else:
        parse_limit(ctx)  # still refuse a bad limit
        items, next_cursor, first_page = [], None, None
    return json_reply(items, headers=paging_headers(ctx, len(items), next_cursor, first_page))


# --- webhooks ------------------------------------------------------------------------------


def id_list(body: dict[str, Any], key: str) -> list[str] | None:
    if key not in body or body[key] is None:
        return None
    value = body[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{key} must be a list of ids")
    return list(dict.fromkeys(value))


async def flatten_webhook(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """A webhook's filters as explicit lists of Flow and Source ids the caller can read.

    The store sends events for whatever the filters match, whoever can read it, so a
    non-admin's webhook must name what it watches: every id named must be readable, collection
    filters are replaced by the readable members of the collections now, and Flow events
    filtered only by Source are narrowed to the readable Flows of those Sources now (AppNote
    0016's basic approach: permissions are fixed when the webhook is registered)."""
    events = body.get("events")
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise BadRequest("events must be a list of event names")
    caller = ctx.caller
    flow_ids = id_list(body, "flow_ids")
    source_ids = id_list(body, "source_ids")
    flow_colls = id_list(body, "flow_collected_by_ids")
    source_colls = id_list(body, "source_collected_by_ids")
    if flow_colls == [] or source_colls == []:
        raise BadRequest("An empty collected_by filter matches everything outside collections; name ids instead")

    async def readable(what: Resource, ids: list[str]) -> list[dict[str, Any] | None]:
        found = await gather_limited(resource(ctx, what, i) for i in ids)
        for ident, item in zip(ids, found, strict=True):
            need(caller, resource_classes(item), {Perm.READ}, what, ident)
        return found

    async def readable_members(what: Resource, ids: list[str]) -> list[str]:
        return [
            i for i, item in zip(ids, await gather_limited(resource(ctx, what, i) for i in ids), strict=True)
            if Perm.READ in permissions(caller, resource_classes(item))
        ]

    flows: set[str] | None = None
    sources: set[str] | None = None
    if flow_ids is not None:
        await readable(Resource.FLOW, flow_ids)
        flows = set(flow_ids)
    if source_ids is not None:
        await readable(Resource.SOURCE, source_ids)
        sources = set(source_ids)
    if flow_colls is not None:
        members: list[str] = []
        for coll in await readable(Resource.FLOW, flow_colls):
            assert coll is not None
            members += [m["id"] for m in coll.get("flow_collection") or [] if isinstance(m, dict)
                        and isinstance(m.get("id"), str)]
        kept = set(await readable_members(Resource.FLOW, list(dict.fromkeys(members))))
        flows = kept if flows is None else flows & kept
    if source_colls is not None:
        members = []
        for coll in await readable(Resource.SOURCE, source_colls):
            assert coll is not None
            members += [m["id"] for m in coll.get("source_collection") or [] if isinstance(m, dict)
                        and isinstance(m.get("id"), str)]
        kept = set(await readable_members(Resource.SOURCE, list(dict.fromkeys(members))))
        sources = kept if sources is None else sources & kept

    flow_events = any(e.startswith("flows/") for e in events)
    source_events = any(e.startswith("sources/") for e in events)
    if flow_events and flows is None:
        if sources is None:
            raise BadRequest("Flow events need flow_ids or source_ids naming what to watch")
        flows = set()
        for source_id in sorted(sources):
            flows |= set(await readable_flows_of_source(ctx, source_id))
    if source_events and sources is None:
        raise BadRequest("Source events need source_ids naming what to watch")
    if flow_events and not flows:
        raise BadRequest("No Flow the caller can read matches the webhook's filters")
    if source_events and not sources:
        raise BadRequest("No Source the caller can read matches the webhook's filters")
    out = {k: v for k, v in body.items() if k not in ("flow_collected_by_ids", "source_collected_by_ids")}
    if flows is not None:
        out["flow_ids"] = sorted(flows)
    if sources is not None:
        out["source_ids"] = sorted(sources)
    return out


async def readable_flows_of_source(ctx: Ctx, source_id: str) -> list[str]:
    found: list[str] = []
    path: str | None = "/flows?" + encode_query([("source_id", source_id), ("limit", "1000")])
    while path is not None:
        reply = await ctx.upstream.call("GET", path, caller_auth=ctx.caller_auth)
        if reply.status != 200:
            raise UpstreamAnswer(reply)
        items = reply.json()
        if not isinstance(items, list):
            raise BadGateway("The store's listing is not a JSON list")
        found += [f["id"] for f in items if isinstance(f, dict) and isinstance(f.get("id"), str)
                  and Perm.READ in permissions(ctx.caller, resource_classes(f))]
        path = relative_next(ctx, reply, path)
    return found


async def handle_webhook_write(ctx: Ctx) -> web.StreamResponse:
    body = await read_json(ctx)
    if not isinstance(body, dict):
        raise BadRequest("The webhook must be a JSON object")
    tags = check_tags(body["tags"]) if "tags" in body else None
    if ctx.admin_may(Perm.WRITE):
        return await forward(ctx, body=body)
    caller = ctx.caller
    if ctx.method == "POST":
        new_classes = classes_from_tags(tags) if tags and AUTH_CLASSES in tags else writable_classes(caller)
        if not may_create_with(caller, new_classes):
            raise Forbidden("A new webhook must carry auth_classes, each one the caller can write")
        body = {**body, "tags": {**(tags or {}), AUTH_CLASSES: sorted(new_classes)}}
    else:
        existing = await ctx.lookups.webhook(ctx.resource_id)
        old_classes = resource_classes(existing)
        need(caller, old_classes, {Perm.WRITE}, Resource.WEBHOOK, ctx.resource_id)
        need_class_change(caller, old_classes, classes_from_tags(tags), Resource.WEBHOOK, ctx.resource_id)
    return await forward(ctx, body=await flatten_webhook(ctx, body))


HANDLERS: dict[Kind, Callable[[Ctx], Awaitable[web.StreamResponse]]] = {
    Kind.OPEN: handle_open,
    Kind.ADMIN: handle_admin,
    Kind.LIST: handle_list,
    Kind.GET_GUARDED: handle_get_guarded,
    Kind.GUARDED: handle_guarded,
    Kind.FLOW_PUT: handle_flow_put,
    Kind.FLOW_DELETE: handle_flow_delete,
    Kind.TAG_PUT: handle_tag_change,
    Kind.TAG_DELETE: handle_tag_change,
    Kind.COLLECTION_GET: handle_collection_get,
    Kind.COLLECTION_PUT: handle_collection_put,
    Kind.SEGMENTS_GET: handle_segments_get,
    Kind.SEGMENTS_POST: handle_segments_post,
    Kind.STORAGE_POST: handle_storage_post,
    Kind.OBJECT_GET: handle_object_get,
    Kind.OBJECT_INSTANCES: handle_object_instances,
    Kind.WEBHOOK_POST: handle_webhook_write,
    Kind.WEBHOOK_PUT: handle_webhook_write,
    Kind.DELETE_REQUEST_GET: handle_delete_request_get,
}

"""Calls from the proxy to the store it guards, through the shared ``TAMSClient``.

By default every upstream call carries the proxy's own credentials (``TAMSClient``'s
``Credentials``, renewed on 401), never the caller's token: the store only ever sees requests
the proxy decided to allow. With ``pass_through`` the caller's ``Authorization`` header is sent
instead, for stores that must see who is calling.

``Lookups`` is the per-request cache of resources fetched to make a decision, so a request
looks each Flow, Source or webhook up at most once.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from client import TAMSClient, TAMSConnectionError, TAMSError

from .errors import BadGateway

__all__ = [
    "Lookups",
    "Upstream",
    "UpstreamAnswer",
    "UpstreamReply",
    "encode_query",
]

logger = logging.getLogger(__name__)


def encode_query(pairs: Sequence[tuple[str, str]]) -> str:
    return urlencode(list(pairs), quote_via=quote, safe="[]():_,.-")


@dataclass
class UpstreamReply:
    status: int
    headers: Mapping[str, str]
    body: bytes
    next_url: str | None = None

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError as exc:
            raise BadGateway(f"The store's answer ({self.status}) is not JSON") from exc


class UpstreamAnswer(Exception):
    """An upstream answer to hand to the caller as it is (a 4xx about the request itself, or
    a 5xx): raised from deep inside a decision, rendered by the error middleware."""

    def __init__(self, reply: UpstreamReply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class Upstream:
    """The store behind the proxy."""

    def __init__(self, client: TAMSClient, *, pass_through: bool = False) -> None:
        self.client = client
        self.pass_through = pass_through
        self.base = client.url

    def _auth(self, caller_auth: str | None) -> tuple[dict[str, str], bool]:
        if self.pass_through:
            return ({"Authorization": caller_auth} if caller_auth else {}), False
        return {}, True

    async def call(self, method: str, path: str, *, query: Sequence[tuple[str, str]] = (),
                   body: bytes | None = None, headers: Mapping[str, str] | None = None,
                   caller_auth: str | None = None) -> UpstreamReply:
        """One request, body read. ``path`` is already encoded."""
        url = path + ("?" + encode_query(query) if query else "")
        auth_headers, use_own = self._auth(caller_auth)
        try:
            reply = await self.client.request(
                method, url, data=body, headers={**(headers or {}), **auth_headers}, check=False, auth=use_own
            )
        except TAMSConnectionError as exc:
            raise BadGateway("The store cannot be reached") from exc
        except TAMSError as exc:
            # The client only raises this with check=False when the proxy's own credentials fail.
            raise BadGateway("The store refused the proxy's credentials") from exc
        result = UpstreamReply(reply.status, reply.headers, reply.body, reply.next_url)
        self._check_own_credentials(method, path, result)
        return result

    def _check_own_credentials(self, method: str, path: str, reply: UpstreamReply) -> None:
        if reply.status == 401 and not self.pass_through:
            logger.error("the store refused the proxy's credentials (%s %s)", method, path)
            raise BadGateway("The store refused the proxy's credentials")

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, *, query: Sequence[tuple[str, str]] = (),
                     headers: Mapping[str, str] | None = None,
                     caller_auth: str | None = None) -> AsyncIterator[tuple[UpstreamReply, aiohttp.ClientResponse | None]]:
        """Like ``call`` for a body-less request, but a successful answer's body is left unread
        and its response yielded open, so large listings pass through without being held in
        memory. Error answers come read, with the response None."""
        url = path + ("?" + encode_query(query) if query else "")
        auth_headers, use_own = self._auth(caller_auth)
        try:
            async with self.client.request_stream(
                method, url, headers={**(headers or {}), **auth_headers}, auth=use_own
            ) as (reply, response):
                result = UpstreamReply(reply.status, reply.headers, reply.body, reply.next_url)
                self._check_own_credentials(method, path, result)
                yield result, response
        except TAMSConnectionError as exc:
            raise BadGateway("The store cannot be reached") from exc
        except TAMSError as exc:
            raise BadGateway("The store refused the proxy's credentials") from exc


@dataclass
class Lookups:
    """Resources fetched (as the proxy) to decide one request; each fetched once."""

    upstream: Upstream
    caller_auth: str | None = None
    _cache: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    calls: int = 0

    async def get(self, path: str, query: Sequence[tuple[str, str]] = ()) -> dict[str, Any] | None:
        """The JSON object at ``path``, None when the store says 404. Any other refusal about
        the request itself (400, 5xx) is handed to the caller as the store gave it."""
        key = path + "?" + encode_query(query)
        if key in self._cache:
            return self._cache[key]
        self.calls += 1
        reply = await self.upstream.call("GET", path, query=query, caller_auth=self.caller_auth)
        if reply.status == 404:
            value = None
        elif reply.status == 200:
            body = reply.json()
            if not isinstance(body, dict):
                raise BadGateway("The store's answer is not a JSON object")
            value = body
        elif reply.status == 403 and not self.upstream.pass_through:
            raise BadGateway("The store refused the proxy")
        else:
            raise UpstreamAnswer(reply)
        self._cache[key] = value
        return value

    async def flow(self, flow_id: str) -> dict[str, Any] | None:
        return await self.get("/flows/" + quote(flow_id, safe=""))

    async def source(self, source_id: str) -> dict[str, Any] | None:
        return await self.get("/sources/" + quote(source_id, safe=""))

    async def webhook(self, webhook_id: str) -> dict[str, Any] | None:
        return await self.get("/service/webhooks/" + quote(webhook_id, safe=""))

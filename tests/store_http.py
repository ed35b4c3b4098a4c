"""A thin aiohttp helper for the store tests: every JSON body received is schema-checked.

``StoreHttp.call(method, path, schema=..., status=...)`` sends one request and returns a
``Reply``. Error bodies (4xx/5xx) are always checked against ``error.json``; a 2xx JSON body
must name its schema (``schema="flow-get.json"`` or ``items="flow-segment.json"`` for lists),
so no JSON goes unvalidated.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from multidict import CIMultiDictProxy
from spec import validate, validate_list

if TYPE_CHECKING:
    from tests.conftest import RunningStore

__all__ = ["Reply", "StoreHttp", "basic_header", "basic_http", "new_flow", "timerange_re", "unsigned"]

timerange_re = re.compile(
    r"^(\[|\()?(-?(0|[1-9][0-9]*):(0|[1-9][0-9]{0,8}))?(_(-?(0|[1-9][0-9]*):(0|[1-9][0-9]{0,8}))?)?(\]|\))?$"
)

def unsigned(listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Segments or URLs as listed, with each presigned URL's query (expiry and signature) cut off.

    Two answers a second apart sign the same URL with different expiry times, so a test that
    compares listings taken at different moments compares them through this.
    """

    def url(entry: dict[str, Any]) -> dict[str, Any]:
        return {**entry, "url": entry["url"].split("?")[0]} if entry.get("presigned") else entry

    return [
        {**item, "get_urls": [url(u) for u in item["get_urls"]]} if "get_urls" in item else url(item)
        for item in listed
    ]


TOKEN_SCHEMA = {
    "type": "object",
    "required": ["access_token", "token_type", "expires_in", "scope"],
    "properties": {
        "access_token": {"type": "string"},
        "token_type": {"const": "Bearer"},
        "expires_in": {"type": "integer"},
        "scope": {"type": "string"},
    },
}
ROOT_SCHEMA = {"type": "array", "items": {"type": "string"}}


def basic_header(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: Any
    raw: bytes


class StoreHttp:
    """Requests against one running store with fixed default headers."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.session = session
        self.url = url
        self.headers = headers or {}

    def with_headers(self, headers: dict[str, str]) -> StoreHttp:
        return StoreHttp(self.session, self.url, headers)

    async def call(
        self,
        method: str,
        path: str,
        *,
        status: int | tuple[int, ...] | None = None,
        schema: str | dict[str, Any] | None = None,
        items: str | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Reply:
        url = path if path.startswith("http") else self.url + path
        merged = {**self.headers, **(headers or {})}
        async with self.session.request(method, url, headers=merged, **kwargs) as response:
            raw = await response.read()
            reply = Reply(response.status, response.headers, None, raw)
        if status is not None:
            wanted = (status,) if isinstance(status, int) else status
            assert reply.status in wanted, f"{method} {path}: {reply.status} {raw[:500]!r}"
        is_json = reply.headers.get("Content-Type", "").startswith("application/json")
        if raw and is_json:
            reply.body = json.loads(raw)
            if reply.status >= 400:
                validate(reply.body, "error.json")
            elif items is not None:
                validate_list(reply.body, items)
            elif isinstance(schema, dict):
                from jsonschema import validate as validate_inline

                validate_inline(reply.body, schema)
            elif schema is not None:
                validate(reply.body, schema)
            else:
                raise AssertionError(f"{method} {path}: JSON body received without a schema to check it")
        elif reply.status >= 400 and method != "HEAD":
            raise AssertionError(f"{method} {path}: error {reply.status} without a JSON error body")
        return reply

    # conveniences -------------------------------------------------------------------------
    async def put_flow(self, flow: dict[str, Any], status: int | tuple[int, ...] = (201, 204)) -> Reply:
        return await self.call(
            "PUT",
            f"/flows/{flow['id']}",
            json=flow,
            status=status,
            schema="flow-get.json",
        )

    async def get_flow_with_timerange(self, flow_id: str, **params: str) -> dict[str, Any]:
        """GET a Flow with ``include_timerange=true`` (must be 200); its body."""
        reply = await self.call(
            "GET",
            f"/flows/{flow_id}",
            params={"include_timerange": "true", **params},
            status=200,
            schema="flow-get.json",
        )
        return reply.body

    async def allocate(self, flow_id: str, limit: int | None = 1, **body: Any) -> list[dict[str, Any]]:
        if limit is not None:
            body["limit"] = limit
        reply = await self.call(
            "POST",
            f"/flows/{flow_id}/storage",
            json=body,
            status=201,
            schema="flow-storage.json",
        )
        return reply.body["media_objects"]

    async def post_segments(self, flow_id: str, segments: Any, status: int | tuple[int, ...] = 201) -> Reply:
        return await self.call(
            "POST",
            f"/flows/{flow_id}/segments",
            json=segments,
            status=status,
            schema="flow-segment-bulk-failure.json",
        )

    async def segments(self, flow_id: str, **params: str) -> Reply:
        """GET one page of segments (must be 200) and check the paging headers' syntax."""
        reply = await self.call(
            "GET",
            f"/flows/{flow_id}/segments",
            params=params,
            status=200,
            items="flow-segment.json",
        )
        assert timerange_re.match(reply.headers["X-Paging-Timerange"])
        return reply


@contextlib.asynccontextmanager
async def basic_http(store: RunningStore) -> AsyncIterator[StoreHttp]:
    """Requests against ``store`` as its Basic-auth user, on a session of their own."""
    async with aiohttp.ClientSession() as session:
        yield StoreHttp(session, store.url, basic_header(store.username, store.password))


def new_flow(container: str | None = "video/mp2t", **fields: Any) -> dict[str, Any]:
    """A valid video Flow body with fresh ids."""
    flow: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "source_id": str(uuid.uuid4()),
        "format": "urn:x-nmos:format:video",
        "codec": "video/h264",
        "essence_parameters": {
            "frame_width": 320,
            "frame_height": 180,
            "frame_rate": {"numerator": 30},
        },
        "label": "test flow",
    }
    if container is not None:
        flow["container"] = container
    flow.update(fields)
    return flow


# Media held outside the store: a segment may name an object id the store never allocated only
# with URLs to read it from.
ELSEWHERE = {"get_urls": [{"url": "http://media.example.com/elsewhere.ts", "label": "elsewhere"}]}


def elsewhere(object_id: str, **fields: Any) -> dict[str, Any]:
    """A segment POST item for an object stored outside the store."""
    return {"object_id": object_id, **fields, **ELSEWHERE}

"""Test harness for the authz proxy: a real local store, a recording forwarder in front of it,
and the proxy in front of that, all on loopback.

The proxy and the recorder run in one background event loop (``LoopThread``), so tests are
plain synchronous functions and module-scoped fixtures can share one set of servers. The
recorder forwards every request to the store unchanged and keeps what it saw, which is how the
tests prove the store never received a request the proxy refused.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import uuid
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from yarl import URL

from authz_proxy.app import ProxyConfig, RunningProxy, start_proxy
from credentials import OAuth2ClientCredentials
from tests.conftest import RunningStore
from tests.loopback import serve

T = TypeVar("T")

ALL_SCOPES = ["tams-api/read", "tams-api/write", "tams-api/delete", "tams-api/admin"]
USER_SCOPES = ["tams-api/read", "tams-api/write", "tams-api/delete"]


def client(client_id: str, groups: list[str], scopes: list[str] | None = None) -> dict[str, Any]:
    return {"client_id": client_id, "client_secret": f"{client_id}-secret", "scopes": scopes or USER_SCOPES,
            "groups": groups}


PROXY_CLIENT = client("authz-proxy", ["admin"], ALL_SCOPES)


class LoopThread:
    """An event loop running in a daemon thread; ``run`` waits for a coroutine's result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Seen:
    method: str
    raw_path: str
    query: str
    body: bytes
    subject: str | None  # `sub` of the bearer token the request carried

    @property
    def path(self) -> str:
        return self.raw_path

    def json(self) -> Any:
        return json.loads(self.body)


def token_subject(authorization: str | None) -> str | None:
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    try:
        payload = authorization.split()[1].split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]
    except (IndexError, ValueError, KeyError):
        return None


class Recorder:
    """A transparent forwarder to ``target`` that remembers every request."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.seen: list[Seen] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner, self.url = await serve(app, access_log=None)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(Seen(request.method, request.rel_url.raw_path, request.rel_url.raw_query_string, body,
                              token_subject(request.headers.get("Authorization"))))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        assert self._session is not None
        target = URL(self.target + request.rel_url.raw_path_qs, encoded=True)
        async with self._session.request(request.method, target, headers=headers, data=body or None,
                                         allow_redirects=False) as response:
            data = await response.read()
            out_headers = {k: v for k, v in response.headers.items()
                           if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date")}
            # The store's own links name the store; make them name the recorder, as a store there would.
            for name in ("Link", "Location"):
                if name in out_headers:
                    out_headers[name] = out_headers[name].replace(self.target, self.url)
            return web.Response(status=response.status, body=data, headers=out_headers)

    def clear(self) -> None:
        self.seen.clear()

    def saw(self, method: str, raw_path: str) -> bool:
        return any(s.method == method and s.raw_path == raw_path for s in self.seen)

    def writes(self) -> list[Seen]:
        return [s for s in self.seen if s.method not in ("GET", "HEAD")]


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ProxyEnv:
    """A store, a recorder in front of it and the proxy in front of that."""

    store: RunningStore
    loop: LoopThread
    recorder: Recorder
    proxy: RunningProxy
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.proxy.url

    def token(self, client_id: str) -> str:
        if client_id not in self.tokens:
            self.tokens[client_id] = self.loop.run(fetch_token(self.store, client_id))
        return self.tokens[client_id]

    def call(self, caller: str | None, method: str, path: str, *, json_body: Any = None, data: bytes | None = None,
             headers: Mapping[str, str] | None = None, base: str | None = None) -> Answer:
        """A request to the proxy (``path`` already encoded) as ``caller`` (None: no token)."""
        all_headers = dict(headers or {})
        if caller is not None:
            all_headers["Authorization"] = "Bearer " + self.token(caller)
        if json_body is not None:
            data = json.dumps(json_body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        return self.loop.run(http(method, (base or self.url) + path, data=data, headers=all_headers))

    def store_call(self, method: str, path: str, json_body: Any = None) -> Answer:
        """A request straight to the store, as its Basic-auth admin."""
        headers = {"Authorization": aiohttp.encode_basic_auth(self.store.username, self.store.password)}
        data = None
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        return self.loop.run(http(method, self.store.url + path, data=data, headers=headers))

    def close(self) -> None:
        self.loop.run(self.proxy.stop())
        self.loop.run(self.recorder.stop())
        self.loop.close()


async def http(method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None
               ) -> Answer:
    async with aiohttp.ClientSession() as session, session.request(
        method, URL(url, encoded=True), data=data, headers=dict(headers or {}), allow_redirects=False
    ) as response:
        return Answer(response.status, dict(response.headers), await response.read())


async def fetch_token(store: RunningStore, client_id: str) -> str:
    record = next(c for c in store.clients if c["client_id"] == client_id)
    async with aiohttp.ClientSession() as session, session.post(
        store.oauth2_url, data={"grant_type": "client_credentials"},
        headers={"Authorization": aiohttp.encode_basic_auth(client_id, record["client_secret"])},
    ) as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["access_token"])


def start_env(store: RunningStore, *, loop: LoopThread | None = None, **config: Any) -> ProxyEnv:
    """The proxy (``config`` overrides ProxyConfig fields) in front of a recorder in front of
    ``store``; the store's clients must include ``PROXY_CLIENT``."""
    loop = loop or LoopThread()
    recorder = Recorder(store.url)
    loop.run(recorder.start())
    settings: dict[str, Any] = {
        "api_url": recorder.url,
        "jwks_url": store.url + "/.well-known/jwks.json",
        "credentials": OAuth2ClientCredentials(store.oauth2_url, PROXY_CLIENT["client_id"],
                                               PROXY_CLIENT["client_secret"], scope=" ".join(ALL_SCOPES)),
    }
    settings.update(config)
    proxy = loop.run(start_proxy(ProxyConfig(**settings), "127.0.0.1", 0))
    return ProxyEnv(store, loop, recorder, proxy)


def new_id() -> str:
    return str(uuid.uuid4())


def video_flow(flow_id: str, source_id: str, classes: list[str] | str | None = None, **extra: Any) -> dict[str, Any]:
    flow: dict[str, Any] = {
        "id": flow_id,
        "source_id": source_id,
        "format": "urn:x-nmos:format:video",
        "codec": "video/h264",
        "container": "video/mp2t",
        "essence_parameters": {"frame_width": 320, "frame_height": 180, "frame_rate": {"numerator": 30}},
    }
    if classes is not None:
        flow["tags"] = {"auth_classes": classes}
    flow.update(extra)
    return flow

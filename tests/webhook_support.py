"""A real webhook receiver for tests: an aiohttp server on a free loopback port that records
every event POSTed to it, and can fail, hang or be slow per path. ``receiver_running()`` starts
one; the ``receiver`` fixture in ``conftest.py`` gives each test its own."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.loopback import serve

__all__ = ["Delivery", "Receiver", "receiver_running", "wait_until"]


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


class Receiver:
    """An HTTP server that records the events POSTed to it; per path it can fail or be slow."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []  # the POSTs answered 200, in arrival order
        self.attempts: collections.Counter[str] = collections.Counter()
        self.fail_first: dict[str, int] = {}
        self.always_fail: set[str] = set()
        self.delay: dict[str, float] = {}
        # Awaited before each answer (after the body is read): a test's own stall or check.
        self.before_answer: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None
        self.base = ""

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        self.attempts[path] += 1
        body = await request.json()
        if path in self.delay:
            await asyncio.sleep(self.delay[path])
        if self.before_answer is not None:
            await self.before_answer(path, body)
        if path in self.always_fail or self.attempts[path] <= self.fail_first.get(path, 0):
            return web.Response(status=500, text="receiver failing on purpose")
        self.deliveries.append(Delivery(path, dict(request.headers), body, time.monotonic()))
        return web.Response(status=200)

    def url(self, path: str) -> str:
        return self.base + path

    def got(self, path: str) -> list[dict[str, Any]]:
        return [d.body for d in self.deliveries if d.path == path]


@contextlib.asynccontextmanager
async def receiver_running() -> AsyncIterator[Receiver]:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", recv.handle)
    runner, recv.base = await serve(app, shutdown_timeout=0.5)
    try:
        yield recv
    finally:
        await runner.cleanup()


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for webhook deliveries")
        await asyncio.sleep(0.02)

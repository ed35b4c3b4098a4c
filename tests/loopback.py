"""Serving a test's own aiohttp application (a receiver, an issuer, a forwarder) on loopback."""

from __future__ import annotations

from typing import Any

from aiohttp import web

__all__ = ["serve"]


async def serve(app: web.Application, **runner_options: Any) -> tuple[web.AppRunner, str]:
    """Start ``app`` on a free port of 127.0.0.1; (its runner, for ``cleanup()``, and its base URL)."""
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"

"""The TAMS API routes of the local store, one module per resource family.

``ROUTE_TABLES`` lists every module's ``RouteTableDef``; ``app.create_app`` adds them all. A new
resource family (webhooks, deletion requests, ...) is a new module added to this list.
"""

from __future__ import annotations

from aiohttp import web

from . import deletes, flows, objects, profiles, segments, service, sources, webhooks

__all__ = ["ROUTE_TABLES"]

ROUTE_TABLES: tuple[web.RouteTableDef, ...] = (
    service.routes,
    profiles.routes,
    webhooks.routes,
    sources.routes,
    flows.routes,
    segments.routes,
    objects.routes,
    deletes.routes,
)

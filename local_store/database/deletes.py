"""Flow deletion requests, kept for /flow-delete-requests."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from .core import DatabaseCore
from .records import (
    Page,
    PageAfter,
    iso,
)


class DeleteRequestTables(DatabaseCore):
    def _record_delete_request(self, flow_id: str, timerange: str, delete_flow: bool, principal: str, now: str) -> dict[str, Any]:
        """Keep the record of a (synchronously completed) deletion for ``/flow-delete-requests``."""
        expiry = iso(time.time() + self.delete_request_ttl)
        doc = {
            "id": str(uuid.uuid4()),
            "flow_id": flow_id,
            "timerange_to_delete": timerange,
            "timerange_remaining": "()",
            "delete_flow": delete_flow,
            "created": now,
            "created_by": principal,
            "updated": now,
            "expiry": expiry,
            "status": "done",
        }
        self.conn.execute(
            "INSERT INTO delete_requests(id, flow_id, doc, created, expiry) VALUES (?, ?, ?, ?, ?)",
            (doc["id"], flow_id, json.dumps(doc), now, expiry),
        )
        return doc

    async def get_delete_request(self, request_id: str) -> dict[str, Any] | None:
        def run() -> dict[str, Any] | None:
            row = self.conn.execute("SELECT doc FROM delete_requests WHERE id = ?", (request_id,)).fetchone()
            return json.loads(row["doc"]) if row else None

        return await self._read(run)

    async def list_delete_requests(self, sort_by: str, reverse: bool, after: PageAfter | None, limit: int) -> Page:
        def run() -> Page:
            column = {"created": "created", "expiry": "expiry"}[sort_by]
            where: list[str] = []
            params: list[Any] = []
            page, next_after = self._keyset_page(
                "SELECT id, created, expiry, doc FROM delete_requests", where, params, column, True, reverse, after, limit
            )
            return [json.loads(r["doc"]) for r in page], next_after

        return await self._read(run)

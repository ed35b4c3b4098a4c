"""Webhook registrations and their status."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..errors import (
    BadRequest,
    NotFound,
)
from .outbox import OutboxTables
from .records import (
    Page,
    PageAfter,
    TagFilter,
    tag_condition,
    webhook_record,
)
from .schema import ACTIVE_WEBHOOK_STATUSES


class WebhookTables(OutboxTables):
    def _webhook(self, webhook_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM webhooks WHERE id = ?", (webhook_id,)).fetchone()
        return webhook_record(row) if row else None

    async def create_webhook(self, webhook_id: str, doc: dict[str, Any], status: str, owner: str, now: str) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            # A new webhook hears of changes from now on, not of the events already stored.
            self.conn.execute(
                "INSERT INTO webhooks(id, url, owner, doc, status, created, delivered_seq) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (webhook_id, doc["url"], owner, json.dumps(doc), status, now, self._last_event_seq()),
            )
            record = self._webhook(webhook_id)
            assert record is not None
            return record

        return await self._write(run)

    async def get_webhook(self, webhook_id: str) -> dict[str, Any] | None:
        return await self._read(self._webhook, webhook_id)

    async def list_all_webhooks(self) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            return [webhook_record(r) for r in self.conn.execute("SELECT * FROM webhooks ORDER BY created, id")]

        return await self._read(run)

    async def list_webhooks(self, owner: str | None, tags: Sequence[TagFilter], reverse: bool, after: PageAfter | None, limit: int) -> Page:
        """A page of webhooks sorted by url (``owner`` None: everyone's)."""

        def run() -> Page:
            where: list[str] = []
            params: list[Any] = []
            if owner is not None:
                where.append("owner = ?")
                params.append(owner)
            for tag in tags:
                tag_condition("json_extract(webhooks.doc, '$.tags')", tag, where, params)
            return self._keyset_page("SELECT * FROM webhooks", where, params, "url", False, reverse, after, limit, webhook_record)

        return await self._read(run)

    async def replace_webhook(self, webhook_id: str, doc: dict[str, Any], status: str, owner: str | None) -> dict[str, Any]:
        """PUT: replace a webhook's registration (``owner`` None: any owner's). Re-enabling
        (``created``) clears an error; an ``error`` webhook cannot go straight to ``disabled``.
        An ``api_key_value`` left out is kept while ``api_key_name`` stays the same."""

        def run() -> dict[str, Any]:
            current = self._webhook(webhook_id)
            if current is None or (owner is not None and current["owner"] != owner):
                raise NotFound(f"Webhook {webhook_id} does not exist")
            if current["status"] == "error" and status == "disabled":
                raise BadRequest("A webhook in the error state can only be re-enabled (status created), not disabled")
            old = current["doc"]
            new_doc = dict(doc)
            if "api_key_value" not in new_doc and "api_key_value" in old and new_doc.get("api_key_name") == old.get("api_key_name"):
                new_doc["api_key_value"] = old["api_key_value"]
            # Already delivering and asked to keep going: it stays started.
            new_status = "started" if current["status"] == "started" and status == "created" else status
            delivered = current["delivered_seq"]
            if current["status"] not in ACTIVE_WEBHOOK_STATUSES and new_status in ACTIVE_WEBHOOK_STATUSES:
                delivered = self._last_event_seq()  # re-enabled: from now on, as when created
            self.conn.execute(
                "UPDATE webhooks SET url = ?, doc = ?, status = ?, error = NULL, delivered_seq = ? WHERE id = ?",
                (new_doc["url"], json.dumps(new_doc), new_status, delivered, webhook_id),
            )
            self._prune_outbox()
            record = self._webhook(webhook_id)
            assert record is not None
            return record

        return await self._write(run)

    async def delete_webhook(self, webhook_id: str, owner: str | None) -> None:
        def run() -> None:
            current = self._webhook(webhook_id)
            if current is None or (owner is not None and current["owner"] != owner):
                raise NotFound(f"Webhook {webhook_id} does not exist")
            self.conn.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,))
            self._prune_outbox()

        await self._write(run)

    async def set_webhook_status(
        self, webhook_id: str, status: str, error: dict[str, Any] | None, *, only_if: Sequence[str]
    ) -> dict[str, Any] | None:
        """Set a webhook's status (and error) if its status is one of ``only_if``; the record
        afterwards, or None if it no longer exists or was not changed."""

        def run() -> dict[str, Any] | None:
            marks = ", ".join("?" for _ in only_if)
            cursor = self.conn.execute(
                f"UPDATE webhooks SET status = ?, error = ? WHERE id = ? AND status IN ({marks})",
                (status, json.dumps(error) if error is not None else None, webhook_id, *only_if),
            )
            if not cursor.rowcount:
                return None
            self._prune_outbox()  # an error or disabled webhook's undelivered events are dropped
            return self._webhook(webhook_id)

        return await self._write(run)

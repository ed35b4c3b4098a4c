"""The outbox: change events stored with the changes they announce, until delivered.

``DatabaseCore._run_batch`` writes a transaction's events here just before its COMMIT (so an
event exists exactly when its change does, and a refused or rolled-back write leaves none).
Each webhook's ``delivered_seq`` is the last outbox event it is done with: delivered, or not
one it wants. Rows behind every active webhook's ``delivered_seq`` are pruned, so the table
holds just the events some active webhook has still to deliver (or to pass over).
"""

from __future__ import annotations

from collections.abc import Mapping

from .core import DatabaseCore
from .records import ChangeEvent
from .schema import ACTIVE_WEBHOOK_STATUSES

ACTIVE_MARKS = ", ".join("?" for _ in ACTIVE_WEBHOOK_STATUSES)


class OutboxTables(DatabaseCore):
    def _last_event_seq(self) -> int:
        """The seq of the last event ever written (0 if none), pruned or not."""
        row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row["seq"]) if row else 0

    def _prune_outbox(self) -> None:
        """Drop the events every active webhook is done with (all of them, if none is active)."""
        row = self.conn.execute(
            f"SELECT MIN(delivered_seq) AS low FROM webhooks WHERE status IN ({ACTIVE_MARKS})",
            ACTIVE_WEBHOOK_STATUSES,
        ).fetchone()
        low = row["low"] if row["low"] is not None else self._last_event_seq()
        self.conn.execute("DELETE FROM outbox WHERE seq <= ?", (low,))

    async def events_after(self, seq: int, limit: int) -> list[ChangeEvent]:
        """Up to ``limit`` stored events after ``seq``, in commit order."""

        def run() -> list[ChangeEvent]:
            rows = self.conn.execute("SELECT seq, event FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
            return [ChangeEvent.from_json(r["seq"], r["event"]) for r in rows]

        return await self._read(run)

    async def mark_delivered(self, positions: Mapping[str, int]) -> None:
        """Each webhook (by id) is done with every event up to its seq."""

        def run() -> None:
            self.conn.executemany(
                "UPDATE webhooks SET delivered_seq = ? WHERE id = ? AND delivered_seq < ?",
                [(seq, webhook_id, seq) for webhook_id, seq in positions.items()],
            )
            self._prune_outbox()

        await self._write(run)

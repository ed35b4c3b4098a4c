"""Garbage collection of unregistered and unreferenced media objects."""

from __future__ import annotations

import time
from collections.abc import Sequence

from .core import DatabaseCore
from .records import (
    GcOutcome,
    iso,
)
from .schema import REFERENCED

TOMBSTONE_TTL = 7 * 24 * 3600  # seconds a collected object's id stays refused for registration


class GarbageTables(DatabaseCore):
    async def collect_garbage(self, grace: float, batch: int = 1000) -> GcOutcome:
        """Remove, in one transaction, objects allocated but never registered and objects no
        segment or media object references, each so for longer than ``grace`` seconds.

        Every candidate is re-checked for references inside the transaction, so an object a
        segment references (including one referenced again during its grace period) is never
        removed, and a segment POST racing with the sweep either registers the object first (and
        it is kept) or finds it gone and is refused (``_refuse_collected``).
        """

        def run() -> GcOutcome:
            conn = self.conn
            now = time.time()
            cutoff = now - grace
            cutoff_iso = iso(cutoff)
            unregistered = conn.execute(
                "SELECT id, controlled, init_object_id FROM objects WHERE first_referenced_by_flow IS NULL "
                f"AND created < ? AND (uploaded IS NULL OR uploaded < ?) AND NOT {REFERENCED} LIMIT ?",
                (cutoff_iso, cutoff_iso, batch),
            ).fetchall()
            unreferenced = conn.execute(
                "SELECT id, controlled, init_object_id FROM objects WHERE unreferenced_at IS NOT NULL "
                f"AND unreferenced_at < ? AND NOT {REFERENCED} LIMIT ?",
                (cutoff, batch),
            ).fetchall()
            # Referenced again but the mark was left: clear it (belt and braces).
            conn.execute(
                f"UPDATE objects SET unreferenced_at = NULL WHERE unreferenced_at IS NOT NULL AND unreferenced_at < ? AND {REFERENCED}",
                (cutoff,),
            )
            removed: list[str] = []
            for row in [*unregistered, *unreferenced]:
                conn.execute("DELETE FROM objects WHERE id = ?", (row["id"],))  # object_urls cascade
                conn.execute("INSERT OR REPLACE INTO collected_objects(id, collected_at) VALUES (?, ?)", (row["id"], now))
                if row["controlled"]:
                    conn.execute(
                        "INSERT OR IGNORE INTO pending_file_removals(object_id, queued_at) VALUES (?, ?)",
                        (row["id"], now),
                    )
                if row["init_object_id"]:  # the init object may have lost its last reference
                    conn.execute("INSERT OR IGNORE INTO temp.touched_objects VALUES (?)", (row["init_object_id"],))
                removed.append(row["id"])
            self._mark_unreferenced()
            conn.execute("DELETE FROM delete_requests WHERE expiry < ?", (iso(now),))
            conn.execute("DELETE FROM collected_objects WHERE collected_at < ?", (now - TOMBSTONE_TTL,))
            files = [r[0] for r in conn.execute("SELECT object_id FROM pending_file_removals LIMIT ?", (batch * 2,))]
            more = len(unregistered) == batch or len(unreferenced) == batch
            return GcOutcome(removed=removed, files=files, more=more)

        return await self._write(run)

    async def pending_file_removals(self) -> list[str]:
        def run() -> list[str]:
            return [r[0] for r in self.conn.execute("SELECT object_id FROM pending_file_removals")]

        return await self._read(run)

    async def file_removals_done(self, object_ids: Sequence[str]) -> None:
        """Forget queued removals whose files are gone (unless the object is controlled again)."""

        def run() -> None:
            self.conn.executemany("DELETE FROM pending_file_removals WHERE object_id = ?", [(oid,) for oid in object_ids])

        if object_ids:
            await self._write(run)

    async def controlled_object_ids(self) -> list[str]:
        """Every object whose bytes this store holds (or is waiting for)."""

        def run() -> list[str]:
            return [r[0] for r in self.conn.execute("SELECT id FROM objects WHERE controlled = 1")]

        return await self._read(run)

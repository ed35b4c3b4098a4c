"""Media objects: storage allocation, uploads, look-ups and instances."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from ..errors import (
    BadRequest,
    NoContainer,
    NotFound,
    ObjectNotFound,
)
from .core import DatabaseCore
from .records import (
    TagFilter,
    tag_condition,
)


class ObjectTables(DatabaseCore):
    async def allocate_objects(self, flow_id: str, object_ids: Sequence[str], content_type: str, now: str) -> None:
        def run() -> None:
            flow = self._writable_flow(flow_id)
            if not flow["container"]:
                raise NoContainer(flow_id)
            placeholders = ", ".join("?" for _ in object_ids)
            taken = self.conn.execute(
                f"SELECT id FROM objects WHERE id IN ({placeholders}) "
                f"UNION ALL SELECT object_id FROM pending_file_removals WHERE object_id IN ({placeholders})",
                (*object_ids, *object_ids),
            ).fetchall()
            if taken:
                raise BadRequest(f"Object id {taken[0][0]!r} already exists")
            self.conn.executemany(
                "INSERT INTO objects(id, allocated_by_flow, controlled, content_type, created) VALUES (?, ?, 1, ?, ?)",
                [(oid, flow_id, content_type, now) for oid in object_ids],
            )
            # A client-chosen id may name an object collected long ago: it is new again.
            self.conn.execute(f"DELETE FROM collected_objects WHERE id IN ({placeholders})", tuple(object_ids))

        await self._write(run)

    async def object_for_upload(self, object_id: str) -> dict[str, Any] | None:
        def run() -> dict[str, Any] | None:
            row = self.conn.execute(
                "SELECT id, content_type, controlled, size FROM objects WHERE id = ?",
                (object_id,),
            ).fetchone()
            return dict(row) if row else None

        return await self._read(run)

    async def record_upload(self, object_id: str, size: int, now: str) -> bool:
        """Note an object's uploaded bytes; False (and its file queued for removal) if the object
        was garbage-collected while its bytes were arriving."""

        def run() -> bool:
            cursor = self.conn.execute(
                "UPDATE objects SET size = ?, uploaded = COALESCE(uploaded, ?) WHERE id = ? AND controlled = 1",
                (size, now, object_id),
            )
            if cursor.rowcount:
                return True
            self.conn.execute(
                "INSERT OR IGNORE INTO pending_file_removals(object_id, queued_at) VALUES (?, ?)",
                (object_id, time.time()),
            )
            return False

        return await self._write(run)

    async def get_object(
        self, object_id: str, after_flow: str | None, limit: int, flow_tags: Sequence[TagFilter] = ()
    ) -> dict[str, Any] | None:
        """A registered object with one page of its referencing Flows (those whose tags match
        ``flow_tags``, in id order, after the id ``after_flow``), or None. ``next_flow`` in the
        record is the last Flow id of the page when there are more."""

        def run() -> dict[str, Any] | None:
            row = self.conn.execute("SELECT * FROM objects WHERE id = ?", (object_id,)).fetchone()
            if row is None or row["first_referenced_by_flow"] is None:
                return None
            record = dict(row)
            column = "init_object_id" if row["role"] == "init" else "object_id"
            where = [f"s.{column} = ?"]
            params: list[Any] = [object_id]
            for tag in flow_tags:
                tag_condition("json_extract(f.doc, '$.tags')", tag, where, params)
            if after_flow is not None:
                where.append("s.flow_id > ?")
                params.append(after_flow)
            flows = [
                r[0]
                for r in self.conn.execute(
                    "SELECT DISTINCT s.flow_id FROM segments s JOIN flows f ON f.id = s.flow_id "
                    f"WHERE {' AND '.join(where)} ORDER BY s.flow_id LIMIT ?",
                    (*params, limit + 1),
                )
            ]
            record["referenced_by_flows"] = flows[:limit]
            record["next_flow"] = flows[limit - 1] if len(flows) > limit else None
            record["urls"] = self._uncontrolled_urls([object_id]).get(object_id, [])
            if row["init_object_id"]:
                init = self.conn.execute(
                    "SELECT id, controlled, content_type FROM objects WHERE id = ?",
                    (row["init_object_id"],),
                ).fetchone()
                record["init"] = dict(init) if init else None
                record["init_urls"] = self._uncontrolled_urls([row["init_object_id"]]).get(row["init_object_id"], [])
            return record

        return await self._read(run)

    def _uncontrolled_urls(self, object_ids: Sequence[str]) -> dict[str, list[tuple[str, str | None]]]:
        found: dict[str, list[tuple[str, str | None]]] = {}
        if not object_ids:
            return found
        unique = list(dict.fromkeys(object_ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            placeholders = ", ".join("?" for _ in chunk)
            for r in self.conn.execute(
                f"SELECT object_id, url, label FROM object_urls WHERE object_id IN ({placeholders}) ORDER BY object_id, position",
                tuple(chunk),
            ):
                found.setdefault(r[0], []).append((r[1], r[2]))
        return found

    # --- object instances -----------------------------------------------------------------------
    def _registered_object(self, object_id: str) -> sqlite3.Row:
        row = self.conn.execute("SELECT * FROM objects WHERE id = ?", (object_id,)).fetchone()
        if row is None or row["first_referenced_by_flow"] is None:
            raise ObjectNotFound(object_id)
        return row

    async def add_uncontrolled_instance(self, object_id: str, url: str, label: str) -> None:
        """Register a URL the object's bytes can also be read from (404 unless registered)."""

        def run() -> None:
            self._registered_object(object_id)
            labels = {r[0] for r in self.conn.execute("SELECT label FROM object_urls WHERE object_id = ?", (object_id,))}
            if label in labels:
                raise BadRequest(f"Object {object_id!r} already has an instance labelled {label!r}")
            position = self.conn.execute(
                "SELECT COALESCE(MAX(position) + 1, 0) FROM object_urls WHERE object_id = ?", (object_id,)
            ).fetchone()[0]
            self.conn.execute(
                "INSERT INTO object_urls(object_id, position, url, label) VALUES (?, ?, ?, ?)",
                (object_id, position, url, label),
            )

        await self._write(run)

    async def object_instances(self, object_id: str) -> dict[str, Any]:
        """A registered object's controlled flag, content type and uncontrolled URLs."""

        def run() -> dict[str, Any]:
            row = self._registered_object(object_id)
            pending = self.conn.execute("SELECT 1 FROM pending_file_removals WHERE object_id = ?", (object_id,)).fetchone()
            return {
                "controlled": bool(row["controlled"]),
                "content_type": row["content_type"],
                "urls": self._uncontrolled_urls([object_id]).get(object_id, []),
                "removal_pending": pending is not None,
            }

        return await self._read(run)

    async def set_controlled(self, object_id: str, size: int, now: str) -> bool:
        """Record a controlled copy written by the store; False if the object is gone, already
        controlled, or its old file is still being removed (the caller removes the new file)."""

        def run() -> bool:
            cursor = self.conn.execute(
                "UPDATE objects SET controlled = 1, size = ?, uploaded = ? WHERE id = ? AND controlled = 0 "
                "AND first_referenced_by_flow IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM pending_file_removals p WHERE p.object_id = objects.id)",
                (size, now, object_id),
            )
            return bool(cursor.rowcount)

        return await self._write(run)

    async def remove_instance(
        self,
        object_id: str,
        *,
        storage_id: str | None,
        label: str | None,
        backend_id: str,
        backend_label: str,
    ) -> bool:
        """Remove the instance named by ``storage_id`` or ``label``; True if it was the controlled
        one, whose file the caller then unlinks. The last instance is never removed."""

        def run() -> bool:
            row = self._registered_object(object_id)
            urls = self._uncontrolled_urls([object_id]).get(object_id, [])
            controlled = bool(row["controlled"])
            if storage_id is not None:
                if label is not None and label != backend_label:
                    raise BadRequest("storage_id and label name different instances")
                if storage_id != backend_id or not controlled:
                    raise NotFound(f"Object {object_id!r} has no instance on storage {storage_id}")
                drop_controlled, drop_urls = True, 0
            else:
                assert label is not None
                drop_controlled = controlled and label == backend_label
                drop_urls = sum(1 for _, url_label in urls if url_label == label)
                if not drop_controlled and not drop_urls:
                    raise NotFound(f"Object {object_id!r} has no instance labelled {label!r}")
            if int(drop_controlled) + drop_urls >= int(controlled) + len(urls):
                raise BadRequest(f"Refusing to delete the last instance of object {object_id!r}; delete the segments that use it instead")
            if drop_controlled:
                self.conn.execute("UPDATE objects SET controlled = 0, size = NULL WHERE id = ?", (object_id,))
                self.conn.execute(
                    "INSERT OR IGNORE INTO pending_file_removals(object_id, queued_at) VALUES (?, ?)",
                    (object_id, time.time()),
                )
            if drop_urls:
                self.conn.execute("DELETE FROM object_urls WHERE object_id = ? AND label = ?", (object_id, label))
            return drop_controlled

        return await self._write(run)

"""Flows: create, replace, property updates, deletion and listings."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from ..errors import (
    BadRequest,
    FlowNotFound,
    Forbidden,
)
from .core import DatabaseCore
from .records import (
    FlowQuery,
    Page,
    PageAfter,
    collected_by_condition,
    flow_record,
    set_path,
    tag_condition,
    without,
)


class FlowTables(DatabaseCore):
    async def get_flow(self, flow_id: str) -> dict[str, Any] | None:
        return await self._read(self._get_flow, flow_id)

    def _get_flow(self, flow_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM flows WHERE id = ?", (flow_id,)).fetchone()
        if row is None:
            return None
        record = flow_record(row)
        record["collected_by"] = self._flow_collected_by(flow_id)
        return record

    def _flow_collected_by(self, flow_id: str) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT DISTINCT collector_id FROM flow_collections WHERE member_id = ? ORDER BY collector_id",
                (flow_id,),
            )
        ]

    async def flow_timerange(self, flow_id: str) -> tuple[int, bool, int, bool] | None:
        """(start_ns, incl_start, end_ns, incl_end) spanning the Flow's segments, if any."""

        def run() -> tuple[int, bool, int, bool] | None:
            first = self.conn.execute(
                "SELECT start_ns, incl_start FROM segments WHERE flow_id = ? ORDER BY first_hns LIMIT 1",
                (flow_id,),
            ).fetchone()
            if first is None:
                return None
            last = self.conn.execute(
                "SELECT end_ns, incl_end FROM segments WHERE flow_id = ? ORDER BY first_hns DESC LIMIT 1",
                (flow_id,),
            ).fetchone()
            return first[0], bool(first[1]), last[0], bool(last[1])

        return await self._read(run)

    async def put_flow(
        self,
        flow_id: str,
        doc: dict[str, Any],
        principal: str,
        now: str,
        *,
        source_label: str | None,
    ) -> bool:
        """Create or replace a Flow (and create its Source if new); True if created."""
        return await self._write(self._put_flow, flow_id, doc, principal, now, source_label)

    def _put_flow(
        self,
        flow_id: str,
        doc: dict[str, Any],
        principal: str,
        now: str,
        source_label: str | None,
    ) -> bool:
        conn = self.conn
        existing = conn.execute("SELECT * FROM flows WHERE id = ?", (flow_id,)).fetchone()
        source_id = doc["source_id"]
        flow_format = doc.get("format")
        if existing is not None and existing["read_only"]:
            old_doc = json.loads(existing["doc"])
            # A read_only Flow refuses every metadata change except to read_only itself.
            if without(old_doc, "read_only", "metadata_version") != without(doc, "read_only", "metadata_version"):
                raise Forbidden(f"Flow {flow_id} is read_only")
        source = conn.execute("SELECT format FROM sources WHERE id = ?", (source_id,)).fetchone()
        if source is None:
            conn.execute(
                "INSERT INTO sources(id, format, label, description, tags, created, updated, created_by, updated_by) "
                "VALUES (?, ?, ?, ?, '{}', ?, ?, ?, ?)",
                (
                    source_id,
                    flow_format,
                    source_label,
                    doc.get("description"),
                    now,
                    now,
                    principal,
                    principal,
                ),
            )
        elif source["format"] != flow_format:
            raise BadRequest(f"Flow format {flow_format} conflicts with the format {source['format']} of Source {source_id}")
        members = [m["id"] for m in doc.get("flow_collection", [])]
        for member in members:
            if member == flow_id:
                raise BadRequest("A Flow cannot collect itself")
            if conn.execute("SELECT 1 FROM flows WHERE id = ?", (member,)).fetchone() is None:
                raise BadRequest(f"flow_collection member {member} does not exist")
        essence = doc.get("essence_parameters") or {}
        version = doc.get("metadata_version")
        if existing is not None and (version is None or version == existing["metadata_version"]):
            if without(json.loads(existing["doc"]), "metadata_version") != without(doc, "metadata_version"):
                version = None
            else:
                version = existing["metadata_version"]
        if version is None:
            version = str(uuid.uuid4())
        doc = {**doc, "metadata_version": version}
        columns = {
            "source_id": source_id,
            "doc": json.dumps(doc, separators=(",", ":")),
            "format": flow_format,
            "codec": doc.get("codec"),
            "label": doc.get("label"),
            "container": doc.get("container"),
            "status": doc.get("status"),
            "frame_width": essence.get("frame_width"),
            "frame_height": essence.get("frame_height"),
            "init_segments": 1 if essence.get("init_segments") else 0,
            "read_only": 1 if doc.get("read_only") else 0,
            "metadata_updated": now,
            "updated_by": doc.get("updated_by", principal),
            "metadata_version": version,
        }
        old_members: list[str] = []
        if existing is None:
            columns |= {
                "id": flow_id,
                "created": now,
                "created_by": doc.get("created_by", principal),
            }
            names = ", ".join(columns)
            marks = ", ".join("?" for _ in columns)
            conn.execute(f"INSERT INTO flows({names}) VALUES ({marks})", tuple(columns.values()))
        else:
            if "created_by" in doc:
                columns["created_by"] = doc["created_by"]
            assignments = ", ".join(f"{name} = ?" for name in columns)
            conn.execute(
                f"UPDATE flows SET {assignments} WHERE id = ?",
                (*columns.values(), flow_id),
            )
            old_members = [
                r[0] for r in conn.execute("SELECT member_id FROM flow_collections WHERE collector_id = ? ORDER BY position", (flow_id,))
            ]
        conn.execute("DELETE FROM flow_collections WHERE collector_id = ?", (flow_id,))
        conn.executemany(
            "INSERT INTO flow_collections(collector_id, position, member_id) VALUES (?, ?, ?)",
            [(flow_id, i, m) for i, m in enumerate(members)],
        )
        if source is None:
            self._source_changed("sources/created", source_id, now)
        self._flow_changed("flows/created" if existing is None else "flows/updated", flow_id, now)
        if existing is not None and existing["source_id"] != source_id:
            self._drop_source_if_unused(existing["source_id"], now)
        # Members that left or joined this collection have a new collected_by.
        changed = [m for m in old_members if m not in members] + [m for m in members if m not in old_members]
        for member in dict.fromkeys(changed):
            self._flow_changed("flows/updated", member, now)
        return existing is None

    async def update_flow_property(self, flow_id: str, path: tuple[str, ...], value: Any, principal: str, now: str) -> None:
        """Set (or with ``value is DELETE_VALUE`` remove) one field of a Flow, e.g. ``("label",)``
        or ``("tags", "genre")``; read_only Flows refuse all but ``read_only`` itself."""

        def run() -> None:
            row = self.conn.execute("SELECT doc FROM flows WHERE id = ?", (flow_id,)).fetchone()
            if row is None:
                raise FlowNotFound(flow_id)
            doc = json.loads(row["doc"])
            set_path(doc, path, value)
            self._put_flow(flow_id, doc, principal, now, None)

        await self._write(run)

    async def delete_flow(self, flow_id: str, principal: str, now: str) -> dict[str, Any]:
        """Delete a Flow, its segments and (with its last Flow) its Source; returns the deletion
        request record kept for ``/flow-delete-requests``.

        Members of the Flow's collection lose it from ``collected_by``; Flows that collected it
        lose it from their ``flow_collection`` (no collection names a Flow that is gone).
        """

        def run() -> dict[str, Any]:
            conn = self.conn
            row = conn.execute("SELECT read_only, source_id FROM flows WHERE id = ?", (flow_id,)).fetchone()
            if row is None:
                raise FlowNotFound(flow_id)
            if row["read_only"]:
                raise Forbidden(f"Flow {flow_id} is read_only")
            source_id = row["source_id"]
            flow_cb = self._flow_collected_by(flow_id)
            source_cb = self._source_collected_by(source_id)
            members = [r[0] for r in conn.execute("SELECT DISTINCT member_id FROM flow_collections WHERE collector_id = ?", (flow_id,))]
            self._touch_objects("flow_id = ?", [flow_id])
            conn.execute("DELETE FROM flow_collections WHERE member_id = ?", (flow_id,))
            conn.execute("DELETE FROM flows WHERE id = ?", (flow_id,))  # segments cascade
            self._mark_unreferenced()
            if self._wants("flows/deleted"):
                self._event(
                    "flows/deleted",
                    now,
                    flow_id=flow_id,
                    source_id=source_id,
                    flow_collected_by=flow_cb,
                    source_collected_by=source_cb,
                )
            for collector in flow_cb:
                self._drop_collection_member(collector, flow_id, now)
            for member in members:
                self._flow_changed("flows/updated", member, now)
            self._drop_source_if_unused(source_id, now, source_cb)
            return self._record_delete_request(flow_id, "_", True, principal, now)

        return await self._write(run)

    def _drop_source_if_unused(self, source_id: str, now: str, collected_by: Sequence[str] | None = None) -> None:
        """A Source goes with its last Flow (the API has no other way to delete one)."""
        if self.conn.execute("SELECT 1 FROM flows WHERE source_id = ? LIMIT 1", (source_id,)).fetchone():
            return
        if collected_by is None:
            collected_by = self._source_collected_by(source_id)
        self.conn.execute("DELETE FROM sources WHERE id = ?", (source_id,))
        if self._wants("sources/deleted"):
            self._event("sources/deleted", now, source_id=source_id, source_collected_by=collected_by)

    def _drop_collection_member(self, collector_id: str, member_id: str, now: str) -> None:
        row = self.conn.execute("SELECT doc FROM flows WHERE id = ?", (collector_id,)).fetchone()
        if row is None:
            return
        doc = json.loads(row["doc"])
        doc["flow_collection"] = [m for m in doc.get("flow_collection", []) if m.get("id") != member_id]
        doc["metadata_version"] = str(uuid.uuid4())
        self.conn.execute(
            "UPDATE flows SET doc = ?, metadata_updated = ?, metadata_version = ? WHERE id = ?",
            (json.dumps(doc, separators=(",", ":")), now, doc["metadata_version"], collector_id),
        )
        self._flow_changed("flows/updated", collector_id, now)

    async def list_flows(self, query: FlowQuery, after: PageAfter | None, limit: int) -> Page:
        def run() -> Page:
            where: list[str] = []
            params: list[Any] = []
            for column in (
                "source_id",
                "format",
                "codec",
                "label",
                "status",
                "frame_width",
                "frame_height",
            ):
                value = getattr(query, column)
                if value is not None:
                    where.append(f"{column} = ?")
                    params.append(value)
            if query.init_segments is not None:
                where.append("init_segments = ?")
                params.append(1 if query.init_segments else 0)
            if query.profile_id is not None:
                where.append("json_extract(flows.doc, '$.profile_id') = ?")
                params.append(query.profile_id)
            if query.timerange_empty:
                where.append("NOT EXISTS (SELECT 1 FROM segments s WHERE s.flow_id = flows.id)")
            elif query.timerange is not None:
                first, last = query.timerange.first, query.timerange.last
                # The segment starting last at or before the range's end overlaps the range
                # if any segment does (segments never overlap, so it ends latest too).
                sub = "SELECT s.last_hns FROM segments s WHERE s.flow_id = flows.id"
                sub_params: list[Any] = []
                if last is not None:
                    sub += " AND s.first_hns <= ?"
                    sub_params.append(last)
                sub += " ORDER BY s.first_hns DESC LIMIT 1"
                if first is None:
                    where.append(f"({sub}) IS NOT NULL")
                else:
                    where.append(f"({sub}) >= ?")
                    sub_params.append(first)
                params.extend(sub_params)
            for tag in query.tags:
                tag_condition("json_extract(flows.doc, '$.tags')", tag, where, params)
            if query.collected_by is not None:
                collected_by_condition(
                    "SELECT 1 FROM flow_collections fc WHERE fc.member_id = flows.id",
                    "fc.collector_id",
                    query.collected_by,
                    where,
                    params,
                )
            column = {"created": "created", "metadata_updated": "metadata_updated", "label": "label"}[query.sort_by or "created"]
            records, next_after = self._keyset_page(
                "SELECT * FROM flows", where, params, column, column != "label", query.reverse_order, after, limit, flow_record
            )
            for record in records:
                record["collected_by"] = self._flow_collected_by(record["id"])
            return records, next_after

        return await self._read(run)

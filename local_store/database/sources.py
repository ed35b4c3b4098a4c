"""Sources: reads, listings and property updates."""

from __future__ import annotations

import json
from typing import Any

from ..errors import (
    SourceNotFound,
)
from .core import DatabaseCore
from .records import (
    Page,
    PageAfter,
    SourceQuery,
    collected_by_condition,
    set_path,
    source_record,
    tag_condition,
)
from .schema import SOURCE_COLLECTION_JOIN


class SourceTables(DatabaseCore):
    async def get_source(self, source_id: str) -> dict[str, Any] | None:
        return await self._read(self._get_source, source_id)

    def _get_source(self, source_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM sources WHERE id = ?", (source_id,)).fetchone()
        return self._with_source_collections(source_record(row)) if row else None

    def _with_source_collections(self, record: dict[str, Any]) -> dict[str, Any]:
        record["source_collection"] = self._source_collection(record["id"])
        record["collected_by"] = self._source_collected_by(record["id"])
        return record

    def _source_collection(self, source_id: str) -> list[dict[str, Any]]:
        """The Sources this Source collects: those of the members of its Flows' collections,
        in collection order, each once (with the role of its first appearance)."""
        items: list[dict[str, Any]] = []
        seen: set[str] = {source_id}
        collectors = self.conn.execute(
            "SELECT doc FROM flows cf WHERE cf.source_id = ? "
            "AND EXISTS (SELECT 1 FROM flow_collections fc WHERE fc.collector_id = cf.id) ORDER BY created, id",
            (source_id,),
        ).fetchall()
        for collector in collectors:
            for member in json.loads(collector["doc"]).get("flow_collection", []):
                row = self.conn.execute("SELECT source_id FROM flows WHERE id = ?", (member["id"],)).fetchone()
                if row is None or row["source_id"] in seen:
                    continue
                seen.add(row["source_id"])
                item: dict[str, Any] = {"id": row["source_id"]}
                if "role" in member:
                    item["role"] = member["role"]
                items.append(item)
        return items

    def _source_collected_by(self, source_id: str) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                f"SELECT DISTINCT cf.source_id {SOURCE_COLLECTION_JOIN} "
                "WHERE mf.source_id = ? AND cf.source_id != mf.source_id ORDER BY cf.source_id",
                (source_id,),
            )
        ]

    async def list_sources(self, query: SourceQuery, after: PageAfter | None, limit: int) -> Page:
        def run() -> Page:
            where: list[str] = []
            params: list[Any] = []
            if query.label is not None:
                where.append("label = ?")
                params.append(query.label)
            if query.format is not None:
                where.append("format = ?")
                params.append(query.format)
            for tag in query.tags:
                tag_condition("sources.tags", tag, where, params)
            if query.collected_by is not None:
                collected_by_condition(
                    f"SELECT 1 {SOURCE_COLLECTION_JOIN} WHERE mf.source_id = sources.id AND cf.source_id != sources.id",
                    "cf.source_id",
                    query.collected_by,
                    where,
                    params,
                )
            column = {"created": "created", "updated": "updated", "label": "label"}[query.sort_by or "created"]
            records, next_after = self._keyset_page(
                "SELECT * FROM sources", where, params, column, column != "label", query.reverse_order, after, limit, source_record
            )
            return [self._with_source_collections(r) for r in records], next_after

        return await self._read(run)

    async def update_source_property(
        self,
        source_id: str,
        path: tuple[str, ...],
        value: Any,
        principal: str,
        now: str,
    ) -> None:
        """Set or remove a Source's ``label``, ``description`` or one tag."""

        def run() -> None:
            row = self.conn.execute("SELECT * FROM sources WHERE id = ?", (source_id,)).fetchone()
            if row is None:
                raise SourceNotFound(source_id)
            doc = {
                "label": row["label"],
                "description": row["description"],
                "tags": json.loads(row["tags"]),
            }
            set_path(doc, path, value)
            self.conn.execute(
                "UPDATE sources SET label = ?, description = ?, tags = ?, updated = ?, updated_by = ? WHERE id = ?",
                (
                    doc.get("label"),
                    doc.get("description"),
                    json.dumps(doc.get("tags", {})),
                    now,
                    principal,
                    source_id,
                ),
            )
            self._source_changed("sources/updated", source_id, now)

        await self._write(run)

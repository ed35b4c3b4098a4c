"""Flow profiles."""

from __future__ import annotations

import json
from typing import Any

from ..errors import (
    BadRequest,
)
from .core import DatabaseCore
from .records import (
    Page,
    PageAfter,
)


class ProfileTables(DatabaseCore):
    async def create_profile(self, doc: dict[str, Any], principal: str, now: str) -> dict[str, Any]:
        """Store a new Profile; 400 if the id exists (Profiles are immutable)."""

        def run() -> dict[str, Any]:
            if self.conn.execute("SELECT 1 FROM profiles WHERE id = ?", (doc["id"],)).fetchone():
                raise BadRequest(f"Profile {doc['id']} already exists; Profiles cannot be changed")
            stored = {**doc, "created": now, "created_by": doc.get("created_by", principal)}
            metadata = doc["flow_metadata"]
            self.conn.execute(
                "INSERT INTO profiles(id, doc, label, format, codec, created) VALUES (?, ?, ?, ?, ?, ?)",
                (doc["id"], json.dumps(stored), doc.get("label"), metadata.get("format"), metadata.get("codec"), now),
            )
            return stored

        return await self._write(run)

    async def get_profile(self, profile_id: str) -> dict[str, Any] | None:
        def run() -> dict[str, Any] | None:
            row = self.conn.execute("SELECT doc FROM profiles WHERE id = ?", (profile_id,)).fetchone()
            return json.loads(row["doc"]) if row else None

        return await self._read(run)

    async def list_profiles(self, *, format: str | None, codec: str | None, label: str | None, after: PageAfter | None, limit: int) -> Page:
        def run() -> Page:
            where: list[str] = []
            params: list[Any] = []
            for column, value in (("format", format), ("codec", codec), ("label", label)):
                if value is not None:
                    where.append(f"{column} = ?")
                    params.append(value)
            page, next_after = self._keyset_page("SELECT id, label, doc FROM profiles", where, params, "label", False, False, after, limit)
            return [json.loads(r["doc"]) for r in page], next_after

        return await self._read(run)

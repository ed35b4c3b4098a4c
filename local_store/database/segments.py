"""Segments: registration (with the objects they name), listings and deletion."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from ..errors import (
    BadRequest,
    FlowNotFound,
    Forbidden,
    NoContainer,
    SegmentOverlap,
    StoreError,
    error_body,
)
from ..timing import Span, StoredRange, make_timerange
from .core import DatabaseCore
from .records import (
    NewSegment,
    SegmentQuery,
)
from .schema import REFERENCED


class SegmentTables(DatabaseCore):
    def _writable_flow(self, flow_id: str) -> sqlite3.Row:
        flow = self.conn.execute(
            "SELECT id, source_id, container, read_only, init_segments FROM flows WHERE id = ?",
            (flow_id,),
        ).fetchone()
        if flow is None:
            raise FlowNotFound(flow_id)
        if flow["read_only"]:
            raise Forbidden(f"Flow {flow_id} is read_only")
        return flow

    async def post_segments(self, flow_id: str, segments: Sequence[NewSegment], now: str, *, single: bool) -> list[dict[str, Any]]:
        """Register segments; returns the failed ones (``single``: raise the failure instead)."""

        def run() -> list[dict[str, Any]]:
            conn = self.conn
            flow = self._writable_flow(flow_id)
            if not flow["container"]:
                raise NoContainer(flow_id)
            failed: list[dict[str, Any]] = []
            stored: list[int] = []  # first_hns of each segment stored
            if single:  # the job's own savepoint undoes a refused single segment
                if self._add_segment(flow, segments[0], now):
                    stored.append(segments[0].timerange.first_hns)
            for segment in segments if not single else ():
                conn.execute("SAVEPOINT segment")
                try:
                    if self._add_segment(flow, segment, now):
                        stored.append(segment.timerange.first_hns)
                except StoreError as exc:
                    conn.execute("ROLLBACK TO segment")
                    conn.execute("RELEASE segment")
                    failed.append(
                        {
                            "object_id": segment.object_id,
                            "timerange": segment.timerange_text,
                            "error": error_body(exc.error_type, exc.summary),
                        }
                    )
                    continue
                conn.execute("RELEASE segment")
            if stored:
                conn.execute("UPDATE flows SET segments_updated = ? WHERE id = ?", (now, flow_id))
                if self._wants("flows/segments_added"):
                    rows = self._segment_rows_at(flow_id, stored)
                    self._event(
                        "flows/segments_added",
                        now,
                        flow_id=flow_id,
                        source_id=flow["source_id"],
                        payload={"rows": rows},
                    )
            return failed

        return await self._write(run)

    def _add_segment(self, flow: sqlite3.Row, seg: NewSegment, now: str) -> bool:
        """Insert one segment (inside a savepoint); False if an identical one is already stored."""
        conn = self.conn
        flow_id = flow["id"]
        tr = seg.timerange
        neighbour = conn.execute(
            "SELECT first_hns, last_hns, start_ns, end_ns, incl_start, incl_end, object_id, ts_offset_ns, "
            "last_duration, sample_offset, sample_count, init_object_id "
            "FROM segments WHERE flow_id = ? AND first_hns <= ? ORDER BY first_hns DESC LIMIT 1",
            (flow_id, tr.last_hns),
        ).fetchone()
        if neighbour is not None and neighbour["last_hns"] >= tr.first_hns:
            existing = make_timerange(
                neighbour["start_ns"],
                neighbour["end_ns"],
                bool(neighbour["incl_start"]),
                bool(neighbour["incl_end"]),
            )
            same = (
                neighbour["object_id"] == seg.object_id
                and neighbour["start_ns"] == tr.start_ns
                and neighbour["end_ns"] == tr.end_ns
                and bool(neighbour["incl_start"]) == tr.incl_start
                and bool(neighbour["incl_end"]) == tr.incl_end
                and neighbour["ts_offset_ns"] == seg.ts_offset_ns
            )
            if same:
                # A client that lost the response to a segment POST and retried sends exactly
                # the segment already stored: treat it as done (201) rather than as an overlap,
                # so retries are safe. A "repeat" that says something else about the segment
                # is a different segment in the same place, and is refused like any overlap.
                differences = self._repeat_differences(neighbour, seg)
                if not differences:
                    return False
                raise SegmentOverlap(
                    f"Segment {seg.timerange_text} of object {seg.object_id!r} is already stored with a different "
                    f"{', '.join(differences)}; delete it first to change it"
                )
            raise SegmentOverlap(f"Segment {seg.timerange_text} overlaps the stored segment {existing!s}")
        if flow["init_segments"] and not seg.init_object_id:
            # A reused object keeps the init object it was registered with (the spec asks
            # clients to leave init_object_id out when reusing an object).
            known = conn.execute("SELECT init_object_id FROM objects WHERE id = ?", (seg.object_id,)).fetchone()
            if known is None or not known["init_object_id"]:
                raise BadRequest("This Flow uses init segments: init_object_id is required")
            seg = dataclasses.replace(seg, init_object_id=known["init_object_id"])
        self._register_media_object(flow, seg, now)
        if seg.init_object_id:
            self._register_init_object(flow, seg, now)
        conn.execute(
            "INSERT INTO segments(flow_id, first_hns, last_hns, timerange, start_ns, end_ns, incl_start, incl_end, "
            "object_id, ts_offset_ns, ts_offset, last_duration, sample_offset, sample_count, init_object_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                flow_id,
                tr.first_hns,
                tr.last_hns,
                seg.timerange_text,
                tr.start_ns,
                tr.end_ns,
                int(tr.incl_start),
                int(tr.incl_end),
                seg.object_id,
                seg.ts_offset_ns,
                seg.ts_offset_text,
                seg.last_duration_text,
                seg.sample_offset,
                seg.sample_count,
                seg.init_object_id,
            ),
        )
        return True

    def _repeat_differences(self, stored: sqlite3.Row, seg: NewSegment) -> list[str]:
        """The fields in which ``seg`` differs from the stored segment with its object, timerange
        and ts_offset. Fields kept per segment must be equal (left out = not set); the object's
        own properties (as for any reused object) only where ``seg`` gives them."""
        differences = [
            name
            for name, value in (
                ("last_duration", seg.last_duration_text),
                ("sample_offset", seg.sample_offset),
                ("sample_count", seg.sample_count),
                ("init_object_id", seg.init_object_id),
            )
            if stored[name] != value
        ]
        obj = self.conn.execute(
            "SELECT key_frame_count, ot_start_ns, ot_end_ns, ot_incl_start, ot_incl_end FROM objects WHERE id = ?",
            (seg.object_id,),
        ).fetchone()
        if seg.key_frame_count is not None and seg.key_frame_count != obj["key_frame_count"]:
            differences.append("key_frame_count")
        ot = seg.object_timerange
        if ot is not None and (ot.start_ns, ot.end_ns, ot.incl_start, ot.incl_end) != (
            obj["ot_start_ns"],
            obj["ot_end_ns"],
            bool(obj["ot_incl_start"]),
            bool(obj["ot_incl_end"]),
        ):
            differences.append("object_timerange")
        if seg.get_urls and not set(seg.get_urls) <= set(self._uncontrolled_urls([seg.object_id]).get(seg.object_id, [])):
            differences.append("get_urls")  # (instances added since may make the stored list longer)
        return differences

    def _refuse_collected(self, object_id: str) -> None:
        """An unknown object id that names a garbage-collected object cannot be registered: its
        bytes are gone, and a segment must never point at nothing."""
        if self.conn.execute("SELECT 1 FROM collected_objects WHERE id = ?", (object_id,)).fetchone():
            raise BadRequest(
                f"Object {object_id!r} was removed by garbage collection (unregistered or unreferenced for "
                "longer than min_object_timeout); allocate and upload it again"
            )

    @staticmethod
    def _refuse_unknown(object_id: str, seg: NewSegment) -> None:
        """An object id the store never allocated names media only the segment's own get_urls
        can reach: without them, the segment would point at bytes nobody can read."""
        if not seg.get_urls:
            raise BadRequest(
                f"Object {object_id!r} is unknown to this store: allocate it with POST /flows/{{flowId}}/storage, "
                "or give get_urls for media stored elsewhere"
            )

    def _register_media_object(self, flow: sqlite3.Row, seg: NewSegment, now: str) -> None:
        conn = self.conn
        flow_id = flow["id"]
        tr = seg.timerange
        obj = conn.execute("SELECT * FROM objects WHERE id = ?", (seg.object_id,)).fetchone()
        # The object's own timeline: given, or (on first registration) timerange - ts_offset.
        own: StoredRange | None = seg.object_timerange or StoredRange(
            tr.start_ns - seg.ts_offset_ns,
            tr.end_ns - seg.ts_offset_ns,
            tr.incl_start,
            tr.incl_end,
            tr.first_hns - 2 * seg.ts_offset_ns,
            tr.last_hns - 2 * seg.ts_offset_ns,
        )
        if obj is None:
            self._refuse_collected(seg.object_id)
            self._refuse_unknown(seg.object_id, seg)
            conn.execute(
                "INSERT INTO objects(id, controlled, content_type, role, first_referenced_by_flow, created) "
                "VALUES (?, 0, ?, 'media', ?, ?)",
                (seg.object_id, flow["container"], flow_id, now),
            )
        else:
            if obj["role"] == "init":
                raise BadRequest(f"Object {seg.object_id!r} is registered as an init object")
            registered = obj["first_referenced_by_flow"] is not None
            if not registered and obj["allocated_by_flow"] not in (None, flow_id):
                raise BadRequest(f"Object {seg.object_id!r} was allocated for another Flow")
            if obj["content_type"] and obj["content_type"] != flow["container"]:
                raise BadRequest(
                    f"Object {seg.object_id!r} has content type {obj['content_type']}, but the Flow's container is {flow['container']}"
                )
            if registered:
                self._check_reuse(obj, seg)
                own = None
            if obj["unreferenced_at"] is not None:  # referenced again: its grace period ends
                conn.execute("UPDATE objects SET unreferenced_at = NULL WHERE id = ?", (seg.object_id,))
        if own is not None:
            conn.execute(
                "UPDATE objects SET role = 'media', first_referenced_by_flow = COALESCE(first_referenced_by_flow, ?), "
                "ot_start_ns = ?, ot_end_ns = ?, ot_incl_start = ?, ot_incl_end = ?, ot_first_hns = ?, ot_last_hns = ?, "
                "timerange = ?, key_frame_count = ?, init_object_id = ? WHERE id = ?",
                (
                    flow_id,
                    own.start_ns,
                    own.end_ns,
                    int(own.incl_start),
                    int(own.incl_end),
                    own.first_hns,
                    own.last_hns,
                    str(own),
                    seg.key_frame_count,
                    seg.init_object_id,
                    seg.object_id,
                ),
            )
            if seg.get_urls:
                conn.executemany(
                    "INSERT INTO object_urls(object_id, position, url, label) VALUES (?, ?, ?, ?)",
                    [(seg.object_id, i, url, label) for i, (url, label) in enumerate(seg.get_urls)],
                )

    def _check_reuse(self, obj: sqlite3.Row, seg: NewSegment) -> None:
        """A segment reusing a registered object may not change the object's properties and
        must lie (after ts_offset) within the object's timerange."""
        oid = seg.object_id
        if seg.key_frame_count is not None and seg.key_frame_count != obj["key_frame_count"]:
            raise BadRequest(f"Object {oid!r} is already registered with a different key_frame_count")
        if seg.init_object_id is not None and seg.init_object_id != obj["init_object_id"]:
            raise BadRequest(f"Object {oid!r} is already registered with a different init_object_id")
        if seg.object_timerange is not None:
            ot = seg.object_timerange
            stored = (
                obj["ot_start_ns"],
                obj["ot_end_ns"],
                bool(obj["ot_incl_start"]),
                bool(obj["ot_incl_end"]),
            )
            if (ot.start_ns, ot.end_ns, ot.incl_start, ot.incl_end) != stored:
                raise BadRequest(f"Object {oid!r} is already registered with a different object_timerange")
        if obj["ot_first_hns"] is not None:
            first = seg.timerange.first_hns - 2 * seg.ts_offset_ns
            last = seg.timerange.last_hns - 2 * seg.ts_offset_ns
            if first < obj["ot_first_hns"] or last > obj["ot_last_hns"]:
                raise BadRequest(f"Segment {seg.timerange_text} minus ts_offset is outside the timerange of object {oid!r}")

    def _register_init_object(self, flow: sqlite3.Row, seg: NewSegment, now: str) -> None:
        conn = self.conn
        object_id = seg.init_object_id
        obj = conn.execute("SELECT * FROM objects WHERE id = ?", (object_id,)).fetchone()
        if obj is None:
            self._refuse_collected(object_id)
            self._refuse_unknown(object_id, seg)
            conn.execute(
                "INSERT INTO objects(id, controlled, role, first_referenced_by_flow, created) VALUES (?, 0, 'init', ?, ?)",
                (object_id, flow["id"], now),
            )
            return
        if obj["role"] == "media":
            raise BadRequest(f"Object {object_id!r} is registered as a media object, not an init object")
        if obj["first_referenced_by_flow"] is None and obj["allocated_by_flow"] not in (
            None,
            flow["id"],
        ):
            raise BadRequest(f"Object {object_id!r} was allocated for another Flow")
        conn.execute(
            "UPDATE objects SET role = 'init', first_referenced_by_flow = COALESCE(first_referenced_by_flow, ?), "
            "unreferenced_at = NULL WHERE id = ?",
            (flow["id"], object_id),
        )

    _SEGMENT_SELECT = (
        "SELECT s.*, o.controlled AS controlled, o.content_type AS content_type, "
        "o.key_frame_count AS key_frame_count, o.timerange AS object_timerange, "
        "io.controlled AS init_controlled, io.content_type AS init_content_type "
        "FROM segments s JOIN objects o ON o.id = s.object_id "
        "LEFT JOIN objects io ON io.id = s.init_object_id "
    )

    def _with_urls(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ids = [r["object_id"] for r in rows] + [r["init_object_id"] for r in rows if r["init_object_id"]]
        urls = self._uncontrolled_urls(ids)
        for r in rows:
            r["urls"] = urls.get(r["object_id"], [])
            r["init_urls"] = urls.get(r["init_object_id"], []) if r["init_object_id"] else []
        return rows

    def _segment_rows_at(self, flow_id: str, first_hns: Sequence[int]) -> list[dict[str, Any]]:
        """The rows (as ``list_segments`` gives them) of a Flow's segments starting at ``first_hns``."""
        rows: list[dict[str, Any]] = []
        keys = sorted(first_hns)
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            rows += [
                dict(r)
                for r in self.conn.execute(
                    self._SEGMENT_SELECT + f"WHERE s.flow_id = ? AND s.first_hns IN ({marks}) ORDER BY s.first_hns",
                    (flow_id, *chunk),
                )
            ]
        return self._with_urls(rows)

    async def list_segments(self, flow_id: str, query: SegmentQuery) -> tuple[list[dict[str, Any]], int | None]:
        """One page of segments (with their objects' details) and the next page's key."""

        def run() -> tuple[list[dict[str, Any]], int | None]:
            conn = self.conn
            where = ["s.flow_id = ?"]
            params: list[Any] = [flow_id]
            lower: int | None = None
            upper: int | None = None
            if query.span is not None:
                if query.span.first is not None:
                    # Only the last segment starting before the range can reach into it.
                    before = conn.execute(
                        "SELECT first_hns, last_hns FROM segments WHERE flow_id = ? AND first_hns < ? ORDER BY first_hns DESC LIMIT 1",
                        (flow_id, query.span.first),
                    ).fetchone()
                    lower = before[0] if before is not None and before[1] >= query.span.first else query.span.first
                upper = query.span.last
            if query.after is not None:
                if query.reverse_order:
                    upper = query.after if upper is None else min(upper, query.after)
                else:
                    lower = query.after if lower is None else max(lower, query.after)
            if lower is not None:
                where.append("s.first_hns >= ?")
                params.append(lower)
            if upper is not None:
                where.append("s.first_hns <= ?")
                params.append(upper)
            if query.object_id is not None:
                where.append("s.object_id = ?")
                params.append(query.object_id)
            direction = "DESC" if query.reverse_order else "ASC"
            sql = self._SEGMENT_SELECT + f"WHERE {' AND '.join(where)} ORDER BY s.first_hns {direction} LIMIT ?"
            rows = [dict(r) for r in conn.execute(sql, (*params, query.limit + 1))]
            next_key = None
            if len(rows) > query.limit:
                next_key = rows[query.limit]["first_hns"]
                rows = rows[: query.limit]
            return self._with_urls(rows), next_key

        return await self._read(run)

    async def delete_segments(
        self,
        flow_id: str,
        span: Span | None,
        object_id: str | None,
        *,
        timerange_text: str,
        principal: str,
        now: str,
    ) -> tuple[int, dict[str, Any]]:
        """Delete the segments wholly inside ``span`` (and of ``object_id``); returns the count
        and the deletion request record kept for ``/flow-delete-requests``."""

        def run() -> tuple[int, dict[str, Any]]:
            conn = self.conn
            flow = self._writable_flow(flow_id)
            deleted = 0
            if span is not None:  # an empty timerange covers no segment
                where = ["flow_id = ?"]
                params: list[Any] = [flow["id"]]
                if span.first is not None:
                    where.append("first_hns >= ?")
                    params.append(span.first)
                if span.last is not None:
                    where.append("first_hns <= ? AND last_hns <= ?")
                    params.extend((span.last, span.last))
                if object_id is not None:
                    where.append("object_id = ?")
                    params.append(object_id)
                condition = " AND ".join(where)
                bounds = None
                if self._wants("flows/segments_deleted"):
                    bounds = (
                        conn.execute(
                            f"SELECT start_ns, incl_start FROM segments WHERE {condition} ORDER BY first_hns LIMIT 1",
                            params,
                        ).fetchone(),
                        conn.execute(
                            f"SELECT end_ns, incl_end FROM segments WHERE {condition} ORDER BY first_hns DESC LIMIT 1",
                            params,
                        ).fetchone(),
                    )
                self._touch_objects(condition, params)
                deleted = conn.execute(f"DELETE FROM segments WHERE {condition}", params).rowcount
                self._mark_unreferenced()
                if deleted:
                    conn.execute("UPDATE flows SET segments_updated = ? WHERE id = ?", (now, flow_id))
                    if bounds is not None and bounds[0] is not None and bounds[1] is not None:
                        (start_ns, incl_start), (end_ns, incl_end) = bounds
                        timerange = make_timerange(start_ns, end_ns, bool(incl_start), bool(incl_end))
                        self._event(
                            "flows/segments_deleted",
                            now,
                            flow_id=flow_id,
                            source_id=flow["source_id"],
                            payload={"timerange": str(timerange)},
                        )
            return deleted, self._record_delete_request(flow_id, timerange_text, False, principal, now)

        return await self._write(run)

    def _touch_objects(self, condition: str, params: Sequence[Any]) -> None:
        """Note the objects (media and init) of the segments matching ``condition``, before they
        are deleted, for ``_mark_unreferenced``."""
        self.conn.execute(f"INSERT OR IGNORE INTO temp.touched_objects SELECT object_id FROM segments WHERE {condition}", params)
        self.conn.execute(
            "INSERT OR IGNORE INTO temp.touched_objects SELECT init_object_id FROM segments "
            f"WHERE {condition} AND init_object_id IS NOT NULL",
            params,
        )

    def _mark_unreferenced(self) -> None:
        """Start the grace period of every touched object nothing references any more."""
        self.conn.execute(
            "UPDATE objects SET unreferenced_at = ? WHERE id IN (SELECT id FROM temp.touched_objects) "
            f"AND unreferenced_at IS NULL AND NOT {REFERENCED}",
            (time.time(),),
        )
        self.conn.execute("DELETE FROM temp.touched_objects")

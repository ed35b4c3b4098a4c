"""All of the store's SQL, behind one ``Database`` object.

One SQLite connection lives on one dedicated worker thread, so every query and every
transaction is serialised without locks in the handlers and the event loop never waits on disk.
Writes run as ``BEGIN IMMEDIATE`` ... ``COMMIT`` on that thread; the caller's coroutine resumes
only after the commit, and with ``synchronous=FULL`` in WAL mode a commit is on disk when it
returns, so an acknowledged write survives ``kill -9``.

The schema is one idempotent DDL script applied at start-up (plus column additions for data
dirs made by older versions).

Times are integer nanoseconds. Segments keep their timerange as given (``start_ns``, ``end_ns``
and the two inclusivity flags) plus the first and last point they cover in half-nanoseconds
(``first_hns``, ``last_hns``, both inclusive; see ``timing.Span``), which turn overlap tests into
integer comparisons that agree with the spec's continuous timeranges. Segments of a
Flow never overlap, so ordering by ``first_hns`` also orders by ``last_hns``; the table is
clustered on ``(flow_id, first_hns)`` and every timerange query is an index range scan.

Change events: a write that changes a Flow, a Source or segments records a ``ChangeEvent``
(only for the event types ``event_types_wanted`` names, i.e. those some active webhook wants),
and after the COMMIT the batch's events go to ``event_sink`` in commit order (see ``events.py``).

Media object lifecycle, as the garbage collector (``gc.py``) relies on it:

* an allocated object has ``first_referenced_by_flow`` NULL until a segment registers it;
* when the last segment (or media object, for an init object) referencing an object goes,
  ``unreferenced_at`` is set; a new reference clears it;
* ``collect_garbage`` checks and deletes in one transaction, so it can never remove an object a
  segment references, and leaves a tombstone in ``collected_objects``: a segment POST naming a
  collected object is refused rather than registering an object without bytes;
* file removals are queued in ``pending_file_removals`` in the same transaction and done after
  the COMMIT, so a crash in between only delays them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import (
    BadRequest,
    FlowNotFound,
    Forbidden,
    NoContainer,
    NotFound,
    ObjectNotFound,
    SegmentOverlap,
    SourceNotFound,
    StoreError,
    error_body,
)
from .events import ChangeEvent
from .timing import Span, StoredRange, make_timerange

__all__ = [
    "DELETE_VALUE",
    "Database",
    "FlowQuery",
    "GcOutcome",
    "NewSegment",
    "PageAfter",
    "SegmentQuery",
    "SourceQuery",
    "TagFilter",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BATCH = 256  # writes per group-committed transaction
TOMBSTONE_TTL = 7 * 24 * 3600  # seconds a collected object's id stays refused for registration

SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sources (
    id          TEXT PRIMARY KEY,
    format      TEXT NOT NULL,
    label       TEXT,
    description TEXT,
    tags        TEXT NOT NULL DEFAULT '{}',
    created     TEXT NOT NULL,
    updated     TEXT NOT NULL,
    created_by  TEXT,
    updated_by  TEXT
);
CREATE TABLE IF NOT EXISTS flows (
    id               TEXT PRIMARY KEY,
    source_id        TEXT NOT NULL REFERENCES sources(id),
    doc              TEXT NOT NULL,          -- the Flow as PUT, minus server-managed fields
    format           TEXT,
    codec            TEXT,
    label            TEXT,
    container        TEXT,
    status           TEXT,
    frame_width      INTEGER,
    frame_height     INTEGER,
    init_segments    INTEGER NOT NULL DEFAULT 0,
    read_only        INTEGER NOT NULL DEFAULT 0,
    created          TEXT NOT NULL,
    metadata_updated TEXT NOT NULL,
    segments_updated TEXT,
    created_by       TEXT,
    updated_by       TEXT,
    metadata_version TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS flows_source ON flows(source_id);
CREATE INDEX IF NOT EXISTS flows_created ON flows(created, id);
CREATE TABLE IF NOT EXISTS flow_collections (
    collector_id TEXT NOT NULL REFERENCES flows(id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    member_id    TEXT NOT NULL,
    PRIMARY KEY (collector_id, position)
);
CREATE INDEX IF NOT EXISTS flow_collections_member ON flow_collections(member_id);
CREATE TABLE IF NOT EXISTS objects (
    id                       TEXT PRIMARY KEY,
    allocated_by_flow        TEXT,            -- the Flow whose storage POST created it
    controlled               INTEGER NOT NULL DEFAULT 0,  -- bytes held by this store
    content_type             TEXT,
    size                     INTEGER,         -- set once the bytes are uploaded
    role                     TEXT,            -- 'media' | 'init' once registered
    first_referenced_by_flow TEXT,
    ot_start_ns              INTEGER,         -- object_timerange on the object's timeline
    ot_end_ns                INTEGER,
    ot_incl_start            INTEGER,
    ot_incl_end              INTEGER,
    ot_first_hns              INTEGER,
    ot_last_hns               INTEGER,
    timerange                TEXT,            -- object_timerange as text
    key_frame_count          INTEGER,
    init_object_id           TEXT,
    created                  TEXT NOT NULL,
    uploaded                 TEXT,
    unreferenced_at          REAL             -- epoch seconds the last reference went
);
CREATE TABLE IF NOT EXISTS object_urls (      -- uncontrolled instances (get_urls given by clients)
    object_id TEXT NOT NULL REFERENCES objects(id) ON DELETE CASCADE,
    position  INTEGER NOT NULL,
    url       TEXT NOT NULL,
    label     TEXT,
    PRIMARY KEY (object_id, position)
);
CREATE TABLE IF NOT EXISTS segments (
    flow_id        TEXT NOT NULL REFERENCES flows(id) ON DELETE CASCADE,
    first_hns       INTEGER NOT NULL,
    last_hns        INTEGER NOT NULL,
    timerange      TEXT NOT NULL,         -- as formatted once by mediatimestamp on the way in
    start_ns       INTEGER NOT NULL,
    end_ns         INTEGER NOT NULL,
    incl_start     INTEGER NOT NULL,
    incl_end       INTEGER NOT NULL,
    object_id      TEXT NOT NULL REFERENCES objects(id),
    ts_offset_ns   INTEGER NOT NULL DEFAULT 0,
    ts_offset      TEXT NOT NULL DEFAULT '0:0',
    last_duration  TEXT,
    sample_offset  INTEGER,
    sample_count   INTEGER,
    init_object_id TEXT REFERENCES objects(id),
    PRIMARY KEY (flow_id, first_hns)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS segments_object ON segments(object_id, flow_id);
CREATE INDEX IF NOT EXISTS segments_init_object ON segments(init_object_id, flow_id)
    WHERE init_object_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS collected_objects (  -- tombstones of garbage-collected objects
    id           TEXT PRIMARY KEY,
    collected_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending_file_removals (  -- media files to unlink after the COMMIT
    object_id TEXT PRIMARY KEY,
    queued_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS delete_requests (
    id      TEXT PRIMARY KEY,
    flow_id TEXT NOT NULL,
    doc     TEXT NOT NULL,                -- deletion-request.json
    created TEXT NOT NULL,
    expiry  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS delete_requests_expiry ON delete_requests(expiry);
CREATE TABLE IF NOT EXISTS webhooks (
    id      TEXT PRIMARY KEY,
    url     TEXT NOT NULL,
    owner   TEXT,                         -- the principal that registered it
    doc     TEXT NOT NULL,                -- webhook-post.json as given (minus status)
    status  TEXT NOT NULL,
    error   TEXT,                         -- error.json, when status is 'error'
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS profiles (
    id      TEXT PRIMARY KEY,
    doc     TEXT NOT NULL,                -- profile.json as created
    label   TEXT,
    format  TEXT,
    codec   TEXT,
    created TEXT NOT NULL
);
"""

# Columns added after the first release; ALTERed into older data dirs before INDEXES run.
ADDED_COLUMNS = (("objects", "unreferenced_at", "REAL"),)

INDEXES = """
CREATE INDEX IF NOT EXISTS objects_unregistered ON objects(created)
    WHERE first_referenced_by_flow IS NULL;
CREATE INDEX IF NOT EXISTS objects_unreferenced ON objects(unreferenced_at)
    WHERE unreferenced_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS objects_init ON objects(init_object_id)
    WHERE init_object_id IS NOT NULL;
CREATE TEMP TABLE IF NOT EXISTS touched_objects (id TEXT PRIMARY KEY) WITHOUT ROWID;
"""

# Whether the row ``objects`` is referenced: by a segment (as media or init object) or, for an
# init object, by a media object.
REFERENCED = (
    "(EXISTS (SELECT 1 FROM segments s WHERE s.object_id = objects.id) "
    "OR EXISTS (SELECT 1 FROM segments s WHERE s.init_object_id = objects.id) "
    "OR EXISTS (SELECT 1 FROM objects m WHERE m.init_object_id = objects.id))"
)

# Source collections are inferred from Flow collections: Source S collects Source T when a Flow
# of S collects a Flow of T. The rows of this join: member Flow `mf`, collecting Flow `cf`.
SOURCE_COLLECTION_JOIN = "FROM flows mf JOIN flow_collections fc ON fc.member_id = mf.id JOIN flows cf ON cf.id = fc.collector_id"


@dataclass(frozen=True, slots=True)
class TagFilter:
    """``tag.{name}=a,b`` (``values``) or ``tag_exists.{name}=true|false`` (``exists``)."""

    name: str
    values: tuple[str, ...] | None = None
    exists: bool | None = None


@dataclass(frozen=True, slots=True)
class PageAfter:
    """Keyset paging: where the previous page ended, as the sort value and id of its last item.

    Listings sort on (sort value, id), a total order, and a page starts after this key rather
    than at an offset, so items inserted or deleted between pages neither repeat nor skip an
    item that existed throughout."""

    value: str | None
    id: str


Page = tuple[list[dict[str, Any]], PageAfter | None]  # one page and the next page's key (None: last)


@dataclass(frozen=True, slots=True)
class SourceQuery:
    label: str | None = None
    format: str | None = None
    tags: tuple[TagFilter, ...] = ()
    collected_by: tuple[str, ...] | None = None  # () : only Sources no Source collects
    sort_by: str | None = None
    reverse_order: bool = False


@dataclass(frozen=True, slots=True)
class FlowQuery:
    source_id: str | None = None
    timerange: Span | None = None
    timerange_empty: bool = False  # `timerange=()`: only Flows without segments
    format: str | None = None
    codec: str | None = None
    label: str | None = None
    status: str | None = None
    frame_width: int | None = None
    frame_height: int | None = None
    init_segments: bool | None = None
    profile_id: str | None = None
    tags: tuple[TagFilter, ...] = ()
    collected_by: tuple[str, ...] | None = None  # () : only Flows no Flow collects
    sort_by: str | None = None
    reverse_order: bool = False


@dataclass(frozen=True, slots=True)
class SegmentQuery:
    span: Span | None = None  # None: every segment
    object_id: str | None = None
    reverse_order: bool = False
    after: int | None = None  # paging key: first_hns of the first segment of this page
    limit: int = 100


@dataclass(frozen=True, slots=True)
class NewSegment:
    """A parsed segment POST item."""

    object_id: str
    timerange: StoredRange
    ts_offset_ns: int
    timerange_text: str
    ts_offset_text: str = "0:0"
    object_timerange: StoredRange | None = None
    last_duration_text: str | None = None
    sample_offset: int | None = None
    sample_count: int | None = None
    key_frame_count: int | None = None
    init_object_id: str | None = None
    get_urls: tuple[tuple[str, str], ...] = ()  # (url, label): uncontrolled instances


@dataclass(frozen=True, slots=True)
class GcOutcome:
    """What one garbage collection transaction did."""

    removed: list[str]  # object ids whose records were deleted
    files: list[str]  # object ids whose files are to be unlinked now
    more: bool  # a batch limit was hit: sweep again soon


class Database:
    """The store's SQLite database; every method runs on the one database thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._queue: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._writer: asyncio.Task[None] | None = None
        # Set by the webhook hub: which event types to record, and who gets them after COMMIT.
        self.event_types_wanted: frozenset[str] = frozenset()
        self.event_sink: Callable[[list[ChangeEvent]], None] | None = None
        self._events: list[ChangeEvent] = []  # the current transaction's (database thread only)
        self.delete_request_ttl: float = 24 * 3600.0  # how long deletion request records are kept

    # --- plumbing ---------------------------------------------------------------------------
    async def open(self) -> None:
        try:
            await self._call(self._open)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the database {self.path}: {exc}") from exc

    def _open(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: each commit's WAL frames are fsynced before COMMIT returns (survives kill -9
        # and power loss); fsync is cheap next to an HTTP round trip.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(SCHEMA)
        if "first_hns" not in {r["name"] for r in conn.execute("PRAGMA table_info(segments)")}:
            conn.close()
            raise sqlite3.DatabaseError(
                "it was made by an older version of the store (segment times in whole nanoseconds);"
                " start with a new --data-dir"
            )
        added: set[tuple[str, str]] = set()
        for table, column, kind in ADDED_COLUMNS:
            present = {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                added.add((table, column))
        conn.executescript(INDEXES)
        if ("objects", "unreferenced_at") in added:
            # Objects that Flow or segment deletes left behind before this column existed:
            # their grace period starts now (after INDEXES, which make the check cheap).
            conn.execute(
                f"UPDATE objects SET unreferenced_at = ? WHERE first_referenced_by_flow IS NOT NULL AND NOT {REFERENCED}",
                (time.time(),),
            )
        self._conn = conn

    async def close(self) -> None:
        if self._writer is not None and not self._writer.done():
            await self._writer

        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._call(_close)
        self._executor.shutdown(wait=True)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None, "database not open"
        return self._conn

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._call(fn, *args)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in a write transaction; returns once it is committed.

        Group commit: writes that arrive while a transaction is being committed are queued and
        then run together, each in its own savepoint (a failing one is rolled back alone), in
        one transaction with one fsync. Concurrent segment POSTs therefore share fsyncs instead
        of queueing behind one each, and every caller still resumes only after its own write is
        durable.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((fn, args, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain_writes())
        return await future

    async def _drain_writes(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                outcomes, events = await self._call(self._run_batch, [(fn, args) for fn, args, _ in batch])
            except BaseException as exc:  # the COMMIT itself failed: nothing in the batch is stored
                logger.error("write transaction failed: %s", exc)
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(StoreError("The store could not write to its database"))
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            if events and self.event_sink is not None:
                try:
                    self.event_sink(events)
                except Exception:  # a webhook problem must never fail the write
                    logger.exception("publishing %d change events failed", len(events))
            for (_, _, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _run_batch(self, jobs: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> tuple[list[tuple[bool, Any]], list[ChangeEvent]]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        outcomes: list[tuple[bool, Any]] = []
        self._events = []
        try:
            for fn, args in jobs:
                mark = len(self._events)
                conn.execute("SAVEPOINT job")
                try:
                    result = fn(*args)
                except Exception as exc:  # noqa: BLE001 - the error is handed to its caller
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    del self._events[mark:]  # a refused write announces nothing
                    outcomes.append((False, exc))
                else:
                    conn.execute("RELEASE job")
                    outcomes.append((True, result))
            conn.execute("COMMIT")
        except BaseException:
            self._events = []
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        events, self._events = self._events, []
        return outcomes, events

    # --- change events ----------------------------------------------------------------------
    def _wants(self, event_type: str) -> bool:
        return event_type in self.event_types_wanted

    def _event(
        self,
        event_type: str,
        now: str,
        *,
        source_id: str,
        flow_id: str | None = None,
        flow_collected_by: Sequence[str] | None = None,
        source_collected_by: Sequence[str] | None = None,
        payload: dict[str, Any] | None = None,
    ) -> None:
        """Record an event for after the COMMIT (the caller checked ``_wants``)."""
        if flow_id is not None and flow_collected_by is None:
            flow_collected_by = self._flow_collected_by(flow_id)
        if source_collected_by is None:
            source_collected_by = self._source_collected_by(source_id)
        self._events.append(
            ChangeEvent(
                event_type=event_type,
                timestamp=now,
                flow_id=flow_id,
                source_id=source_id,
                flow_collected_by=tuple(flow_collected_by or ()),
                source_collected_by=tuple(source_collected_by),
                payload=payload or {},
            )
        )

    def _flow_changed(self, event_type: str, flow_id: str, now: str) -> None:
        """flows/created or flows/updated with the Flow as it now is."""
        if not self._wants(event_type):
            return
        record = self._get_flow(flow_id)
        if record is None:
            return
        self._event(
            event_type,
            now,
            flow_id=flow_id,
            source_id=record["source_id"],
            flow_collected_by=record["collected_by"],
            payload={"flow": record},
        )

    def _source_changed(self, event_type: str, source_id: str, now: str) -> None:
        """sources/created or sources/updated with the Source as it now is."""
        if not self._wants(event_type):
            return
        record = self._get_source(source_id)
        if record is not None:
            self._event(
                event_type,
                now,
                source_id=source_id,
                source_collected_by=record["collected_by"],
                payload={"source": record},
            )

    # --- settings ---------------------------------------------------------------------------
    async def settings(self, defaults: dict[str, str]) -> dict[str, str]:
        """Every setting, after storing ``defaults`` for the keys not yet set."""

        def run() -> dict[str, str]:
            self.conn.executemany(
                "INSERT OR IGNORE INTO settings(key, value) VALUES (?, ?)",
                list(defaults.items()),
            )
            return {r["key"]: r["value"] for r in self.conn.execute("SELECT key, value FROM settings")}

        return await self._write(run)

    async def set_settings(self, values: dict[str, str | None]) -> None:
        def run() -> None:
            for key, value in values.items():
                if value is None:
                    self.conn.execute("DELETE FROM settings WHERE key = ?", (key,))
                else:
                    self.conn.execute(
                        "INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (key, value),
                    )

        await self._write(run)

    # --- sources ----------------------------------------------------------------------------
    async def get_source(self, source_id: str) -> dict[str, Any] | None:
        return await self._read(self._get_source, source_id)

    def _get_source(self, source_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM sources WHERE id = ?", (source_id,)).fetchone()
        return self._with_source_collections(_source_record(row)) if row else None

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

    def _keyset_page(
        self,
        select: str,
        where: list[str],
        params: list[Any],
        column: str,
        descending: bool,
        reverse: bool,
        after: PageAfter | None,
        limit: int,
        record: Callable[[sqlite3.Row], dict[str, Any]] = dict,
    ) -> Page:
        """One page of ``select`` filtered by ``where``/``params``, in the order of ``_keyset``
        on ``column``, each row made a record by ``record``."""
        order = _keyset(column, descending, reverse, after, where, params)
        sql = select
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self.conn.execute(f"{sql} ORDER BY {order} LIMIT ?", (*params, limit + 1)).fetchall()
        return _page_of([record(r) for r in rows], limit, column)

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
                _tag_condition("sources.tags", tag, where, params)
            if query.collected_by is not None:
                _collected_by_condition(
                    f"SELECT 1 {SOURCE_COLLECTION_JOIN} WHERE mf.source_id = sources.id AND cf.source_id != sources.id",
                    "cf.source_id",
                    query.collected_by,
                    where,
                    params,
                )
            column = {"created": "created", "updated": "updated", "label": "label"}[query.sort_by or "created"]
            records, next_after = self._keyset_page(
                "SELECT * FROM sources", where, params, column, column != "label", query.reverse_order, after, limit, _source_record
            )
            return [self._with_source_collections(r) for r in records], next_after

        return await self._read(run)

    # --- flows ------------------------------------------------------------------------------
    async def get_flow(self, flow_id: str) -> dict[str, Any] | None:
        return await self._read(self._get_flow, flow_id)

    def _get_flow(self, flow_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM flows WHERE id = ?", (flow_id,)).fetchone()
        if row is None:
            return None
        record = _flow_record(row)
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
            if _without(old_doc, "read_only", "metadata_version") != _without(doc, "read_only", "metadata_version"):
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
            if _without(json.loads(existing["doc"]), "metadata_version") != _without(doc, "metadata_version"):
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
            _set_path(doc, path, value)
            self._put_flow(flow_id, doc, principal, now, None)

        await self._write(run)

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
            _set_path(doc, path, value)
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
                _tag_condition("json_extract(flows.doc, '$.tags')", tag, where, params)
            if query.collected_by is not None:
                _collected_by_condition(
                    "SELECT 1 FROM flow_collections fc WHERE fc.member_id = flows.id",
                    "fc.collector_id",
                    query.collected_by,
                    where,
                    params,
                )
            column = {"created": "created", "metadata_updated": "metadata_updated", "label": "label"}[query.sort_by or "created"]
            records, next_after = self._keyset_page(
                "SELECT * FROM flows", where, params, column, column != "label", query.reverse_order, after, limit, _flow_record
            )
            for record in records:
                record["collected_by"] = self._flow_collected_by(record["id"])
            return records, next_after

        return await self._read(run)

    # --- storage allocation and objects -------------------------------------------------------
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
                _tag_condition("json_extract(f.doc, '$.tags')", tag, where, params)
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

    # --- segments ---------------------------------------------------------------------------
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

    # --- garbage collection -----------------------------------------------------------------
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
            cutoff_iso = _iso(cutoff)
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
            conn.execute("DELETE FROM delete_requests WHERE expiry < ?", (_iso(now),))
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

    # --- deletion requests --------------------------------------------------------------------
    def _record_delete_request(self, flow_id: str, timerange: str, delete_flow: bool, principal: str, now: str) -> dict[str, Any]:
        """Keep the record of a (synchronously completed) deletion for ``/flow-delete-requests``."""
        expiry = _iso(time.time() + self.delete_request_ttl)
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

    # --- webhooks -----------------------------------------------------------------------------
    def _webhook(self, webhook_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM webhooks WHERE id = ?", (webhook_id,)).fetchone()
        return _webhook_record(row) if row else None

    async def create_webhook(self, webhook_id: str, doc: dict[str, Any], status: str, owner: str, now: str) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            self.conn.execute(
                "INSERT INTO webhooks(id, url, owner, doc, status, created) VALUES (?, ?, ?, ?, ?, ?)",
                (webhook_id, doc["url"], owner, json.dumps(doc), status, now),
            )
            record = self._webhook(webhook_id)
            assert record is not None
            return record

        return await self._write(run)

    async def get_webhook(self, webhook_id: str) -> dict[str, Any] | None:
        return await self._read(self._webhook, webhook_id)

    async def list_all_webhooks(self) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            return [_webhook_record(r) for r in self.conn.execute("SELECT * FROM webhooks ORDER BY created, id")]

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
                _tag_condition("json_extract(webhooks.doc, '$.tags')", tag, where, params)
            return self._keyset_page("SELECT * FROM webhooks", where, params, "url", False, reverse, after, limit, _webhook_record)

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
            self.conn.execute(
                "UPDATE webhooks SET url = ?, doc = ?, status = ?, error = NULL WHERE id = ?",
                (new_doc["url"], json.dumps(new_doc), new_status, webhook_id),
            )
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
            return self._webhook(webhook_id) if cursor.rowcount else None

        return await self._write(run)

    # --- flow profiles ------------------------------------------------------------------------
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


# --- helpers ---------------------------------------------------------------------------------


DELETE_VALUE = object()  # update_*_property: remove the field


def _iso(epoch: float) -> str:
    """An epoch time in the format of ``errors.utc_now_iso`` (so the two compare as text)."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _set_path(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    *parents, last = path
    target = doc
    for key in parents:
        target = target.setdefault(key, {})
    if value is DELETE_VALUE:
        if last not in target or target[last] is None:
            raise NotFound(f"{'/'.join(path)} is not set")
        del target[last]
    else:
        target[last] = value


def _without(doc: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in keys}


def _keyset(column: str, descending: bool, reverse: bool, after: PageAfter | None, where: list[str], params: list[Any]) -> str:
    """The ORDER BY of a listing sorted on ``column`` then ``id`` (a total order), and, for a page
    after ``after``, its condition appended to ``where``/``params``.

    The spec's sort rules: dates newest first (``descending``), labels and URLs A-Z, rows
    without the sort value after the others (by id); ``reverse`` flips all of it.
    """
    if reverse:
        descending = not descending
    ties = "DESC" if reverse else "ASC"  # for the rows without a value, and for ids
    order = f"({column} IS NULL) {ties}, {column} {'DESC' if descending else 'ASC'}, id {ties}"
    if after is not None:
        value_op = "<" if descending else ">"
        id_op = "<" if reverse else ">"
        if after.value is None:  # inside the rows without a value: last, or first when reversed
            condition = f"({column} IS NULL AND id {id_op} ?)"
            if reverse:
                condition = f"({column} IS NOT NULL OR {condition})"
            params.append(after.id)
        else:
            condition = f"{column} {value_op} ? OR ({column} = ? AND id {id_op} ?)"
            condition = f"({condition})" if reverse else f"({column} IS NULL OR {condition})"
            params.extend((after.value, after.value, after.id))
        where.append(condition)
    return order


def _page_of(rows: list[dict[str, Any]], limit: int, column: str) -> Page:
    """``rows`` (up to ``limit + 1`` of them) cut to one page, with the key of the next page."""
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], PageAfter(last[column], last["id"])


def _collected_by_condition(sub: str, collector: str, collected_by: Sequence[str], where: list[str], params: list[Any]) -> None:
    """Append a ``collected_by`` filter: rows with a collection (``sub``, one row a collection)
    whose ``collector`` is one of ``collected_by``; with none given, rows nothing collects."""
    if collected_by:
        marks = ", ".join("?" for _ in collected_by)
        where.append(f"EXISTS ({sub} AND {collector} IN ({marks}))")
        params.extend(collected_by)
    else:
        where.append(f"NOT EXISTS ({sub})")


def _tag_condition(tags_expr: str, tag: TagFilter, where: list[str], params: list[Any]) -> None:
    """Append a tag filter: exact string match, or any shared entry of a list value."""
    if tag.exists is not None:
        clause = f"EXISTS (SELECT 1 FROM json_each({tags_expr}) t WHERE t.key = ?)"
        where.append(clause if tag.exists else f"NOT {clause}")
        params.append(tag.name)
        return
    values = tag.values or ()
    marks = ", ".join("?" for _ in values) or "NULL"
    where.append(
        f"EXISTS (SELECT 1 FROM json_each({tags_expr}) t WHERE t.key = ? AND ("
        f"(t.type = 'text' AND t.value IN ({marks})) OR "
        f"(t.type = 'array' AND EXISTS (SELECT 1 FROM json_each(t.value) v "
        f"WHERE v.type = 'text' AND v.value IN ({marks})))))"
    )
    params.extend((tag.name, *values, *values))


def _source_record(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    record["tags"] = json.loads(record["tags"])
    return record


def _flow_record(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    record["doc"] = json.loads(record["doc"])
    return record


def _webhook_record(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    record["doc"] = json.loads(record["doc"])
    record["error"] = json.loads(record["error"]) if record["error"] else None
    return record

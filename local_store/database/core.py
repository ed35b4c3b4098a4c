"""The connection, its one writer thread with group commit, change-event recording and the
outbox write, and the settings table. Every table class in this package builds on
``DatabaseCore``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..errors import (
    StoreError,
)
from .records import ChangeEvent, Page, PageAfter, keyset, page_of
from .schema import ADDED_COLUMNS, INDEXES, REFERENCED, SCHEMA

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BATCH = 256  # writes per group-committed transaction


class DatabaseCore:
    """The connection and the transaction machinery every table class uses."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._queue: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._writer: asyncio.Task[None] | None = None
        # Set by the webhook hub: which event types to record (and store in the outbox), and
        # who gets them after COMMIT.
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
                "it was made by an older version of the store (segment times in whole nanoseconds); start with a new --data-dir"
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
            self._write_outbox()
            conn.execute("COMMIT")
        except BaseException:
            self._events = []
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        events, self._events = self._events, []
        return outcomes, events

    # --- change events ----------------------------------------------------------------------
    def _write_outbox(self) -> None:
        """Store this transaction's events in the outbox (before its COMMIT), numbering them."""
        numbered = []
        for event in self._events:
            cursor = self.conn.execute("INSERT INTO outbox(event) VALUES (?)", (event.to_json(),))
            assert cursor.lastrowid is not None
            numbered.append(dataclasses.replace(event, seq=cursor.lastrowid))
        self._events = numbered

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
        """Record an event for the outbox and for after the COMMIT (the caller checked ``_wants``)."""
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

    # --- listings ------------------------------------------------------------------------
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
        """One page of ``select`` filtered by ``where``/``params``, in the order of ``keyset``
        on ``column``, each row made a record by ``record``."""
        order = keyset(column, descending, reverse, after, where, params)
        sql = select
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self.conn.execute(f"{sql} ORDER BY {order} LIMIT ?", (*params, limit + 1)).fetchall()
        return page_of([record(r) for r in rows], limit, column)

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

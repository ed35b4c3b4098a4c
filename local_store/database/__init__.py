"""All of the store's SQL, behind one ``Database`` object, in one module per resource.

``Database`` is the sum of one class per group of tables (``sources.py``, ``flows.py``,
``objects.py``, ``segments.py``, ``collection.py``, ``deletes.py``, ``webhooks.py``,
``profiles.py``, ``outbox.py``) over ``DatabaseCore`` (``core.py``): the connection, the one
writer thread and its group commit, and change-event recording. ``schema.py`` holds the DDL and
``records.py`` the values these take and return. Nothing here imports the rest of the store but
``errors`` and ``timing``: webhook delivery (``events.py``) depends on the database, never the
other way round.

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

Change events (the outbox): a write that changes a Flow, a Source or segments records a
``ChangeEvent`` (only for the event types ``event_types_wanted`` names, i.e. those some active
webhook wants). The transaction writes its events into the ``outbox`` table just before its
COMMIT, so an event is stored exactly when the change it announces is; after the COMMIT the
batch's events go to ``event_sink`` in commit order (see ``events.py``), and each webhook's
``delivered_seq`` records how far through the outbox its deliveries have got, so a restarted
store replays what was not delivered.

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

from .collection import GarbageTables
from .core import DatabaseCore
from .deletes import DeleteRequestTables
from .flows import FlowTables
from .objects import ObjectTables
from .outbox import OutboxTables
from .profiles import ProfileTables
from .records import (
    DELETE_VALUE,
    ChangeEvent,
    FlowQuery,
    GcOutcome,
    NewSegment,
    Page,
    PageAfter,
    SegmentQuery,
    SourceQuery,
    TagFilter,
)
from .schema import ACTIVE_WEBHOOK_STATUSES
from .segments import SegmentTables
from .sources import SourceTables
from .webhooks import WebhookTables

__all__ = [
    "ACTIVE_WEBHOOK_STATUSES",
    "DELETE_VALUE",
    "ChangeEvent",
    "Database",
    "DatabaseCore",
    "FlowQuery",
    "GcOutcome",
    "NewSegment",
    "Page",
    "PageAfter",
    "SegmentQuery",
    "SourceQuery",
    "TagFilter",
]


class Database(
    SourceTables,
    FlowTables,
    ObjectTables,
    SegmentTables,
    GarbageTables,
    DeleteRequestTables,
    WebhookTables,
    OutboxTables,
    ProfileTables,
):
    """The store's SQLite database; every method runs on the one database thread."""

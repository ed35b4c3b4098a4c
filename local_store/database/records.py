"""The values the database layer takes and returns, and the helpers its tables share."""

from __future__ import annotations

import datetime
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    NotFound,
)
from ..timing import Span, StoredRange


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
class ChangeEvent:
    """One change, as recorded inside the transaction that made it.

    ``flow_id``/``source_id`` and the two ``*_collected_by`` tuples are what the webhook filters
    look at; ``payload`` holds the raw records the body is rendered from. ``seq`` is the event's
    place in the outbox (in commit order, from 1), set when the transaction writes it there.
    """

    event_type: str
    timestamp: str
    flow_id: str | None
    source_id: str | None
    flow_collected_by: tuple[str, ...] = ()
    source_collected_by: tuple[str, ...] = ()
    payload: dict[str, Any] = field(default_factory=dict)
    seq: int = 0

    def to_json(self) -> str:
        """The outbox row (everything but ``seq``, which is the row's key)."""
        fields = {
            "event_type": self.event_type,
            "timestamp": self.timestamp,
            "flow_id": self.flow_id,
            "source_id": self.source_id,
            "flow_collected_by": self.flow_collected_by,
            "source_collected_by": self.source_collected_by,
            "payload": self.payload,
        }
        return json.dumps(fields, separators=(",", ":"))

    @classmethod
    def from_json(cls, seq: int, text: str) -> ChangeEvent:
        fields = json.loads(text)
        return cls(
            event_type=fields["event_type"],
            timestamp=fields["timestamp"],
            flow_id=fields["flow_id"],
            source_id=fields["source_id"],
            flow_collected_by=tuple(fields["flow_collected_by"]),
            source_collected_by=tuple(fields["source_collected_by"]),
            payload=fields["payload"],
            seq=seq,
        )


@dataclass(frozen=True, slots=True)
class GcOutcome:
    """What one garbage collection transaction did."""

    removed: list[str]  # object ids whose records were deleted
    files: list[str]  # object ids whose files are to be unlinked now
    more: bool  # a batch limit was hit: sweep again soon


# --- helpers ---------------------------------------------------------------------------------


DELETE_VALUE = object()  # update_*_property: remove the field


def iso(epoch: float) -> str:
    """An epoch time in the format of ``errors.utc_now_iso`` (so the two compare as text)."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def set_path(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
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


def without(doc: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in keys}


def keyset(column: str, descending: bool, reverse: bool, after: PageAfter | None, where: list[str], params: list[Any]) -> str:
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


def page_of(rows: list[dict[str, Any]], limit: int, column: str) -> Page:
    """``rows`` (up to ``limit + 1`` of them) cut to one page, with the key of the next page."""
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], PageAfter(last[column], last["id"])


def collected_by_condition(sub: str, collector: str, collected_by: Sequence[str], where: list[str], params: list[Any]) -> None:
    """Append a ``collected_by`` filter: rows with a collection (``sub``, one row a collection)
    whose ``collector`` is one of ``collected_by``; with none given, rows nothing collects."""
    if collected_by:
        marks = ", ".join("?" for _ in collected_by)
        where.append(f"EXISTS ({sub} AND {collector} IN ({marks}))")
        params.extend(collected_by)
    else:
        where.append(f"NOT EXISTS ({sub})")


def tag_condition(tags_expr: str, tag: TagFilter, where: list[str], params: list[Any]) -> None:
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


def source_record(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    record["tags"] = json.loads(record["tags"])
    return record


def flow_record(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    record["doc"] = json.loads(record["doc"])
    return record


def webhook_record(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    record["doc"] = json.loads(record["doc"])
    record["error"] = json.loads(record["error"]) if record["error"] else None
    return record

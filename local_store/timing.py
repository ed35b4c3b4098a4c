"""Timestamps and timeranges at the store's boundaries.

Query strings and JSON bodies carry TAMS timestamps (``secs:nanos``) and timeranges
(``[start_end)``); inside the store they are ``mediatimestamp`` values, and in SQLite they are
integer nanoseconds. Because every TAMS time is a whole number of nanoseconds, a bound's
inclusivity can be folded into the integer: a range's *first* and *last* covered nanosecond
(both inclusive) make overlap and containment tests plain integer comparisons in SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mediatimestamp.immutable import TimeRange, Timestamp

from .errors import InvalidTimerange

__all__ = [
    "Span",
    "StoredRange",
    "parse_timerange",
    "parse_timestamp",
    "span_of",
    "stored_range",
]

_TS = r"-?(?:0|[1-9][0-9]*):(?:0|[1-9][0-9]{0,8})"
TIMESTAMP_RE = re.compile(rf"^{_TS}$")
TIMERANGE_RE = re.compile(rf"^([\[(])?({_TS})?(_({_TS})?)?([\])])?$")


def parse_timestamp(text: str) -> Timestamp:
    """Parse a spec timestamp strictly (the spec regex, then mediatimestamp)."""
    if not isinstance(text, str) or not TIMESTAMP_RE.match(text):
        raise InvalidTimerange(f"Invalid timestamp {text!r}: expected secs:nanos")
    return Timestamp.from_str(text)


def parse_timerange(text: str) -> TimeRange:
    """Parse a spec timerange strictly.

    mediatimestamp accepts more than the spec's regex, so the regex is checked first. An instant
    written with exclusive markers (``(10:0)``) covers nothing, as the spec says, so it becomes
    "never" (mediatimestamp would read it as the instant).
    """
    if not isinstance(text, str):
        raise InvalidTimerange(f"Invalid timerange {text!r}")
    match = TIMERANGE_RE.match(text)
    if match is None:
        raise InvalidTimerange(f"Invalid timerange {text!r}")
    open_mark, start, underscore, _end, close_mark = match.groups()
    if underscore is None and start is not None and (open_mark == "(" or close_mark == ")"):
        return TimeRange.never()
    try:
        return TimeRange.from_str(text)
    except ValueError as exc:  # pragma: no cover - the regex already guards the syntax
        raise InvalidTimerange(f"Invalid timerange {text!r}") from exc


@dataclass(frozen=True, slots=True)
class Span:
    """The nanoseconds a timerange covers, both ends inclusive; ``None`` means unbounded."""

    first: int | None
    last: int | None


def span_of(timerange: TimeRange) -> Span | None:
    """The covered nanoseconds of ``timerange``, or ``None`` when it covers nothing."""
    if timerange.is_empty():
        return None
    first = last = None
    if timerange.start is not None:
        first = timerange.start.to_nanosec() + (0 if timerange.includes_start() else 1)
    if timerange.end is not None:
        last = timerange.end.to_nanosec() - (0 if timerange.includes_end() else 1)
    if first is not None and last is not None and first > last:
        return None
    return Span(first, last)


@dataclass(frozen=True, slots=True)
class StoredRange:
    """A bounded, non-empty timerange as the database keeps it."""

    start_ns: int
    end_ns: int
    incl_start: bool
    incl_end: bool
    first_ns: int
    last_ns: int

    def to_timerange(self) -> TimeRange:
        return make_timerange(self.start_ns, self.end_ns, self.incl_start, self.incl_end)

    def __str__(self) -> str:
        return str(self.to_timerange())


def make_timerange(start_ns: int, end_ns: int, incl_start: bool, incl_end: bool) -> TimeRange:
    inclusivity = (TimeRange.INCLUDE_START if incl_start else TimeRange.EXCLUSIVE) | (
        TimeRange.INCLUDE_END if incl_end else TimeRange.EXCLUSIVE
    )
    return TimeRange(Timestamp.from_nanosec(start_ns), Timestamp.from_nanosec(end_ns), inclusivity)


def stored_range(timerange: TimeRange, what: str = "timerange") -> StoredRange:
    """Check that ``timerange`` is bounded and non-empty and give its database form."""
    span = span_of(timerange)
    if span is None:
        raise InvalidTimerange(f"The {what} {timerange!s} is empty")
    if span.first is None or span.last is None or timerange.start is None or timerange.end is None:
        raise InvalidTimerange(f"The {what} {timerange!s} must be bounded at both ends")
    return StoredRange(
        start_ns=timerange.start.to_nanosec(),
        end_ns=timerange.end.to_nanosec(),
        incl_start=timerange.includes_start(),
        incl_end=timerange.includes_end(),
        first_ns=span.first,
        last_ns=span.last,
    )

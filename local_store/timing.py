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
    "INT64_MAX",
    "MAX_NS",
    "Span",
    "StoredRange",
    "check_ns",
    "parse_timerange",
    "parse_timestamp",
    "span_of",
    "stored_range",
]

_TS = r"-?(?:0|[1-9][0-9]*):(?:0|[1-9][0-9]{0,8})"
TIMESTAMP_RE = re.compile(rf"^{_TS}$")
TIMERANGE_RE = re.compile(rf"^([\[(])?({_TS})?(_({_TS})?)?([\])])?$")

INT64_MAX = 2**63 - 1  # SQLite's INTEGER is a signed 64-bit number
# The largest magnitude of a time the store accepts, in nanoseconds (about 146 years either side
# of zero): overlap tests use half-nanosecond points (see ``Span``), so twice a time, plus or minus
# one, must still fit in int64. Past it SQLite would overflow, and mediatimestamp silently clamps
# much larger values, so such times are refused where they are parsed.
MAX_NS = 2**62 - 1


def _exact_ns(text: str) -> int:
    """The nanoseconds of a timestamp that already matched ``_TS``, in exact integer arithmetic."""
    negative = text.startswith("-")
    secs, nanos = text.lstrip("-").split(":")
    ns = int(secs) * 1_000_000_000 + int(nanos)
    return -ns if negative else ns


def check_ns(ns: int, what: str) -> int:
    """``ns`` if the store can keep it; otherwise the bad-timerange 400."""
    if not -MAX_NS <= ns <= MAX_NS:
        raise InvalidTimerange(f"The {what} is out of range: times must lie within +-{MAX_NS // 10**9} seconds")
    return ns


def _check_text(text: str, what: str) -> None:
    if len(text) > 40:  # no digit string this long can be in range; don't convert it
        raise InvalidTimerange(f"The {what} is out of range: times must lie within +-{MAX_NS // 10**9} seconds")
    check_ns(_exact_ns(text), what)


def parse_timestamp(text: str, what: str = "timestamp") -> Timestamp:
    """Parse a spec timestamp strictly (the spec regex, the store's range, then mediatimestamp)."""
    if not isinstance(text, str) or not TIMESTAMP_RE.match(text):
        raise InvalidTimerange(f"Invalid {what} {text[:60]!r}: expected secs:nanos" if isinstance(text, str) else f"Invalid {what}")
    _check_text(text, f"{what} {text[:60]}")
    return Timestamp.from_str(text)


def parse_timerange(text: str) -> TimeRange:
    """Parse a spec timerange strictly.

    mediatimestamp accepts more than the spec's regex, so the regex is checked first. An instant
    written with exclusive markers (``(10:0)``) covers nothing, as the spec says, so it becomes
    "never" (mediatimestamp would read it as the instant).
    """
    if not isinstance(text, str):
        raise InvalidTimerange("Invalid timerange: not a string")
    match = TIMERANGE_RE.match(text)
    if match is None:
        raise InvalidTimerange(f"Invalid timerange {text[:80]!r}")
    open_mark, start, underscore, end, close_mark = match.groups()
    for bound in (start, end):
        if bound is not None:
            _check_text(bound, f"timerange {text[:80]}")
    if underscore is None and start is not None and (open_mark == "(" or close_mark == ")"):
        return TimeRange.never()
    try:
        return TimeRange.from_str(text)
    except ValueError as exc:  # pragma: no cover - the regex already guards the syntax
        raise InvalidTimerange(f"Invalid timerange {text[:80]!r}") from exc


@dataclass(frozen=True, slots=True)
class Span:
    """The points a timerange covers, as integers: ``first`` and ``last`` (both inclusive) count
    half-nanoseconds, so an included bound ``t`` is ``2t`` and an excluded one sits half a
    nanosecond inside it (``2t + 1`` at the start, ``2t - 1`` at the end). Timeranges are
    continuous, as the spec and mediatimestamp have them: ``(0:0_0:1)`` is not empty, and it
    overlaps ``[0:0_0:1)``. Two timeranges overlap exactly when their spans share a point, so
    overlap tests are integer comparisons. ``None`` means unbounded."""

    first: int | None
    last: int | None

    def to_timerange(self, default_start_ns: int, default_end_ns: int) -> TimeRange:
        """The timerange this span covers, with unbounded ends replaced by the defaults (included)."""
        start, incl_start = (default_start_ns, True) if self.first is None else (self.first // 2, self.first % 2 == 0)
        end, incl_end = (default_end_ns, True) if self.last is None else (self.last // 2 + self.last % 2, self.last % 2 == 0)
        return make_timerange(start, end, incl_start, incl_end)


def span_of(timerange: TimeRange) -> Span | None:
    """The covered points of ``timerange`` (see ``Span``), or ``None`` when it covers nothing."""
    if timerange.is_empty():
        return None
    first = last = None
    if timerange.start is not None:
        first = 2 * timerange.start.to_nanosec() + (0 if timerange.includes_start() else 1)
    if timerange.end is not None:
        last = 2 * timerange.end.to_nanosec() - (0 if timerange.includes_end() else 1)
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
    first_hns: int
    last_hns: int

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
        first_hns=span.first,
        last_hns=span.last,
    )

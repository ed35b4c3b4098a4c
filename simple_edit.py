#!/usr/bin/env python3
"""Edit two Flows by reference: make a new Flow whose segments point at their media objects.

No media is copied or created. Two kinds of edit:

* **concatenation** (the default): the frames of input 1's timerange, then the frames of
  input 2's timerange, starting on the output timeline where input 1's selection starts
  (or at ``--start``);
* **interval cuts** (``--cut-interval-sec S``): alternate between the inputs every S seconds
  of output (S rounded to whole frames). Each input runs on in its own timeline while the
  other one is shown, so turn k of an input shows its frames from ``k * S`` after its own
  start. The edit stops when an input cannot fill its turn (its partial last turn is kept).

An object used only in part is trimmed the API 8.x way: the output segment's ``timerange``
and ``ts_offset`` select exactly the wanted frames and ``object_timerange`` describes the
whole object; with ``--legacy-sample-fields`` the deprecated ``sample_offset`` /
``sample_count`` are written too, for older readers.

The inputs must hold the same essence, or the joined media would be undecodable or mislabelled:
codec, container, frame rate and size always (a Flow declares one of each; in particular a CMAF
(fMP4, init segment) Flow and an MPEG-TS Flow cannot be edited together), and every other
essence parameter (profile, level, bit depth, chroma, interlace, colour, aspect ratio) unless
``--force``, when the output declares only what is true of both (:func:`merged_essence`) and
lists each difference in its ``edit_forced_differences`` tag. Segments of init-segment Flows
keep their ``init_object_id``.

All timing is exact: ``mediatimestamp`` ``Timestamp``/``TimeRange`` and ``Fraction``, with
frames counted at the inputs' ``frame_rate`` on a grid anchored at each input segment's start.
The planning is pure (:func:`plan_concatenation`, :func:`plan_interval`) and the store work is
in :func:`edit`, which takes a :class:`TAMSClient`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import re
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, NoReturn

from mediatimestamp.immutable import TimeRange, Timestamp

from client import NotFound, TAMSClient, TAMSError, TAMSResponseError
from credentials import (
    Credentials,
    HelpFormatter,
    add_credential_args,
    connection_from_args,
    exit_now,
    interruption,
    print_result,
    run_async,
)
from media import FRAME_TOLERANCE

__all__ = [
    "CMAF_CONTAINERS",
    "Difference",
    "EditError",
    "EditRequest",
    "EditResult",
    "InputSegment",
    "PlannedSegment",
    "Span",
    "check_compatible",
    "edit",
    "essence_differences",
    "frame_rate_of",
    "grid_anchor",
    "interval_frames",
    "main",
    "merged_essence",
    "output_flow",
    "parse_interval",
    "parse_segment",
    "parse_timerange",
    "parse_timestamp",
    "plan_concatenation",
    "plan_interval",
    "run",
    "select_frames",
]

logger = logging.getLogger(__name__)

# The membership rule is media.py's (one rule for the tool that writes cuts and the one
# that reads them): a frame within GRID_TOLERANCE of a frame duration of a bound counts as on
# the bound. Stored timestamps are quantised (to nanoseconds; MPEG-TS to 90 kHz ticks, up to
# 0.75 tick before the exact grid at 24000/1001), so the real frame a reader finds at a cut
# this edit puts on the exact grid is a little off it; a quarter of a frame absorbs that at any
# rate and can never take a neighbouring frame for it.
GRID_TOLERANCE = FRAME_TOLERANCE

# Segments per list POST; a store may cap request bodies.
DEFAULT_BATCH_SIZE = 100
# How long the deletion of an unfinished output Flow may take (retries included) before the
# edit gives up on it and says so: a stopped edit ends soon even when the store hangs.
CLEAN_UP_SECONDS = 30

_TIMESTAMP_RE = re.compile(r"^-?(0|[1-9][0-9]*):(0|[1-9][0-9]{0,8})$")
_TIMERANGE_RE = re.compile(
    r"^(\[|\()?(-?(0|[1-9][0-9]*):(0|[1-9][0-9]{0,8}))?(_(-?(0|[1-9][0-9]*):(0|[1-9][0-9]{0,8}))?)?(\]|\))?$"
)
_NS = 10**9


class EditError(Exception):
    """The edit cannot be made as asked; ``str()`` is one line for the user."""


# ---------------------------------------------------------------------------
# Parsing user input (strictly: the API's own timestamp and timerange syntax)


def parse_timestamp(text: str, what: str = "timestamp") -> Timestamp:
    """A ``secs:nanos`` Timestamp, as the TAMS API writes them."""
    if not _TIMESTAMP_RE.match(text):
        raise EditError(f"bad {what} {text!r}: expected seconds:nanoseconds, e.g. 10:500000000")
    return Timestamp.from_sec_nsec(text)


def parse_timerange(text: str, what: str = "timerange") -> TimeRange:
    """A TimeRange in the TAMS API syntax (``[10:0_12:0)``, ``_`` for all of time, ...)."""
    if text in ("", "()") or not _TIMERANGE_RE.match(text):
        raise EditError(f"bad {what} {text!r}: expected e.g. [10:0_12:500000000) or _ for all of time")
    timerange = TimeRange.from_str(text)
    if "_" not in text and (text.startswith("(") or text.endswith(")")):
        timerange = TimeRange.never()  # an instant with an exclusive bound (mediatimestamp ignores it)
    if timerange.is_empty():
        raise EditError(f"{what} {text!r} is empty")
    return timerange


def parse_interval(text: str) -> Fraction:
    """Seconds as an exact Fraction: ``2``, ``1.5`` or ``3/2`` (never through a float)."""
    try:
        value = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise EditError(f"bad --cut-interval-sec {text!r}: expected seconds, e.g. 2, 1.5 or 3/2") from None
    if value <= 0:
        raise EditError(f"bad --cut-interval-sec {text!r}: must be more than 0")
    return value


def interval_frames(seconds: Fraction, rate: Fraction) -> int:
    """Whole frames in an interval of ``seconds``, rounded to the nearest frame (halves up).
    Refuses an interval shorter than one frame."""
    frames = seconds * rate
    if frames < 1:
        raise EditError(f"cut interval {seconds} s is shorter than one frame ({1 / rate} s at {_rate_text(rate)} fps)")
    return math.floor(frames + Fraction(1, 2))


def _ts(value: object, what: str) -> Timestamp:
    if isinstance(value, Timestamp):
        return value
    try:
        return Timestamp.from_str(str(value))
    except Exception as exc:
        raise EditError(f"bad {what} {value!r} from the store") from exc


def _tr(value: object, what: str) -> TimeRange:
    if isinstance(value, TimeRange):
        return value
    try:
        return TimeRange.from_str(str(value))
    except Exception as exc:
        raise EditError(f"bad {what} {value!r} from the store") from exc


# ---------------------------------------------------------------------------
# Frame arithmetic


def _seconds(ts: Timestamp) -> Fraction:
    return Fraction(ts.to_nanosec(), _NS)


def _floor_timestamp(seconds: Fraction) -> Timestamp:
    """The Timestamp at or just before an exact time (mediatimestamp also floors)."""
    return Timestamp(ns=math.floor(seconds * _NS))


def _frames_between(anchor: Timestamp, ts: Timestamp, rate: Fraction) -> Fraction:
    """Exact number of frame durations from ``anchor`` to ``ts`` (may be fractional)."""
    return (_seconds(ts) - _seconds(anchor)) * rate


def _frame_bounds(timerange: TimeRange, anchor: Fraction, rate: Fraction) -> tuple[int | None, int | None]:
    """The frames whose timestamps lie in ``timerange``, as a half-open index range
    ``[first, stop)`` on the grid ``anchor + k / rate`` (``anchor`` in exact seconds;
    None where the timerange is unbounded).

    Rounding rule (``media.in_timerange``'s, on the grid): frame k is inside when
    its grid time is inside the timerange, and a frame within GRID_TOLERANCE (a quarter)
    of a frame of a bound counts as on it. So a bound on or within a quarter frame of a
    frame keeps its inclusivity for that frame (``[`` takes it, ``(`` starts with the next
    one; ``)`` stops before it, ``]`` takes it), and a bound further between two frames
    moves to the later one (an inclusive start at 2.4 frames gives first = 3; an exclusive
    end at 5.6 gives stop = 6, i.e. frame 5 is the last). The cuts this edit writes are on
    the grid, so a reader applying the same rule to the real (quantised) frame times picks
    exactly the frames counted here.
    """
    if timerange.is_empty():
        return 0, 0
    first: int | None = None
    stop: int | None = None
    if timerange.start is not None:
        x = (_seconds(timerange.start) - anchor) * rate
        first = math.ceil(x - GRID_TOLERANCE) if timerange.includes_start() else math.floor(x + GRID_TOLERANCE) + 1
    if timerange.end is not None:
        x = (_seconds(timerange.end) - anchor) * rate
        stop = math.floor(x + GRID_TOLERANCE) + 1 if timerange.includes_end() else math.ceil(x - GRID_TOLERANCE)
    return first, stop


def grid_anchor(start: Timestamp, ts_offset: Timestamp, rate: Fraction) -> Fraction:
    """The exact Flow time (seconds) of a segment's first frame, for counting its frames.

    Timestamps are whole nanoseconds: a frame's stored Flow time is its exact time on the
    object's timeline rounded down, plus ``ts_offset``. When the segment's first frame is,
    on the object's timeline, the rounded-down time of a whole number of frames from 0:0
    (the object is on the rate's global grid, as MPEG-TS media of a constant rate is),
    that exact multiple (plus ``ts_offset``) is the anchor, and frame times computed from
    it are exactly the stored timestamps. Otherwise the segment start is the anchor, and
    computed frame times are at most 1 ns before the stored ones, never after, so a
    reader filtering frames by timestamp still gets each frame in the right segment.
    """
    on_object = start - ts_offset
    count = on_object.to_count(rate.numerator, rate.denominator, Timestamp.ROUND_NEAREST)
    if Timestamp.from_count(count, rate.numerator, rate.denominator) == on_object:
        return count / rate + _seconds(ts_offset)
    return _seconds(start)


def _nearest_count(duration: Timestamp, rate: Fraction) -> int:
    """A duration as a whole number of frames, to the nearest (halves up)."""
    return math.floor(Fraction(duration.to_nanosec(), _NS) * rate + Fraction(1, 2))


def _rate_text(rate: Fraction) -> str:
    return f"{rate.numerator}/{rate.denominator}"


# ---------------------------------------------------------------------------
# Input segments and the frames chosen from them


@dataclass(frozen=True)
class InputSegment:
    """One segment of an input Flow, parsed, with its frames counted at the Flow's rate.

    Frame k of the segment is at ``frame_time(k)``: k frame durations after the
    segment's first frame (the grid is anchored at each segment's own start, see
    :func:`grid_anchor`, so a gap or a shift between segments never moves a cut).
    Frames ``first_frame .. stop_frame - 1`` are the ones its ``timerange`` contains.
    """

    object_id: str
    timerange: TimeRange
    ts_offset: Timestamp
    object_timerange: TimeRange
    rate: Fraction
    anchor: Fraction   # exact time of frame 0, see grid_anchor()
    first_frame: int
    stop_frame: int
    key_frame_count: int | None = None
    init_object_id: str | None = None
    last_duration: Timestamp | None = None

    @property
    def start(self) -> Timestamp:
        assert self.timerange.start is not None
        return self.timerange.start

    def frame_time(self, k: int) -> Timestamp:
        """Timestamp (input Flow timeline) of frame k's start; at ``stop_frame`` the
        segment's own exclusive end, so an untrimmed end is kept exactly."""
        if k == 0:
            return self.start
        if k == self.stop_frame and self.timerange.end is not None and not self.timerange.includes_end():
            return self.timerange.end
        return _floor_timestamp(self.anchor + k / self.rate)


def parse_segment(raw: Mapping[str, Any], rate: Fraction) -> InputSegment:
    """An API segment dict (as ``GET /flows/{id}/segments`` returns it) as an InputSegment.
    ``object_timerange`` defaults to ``timerange - ts_offset``, as the API says."""
    try:
        object_id = str(raw["object_id"])
        timerange = _tr(raw["timerange"], "segment timerange")
    except KeyError as exc:
        raise EditError(f"segment from the store lacks {exc.args[0]}: {dict(raw)!r}") from None
    if timerange.start is None or timerange.end is None or timerange.is_empty():
        raise EditError(f"segment of object {object_id} has an unusable timerange {timerange!s}")
    ts_offset = _ts(raw.get("ts_offset", "0:0"), "ts_offset")
    if raw.get("object_timerange"):
        object_timerange = _tr(raw["object_timerange"], "object_timerange")
    else:
        object_timerange = TimeRange(timerange.start - ts_offset, timerange.end - ts_offset, timerange.inclusivity)
    if object_timerange.start is None:
        raise EditError(f"object {object_id} has an unbounded object_timerange {object_timerange!s}")
    anchor = grid_anchor(timerange.start, ts_offset, rate)
    first, stop = _frame_bounds(timerange, anchor, rate)
    assert first is not None and stop is not None
    init = raw.get("init_object")
    init_object_id = raw.get("init_object_id") or (init.get("object_id") if isinstance(init, Mapping) else None)
    kfc = raw.get("key_frame_count")
    last_duration = raw.get("last_duration")
    return InputSegment(
        object_id=object_id,
        timerange=timerange,
        ts_offset=ts_offset,
        object_timerange=object_timerange,
        rate=rate,
        anchor=anchor,
        first_frame=first,
        stop_frame=stop,
        key_frame_count=int(kfc) if kfc is not None else None,
        init_object_id=str(init_object_id) if init_object_id else None,
        last_duration=_ts(last_duration, "last_duration") if last_duration else None,
    )


@dataclass(frozen=True)
class Span:
    """Frames ``first .. stop - 1`` of one input segment."""

    segment: InputSegment
    first: int
    stop: int

    @property
    def start(self) -> Timestamp:
        return self.segment.frame_time(self.first)

    @property
    def end(self) -> Timestamp:
        return self.segment.frame_time(self.stop)

    @property
    def frames(self) -> int:
        return self.stop - self.first


def select_frames(segments: Iterable[InputSegment | Span], timerange: TimeRange) -> list[Span]:
    """The frames of ``segments`` whose timestamps lie in ``timerange`` (see
    :func:`_frame_bounds` for the rounding rule), in timeline order, as Spans."""
    spans: list[Span] = []
    for item in segments:
        span = item if isinstance(item, Span) else Span(item, item.first_frame, item.stop_frame)
        seg = span.segment
        first, stop = _frame_bounds(timerange, seg.anchor, seg.rate)
        lo = span.first if first is None else max(span.first, first)
        hi = span.stop if stop is None else min(span.stop, stop)
        if lo < hi:
            spans.append(Span(seg, lo, hi))
    spans.sort(key=lambda s: s.start)
    return spans


# ---------------------------------------------------------------------------
# Output segments


@dataclass(frozen=True)
class PlannedSegment:
    """One output segment: part of an input segment placed on the output timeline."""

    input_number: int            # 1 or 2
    object_id: str
    timerange: TimeRange         # on the output timeline, [start_end)
    ts_offset: Timestamp         # output timeline - object timeline
    object_timerange: TimeRange  # the whole object, on its own timeline
    sample_offset: int           # first frame used, counted from the object's start
    sample_count: int            # frames used
    input_timerange: TimeRange   # the frames used, on the input timeline
    key_frame_count: int | None = None
    init_object_id: str | None = None
    last_duration: Timestamp | None = None

    def to_json(self, *, legacy_sample_fields: bool = False) -> dict[str, Any]:
        """The segment as ``POST /flows/{id}/segments`` takes it."""
        body: dict[str, Any] = {
            "object_id": self.object_id,
            "timerange": str(self.timerange),
            "ts_offset": str(self.ts_offset),
            "object_timerange": str(self.object_timerange),
        }
        if self.last_duration is not None:
            body["last_duration"] = str(self.last_duration)
        if self.key_frame_count is not None:
            body["key_frame_count"] = self.key_frame_count
        if self.init_object_id is not None:
            body["init_object_id"] = self.init_object_id
        if legacy_sample_fields:
            body["sample_offset"] = self.sample_offset
            body["sample_count"] = self.sample_count
        return body

    def describe(self) -> str:
        """One line for ``--dry-run`` and the log."""
        last = self.sample_offset + self.sample_count - 1
        return (
            f"{self.timerange!s} object {self.object_id} ts_offset {self.ts_offset!s} "
            f"object_timerange {self.object_timerange!s} frames {self.sample_offset}-{last} "
            f"(input {self.input_number} {self.input_timerange!s})"
        )


def _place(spans: Sequence[Span], cursor: Timestamp, input_number: int,
           out: list[PlannedSegment]) -> Timestamp:
    """Put ``spans`` one after another on the output timeline from ``cursor``; returns
    the exclusive end of the last one."""
    for span in spans:
        seg = span.segment
        start, end = span.start, span.end
        shift = cursor - start
        placed_end = cursor + (end - start)
        object_start = start - seg.ts_offset
        assert seg.object_timerange.start is not None
        whole_end = span.stop == seg.stop_frame
        out.append(PlannedSegment(
            input_number=input_number,
            object_id=seg.object_id,
            timerange=TimeRange(cursor, placed_end, TimeRange.INCLUDE_START),
            ts_offset=seg.ts_offset + shift,
            object_timerange=seg.object_timerange,
            sample_offset=_nearest_count(object_start - seg.object_timerange.start, seg.rate),
            sample_count=span.frames,
            input_timerange=TimeRange(start, end, TimeRange.INCLUDE_START),
            key_frame_count=seg.key_frame_count,
            init_object_id=seg.init_object_id,
            last_duration=seg.last_duration if whole_end and not seg.timerange.includes_end() else None,
        ))
        cursor = placed_end
    return cursor


def _selection(number: int, segments: Sequence[InputSegment], timerange: TimeRange) -> list[Span]:
    spans = select_frames(segments, timerange)
    if not spans:
        if not segments:
            raise EditError(f"input {number} has no segments in timerange {timerange!s}")
        raise EditError(f"input {number} timerange {timerange!s} selects no frames of the flow")
    return spans


def plan_concatenation(
    segments1: Sequence[InputSegment],
    timerange1: TimeRange,
    segments2: Sequence[InputSegment],
    timerange2: TimeRange,
    *,
    start: Timestamp | None = None,
) -> list[PlannedSegment]:
    """Input 1's frames in ``timerange1`` then input 2's in ``timerange2``, back to back,
    from ``start`` (default: where input 1's selection starts)."""
    spans1 = _selection(1, segments1, timerange1)
    spans2 = _selection(2, segments2, timerange2)
    out: list[PlannedSegment] = []
    cursor = spans1[0].start if start is None else start
    cursor = _place(spans1, cursor, 1, out)
    _place(spans2, cursor, 2, out)
    return out


def plan_interval(
    segments1: Sequence[InputSegment],
    timerange1: TimeRange,
    segments2: Sequence[InputSegment],
    timerange2: TimeRange,
    frames_per_cut: int,
    *,
    start: Timestamp | None = None,
) -> list[PlannedSegment]:
    """Alternate input 1 and input 2 every ``frames_per_cut`` frames of output.

    Turn k belongs to input ``k % 2 + 1`` and shows that input's frames from
    ``origin + k * frames_per_cut`` to ``origin + (k + 1) * frames_per_cut`` frames,
    where origin is where the input's selection starts: both inputs run on in their
    own timelines. Stops at the first turn its input cannot fill; the frames it has
    for that turn are kept.
    """
    if frames_per_cut < 1:
        raise EditError("cut interval must be at least one frame")
    selections = (_selection(1, segments1, timerange1), _selection(2, segments2, timerange2))
    origins = tuple(spans[0].segment.anchor + spans[0].first / spans[0].segment.rate for spans in selections)
    ends = tuple(spans[-1].end for spans in selections)
    rates = tuple(spans[0].segment.rate for spans in selections)
    cursors = [0, 0]   # per input: its first span with frames the next window may take
    out: list[PlannedSegment] = []
    cursor = selections[0][0].start if start is None else start
    turn = 0
    while True:
        i = turn % 2
        rate = rates[i]
        window_start = _floor_timestamp(origins[i] + turn * frames_per_cut / rate)
        window_end = _floor_timestamp(origins[i] + (turn + 1) * frames_per_cut / rate)
        window = TimeRange(window_start, window_end, TimeRange.INCLUDE_START)
        spans, cursors[i] = _take_window(selections[i], cursors[i], window)
        if not spans and _frames_between(ends[i], window_start, rate) >= -GRID_TOLERANCE:
            break  # nothing left of this input
        cursor = _place(spans, cursor, i + 1, out)
        if _frames_between(ends[i], window_end, rate) > GRID_TOLERANCE:
            break  # this input ran out during its turn
        turn += 1
    return out


def _take_window(spans: Sequence[Span], cursor: int, window: TimeRange) -> tuple[list[Span], int]:
    """The frames of ``spans[cursor:]`` in ``window`` (as :func:`select_frames` would pick
    them from all of ``spans``), and the cursor for the next, later window.

    ``spans`` are in timeline order and do not overlap, and each window starts where the
    input's previous one ended, so a span the window ends after is used up for good and
    the first span starting after the window ends the search: each span is looked at a
    bounded number of times, keeping interval planning linear in the input's length.
    """
    picked: list[Span] = []
    while cursor < len(spans):
        span = spans[cursor]
        first, stop = _frame_bounds(window, span.segment.anchor, span.segment.rate)
        assert first is not None and stop is not None
        if stop <= span.first:
            break  # this span (and every later one) starts after the window
        lo, hi = max(span.first, first), min(span.stop, stop)
        if lo < hi:
            picked.append(Span(span.segment, lo, hi))
        if stop < span.stop:
            break  # the window ends inside this span; the next one starts here
        cursor += 1
    return picked, cursor


# ---------------------------------------------------------------------------
# Flows


def frame_rate_of(flow: Mapping[str, Any]) -> Fraction:
    """The Flow's ``essence_parameters.frame_rate`` as a Fraction; refuses Flows without one."""
    flow_id = flow.get("id", "?")
    if flow.get("format") != "urn:x-nmos:format:video":
        raise EditError(f"flow {flow_id} is {flow.get('format')}, but only video flows can be edited to the frame")
    rate = (flow.get("essence_parameters") or {}).get("frame_rate")
    if not isinstance(rate, Mapping) or "numerator" not in rate:
        raise EditError(f"flow {flow_id} has no frame_rate (variable frame rate?), so it cannot be cut to the frame")
    try:
        value = Fraction(int(rate["numerator"]), int(rate.get("denominator", 1)))
    except (TypeError, ValueError, ZeroDivisionError):
        raise EditError(f"flow {flow_id} has a bad frame_rate {dict(rate)!r}") from None
    if value <= 0:
        raise EditError(f"flow {flow_id} has a bad frame_rate {_rate_text(value)}")
    return value


# --- What must match between the inputs for the output to be one playable, truly labelled Flow.
#
# A difference in a HARD field cannot be accepted even with --force: the output Flow would have to
# declare two values of a field it holds one of (a Flow has one container, one codec, one frame size,
# and the edit counts frames at one rate), so it could not be exported or decoded correctly.
# A difference in any other essence parameter is refused unless --force; the forced output then
# declares only what is true of all of it (see merged_essence) and lists what it left out in tags.
_HARD_FIELDS = ("format", "codec", "container")
_HARD_ESSENCE = ("init_segments", "frame_rate", "vfr", "frame_width", "frame_height")
_HARD_REASONS = {
    "format": "a Flow has one format",
    "codec": "the joined media could not be decoded as one stream",
    "container": "a Flow has one container, so the edit could not be exported correctly",
    "init_segments": "a Flow has one container, so the edit could not be exported correctly",
    "frame_rate": "the edit counts frames at one frame_rate",
    "vfr": "the edit counts frames at one frame_rate",
    "frame_width": "a Flow declares one frame size",
    "frame_height": "a Flow declares one frame size",
}
# The essence parameters compared, in the order differences are reported (then any others).
_SOFT_ESSENCE = ("bit_depth", "avc_parameters", "component_type", "horiz_chroma_subs", "vert_chroma_subs",
                 "interlace_mode", "colorspace", "transfer_characteristic", "aspect_ratio", "pixel_aspect_ratio",
                 "unc_parameters")
# Containers of init-segment (fMP4/CMAF) Flows, as readers accept them (the CMAF Flow contract).
CMAF_CONTAINERS = frozenset({"video/iso.segment", "audio/iso.segment", "video/mp4", "audio/mp4", "application/mp4"})

# H.264 profile_idc values whose decoders also decode the profile before them: Constrained Baseline
# (66 with constraint_set1) < Main < High < High 10 < High 4:2:2 < High 4:4:4 Predictive. Baseline
# without constraint_set1 and Extended stand apart: no profile of this chain covers them.
_AVC_PROFILE_NAMES = {66: "Baseline", 77: "Main", 88: "Extended", 100: "High", 110: "High 10",
                      122: "High 4:2:2", 244: "High 4:4:4 Predictive", 44: "CAVLC 4:4:4 Intra"}
_AVC_CHAIN = (77, 100, 110, 122, 244)
_AVC_CONSTRAINT_SET1 = 0x40


def _is_cmaf(flow: Mapping[str, Any]) -> bool:
    return bool((flow.get("essence_parameters") or {}).get("init_segments")) or flow.get("container") in CMAF_CONTAINERS


def _avc_rank(avc: Mapping[str, Any]) -> int | None:
    """Position in _AVC_CHAIN (-1 for Constrained Baseline), or None outside the chain."""
    profile, flags = avc.get("profile"), avc.get("flags") or 0
    if profile == 66 and isinstance(flags, int) and flags & _AVC_CONSTRAINT_SET1:
        return -1
    return _AVC_CHAIN.index(profile) if profile in _AVC_CHAIN else None


def _level_text(level: object) -> str:
    if isinstance(level, int) and not isinstance(level, bool):
        return f"{level} (1b)" if level == 9 else f"{level} ({level // 10}.{level % 10})"
    return str(level)


def _show(name: str, value: object) -> str:
    if value is None:
        return "(not declared)"
    if name in ("frame_rate", "aspect_ratio", "pixel_aspect_ratio", "segment_duration") and isinstance(value, Mapping):
        return f"{value.get('numerator')}/{value.get('denominator', 1)}"
    if name == "avc_parameters.profile" and value in _AVC_PROFILE_NAMES:
        return f"{value} ({_AVC_PROFILE_NAMES[value]})"  # type: ignore[index]
    if name == "avc_parameters.level":
        return _level_text(value)
    if name == "avc_parameters" and isinstance(value, Mapping):
        return (f"profile {_show('avc_parameters.profile', value.get('profile'))} "
                f"level {_show('avc_parameters.level', value.get('level'))}")
    if name == "container" and isinstance(value, str) and value in CMAF_CONTAINERS:
        return f"{value} (fMP4 with init segments)"
    return str(value)


def _ratio_value(value: object) -> object:
    """Ratios compare by value (16/9 is 32/18); anything else as it is."""
    if isinstance(value, Mapping) and "numerator" in value:
        try:
            return Fraction(int(value["numerator"]), int(value.get("denominator", 1)))
        except (TypeError, ValueError, ZeroDivisionError):
            return dict(value)
    return value


@dataclass(frozen=True)
class Difference:
    """One way the inputs' technical properties differ."""

    name: str            # the field as the API spells it; essence parameters by their own name
    value1: object
    value2: object
    hard: bool           # no --force can accept it

    def describe(self) -> str:
        return f"{self.name}: {_show(self.name, self.value1)} vs {_show(self.name, self.value2)}"


def essence_differences(flow1: Mapping[str, Any], flow2: Mapping[str, Any]) -> list[Difference]:
    """Every difference between two video Flows that matters to an edit of them, hard ones first.

    ``essence_parameters.avc_parameters`` is compared by profile and level (its constraint flags do
    not change which decoder a stream needs; the output declares the constraints both obey)."""
    found: list[Difference] = []
    ep1, ep2 = flow1.get("essence_parameters") or {}, flow2.get("essence_parameters") or {}
    for name in _HARD_FIELDS:
        if flow1.get(name) != flow2.get(name):
            found.append(Difference(name, flow1.get(name), flow2.get(name), hard=True))
    for name in _HARD_ESSENCE:
        a, b = ep1.get(name), ep2.get(name)
        if name in ("init_segments", "vfr"):
            a, b = bool(a), bool(b)  # both default to false
        if _ratio_value(a) != _ratio_value(b):
            found.append(Difference(name, a, b, hard=True))
    others = sorted((set(ep1) | set(ep2)) - set(_HARD_ESSENCE) - set(_SOFT_ESSENCE))
    for name in (*_SOFT_ESSENCE, *others):
        a, b = ep1.get(name), ep2.get(name)
        if name == "avc_parameters" and isinstance(a, Mapping) and isinstance(b, Mapping):
            for part in ("profile", "level"):
                if a.get(part) != b.get(part):
                    found.append(Difference(f"avc_parameters.{part}", a.get(part), b.get(part), hard=False))
        elif _ratio_value(a) != _ratio_value(b):
            found.append(Difference(name, a, b, hard=False))
    return found


def check_compatible(flow1: Mapping[str, Any], flow2: Mapping[str, Any], *, force: bool = False) -> Fraction:
    """Refuse inputs whose edit would be undecodable or mislabelled, naming the field and both
    values in one line; with ``force`` only the differences no output Flow could declare are
    refused. Returns the frame rate."""
    rate1 = frame_rate_of(flow1)
    frame_rate_of(flow2)
    differences = essence_differences(flow1, flow2)
    hard = [d for d in differences if d.hard]
    if hard:
        first = hard[0]
        if first.name in ("container", "init_segments") and _is_cmaf(flow1) != _is_cmaf(flow2):
            first = Difference("container", flow1.get("container"), flow2.get("container"), hard=True)
        raise EditError(f"input flows differ in {first.describe()}: {_HARD_REASONS[first.name]}"
                        + (" (--force cannot accept this)" if force else ""))
    frame_rate_of(flow2)
    if differences and not force:
        raise EditError("input flows differ in " + "; ".join(d.describe() for d in differences)
                        + ": the edit would be mislabelled or undecodable (--force to make it anyway, "
                          "declaring only what is true of both)")
    return rate1


def merged_essence(flow1: Mapping[str, Any], flow2: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The output's ``essence_parameters`` for two inputs check_compatible accepted, and a note per
    difference (for the output's ``edit_forced_differences`` tag).

    What is true of the whole output is declared: H.264 ``avc_parameters`` with the higher level and
    the profile whose decoders decode both inputs (where one profile covers the other), and the
    constraint flags both inputs obey. A parameter that differs and has no such one true value
    (bit depth, chroma, interlace, colour, aspect ratios, ...) is left out."""
    ep1, ep2 = flow1.get("essence_parameters") or {}, flow2.get("essence_parameters") or {}
    merged = dict(ep1)
    notes: list[str] = []
    for d in essence_differences(flow1, flow2):
        if d.hard:
            continue
        if d.name.startswith("avc_parameters."):
            continue  # handled together below
        merged.pop(d.name, None)
        notes.append(f"{d.name}: {_show(d.name, d.value1)} (input 1), {_show(d.name, d.value2)} (input 2); left out")
    avc1, avc2 = ep1.get("avc_parameters"), ep2.get("avc_parameters")
    if isinstance(avc1, Mapping) and isinstance(avc2, Mapping):
        avc, avc_notes = _merged_avc(avc1, avc2)
        notes += avc_notes
        if avc is None:
            merged.pop("avc_parameters", None)
        else:
            merged["avc_parameters"] = avc
    return merged, notes


def _merged_avc(avc1: Mapping[str, Any], avc2: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    notes: list[str] = []

    def note(part: str, declared: str) -> None:
        name = f"avc_parameters.{part}"
        notes.append(f"{name}: {_show(name, avc1.get(part))} (input 1), {_show(name, avc2.get(part))} (input 2); "
                     f"{declared}")

    flags1, flags2 = avc1.get("flags"), avc2.get("flags")
    flags = flags1 & flags2 if isinstance(flags1, int) and isinstance(flags2, int) else None
    profile = avc1.get("profile")
    if avc1.get("profile") != avc2.get("profile"):
        rank1, rank2 = _avc_rank(avc1), _avc_rank(avc2)
        if rank1 is None or rank2 is None:
            note("profile", "no one profile covers both, so avc_parameters is left out")
            return None, notes
        profile = (avc1 if rank1 >= rank2 else avc2).get("profile")
        note("profile", f"declared {_show('avc_parameters.profile', profile)}, whose decoders decode both")
    level = avc1.get("level")
    if avc1.get("level") != avc2.get("level"):
        levels = [v for v in (avc1.get("level"), avc2.get("level")) if isinstance(v, int)]
        if len(levels) != 2:
            note("level", "avc_parameters is left out")
            return None, notes
        level = max(levels)
        note("level", f"declared the higher, {_level_text(level)}")
    if flags is None:
        return None, notes
    return {"profile": profile, "level": level, "flags": flags}, notes


def output_flow(
    flow1: Mapping[str, Any],
    flow2: Mapping[str, Any],
    *,
    flow_id: str,
    source_id: str,
    label: str,
    description: str,
    tags: Mapping[str, str | list[str]],
) -> dict[str, Any]:
    """The output Flow: technical properties true of both inputs (:func:`merged_essence`; what
    differs is listed in the ``edit_forced_differences`` tag), its own ids, label and tags."""
    essence, notes = merged_essence(flow1, flow2)
    flow: dict[str, Any] = {
        "id": flow_id,
        "source_id": source_id,
        "format": flow1["format"],
        "label": label,
        "description": description,
        "tags": {**tags, **({"edit_forced_differences": notes} if notes else {})},
    }
    for name in ("codec", "container"):
        if flow1.get(name) is not None:
            flow[name] = flow1[name]
    flow["essence_parameters"] = essence
    if flow1.get("generation") is not None and flow1.get("generation") == flow2.get("generation"):
        flow["generation"] = flow1["generation"]  # no new generation: nothing is re-encoded
    max_rates = [f["max_bit_rate"] for f in (flow1, flow2) if f.get("max_bit_rate") is not None]
    if len(max_rates) == 2:
        flow["max_bit_rate"] = max(max_rates)
    if flow1.get("avg_bit_rate") is not None and flow1.get("avg_bit_rate") == flow2.get("avg_bit_rate"):
        flow["avg_bit_rate"] = flow1["avg_bit_rate"]
    return flow


# ---------------------------------------------------------------------------
# The edit against a store


@dataclass(frozen=True)
class EditRequest:
    """What to edit; timeranges on the inputs' own timelines."""

    input1_flow_id: str
    input2_flow_id: str
    input1_timerange: TimeRange = field(default_factory=TimeRange.eternity)
    input2_timerange: TimeRange = field(default_factory=TimeRange.eternity)
    output_flow_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    output_source_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    cut_interval: Fraction | None = None   # seconds; None = concatenation
    start: Timestamp | None = None
    legacy_sample_fields: bool = False
    label: str | None = None
    dry_run: bool = False
    force: bool = False                    # accept essence differences an output Flow can declare truly
    page_limit: int | None = None          # segments per page when reading the inputs
    batch_size: int = DEFAULT_BATCH_SIZE   # segments per list POST


@dataclass
class EditResult:
    output_flow_id: str
    segments: list[PlannedSegment]
    written: bool
    bulk: bool = True          # False when the store refused list POSTs

    @property
    def timerange(self) -> TimeRange:
        if not self.segments:
            return TimeRange.never()
        return TimeRange(self.segments[0].timerange.start, self.segments[-1].timerange.end, TimeRange.INCLUDE_START)

    @property
    def frames(self) -> int:
        return sum(s.sample_count for s in self.segments)


async def _get_input(client: TAMSClient, number: int, flow_id: str) -> dict:
    try:
        return await client.get_flow(flow_id)
    except NotFound:
        raise EditError(f"input {number} flow {flow_id} not found") from None


async def _read_segments(client: TAMSClient, flow_id: str, timerange: TimeRange, rate: Fraction,
                         page_limit: int | None) -> list[InputSegment]:
    segments = []
    async for raw in client.segments(flow_id, timerange=timerange, limit=page_limit):
        raw.pop("get_urls", None)
        segments.append(parse_segment(raw, rate))
    return segments


def _edit_tags(request: EditRequest, frames_per_cut: int | None) -> dict[str, str | list[str]]:
    tags: dict[str, str | list[str]] = {
        "edit_tool": "simple_edit.py",
        "edit_mode": "concatenation" if request.cut_interval is None else "interval",
        "edit_inputs": [request.input1_flow_id, request.input2_flow_id],
        "edit_input_timeranges": [str(request.input1_timerange), str(request.input2_timerange)],
    }
    if request.cut_interval is not None and frames_per_cut is not None:
        tags["edit_cut_interval_sec"] = str(request.cut_interval)
        tags["edit_cut_interval_frames"] = str(frames_per_cut)
    if request.start is not None:
        tags["edit_start"] = str(request.start)
    return tags


def _failure_text(entry: Mapping[str, Any]) -> str:
    """One entry of a bulk POST's ``failed_segments``, readably."""
    error = entry.get("error")
    reason = error.get("summary", error) if isinstance(error, Mapping) else error
    return f"object {entry.get('object_id')} {entry.get('timerange', '')}: {reason or 'no reason given'}"


def _name(flow: Mapping[str, Any]) -> str:
    return str(flow.get("label") or flow.get("id"))


async def _write_segments(client: TAMSClient, flow_id: str, planned: Sequence[PlannedSegment],
                          request: EditRequest) -> bool:
    """POST the segments in lists of ``batch_size``; if the store refuses a list as a
    whole, fall back to one segment per request. Returns whether lists were used."""
    bulk = True
    for i in range(0, len(planned), max(1, request.batch_size)):
        batch = planned[i:i + max(1, request.batch_size)]
        bodies = [p.to_json(legacy_sample_fields=request.legacy_sample_fields) for p in batch]
        if bulk:
            try:
                failed = await client.post_segments(flow_id, bodies)
            except TAMSResponseError as exc:
                if exc.status not in (400, 405, 413, 415, 422):
                    raise
                logger.info("store refused a list of segments (%s); writing them one at a time", exc.status)
                bulk = False
            else:
                if failed:
                    raise EditError(f"store refused {_count(len(failed), 'segment')}, "
                                    f"e.g. {_failure_text(failed[0])}")
        if not bulk:
            for p, body in zip(batch, bodies):
                try:
                    failed = await client.post_segments(flow_id, body)
                except TAMSResponseError as exc:
                    raise EditError(f"store refused segment {p.timerange!s} (object {p.object_id}): {exc}") from exc
                if failed:
                    raise EditError(f"store refused segment {p.timerange!s}: {_failure_text(failed[0])}")
        for p in batch:
            logger.info("wrote segment %s", p.describe())
    return bulk


async def edit(client: TAMSClient, request: EditRequest) -> EditResult:
    """Plan the edit from the inputs and (unless ``dry_run``) write the output Flow.

    Raises EditError for anything wrong with the request, TAMSError when the store
    fails. If anything fails after the output Flow was created, it is deleted again.
    """
    flow1 = await _get_input(client, 1, request.input1_flow_id)
    flow2 = await _get_input(client, 2, request.input2_flow_id)
    rate = check_compatible(flow1, flow2, force=request.force)
    for note in merged_essence(flow1, flow2)[1]:
        logger.warning("--force: inputs differ in %s", note)
    frames_per_cut = interval_frames(request.cut_interval, rate) if request.cut_interval is not None else None

    try:
        await client.get_flow(request.output_flow_id)
    except NotFound:
        pass
    else:
        raise EditError(f"output flow {request.output_flow_id} already exists")

    segments1 = await _read_segments(client, request.input1_flow_id, request.input1_timerange, rate,
                                     request.page_limit)
    segments2 = await _read_segments(client, request.input2_flow_id, request.input2_timerange, rate,
                                     request.page_limit)
    logger.debug("read %d segments of input 1 and %d of input 2", len(segments1), len(segments2))
    if frames_per_cut is None:
        planned = plan_concatenation(segments1, request.input1_timerange, segments2, request.input2_timerange,
                                     start=request.start)
    else:
        planned = plan_interval(segments1, request.input1_timerange, segments2, request.input2_timerange,
                                frames_per_cut, start=request.start)
    if request.dry_run:
        return EditResult(request.output_flow_id, planned, written=False)

    if request.cut_interval is None:
        label = f"{_name(flow1)} then {_name(flow2)}"
        description = (f"Concatenation by reference of flow {request.input1_flow_id} {request.input1_timerange!s} "
                       f"and flow {request.input2_flow_id} {request.input2_timerange!s}")
    else:
        label = f"{_name(flow1)} / {_name(flow2)} every {request.cut_interval} s"
        description = (f"Cuts by reference every {request.cut_interval} s ({frames_per_cut} frames) between "
                       f"flow {request.input1_flow_id} {request.input1_timerange!s} "
                       f"and flow {request.input2_flow_id} {request.input2_timerange!s}")
    flow = output_flow(flow1, flow2, flow_id=request.output_flow_id, source_id=request.output_source_id,
                       label=request.label or label, description=description,
                       tags=_edit_tags(request, frames_per_cut))
    try:
        await client.get_source(request.output_source_id)
        new_source = False
    except NotFound:
        new_source = True
    created = await client.put_flow(request.output_flow_id, flow)
    if created is None:
        # Someone made this Flow between our check and our PUT: it is theirs, leave it.
        raise EditError(f"output flow {request.output_flow_id} already exists")
    logger.info("created output flow %s (source %s)", request.output_flow_id, request.output_source_id)
    try:
        if new_source:  # name a Source this edit made; leave an existing one's label alone
            await client.put_source_label(request.output_source_id, flow["label"])
        bulk = await _write_segments(client, request.output_flow_id, planned, request)
    except BaseException:
        logger.info("deleting the unfinished output flow %s", request.output_flow_id)
        try:
            async with asyncio.timeout(CLEAN_UP_SECONDS):  # a store that hangs must not hold the run for ever
                await client.delete_flow(request.output_flow_id)
        except (TAMSError, TimeoutError) as exc:
            logger.warning("could not delete the unfinished output flow %s (delete it by hand): %s",
                           request.output_flow_id, str(exc) or f"no answer in {CLEAN_UP_SECONDS} s")
        raise
    return EditResult(request.output_flow_id, planned, written=True, bulk=bulk)


# ---------------------------------------------------------------------------
# Command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not the usage block, on a bad command line."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="simple_edit.py",
        description="Make a new Flow from two input Flows by reference (no media is copied): "
                    "input 1's timerange then input 2's, or cuts between them every --cut-interval-sec.",
        formatter_class=HelpFormatter,
    )
    add_credential_args(parser)
    parser.add_argument("--input1-flow-id", required=True, help="input 1 Flow id")
    parser.add_argument("--input1-timerange", default="_", help="frames of input 1 to use (input 1 timeline)")
    parser.add_argument("--input2-flow-id", required=True, help="input 2 Flow id")
    parser.add_argument("--input2-timerange", default="_", help="frames of input 2 to use (input 2 timeline)")
    parser.add_argument("--output-flow-id", default=None, help="output Flow id, which must not exist yet (default: a new uuid)")
    parser.add_argument("--output-source-id", default=None, help="output Source id (default: a new uuid)")
    parser.add_argument("--cut-interval-sec", default=None,
                        help="cut between the inputs every this many seconds of output (e.g. 2, 1.5 or 3/2; "
                             "rounded to whole frames) instead of concatenating them (default: concatenate)")
    parser.add_argument("--start", default=None,
                        help="output timeline start, seconds:nanoseconds "
                             "(default: where input 1's frames start)")
    parser.add_argument("--legacy-sample-fields", action="store_true",
                        help="also write the deprecated sample_offset/sample_count, for older stores and readers")
    parser.add_argument("--label", default=None, help="output Flow label (default: made from the inputs' labels)")
    parser.add_argument("--dry-run", action="store_true", help="print the segments the edit would write; write nothing")
    parser.add_argument("--force", action="store_true",
                        help="edit inputs whose essence differs (bit depth, profile, level, chroma, interlace, "
                             "colour, aspect ratio) anyway; the output Flow declares only what is true of both "
                             "and lists the differences in its edit_forced_differences tag. Codec, container, "
                             "frame rate and frame size must still match")
    parser.add_argument("--page-limit", type=int, default=None,
                        help="segments per page when reading the inputs (default: the store's)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="segments per list POST")
    return parser


def _flow_id(text: str, what: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise EditError(f"bad {what} {text!r}: expected a uuid") from None


def request_from_args(args: argparse.Namespace) -> EditRequest:
    """The EditRequest the command line asks for; EditError on a bad value."""
    if args.page_limit is not None and args.page_limit < 1:
        raise EditError("--page-limit must be at least 1")
    if args.batch_size < 1:
        raise EditError("--batch-size must be at least 1")
    return EditRequest(
        input1_flow_id=_flow_id(args.input1_flow_id, "--input1-flow-id"),
        input2_flow_id=_flow_id(args.input2_flow_id, "--input2-flow-id"),
        input1_timerange=parse_timerange(args.input1_timerange, "--input1-timerange"),
        input2_timerange=parse_timerange(args.input2_timerange, "--input2-timerange"),
        output_flow_id=_flow_id(args.output_flow_id, "--output-flow-id") if args.output_flow_id
        else str(uuid.uuid4()),
        output_source_id=_flow_id(args.output_source_id, "--output-source-id") if args.output_source_id
        else str(uuid.uuid4()),
        cut_interval=parse_interval(args.cut_interval_sec) if args.cut_interval_sec is not None else None,
        start=parse_timestamp(args.start, "--start") if args.start is not None else None,
        legacy_sample_fields=args.legacy_sample_fields,
        label=args.label,
        dry_run=args.dry_run,
        force=args.force,
        page_limit=args.page_limit,
        batch_size=args.batch_size,
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def report(result: EditResult) -> None:
    """The script's output: the planned segments (dry run) or a summary."""
    if not result.written:
        print_result(f"dry run: would create flow {result.output_flow_id} with "
                     f"{_count(len(result.segments), 'segment')}, {result.frames} frames, timerange {result.timerange!s}",
                     *(p.describe() for p in result.segments))
        return
    per_input = {n: [p for p in result.segments if p.input_number == n] for n in (1, 2)}
    print_result(
        f"output flow {result.output_flow_id}: {_count(len(result.segments), 'segment')}, {result.frames} frames, "
        f"timerange {result.timerange!s}; "
        + "; ".join(f"input {n}: {sum(p.sample_count for p in ps)} frames from {_count(len(ps), 'segment')}"
                    for n, ps in per_input.items())
        + ("" if result.bulk else " (written one at a time)")
    )


async def run(request: EditRequest, tams_url: str, credentials: Credentials) -> int:
    """Make the edit the command line asked for; returns the exit status."""
    result: EditResult | None = None
    try:
        async with TAMSClient(tams_url, credentials) as client:
            result = await edit(client, request)
    except (EditError, TAMSError) as exc:
        print(f"simple_edit.py: error: {exc}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        if result is None:
            raise
        # stopped as the connection closed: the edit was whole by then, and stays
    report(result)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        request = request_from_args(args)  # bad values are reported before anything is contacted
    except EditError as exc:
        print(f"simple_edit.py: error: {exc}", file=sys.stderr)
        return 2
    tams_url, credentials = connection_from_args(args)
    try:
        return run_async(run(request, tams_url, credentials))
    except KeyboardInterrupt as exc:
        what, status = interruption(exc)
        print(f"simple_edit.py: {what}", file=sys.stderr)
        return status


if __name__ == "__main__":
    exit_now(main())

"""Live HLS for ``ingest_hls.py``: which segments to read, following a playlist as it grows, and
where each segment goes on the Flow's timeline.

- ``SegmentFeed`` is the ordered list of segments the ingest pipeline reads. ``queue_window``
  fills it from one playlist (a VOD run); ``follow`` keeps filling it as a live playlist is
  reloaded, by RFC 8216's rules (section 6.3.4): at least the target duration after the last load
  began when the playlist changed, half of it when it did not. Segments are picked by media
  sequence number, each exactly once; ones that left the window before they were read are
  reported as a gap, never made up. A load that fails is tried again with doubling waits, and
  ``reload_attempts`` failures in a row end the run with one line. A media sequence that goes
  backwards ends it too: the playlist no longer describes the stream the Flow holds.
- ``Timeline`` places each segment's first sample on the Flow's timeline in the media's ticks:
  MPEG-TS's 33-bit pts wraps are unwrapped (AppNote 0002); a run that resumes a Flow finds the
  segments the Flow has by their media's start (timerange less ts_offset) and continues from the
  last, so a resumed ingest after a wrap lands after what the Flow has rather than 26.5 hours
  before it, and a re-run over a new timestamp base finds what it registered; and after an
  ``EXT-X-DISCONTINUITY`` whose media starts a new timestamp base, the segment is placed where
  the playlist says it belongs (``EXT-X-PROGRAM-DATE-TIME`` when both sides have one, else right
  after the segment before, plus the listed length of any segments missed in between).
- ``StopSignals`` turns a stop signal (SIGINT, SIGTERM, SIGHUP) into a request to stop reading the
  playlist: the segments already read are finished, none is registered in part. A second signal
  abandons them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import signal
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

from mediatimestamp.immutable import TimeRange, Timestamp

import media
from credentials import stop_hook

__all__ = [
    "FeedEntry",
    "LiveError",
    "SegmentFeed",
    "StopSignals",
    "Timeline",
    "first_to_read",
    "follow",
    "queue_window",
    "reload_delay",
    "status_line",
]

logger = logging.getLogger(__name__)

_FIRST_RETRY = Fraction(1, 2)  # seconds before the first retry of a failed reload, doubling after


class LiveError(Exception):
    """A followed playlist cannot be followed any further; ``str()`` is the one line to show."""


class SegmentLike(Protocol):
    @property
    def sequence(self) -> int: ...
    @property
    def uri(self) -> str: ...
    @property
    def duration(self) -> Fraction: ...
    @property
    def discontinuity(self) -> bool: ...
    @property
    def program_date_time(self) -> datetime.datetime | None: ...


class PlaylistLike(Protocol):
    @property
    def location(self) -> str: ...
    @property
    def segments(self) -> Sequence[Any]: ...
    @property
    def target_duration(self) -> Fraction | None: ...
    @property
    def media_sequence(self) -> int: ...
    @property
    def ended(self) -> bool: ...


# --------------------------------------------------------------------------------------------
# The segments to read


@dataclass(frozen=True)
class FeedEntry:
    ref: Any  # ingest_hls.SegmentRef
    register: bool = True  # False: read only to end the segment before it exactly


class SegmentFeed:
    """Segments for the ingest pipeline, in media sequence order, ended by ``close`` or ``fail``."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[FeedEntry | BaseException | None] = asyncio.Queue()
        self._ended: FeedEntry | BaseException | None = None
        self._done = False

    def put(self, entry: FeedEntry) -> None:
        self._queue.put_nowait(entry)

    def close(self) -> None:
        self._queue.put_nowait(None)

    def fail(self, exc: BaseException) -> None:
        self._queue.put_nowait(exc)

    def _take(self, item: FeedEntry | BaseException | None) -> FeedEntry | None:
        if isinstance(item, FeedEntry):
            return item
        self._done = True
        self._ended = item
        if isinstance(item, BaseException):
            raise item
        return None

    def ready(self) -> FeedEntry | None:
        """The next entry if one is waiting now, else None (also once the feed has ended)."""
        if self._done or self._queue.empty():
            return None
        return self._take(self._queue.get_nowait())

    async def next(self) -> FeedEntry | None:
        """The next entry, waiting for it; None once the feed has ended."""
        if self._done:
            if isinstance(self._ended, BaseException):
                raise self._ended
            return None
        return self._take(await self._queue.get())


@dataclass
class _Cursor:
    """Which media sequence numbers are still to be queued: ``next`` up to ``stop`` (exclusive)."""

    next: int
    stop: int | None
    explicit_start: bool
    looked_ahead: bool = False
    gaps: int = 0  # segments that left the window before they could be read

    @property
    def finished(self) -> bool:
        return self.stop is not None and self.next >= self.stop and self.looked_ahead


def _queue_new(playlist: PlaylistLike, cursor: _Cursor, feed: SegmentFeed, first_load: bool) -> list[Any]:
    """Put the playlist's segments the cursor has not passed on the feed; returns those to register."""
    segments = playlist.segments
    if not segments:
        return []
    oldest = segments[0].sequence
    if cursor.next < oldest:
        missed = oldest - cursor.next
        if first_load and not cursor.explicit_start:
            logger.info("starting at media sequence %d, the oldest the playlist holds", oldest)
        else:
            cursor.gaps += missed
            logger.warning("media sequence %d-%d left %s before it could be read: the Flow has a gap there",
                           cursor.next, oldest - 1, playlist.location)
        cursor.next = oldest
    queued = []
    for ref in segments:
        if ref.sequence < cursor.next or cursor.finished:
            continue
        if cursor.stop is not None and ref.sequence >= cursor.stop:
            feed.put(FeedEntry(ref, register=False))
            cursor.looked_ahead = True
            continue
        feed.put(FeedEntry(ref))
        cursor.next = ref.sequence + 1
        queued.append(ref)
    return queued


def queue_window(playlist: PlaylistLike, feed: SegmentFeed, *, start: int, count: int | None) -> list[Any]:
    """Queue the segments of a playlist read once (media sequence ``start`` on, ``count`` of them,
    plus the one after to end the last exactly) and close the feed; returns those to register."""
    queued = _queue_new(playlist, _cursor(playlist, start, count), feed, first_load=True)
    feed.close()
    return queued


def _cursor(playlist: PlaylistLike, start: int, count: int | None) -> _Cursor:
    segments = playlist.segments
    last = segments[-1].sequence
    if start > last:
        raise LiveError(f"--hls-start-segment {start} is past the last segment of {playlist.location} "
                        f"(media sequence {last})")
    oldest = segments[0].sequence
    begin = max(start, oldest)
    if start < oldest and start > 0:
        logger.warning("media sequence %d-%d is no longer in %s: starting at %d", start, oldest - 1,
                       playlist.location, oldest)
    return _Cursor(next=begin, stop=None if count is None else begin + count, explicit_start=start > 0)


def first_to_read(playlist: PlaylistLike, start: int) -> Any:
    """The first segment a run starting at media sequence ``start`` reads."""
    begin = max(start, playlist.segments[0].sequence)
    for ref in playlist.segments:
        if ref.sequence >= begin:
            return ref
    raise LiveError(f"--hls-start-segment {start} is past the last segment of {playlist.location}")


def reload_delay(playlist: PlaylistLike, changed: bool) -> Fraction:
    """RFC 8216 6.3.4: the target duration after a load that changed the playlist, else half."""
    target = playlist.target_duration or Fraction(2)
    return target if changed else target / 2


async def follow(
    first: PlaylistLike,
    load: Callable[[], Awaitable[PlaylistLike]],
    load_errors: tuple[type[Exception], ...],
    feed: SegmentFeed,
    *,
    start: int,
    count: int | None,
    reload_attempts: int,
    stop: asyncio.Event,
    first_loaded_at: float,
) -> int:
    """Fill ``feed`` from a live playlist until it ends (``EXT-X-ENDLIST``), ``count`` segments are
    queued, or ``stop`` is set; returns the number of segments missed as gaps. Failures go to the
    feed (and are raised)."""
    loop = asyncio.get_running_loop()
    try:
        cursor = _cursor(first, start, count)
        playlist = first
        began = first_loaded_at
        _queue_new(playlist, cursor, feed, first_load=True)
        changed = True  # a first load counts as a change (6.3.4)
        last_text = _fingerprint(playlist)
        while not playlist.ended and not cursor.finished:
            wait = float(reload_delay(playlist, changed)) - (loop.time() - began)
            if await _stopped(stop, wait):
                break
            failures = 0
            while True:
                began = loop.time()
                try:
                    reloaded = await load()
                    break
                except load_errors as exc:
                    failures += 1
                    if failures >= reload_attempts:
                        raise LiveError(f"{playlist.location} failed to load {failures} times in a row; "
                                        f"giving up: {exc}") from exc
                    backoff = _FIRST_RETRY * 2 ** (failures - 1)
                    logger.warning("reloading %s failed (%s); trying again in %s s", playlist.location, exc,
                                   float(backoff))
                    if await _stopped(stop, float(backoff)):
                        reloaded = None
                        break
            if reloaded is None:
                break
            _check_sequence(playlist, reloaded)
            playlist = reloaded
            fingerprint = _fingerprint(playlist)
            changed = fingerprint != last_text
            last_text = fingerprint
            _queue_new(playlist, cursor, feed, first_load=False)
        feed.close()
        return cursor.gaps
    except BaseException as exc:
        feed.fail(exc if isinstance(exc, Exception) else LiveError("stopped"))
        raise


def _fingerprint(playlist: PlaylistLike) -> tuple[int, int, bool]:
    return playlist.media_sequence, len(playlist.segments), playlist.ended


def _check_sequence(before: PlaylistLike, after: PlaylistLike) -> None:
    """RFC 8216 6.2.2: a live playlist's media sequence number never decreases."""
    if after.media_sequence < before.media_sequence:
        raise LiveError(f"{after.location}: the media sequence went backwards, from {before.media_sequence} "
                        f"to {after.media_sequence}; it no longer continues the stream being ingested")
    last_before = before.segments[-1].sequence if before.segments else before.media_sequence
    last_after = after.segments[-1].sequence if after.segments else after.media_sequence
    if last_after < last_before:
        raise LiveError(f"{after.location}: the last segment went back from media sequence {last_before} "
                        f"to {last_after}")


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set; True if it was."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


# --------------------------------------------------------------------------------------------
# The Flow's timeline


@dataclass(frozen=True)
class _Known:
    """A segment the Flow already has: its start on the Flow's timeline and its media's own."""

    start: Fraction  # seconds
    media_start: Fraction  # seconds: start - ts_offset


class Timeline:
    """Where each segment's first sample goes on the Flow's timeline, per essence, in its ticks.

    For each essence, the Flow time is the unwrapped media time plus a shift. The shift is zero for
    a new Flow and changes only where an ``EXT-X-DISCONTINUITY`` brings a new timestamp base. When
    the Flow already has segments (``know``), a segment whose media starts where one of them does
    takes that one's place and shift (a re-run finds what it registered before, whatever base it
    was on), and a segment after all of them continues from the last one (across a 33-bit wrap).
    The first essence (video) decides a rebase; the others keep their offset from it within the
    segment, so sync holds.
    """

    def __init__(self, bits: int = 33) -> None:
        self.bits = bits
        self._last: dict[str, int] = {}  # last first-pts placed, unwrapped media ticks
        self._shift: dict[str, Fraction] = {}  # Flow time minus unwrapped media time, in seconds
        self._known: dict[str, list[_Known]] = {}
        self._index: dict[str, dict[int, list[_Known]]] = {}  # per essence: media start ticks mod 2**bits
        self._previous: tuple[Any, Fraction, Fraction] | None = None  # ref, Flow start and end (s)
        self._ends: dict[str, Fraction] = {}  # per essence: where its last segment ends (s)

    def know(self, kind: str, segments: Sequence[Mapping[str, Any]]) -> None:
        """The segments (``timerange``, ``ts_offset``) the Flow of this essence already has."""
        known = []
        for segment in segments:
            timerange = TimeRange.from_str(segment["timerange"])
            if timerange.start is None or timerange.end is None:
                continue
            start = Fraction(timerange.start.to_nanosec(), 10**9)
            offset = Fraction(Timestamp.from_str(segment.get("ts_offset") or "0:0").to_nanosec(), 10**9)
            known.append((start, Fraction(timerange.end.to_nanosec(), 10**9), _Known(start, start - offset)))
        if not known:
            return
        self._known[kind] = [item for _, _, item in known]
        self._ends[kind] = max(end for _, end, _ in known)
        if self._previous is None:
            start, end, _ = max(known, key=lambda item: item[0])
            self._previous = (None, start, end)

    def _prepare(self, kind: str, tb: Fraction) -> None:
        """Index the known segments of ``kind`` by media start tick, and continue from the last."""
        known = self._known.pop(kind)
        period = 1 << self.bits
        index: dict[int, list[_Known]] = {}
        for item in known:
            index.setdefault(round(item.media_start / tb) % period, []).append(item)
        self._index[kind] = index
        last = max(known, key=lambda item: item.start)
        self._last[kind] = round(last.media_start / tb)
        self._shift[kind] = (round(last.start / tb) - self._last[kind]) * tb

    def _match(self, kind: str, stream: media.StreamTiming, natural: int) -> int | None:
        """The media ticks unwrapped, if a known segment starts with this media; its shift is taken."""
        tb = stream.time_base
        candidates = self._index.get(kind, {}).get(stream.first % (1 << self.bits))
        if not candidates:
            return None
        here = natural * tb + self._shift.get(kind, Fraction(0))
        chosen = min(candidates, key=lambda item: abs(item.start - here))
        unwrapped = round(chosen.media_start / tb)
        self._shift[kind] = (round(chosen.start / tb) - unwrapped) * tb
        return unwrapped

    def place(self, streams: Mapping[str, media.StreamTiming], ref: Any) -> dict[str, int]:
        """The Flow time, in each stream's ticks, of each stream's first sample in this segment.

        The first stream leads: a new timestamp base is decided on it, and the segment is then
        placed where no essence overlaps what came before, with the essences' offsets from each
        other kept (a splice's audio often runs on a little past its video)."""
        for kind, stream in streams.items():
            if kind in self._known:
                self._prepare(kind, stream.time_base)
        unwrapped: dict[str, int] = {}
        matched: dict[str, bool] = {}
        for kind, stream in streams.items():
            if kind in self._last:
                natural = media.unwrap_near(stream.first, self._last[kind], self.bits)
            else:
                natural = stream.first % (1 << self.bits)
            found = self._match(kind, stream, natural)
            unwrapped[kind] = natural if found is None else found
            matched[kind] = found is not None
        lead = next(iter(streams))
        lead_tb = streams[lead].time_base
        target = None if matched[lead] else self._new_base(lead, unwrapped[lead], streams[lead], ref)
        if target is not None:
            for kind, stream in streams.items():
                if kind == lead:
                    continue
                # the same clock as the lead: unwrap next to it, not next to this stream's past
                tb = stream.time_base
                unwrapped[kind] = media.unwrap_near(stream.first, round(unwrapped[lead] * lead_tb / tb), self.bits)
                if kind in self._ends:
                    target = max(target, self._ends[kind] - (unwrapped[kind] * tb - unwrapped[lead] * lead_tb))
            lead_ticks = math.ceil(target / lead_tb)
            shift = (lead_ticks - unwrapped[lead]) * lead_tb
            for kind in streams:
                self._shift[kind] = shift
            logger.info("media sequence %s starts a new timestamp base: placed at %s on the Flow's timeline",
                        getattr(ref, "sequence", "?"), media.pts_to_timestamp(lead_ticks, lead_tb))
        placed: dict[str, int] = {}
        for kind, stream in streams.items():
            tb = stream.time_base
            self._last[kind] = unwrapped[kind]
            placed[kind] = unwrapped[kind] + round(self._shift.setdefault(kind, Fraction(0)) / tb)
            self._ends[kind] = (placed[kind] + stream.end - stream.first) * tb
        start = placed[lead] * lead_tb
        self._previous = (ref, start, self._ends[lead])
        return placed

    def _new_base(self, kind: str, unwrapped: int, stream: media.StreamTiming, ref: Any) -> Fraction | None:
        """Where (seconds) a segment starting a new timestamp base goes, or None if it does not."""
        if not getattr(ref, "discontinuity", False) or self._previous is None:
            return None
        tb = stream.time_base
        here = unwrapped * tb + self._shift.get(kind, Fraction(0))
        expected = self._expected(ref)
        previous_ref, _, previous_end = self._previous
        duration = previous_ref.duration if previous_ref is not None and previous_ref.duration else Fraction(2)
        if here >= previous_end - tb and abs(here - expected) <= duration / 2:
            return None  # the timestamps carry on across the discontinuity
        return expected

    def _expected(self, ref: Any) -> Fraction:
        """Where the playlist says this segment starts, on the Flow's timeline (seconds)."""
        assert self._previous is not None
        previous_ref, previous_start, previous_end = self._previous
        if previous_ref is not None:
            before, now = previous_ref.program_date_time, ref.program_date_time
            if before is not None and now is not None:
                elapsed = now - before
                return previous_start + Fraction(elapsed.days * 86400 + elapsed.seconds) + \
                    Fraction(elapsed.microseconds, 10**6)
            missed = ref.sequence - previous_ref.sequence - 1
            return previous_end + max(missed, 0) * previous_ref.duration
        return previous_end


# --------------------------------------------------------------------------------------------
# Stopping and the status line


class StopSignals:
    """A stop signal while following (through ``credentials.stop_hook``, under
    ``credentials.run_async``): the first sets ``event`` (stop reading the playlist, finish what
    was read); the second cancels ``task`` (abandon it; nothing half-registered either way);
    later ones wait for that."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.received: signal.Signals | None = None
        self._task: asyncio.Task[Any] | None = None
        self._abandoned = False
        self._done = False

    def done(self) -> None:
        """The ingest has ended: a signal from now on (as the connection closes) changes nothing."""
        self._done = True

    def _handle(self, signum: signal.Signals) -> None:
        if self._done:
            return
        if self.received is None:
            self.received = signum
            logger.warning("%s: finishing the segments already read, then stopping (again to abandon them)",
                           signum.name)
            self.event.set()
        elif self._task is not None and not self._abandoned:
            self._abandoned = True
            self._task.cancel()

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        self._task = asyncio.current_task()
        with stop_hook(self._handle):
            yield self

    @property
    def exit_code(self) -> int:
        return 128 + self.received if self.received is not None else 0


def status_line(ingested: int, sequence: int | None, flow_end: Timestamp | None) -> str:
    """The live status: what a person watching a followed ingest wants to see."""
    last = "-" if sequence is None else str(sequence)
    end = "-" if flow_end is None else str(flow_end)
    return f"{ingested} segments ingested, last media sequence {last}, Flow ends at {end}"

"""Export a TAMS Flow, or part of one, to a media file holding exactly the frames the Flow references.

The Flow timeline is not the media timeline. For every segment this script:

- reads the object's packets and unwraps MPEG-TS timestamps (33 bits at 90 kHz; the demuxer also
  moves timestamps just below 2^33 to just below zero), anchored on the segment's
  ``object_timerange`` so the high bits carried by ``ts_offset`` line up;
- puts each frame on the Flow timeline (``media time + ts_offset``) and keeps the frames whose
  Flow time lies in the segment's ``timerange`` (and, with ``--exact``, in ``--timerange``), a frame
  within a quarter of a frame of a bound counting as on it (``media.in_timerange``, the rule
  simple_edit.py cuts by), or the frames picked by the deprecated ``sample_offset``/``sample_count``
  (presentation order);
- copies the kept packets when decoding can start at the first of them and no kept frame needs a
  dropped one (the kept packets run unbroken in decode order from a keyframe); otherwise decodes
  that object alone and re-encodes just the kept frames with the Flow's codec and, for H.264, its
  ``avc_parameters`` profile and level (first one forced to be a keyframe), logging which segments
  were re-encoded.

Audio Flows, multi-essence Flows and a video Flow with ``--audio-flow-id`` are exported by
``outgest_audio.py``: one file with both streams in sync, audio cut to the sample.

Output timestamps are Flow timeline times (MPEG-TS: 90 kHz, written modulo 2^33 as the format
does; gaps between segments stay gaps). MP4 output (``--output`` ending in ``.mp4``) starts at
zero instead, since MP4 cannot carry a TAI-scale start time usefully. Objects are downloaded
``--concurrency`` at a time into temporary files while packets are written strictly in timeline
order, so memory and disk use stay bounded whatever the Flow's length. The output is written to a
temporary name beside the requested one and renamed only when complete.

An MPEG-TS export of an MPEG-TS Flow writes each segment that uses its whole object, at the Flow's
own timestamps, as the object's bytes (``RawJoin``; only the continuity counters are renumbered),
after checking from the packet headers alone (``ts_scan``) that they hold exactly the frames the
steps above would write; those objects are downloaded into memory, and PyAV is not even imported
unless some segment needs the muxer.

Usage::

    ./outgest_file.py --flow-id FLOW --output out.ts [--timerange '[10:0_20:0)' --exact]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import logging
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, Generic, Self, TypeVar, cast

from mediatimestamp.immutable import TimeRange, Timestamp

import ts_scan
from client import NotFound, TAMSClient, TAMSError, TAMSResponseError
from credentials import HelpFormatter, add_credential_args, connection_from_args, interruption, print_result, run_async
from gop_cuts import ENCODER_OPTIONS, ENCODERS, NeedPrecharge, ReencodeError, needs_prior, plan_pieces, reencode, set_verbose
from media import (
    PTS_WRAP,
    TIMING_OPTIONS,
    TS_CLOCK,
    MediaError,
    PtsUnwrapper,
    av,  # PyAV, imported on first use
    bound_tolerance,
    in_timerange,
    load_av,
    pts_to_timestamp,
    read_timing,
)

__all__ = [
    "MPEGTS_WRAP",
    "DecodeClock",
    "FlowFileWriter",
    "FrameTiming",
    "ObjectMedia",
    "OutgestError",
    "OutgestSummary",
    "RawJoin",
    "SegmentPlan",
    "SegmentRef",
    "TimingChecks",
    "encoder_options",
    "decode_ticks",
    "finished",
    "flow_time",
    "mp4_time_base",
    "open_segment",
    "outgest",
    "plan_segment",
    "read_object",
    "unwrap_mpegts",
    "write_segment",
]

logger = logging.getLogger("outgest_file")  # the command's name, in its log lines

MPEGTS_WRAP = PTS_WRAP  # MPEG-TS pts/dts are 33-bit counts of a 90 kHz clock (TS_CLOCK)
WORK_TIME_BASE = Fraction(1, TS_CLOCK)  # packet timestamps handed to the muxer are in this base

# MPEG-TS objects, and MP4: whole files or fMP4 fragments with init objects (TAMS init_segments).
SUPPORTED_CONTAINERS = {"video/mp2t", "video/mp4", "audio/mp4"}
CODECS = {  # Flow codec (MIME type, compared case-insensitively) -> FFmpeg codec name
    "video/h264": "h264",
    "video/h265": "hevc",
    "video/hevc": "hevc",
    "audio/aac": "aac",
    "audio/mp4a-latm": "aac",
}
# H.264 profile_idc (as in essence_parameters.avc_parameters.profile) -> libx264 ``profile``.
# x264 has no Extended profile (88); its Baseline is Constrained Baseline.
X264_PROFILES = {66: "baseline", 77: "main", 100: "high", 110: "high10", 122: "high422", 244: "high444"}


class OutgestError(Exception):
    """Exporting failed; ``str()`` is one line for the user."""


# --------------------------------------------------------------------------------------------
# Segments and timing


def _to_fraction(ts: Timestamp) -> Fraction:
    return Fraction(ts.to_nanosec(), 1_000_000_000)


def _seconds(tr: TimeRange) -> float | None:
    """A finite timerange's length in seconds, for the progress bar only; else None."""
    if tr.is_empty() or tr.start is None or tr.end is None:
        return None
    return float(_to_fraction(tr.end - tr.start))


def _timerange(value: object) -> TimeRange | None:
    if value is None:
        return None
    return value if isinstance(value, TimeRange) else TimeRange.from_str(str(value))


def _url_list(urls: object) -> tuple[Mapping[str, Any], ...]:
    return tuple(u if isinstance(u, Mapping) else {"url": str(u)} for u in urls or ())  # type: ignore[attr-defined]


@dataclass(frozen=True)
class InitRef:
    """A segment's ``init_object``: the fMP4 initialization segment its object needs."""

    object_id: str
    get_urls: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class SegmentRef:
    """What a Flow segment says about the object it uses."""

    object_id: str
    timerange: TimeRange
    ts_offset: Timestamp = field(default_factory=Timestamp)
    object_timerange: TimeRange | None = None
    sample_offset: int | None = None
    sample_count: int | None = None
    get_urls: tuple[Mapping[str, Any], ...] = ()
    init: InitRef | None = None

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> SegmentRef:
        ts_offset = item.get("ts_offset")
        init = item.get("init_object")
        return cls(
            object_id=str(item["object_id"]),
            timerange=TimeRange.from_str(str(item["timerange"])),
            ts_offset=Timestamp.from_str(str(ts_offset)) if ts_offset is not None else Timestamp(),
            object_timerange=_timerange(item.get("object_timerange")),
            sample_offset=item.get("sample_offset"),
            sample_count=item.get("sample_count"),
            get_urls=_url_list(item.get("get_urls")),
            init=InitRef(str(init["object_id"]), _url_list(init.get("get_urls")))
            if isinstance(init, Mapping) and init.get("object_id") else None,
        )

    @property
    def media_timerange(self) -> TimeRange:
        """The object's span on its own timeline, as registered (default ``timerange - ts_offset``)."""
        if self.object_timerange is not None:
            return self.object_timerange
        return TimeRange(
            self.timerange.start - self.ts_offset if self.timerange.start is not None else None,
            self.timerange.end - self.ts_offset if self.timerange.end is not None else None,
            self.timerange.inclusivity,
        )


def flow_time(ticks: int, time_base: Fraction, ts_offset: Timestamp) -> Fraction:
    """A media timestamp (unwrapped, in ``time_base`` units) on the Flow timeline, exactly, in seconds."""
    return Fraction(ticks) * time_base + _to_fraction(ts_offset)


def unwrap_mpegts(values: Sequence[int], anchor: int | None = None) -> list[int]:
    """Undo 33-bit wrapping in a sequence of MPEG-TS timestamps (decode order, 90 kHz ticks).

    ``media.PtsUnwrapper`` places each value in the wrap period nearest the one before it (a
    wrap inside the sequence adds 2^33; values the demuxer moved below zero come back up). The
    result is then shifted by whole wrap periods so its smallest value is as close as possible
    to ``anchor``: the start of the object's timeline as registered, whose high bits go with the
    segment's ``ts_offset``. Without an anchor the smallest value is kept in [0, 2^33).
    """
    if not values:
        return []
    unwrapper = PtsUnwrapper()
    out = [unwrapper.unwrap(v) for v in values]
    lowest = min(out)
    target = anchor if anchor is not None else lowest % MPEGTS_WRAP
    shift = round(Fraction(target - lowest, MPEGTS_WRAP)) * MPEGTS_WRAP
    return [v + shift for v in out]


def _wrapped_distance(later: int, earlier: int) -> int:
    """``later - earlier`` for two 33-bit timestamps less than half a wrap period apart."""
    step = (later - earlier) % MPEGTS_WRAP
    return step - MPEGTS_WRAP if step >= MPEGTS_WRAP // 2 else step


# --------------------------------------------------------------------------------------------
# Reading one object


@dataclass(frozen=True)
class FrameTiming:
    """One coded frame (packet) of an object: unwrapped timestamps in the stream's time base."""

    pts: int
    dts: int
    keyframe: bool


@dataclass
class ObjectMedia:
    """An opened object: its chosen stream and packets in decode order. Close it when done."""

    container: av.container.InputContainer
    stream: av.stream.Stream
    packets: list[av.Packet]
    frames: list[FrameTiming]  # parallel to packets
    time_base: Fraction
    kind: str  # "video" or "audio"
    codec: str
    frame_duration: Fraction | None  # seconds; None when unknown
    sample_rate: int | None = None

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _pick_stream(container: av.container.InputContainer, kind: str, codec: str | None) -> av.stream.Stream:
    streams = [s for s in container.streams if s.type == kind]
    if codec is not None:
        matching = [s for s in streams if s.codec_context is not None and s.codec_context.name == codec]
        if streams and not matching:
            found = ", ".join(sorted({s.codec_context.name for s in streams if s.codec_context is not None}))
            raise OutgestError(f"the object holds {kind} coded as {found}, not {codec} as the Flow says")
        streams = matching
    if not streams:
        raise OutgestError(f"the object has no {kind} stream")
    return streams[0]


# libavformat's stream probe reads up to 5 MB (a whole segment) to estimate frame rates, but an
# export takes the rate from the Flow: given it, the probe stops after the first 32 KiB, enough
# for the codec parameters (size, parameter sets) of the video stream; else the whole probe.
QUICK_PROBE = {**TIMING_OPTIONS, "probesize": "32768", "analyzeduration": "0"}


def _open_object(path: Path, *, quick: bool) -> av.container.InputContainer:
    container = av.open(str(path), options=QUICK_PROBE if quick else TIMING_OPTIONS)
    if quick and not all(s.codec_context is not None and s.codec_context.width and s.codec_context.extradata
                         for s in container.streams.video):
        container.close()  # the parameters come later in this object: probe it all
        container = av.open(str(path), options=TIMING_OPTIONS)
    return container


def read_object(
    path: Path,
    *,
    kind: str,
    codec: str | None = None,
    anchor: TimeRange | None = None,
    frame_rate: Fraction | None = None,
) -> ObjectMedia:
    """Open ``path``, pick its first ``kind`` ("video"/"audio") stream and read its packets.

    MPEG-TS timestamps are unwrapped and anchored on ``anchor`` (the object's timeline span as
    registered), so pts values near the wrap get the high bits ``ts_offset`` expects.
    """
    try:
        container = _open_object(path, quick=kind == "video" and frame_rate is not None)
    except (av.error.FFmpegError, OSError) as exc:
        raise OutgestError(f"cannot read the object as media: {exc}") from exc
    try:
        stream = _pick_stream(container, kind, codec)
        if stream.time_base is None:
            raise OutgestError(f"the object's {kind} stream has no time base")
        time_base = Fraction(stream.time_base)
        packets: list[av.Packet] = []
        raw: list[tuple[int, int, bool]] = []
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            if packet.pts is None:
                raise OutgestError("the object has a packet without a presentation timestamp")
            dts = packet.dts if packet.dts is not None else packet.pts
            packets.append(packet)
            raw.append((packet.pts, dts, kind == "audio" or packet.is_keyframe))
    except av.error.FFmpegError as exc:
        container.close()
        raise OutgestError(f"cannot read the object as media: {exc}") from exc
    except BaseException:
        container.close()
        raise
    if not packets:
        container.close()
        raise OutgestError(f"the object has no {kind} packets")

    if container.format.name == "mpegts" and time_base == WORK_TIME_BASE:
        anchor_ticks = None
        if anchor is not None and anchor.start is not None:
            anchor_ticks = anchor.start.to_count(TS_CLOCK)
        pts_values = unwrap_mpegts([p for p, _, _ in raw], anchor_ticks)
        # dts sits just before its pts: keep the (wrapped) distance between them.
        dts_values = [pts - _wrapped_distance(p, d) for pts, (p, d, _) in zip(pts_values, raw)]
    else:
        pts_values = [p for p, _, _ in raw]
        dts_values = [d for _, d, _ in raw]
    frames = [FrameTiming(pts, dts, key) for pts, dts, (_, _, key) in zip(pts_values, dts_values, raw)]

    sample_rate = None
    if kind == "audio":
        audio = cast(av.audio.codeccontext.AudioCodecContext, stream.codec_context)
        sample_rate = audio.sample_rate or None
        samples = audio.frame_size or 0
        durations = [p.duration for p in packets if p.duration]
        if durations:
            frame_duration: Fraction | None = Fraction(durations[0]) * time_base
        elif samples and sample_rate:
            frame_duration = Fraction(samples, sample_rate)
        else:
            frame_duration = None
    else:
        rate = frame_rate or (Fraction(stream.average_rate) if stream.average_rate else None)
        frame_duration = 1 / rate if rate else None
    return ObjectMedia(
        container=container,
        stream=stream,
        packets=packets,
        frames=frames,
        time_base=time_base,
        kind=kind,
        codec=stream.codec_context.name,
        frame_duration=frame_duration,
        sample_rate=sample_rate,
    )


# --------------------------------------------------------------------------------------------
# Planning: which frames, and can their packets be copied


@dataclass(frozen=True)
class SegmentPlan:
    """The frames one segment takes from its object, and how to write them.

    ``first``/``stop`` index frames in presentation order; ``packets`` are the decode-order indices
    of those frames, ascending. ``copy`` is False when the frames must be decoded and re-encoded;
    ``reason`` then says why.
    """

    first: int
    stop: int
    packets: tuple[int, ...]
    copy: bool
    reason: str = ""

    @property
    def frame_count(self) -> int:
        return self.stop - self.first


def presentation_order(frames: Sequence[FrameTiming]) -> list[int]:
    """Decode-order indices sorted by pts (ties keep decode order)."""
    return sorted(range(len(frames)), key=lambda i: (frames[i].pts, i))


def _select_by_samples(
    frames: Sequence[FrameTiming], order: Sequence[int], segment: SegmentRef, time_base: Fraction, sample_rate: int | None
) -> tuple[int, int]:
    offset = segment.sample_offset or 0
    count = segment.sample_count
    if sample_rate is None:  # video: one sample is one frame
        stop = len(order) if count is None else min(len(order), offset + count)
        return min(offset, len(order)), max(min(offset, len(order)), stop)
    # audio: the counts are of samples; take the coded frames whose first sample falls inside
    origin = frames[order[0]].pts
    first, stop = len(order), len(order)
    for position, index in enumerate(order):
        sample = round((frames[index].pts - origin) * time_base * sample_rate)
        inside = sample >= offset and (count is None or sample < offset + count)
        if inside and first == len(order):
            first = position
        if not inside and first < len(order):
            stop = position
            break
    return first, stop


def _shortest_step(frames: Sequence[FrameTiming], order: Sequence[int], time_base: Fraction) -> Fraction | None:
    """The smallest gap (seconds) between consecutive frames in presentation order, if any."""
    steps = [frames[b].pts - frames[a].pts for a, b in zip(order, order[1:]) if frames[b].pts > frames[a].pts]
    return min(steps) * time_base if steps else None


def _kept_run(count: int, kept: Callable[[int], bool]) -> tuple[int, int]:
    """``(first, stop)`` of the positions ``p < count`` for which ``kept(p)``, or ``(0, 0)``.

    For frames in presentation order and membership of a timerange (or of two), the kept
    positions are one run, since each membership is an interval of time: so only the run's two
    ends and the frames outside it are tested (for a whole segment, two frames of its object).
    """
    first = next((p for p in range(count) if kept(p)), None)
    if first is None:
        return 0, 0
    last = next(p for p in range(count - 1, first - 1, -1) if kept(p))
    return first, last + 1


def plan_segment(
    frames: Sequence[FrameTiming],
    time_base: Fraction,
    segment: SegmentRef,
    *,
    request: TimeRange | None = None,
    sample_rate: int | None = None,
    frame_duration: Fraction | None = None,
) -> SegmentPlan:
    """Choose the frames ``segment`` takes from its object and whether their packets can be copied.

    Frames are kept when their Flow time (pts + ``ts_offset``) lies in the segment's ``timerange``
    and in ``request`` (given only for ``--exact``), by the membership rule of
    :func:`in_timerange`: a frame within a quarter of ``frame_duration`` (seconds; the Flow's
    frame duration, or the audio coded frame's; when None, the shortest step between the object's
    frames) of a bound is on that bound. Segments carrying the deprecated
    ``sample_offset``/``sample_count`` keep the frames whose presentation-order index (audio: first
    sample) is in that range instead. ``sample_rate`` is set for audio, where every coded frame
    decodes alone.

    Copying is safe when the kept packets are one unbroken run in decode order that starts with
    the first kept frame, and that frame is a keyframe (or the object's own first frame, which
    decodes exactly as it did in the source): then no kept frame can reference a dropped one,
    since references are always decoded earlier.
    """
    order = presentation_order(frames)
    tolerance = bound_tolerance(frame_duration or _shortest_step(frames, order, time_base))

    def inside(index: int, timerange: TimeRange) -> bool:
        return in_timerange(flow_time(frames[index].pts, time_base, segment.ts_offset), timerange, tolerance)

    if segment.sample_offset is not None or segment.sample_count is not None:
        first, stop = _select_by_samples(frames, order, segment, time_base, sample_rate)
        if request is not None:
            picked = [p for p in range(first, stop) if inside(order[p], request)]
            first, stop = (picked[0], picked[-1] + 1) if picked else (first, first)
    else:
        first, stop = _kept_run(
            len(order), lambda p: inside(order[p], segment.timerange) and (request is None or inside(order[p], request))
        )
    kept = tuple(sorted(order[first:stop]))
    if not kept:
        return SegmentPlan(first, stop, (), True)
    if first == 0 and stop == len(order):
        return SegmentPlan(first, stop, kept, True)  # the whole object, exactly as stored
    if sample_rate is not None:
        return SegmentPlan(first, stop, kept, True)  # audio frames decode on their own
    start = order[first]
    if not (frames[start].keyframe or (start == 0 and first == 0)):
        return SegmentPlan(first, stop, kept, False, "the cut falls inside a GOP")
    if kept[0] != start:
        return SegmentPlan(first, stop, kept, False, "a kept frame decodes before the first one shown")
    if kept[-1] - kept[0] + 1 != len(kept):
        return SegmentPlan(first, stop, kept, False, "kept frames reference frames after the cut")
    return SegmentPlan(first, stop, kept, True)


# --------------------------------------------------------------------------------------------
# Writing


P = TypeVar("P")


class DecodeClock(Generic[P]):
    """Decode timestamps for one video stream joined from pieces encoded apart (copied GOPs,
    re-encoded heads and tails, objects of different encodes), instead of the pieces' own.

    Packets go in (``push``) in decode order with their pts and come out ``WINDOW`` packets later
    with the time and delay that give their dts: the i-th packet's dts is the i-th smallest pts
    (``shown``) minus the reorder delay, so decode times rise frame by frame across every join.
    Writers round ``shown`` and ``delay`` to their ticks apart (``decode_ticks``), so the decode
    times keep the presentation grid's steps. The delay is the largest any object so far needs
    (``set_reorder_delay``, called before an object's packets). When a later object reorders more
    deeply than those before it, the extra delay is spread evenly over the packets still waiting
    ahead of it, so the decode clock runs a little fast there: no two packets share a dts and none
    needs a one-tick nudge. Before anything has come out, a deeper delay simply applies from the
    start.
    """

    WINDOW = 32  # more packets than any H.264/HEVC decoder may hold back for reordering

    def __init__(self) -> None:
        self._pending: deque[tuple[P, Fraction]] = deque()
        self._shown: list[Fraction] = []  # heap of the pending packets' pts
        self._delay = Fraction(0)  # applied to the next packet out
        self._target: Fraction | None = None  # the largest delay asked for
        self._ramp = 0  # packets over which the applied delay still rises to the target
        self.first_shown: Fraction | None = None  # the smallest pts of the stream, once known

    @property
    def delay_known(self) -> bool:
        return self._target is not None

    @property
    def target_delay(self) -> Fraction | None:
        """The largest reorder delay asked for so far (seconds), if any."""
        return self._target

    def set_reorder_delay(self, seconds: Fraction) -> None:
        if self._target is not None and seconds <= self._target:
            return
        self._target = seconds
        if self.first_shown is None:
            self._delay = seconds
        else:
            self._ramp = len(self._pending)

    def follow(self, first_shown: Fraction, delay: Fraction) -> None:
        """Packets shown from ``first_shown`` on went out by other means (none waiting here),
        reordered by ``delay``: the packets to come carry on from that delay (a deeper one is
        spread over the packets waiting then, as after packets of our own)."""
        assert not self._pending
        if self.first_shown is None:
            self.first_shown = first_shown
        self._target = self._delay = delay
        self._ramp = 0

    def push(self, item: P, pts: Fraction) -> Iterator[tuple[P, Fraction, Fraction, Fraction]]:
        """Take a packet (``item``) presented at ``pts``; yields the (item, pts, shown, delay) now due."""
        self._pending.append((item, pts))
        heapq.heappush(self._shown, pts)
        if len(self._pending) > self.WINDOW:
            yield self._next()

    def flush(self) -> Iterator[tuple[P, Fraction, Fraction, Fraction]]:
        """Every packet still waiting, at the end of the stream."""
        while self._pending:
            yield self._next()

    def _next(self) -> tuple[P, Fraction, Fraction, Fraction]:
        item, pts = self._pending.popleft()
        shown = heapq.heappop(self._shown)
        if self.first_shown is None:
            self.first_shown = shown
        if self._ramp and self._target is not None:
            self._delay += (self._target - self._delay) / self._ramp
            self._ramp -= 1
        return item, pts, shown, self._delay


def decode_ticks(pts_ticks: int, shown_ticks: int, delay: Fraction, time_base: Fraction) -> int:
    """A ``DecodeClock`` packet's dts in ticks of ``time_base``, never after its pts."""
    return min(shown_ticks - round(delay / time_base), pts_ticks)


def mp4_time_base(frame_rate: Fraction) -> Fraction:
    """An MP4 video time base on which every frame lasts whole ticks: one over the frame rate's
    numerator, doubled up to at least 10000 as libavformat's mov muxer would (25 fps: 1/12800,
    60000/1001: 1/60000), so the muxer keeps it and a decode clock has room between frames.
    Frame times from 90 kHz media (59.94 fps frames last 1501.5 ticks there, so they alternate
    1501 and 1502) round onto its grid exactly."""
    scale = frame_rate.numerator
    while scale < 10000:
        scale *= 2
    return Fraction(1, scale)


class FlowFileWriter:
    """One output file, written under a temporary name and renamed by ``commit()``.

    Packets arrive in decode order with Flow timeline times (seconds, exact). MPEG-TS is written
    at 90 kHz; MP4 in ``mp4_time_base(frame rate)``, so every frame lasts a whole number of ticks
    and players read the exact rate, with the ``moov`` box first (fast start) and HEVC tagged
    ``hvc1``. Decode timestamps come from a ``DecodeClock``, not from the pieces joined.
    ``nudged`` counts decode timestamps that still had to be moved a tick forward to keep them
    increasing (none, unless a stream reorders more deeply than its window can absorb).
    """

    def __init__(self, path: Path, frame_rate: Fraction | None = None) -> None:
        self.path = path
        self.format = self.format_of(path)
        if path.is_dir():
            raise OutgestError(f"cannot write {path}: it is a directory")
        self.temp_path = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            self.temp_path.open("wb").close()
        except OSError as exc:
            raise OutgestError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self.time_base = WORK_TIME_BASE
        if self.format == "mp4" and frame_rate:
            self.time_base = mp4_time_base(frame_rate)
        self._output: av.container.OutputContainer | None = None
        self._stream: av.stream.Stream | None = None
        self._codec: str | None = None
        self._origin: Fraction | None = None
        self._clock: DecodeClock[tuple[av.Packet, Fraction | None]] = DecodeClock()
        self._last_dts: int | None = None
        self._parameter_sets: set[bytes] = set()  # the extradata of every stream written from
        self.mixed_parameter_sets = False  # set when re-encoded frames are written
        self.frames = 0
        self.nudged = 0
        self._annexb = AnnexB()
        # MPEG-TS written in turns as whole objects (RawJoin) and through a muxer: once the
        # first muxer is done or the first object written, the file is open here, and later
        # muxers write into it through a _CarriedOn that carries the continuity counters on.
        self._file: BinaryIO | None = None
        self._sink: _CarriedOn | None = None
        self._continuity = ts_scan.Continuity()
        self._layout: ts_scan.TsLayout | None = None  # the stream's PIDs, program and tables
        self._tables_version: int | None = None  # of the tables written last
        self._pcr_lag: int | None = None  # ticks the objects' PCRs run behind their decode times

    @staticmethod
    def format_of(path: Path) -> str:
        return "mp4" if path.suffix.lower() == ".mp4" else "mpegts"

    def _open(self, template: av.stream.Stream) -> av.stream.Stream:
        if self._stream is not None:
            return self._stream
        options = {"avoid_negative_ts": "disabled"} if self.format == "mpegts" else self._mp4_options()
        target: str | _CarriedOn = str(self.temp_path)
        if self.format == "mpegts" and self._layout is not None:
            # The objects' PIDs, program and transport stream, so that whole objects and muxed
            # packets make one stream; a table version other than theirs (before or after it),
            # so that demuxers read its tables and theirs anew.
            layout = self._layout
            options.update(mpegts_transport_stream_id=str(layout.transport_stream_id),
                           mpegts_service_id=str(layout.program), mpegts_pmt_start_pid=str(layout.pmt_pid),
                           mpegts_start_pid=str(layout.video_pid))
            before = self._tables_version if self._tables_version is not None else layout.version
            options["tables_version"] = str((before + 1) % 32)
            if self._pcr_lag:  # its PCRs as far behind the decode times as the objects', so none steps back
                options.update(max_delay=str(round(Fraction(self._pcr_lag * 1_000_000, TS_CLOCK))), mpegts_copyts="1")
        if self._file is not None:
            target = self._sink = _CarriedOn(self._file, self._continuity)
            if template.codec_context.name != self._codec:
                raise OutgestError(f"an object holds {template.codec_context.name}, earlier ones {self._codec}")
        try:
            self._output = av.open(target, "w", format=self.format, container_options=options)
            self._stream = self._output.add_stream_from_template(template)
            self._annexb.open(template, self._stream)
            if self.format == "mp4" and template.codec_context.name == "hevc":
                # hev1 keeps the in-band parameter sets of re-encoded or differently encoded
                # pieces; commit() makes it hvc1 when one set of them serves the whole file.
                self._stream.codec_context.codec_tag = "hev1"
        except ValueError as exc:
            raise OutgestError(f"cannot write {template.codec_context.name} into {self.format}: {exc}") from exc
        except (av.error.FFmpegError, OSError) as exc:
            raise OutgestError(f"cannot write {self.path}: {exc}") from exc
        self._stream.time_base = self.time_base
        self._codec = template.codec_context.name
        self._tables_version = int(options.get("tables_version", 0))
        return self._stream

    def expect_layout(self, layout: ts_scan.TsLayout, pcr_lag: int | None = None) -> None:
        """The PIDs and program of the objects to come, for a first muxer to use (so that whole
        objects can follow its packets); too late once a muxer has written (its PIDs are then
        libavformat's own, and no whole object follows them)."""
        if self._layout is None and self._codec is None:
            self._layout, self._pcr_lag = layout, pcr_lag

    def _close_muxer(self) -> None:
        """Every packet of the muxer out, and the file open here to be appended to."""
        assert self._output is not None
        for item, pts, shown, delay in self._clock.flush():
            self._emit(item, pts, shown, delay)
        direct = self._file is None
        try:
            self._output.close()
        except (av.error.FFmpegError, OSError) as exc:
            raise OutgestError(f"cannot write {self.path}: {exc}") from exc
        self._output = self._stream = None
        self._check_sink()
        if direct:
            try:
                self._file = self.temp_path.open("r+b")
            except OSError as exc:
                raise OutgestError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
            assert self._layout is not None
            self._continuity.learn(self._file, (ts_scan.PAT_PID, ts_scan.SDT_PID, self._layout.pmt_pid,
                                                self._layout.video_pid))

    def _check_sink(self) -> None:
        if self._sink is not None:
            if self._sink.pending:
                raise OutgestError(f"the muxer left {self._sink.pending} bytes that are no whole MPEG-TS packet")
            self._sink = None

    def set_reorder_delay(self, seconds: Fraction) -> None:
        """How far (seconds) the coming object's decode times must run behind its presentation
        times (``reorder_delay``); the largest so far counts (see ``DecodeClock``)."""
        self._clock.set_reorder_delay(seconds)

    def write(
        self, packet: av.Packet, template: av.stream.Stream, pts: Fraction, dts: Fraction, duration: Fraction | None
    ) -> None:
        """Mux ``packet`` at Flow time ``pts`` (seconds); ``pts - dts`` gives the reorder delay
        when ``set_reorder_delay`` was not called before the first packet."""
        self._open(template)
        packet = self._annexb.convert(packet, template)
        if template.codec_context.name != self._codec:
            raise OutgestError(f"an object holds {template.codec_context.name}, earlier ones {self._codec}")
        if not self._clock.delay_known:
            self._clock.set_reorder_delay(max(Fraction(0), pts - dts))
        self._parameter_sets.add(bytes(template.codec_context.extradata or b""))
        for item, at, shown, delay in self._clock.push((packet, duration), pts):
            self._emit(item, at, shown, delay)

    def write_raw(self, whole: RawObject) -> bool:
        """Append a whole MPEG-TS object as it is, its continuity counters renumbered; False
        (nothing written) if it cannot follow what the file holds: another stream layout or
        codec, or decode times that do not rise past the last muxed packet's."""
        layout = whole.scan.layout
        if self.format != "mpegts" or (self._layout is None and self._codec is not None) \
                or (self._layout is not None and not layout.same_stream(self._layout)) \
                or (self._codec is not None and layout.codec != self._codec):
            return False
        if self._output is not None:
            target = self._clock.target_delay
            if target is None or Fraction(whole.delay, TS_CLOCK) > target:
                # Muxed instead, its deeper delay spread over the packets still waiting in the
                # muxer's clock; once they are out, the object's decode times could not follow.
                return False
            self._close_muxer()
        if self._last_dts is not None and whole.first_dts <= self._last_dts:
            return False
        try:
            if self._file is None:
                self._file = self.temp_path.open("wb")
            self._continuity.join(whole.data, whole.scan)
            self._file.write(whole.data)
        except OSError as exc:
            raise OutgestError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._layout, self._tables_version, self._codec = layout, layout.version, layout.codec
        self._pcr_lag = whole.scan.pcr_lag
        self._last_dts = whole.last_dts
        self._clock.follow(Fraction(whole.first_dts + whole.delay, TS_CLOCK), Fraction(whole.delay, TS_CLOCK))
        self.frames += whole.frames
        return True

    def _ticks(self, t: Fraction) -> int:
        assert self._origin is not None
        return round((t - self._origin) / self.time_base)

    def _emit(self, item: tuple[av.Packet, Fraction | None], pts: Fraction, shown: Fraction, delay: Fraction) -> None:
        packet, duration = item
        if self._origin is None:
            assert self._clock.first_shown is not None
            self._origin = self._clock.first_shown if self.format == "mp4" else Fraction(0)
        assert self._stream is not None and self._output is not None
        pts_ticks = self._ticks(pts)
        dts_ticks = decode_ticks(pts_ticks, self._ticks(shown), delay, self.time_base)
        if self._last_dts is not None and dts_ticks <= self._last_dts:
            dts_ticks = self._last_dts + 1
            self.nudged += 1
            if dts_ticks > pts_ticks:
                raise OutgestError(
                    f"decode order breaks at Flow time {_at(pts)}: frames would have to be decoded after they are shown"
                )
        self._last_dts = dts_ticks
        packet.stream = self._stream
        packet.time_base = self.time_base
        packet.pts = pts_ticks
        packet.dts = dts_ticks
        packet.duration = round(duration / self.time_base) if duration else 0
        try:
            self._output.mux(packet)
        except (av.error.FFmpegError, OSError) as exc:  # OSError: from a _CarriedOn's file
            raise OutgestError(f"cannot write {self.path}: {exc}") from exc
        self.frames += 1

    def commit(self) -> int:
        """Finish the file and move it to its name; returns its size in bytes."""
        if self._output is None and self._file is None:
            self.discard()
            raise OutgestError("no frames to write")
        for item, pts, shown, delay in self._clock.flush():
            self._emit(item, pts, shown, delay)
        try:
            if self._output is not None:
                self._output.close()
                self._output = None
            self._check_sink()
            if self._file is not None:
                self._file.close()
                self._file = None
            if self._codec == "hevc" and self.format == "mp4" and not self.mixed_parameter_sets \
                    and len(self._parameter_sets) == 1:
                self._retag_hvc1()
            os.replace(self.temp_path, self.path)
        except (av.error.FFmpegError, OSError) as exc:
            self.discard()
            raise OutgestError(f"cannot write {self.path}: {exc}") from exc
        return self.path.stat().st_size

    def _mp4_options(self) -> dict[str, str]:
        """Container options for the MP4 file (and its hvc1 rewrite)."""
        return {"movflags": "+faststart"}

    def _retag_hvc1(self) -> None:
        """Rewrite the finished MP4 with its HEVC sample entry tagged hvc1 (what Apple's players
        want): parameter sets in the sample entry only, as here every frame shares one set. Every
        stream is copied packet for packet, with its time base."""
        retagged = self.temp_path.with_name(self.temp_path.name + ".hvc1")
        try:
            with av.open(str(self.temp_path)) as source, av.open(
                str(retagged), "w", format="mp4", container_options=self._mp4_options()
            ) as out:
                streams = {}
                for src in source.streams:
                    dst = out.add_stream_from_template(src)
                    if src.type == "video" and src.codec_context.name == "hevc":
                        dst.codec_context.codec_tag = "hvc1"
                    dst.time_base = src.time_base
                    streams[src.index] = dst
                for packet in source.demux():
                    if packet.size:
                        packet.stream = streams[packet.stream.index]
                        out.mux(packet)
            os.replace(retagged, self.temp_path)
        finally:
            retagged.unlink(missing_ok=True)

    def discard(self) -> None:
        """Drop the partial output (after a failure)."""
        if self._output is not None:
            try:
                self._output.close()
            except (av.error.FFmpegError, OSError):
                pass
            self._output = None
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        self.temp_path.unlink(missing_ok=True)


class _CarriedOn:
    """The file a muxer writes into after whole MPEG-TS objects or an earlier muxer: its packets'
    continuity counters count on from those before (``ts_scan.Continuity``)."""

    def __init__(self, file: BinaryIO, continuity: ts_scan.Continuity) -> None:
        self._file = file
        self._continuity = continuity
        self._partial = bytearray()

    @property
    def pending(self) -> int:
        return len(self._partial)

    def write(self, data: bytes) -> int:
        self._partial += data
        whole = len(self._partial) - len(self._partial) % ts_scan.PACKET_SIZE
        if whole:
            packets = self._partial[:whole]
            del self._partial[:whole]
            self._continuity.carry_on(packets)
            self._file.write(packets)
        return len(data)


class AnnexB:
    """Every H.264/HEVC packet reaches the muxer as start-code-delimited NAL units (Annex B).

    MPEG-TS objects and encoders give Annex B; MP4 objects hold length-prefixed NAL units with the
    parameter sets in the init segment. Copied MP4 packets are converted (parameter sets put in
    front of keyframes), each object's stream by a filter of its own, and an output stream made
    from an MP4 template gets Annex B parameter sets too. So an MP4 output never mixes the two
    forms (its muxer writes them all length-prefixed with an avcC/hvcC of its own) and an MPEG-TS
    output is Annex B throughout."""

    FILTERS = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}

    def __init__(self) -> None:
        self._stream: av.stream.Stream | None = None
        self._filter: av.bitstream.BitStreamFilterContext | None = None

    def _filter_for(self, template: av.stream.Stream) -> str | None:
        extradata = template.codec_context.extradata
        if not extradata or extradata[0] != 1:  # avcC and hvcC both start with version 1
            return None
        return self.FILTERS.get(template.codec_context.name)

    def open(self, template: av.stream.Stream, output: av.stream.Stream) -> None:
        """Give ``output`` (made from ``template``) Annex B parameter sets where they are not."""
        name = self._filter_for(template)
        if name is not None:
            try:
                av.bitstream.BitStreamFilterContext(name, template, output)
            except (av.error.FFmpegError, ValueError) as exc:
                raise OutgestError(f"cannot read the object's {template.codec_context.name} parameter sets: {exc}") from exc

    def convert(self, packet: av.Packet, template: av.stream.Stream) -> av.Packet:
        # Annex B access units start with a four-byte start code; a length prefix of 1 is no NAL unit.
        if bytes(memoryview(packet)[:4]) == b"\0\0\0\1":
            return packet
        name = self._filter_for(template)
        if name is None:
            return packet
        try:
            if template is not self._stream:
                self._stream, self._filter = template, av.bitstream.BitStreamFilterContext(name, template)
            assert self._filter is not None
            converted = self._filter.filter(packet)
        except (av.error.FFmpegError, ValueError) as exc:
            raise OutgestError(f"a {template.codec_context.name} frame of the object is corrupt: {exc}") from exc
        if len(converted) != 1:
            raise OutgestError(f"a {template.codec_context.name} frame of the object did not convert to one frame")
        return converted[0]


@dataclass
class SegmentResult:
    frames: int
    reencoded: bool
    reason: str = ""
    clean_end: bool = False  # the object's last GOP went out as stored (see gop_cuts.Pieces)
    lost: tuple[Fraction, ...] = ()  # Flow times of frames left out as undecodable


def reorder_delay(media: ObjectMedia) -> Fraction:
    """How far (seconds) the object's decode timestamps run behind its presentation times: the
    most by which the i-th packet's dts precedes the i-th smallest pts."""
    return _reorder_ticks(media.frames) * media.time_base


def _reorder_ticks(frames: Sequence[FrameTiming]) -> int:
    shown = sorted(f.pts for f in frames)
    return max(0, max(p - f.dts for p, f in zip(shown, frames)))


def write_segment(
    writer: FlowFileWriter,
    media: ObjectMedia,
    segment: SegmentRef,
    *,
    request: TimeRange | None = None,
    options: Mapping[str, str] | None = None,
    context: bool = False,
    chain: Sequence[ObjectMedia] = (),
    lose_prior: bool = False,
) -> SegmentResult:
    """Write the frames ``segment`` takes from ``media`` (see ``plan_segment``) to ``writer``,
    copying whole GOPs and re-encoding (encoder ``options``, see :func:`encoder_options`) only
    those a cut breaks (see ``gop_cuts``).

    ``context``: the output's last packets are the original media just before this object, so its
    leading frames may be copied. Frames needing media from before the object are re-encoded
    after decoding the precharge objects ``chain`` (oldest first); without a chain that raises
    gop_cuts.NeedPrecharge before anything is written, unless ``lose_prior`` leaves them out.
    """
    plan = plan_segment(media.frames, media.time_base, segment, request=request, sample_rate=media.sample_rate,
                        frame_duration=media.frame_duration)
    if not plan.packets:
        return SegmentResult(0, False)
    writer.set_reorder_delay(reorder_delay(media))
    duration = media.frame_duration

    def put(packet: av.Packet, pts: int, dts: int) -> None:
        writer.write(packet, media.stream, flow_time(pts, media.time_base, segment.ts_offset),
                     flow_time(dts, media.time_base, segment.ts_offset), duration)

    kept = list(plan.packets)
    if media.kind == "audio":
        for index in kept:
            put(media.packets[index], media.frames[index].pts, media.frames[index].dts)
        return SegmentResult(len(kept), False, clean_end=True)
    prior = needs_prior(media.frames)
    lost = tuple(sorted(flow_time(media.frames[i].pts, media.time_base, segment.ts_offset)
                        for i in kept if i in prior)) if lose_prior and not context else ()
    if lost:
        kept = [i for i in kept if i not in prior]
        if not kept:
            return SegmentResult(0, False, lost=lost)
    if plan.copy and not lost and (context or not prior.intersection(kept)):
        for index in kept:
            put(media.packets[index], media.frames[index].pts, media.frames[index].dts)
        return SegmentResult(len(kept), False, clean_end=len(kept) == len(media.frames))
    pieces = plan_pieces(media.frames, kept, context=context)
    if pieces.precharge and not chain:
        raise NeedPrecharge([i for i in pieces.head if i in prior])
    writer.mixed_parameter_sets = writer.mixed_parameter_sets or pieces.reencoded
    try:
        count = 0
        if pieces.head:
            for packet, pts, dts in reencode(media, pieces.head, chain=chain, options=options):
                put(packet, pts, dts)
                count += 1
        for index in pieces.copy:
            put(media.packets[index], media.frames[index].pts, media.frames[index].dts)
        if pieces.tail:
            for packet, pts, dts in reencode(media, pieces.tail, options=options):
                put(packet, pts, dts)
                count += 1
    except ReencodeError as exc:
        raise OutgestError(str(exc)) from exc
    redone = len(pieces.head) + len(pieces.tail)
    if count != redone:
        raise OutgestError(f"the encoder gave {count} of {redone} frames")
    reason = plan.reason or "its first frames need the GOP before the object"
    reason = f"{reason}; {redone} of {len(kept)} frames re-encoded" + (
        ", after precharge from the object before" if pieces.precharge else "")
    return SegmentResult(len(kept), pieces.reencoded, reason if pieces.reencoded else "",
                         clean_end=pieces.clean_end, lost=lost)


# --------------------------------------------------------------------------------------------
# Timing check


def _at(t: Fraction) -> Timestamp:
    return pts_to_timestamp(t, Fraction(1))


def check_segment_timing(path: Path, media: ObjectMedia, segment: SegmentRef) -> list[str]:
    """Where the media's exact timerange (``media.read_timing``) plus ``ts_offset`` differs by
    more than half a frame from what the segment registers: one message per problem, [] if none.

    MPEG-TS carries only the low 33 bits of a timestamp, so the measured span is first moved by
    whole wrap periods next to the registered object timeline (the high bits are ``ts_offset``'s).
    Segments using ``sample_offset``/``sample_count`` compare the frames they pick instead.
    """
    try:
        timing = read_timing(path, kinds=(media.kind,)).streams[media.kind]
    except MediaError as exc:
        return [f"cannot measure the media: {exc}"]
    tb = timing.time_base
    frame = timing.last_duration * tb
    half = frame / 2
    offset = _to_fraction(segment.ts_offset)
    registered = segment.media_timerange
    first, end = Fraction(timing.first), timing.end
    if media.container.format.name == "mpegts" and tb == WORK_TIME_BASE and registered.start is not None:
        wraps = round((_to_fraction(registered.start) / tb - first) / MPEGTS_WRAP)
        first, end = first + wraps * MPEGTS_WRAP, end + wraps * MPEGTS_WRAP
    start_s, end_s = first * tb, end * tb

    def differs(value: Fraction, bound: Timestamp | None) -> bool:
        return bound is not None and abs(value - _to_fraction(bound)) > half

    problems: list[str] = []
    if segment.sample_offset is not None or segment.sample_count is not None:
        plan = plan_segment(media.frames, media.time_base, segment, sample_rate=media.sample_rate,
                            frame_duration=media.frame_duration)
        if plan.frame_count:
            order = presentation_order(media.frames)
            pick_start = flow_time(media.frames[order[plan.first]].pts, media.time_base, segment.ts_offset)
            pick_end = flow_time(media.frames[order[plan.stop - 1]].pts, media.time_base, segment.ts_offset) + frame
            if differs(pick_start, segment.timerange.start) or differs(pick_end, segment.timerange.end):
                problems.append(
                    f"sample_offset/sample_count pick [{_at(pick_start)}_{_at(pick_end)}) on the Flow timeline,"
                    f" the segment's timerange is {segment.timerange}"
                )
        return problems

    on_flow = f"[{_at(start_s + offset)}_{_at(end_s + offset)})"
    if differs(start_s, registered.start) or differs(end_s, registered.end):
        problems.append(
            f"the media + ts_offset spans {on_flow} but the object is registered as {registered}"
            f" (+ ts_offset {segment.ts_offset})"
        )
    tr = segment.timerange
    if (tr.start is not None and _to_fraction(tr.start) < start_s + offset - half) or (
        tr.end is not None and _to_fraction(tr.end) > end_s + offset + half
    ):
        problems.append(f"the timerange {tr} reaches outside the media, which spans {on_flow} on the Flow timeline")
    return problems


# --------------------------------------------------------------------------------------------
# The export


class TimingChecks:
    """``--check-timing``: each segment's registered timing checked against its media once (not
    again on each precharge try), each problem logged (after ``label``) and counted."""

    def __init__(self, enabled: bool, label: str = "") -> None:
        self.enabled = enabled
        self.label = label
        self.warnings = 0
        self._done: set[tuple[str, str]] = set()

    def check(self, path: Path, media: ObjectMedia, segment: SegmentRef) -> None:
        key = (segment.object_id, str(segment.timerange))
        if not self.enabled or key in self._done:
            return
        self._done.add(key)
        for problem in check_segment_timing(path, media, segment):
            self.warnings += 1
            logger.warning("%ssegment %s (object %s): %s", self.label, segment.timerange, segment.object_id, problem)


def open_segment(stack: contextlib.ExitStack, path: Path, segment: SegmentRef, *, kind: str, codec: str,
                 frame_rate: Fraction | None, chain: Sequence[tuple[SegmentRef, Path]] = (),
                 timing: TimingChecks | None = None) -> tuple[ObjectMedia, OnDemand]:
    """``segment``'s object at ``path`` read (``read_object``) and timing-checked, and its
    precharge ``chain`` to be read on demand, all closed with ``stack``."""
    def read(earlier: SegmentRef, at: Path) -> ObjectMedia:
        return stack.enter_context(read_object(at, kind=kind, codec=codec, anchor=earlier.media_timerange,
                                               frame_rate=frame_rate))
    media = read(segment, path)
    if timing is not None:
        timing.check(path, media, segment)
    return media, OnDemand(read, chain)


@dataclass
class OutgestSummary:
    output: Path
    segments: int = 0
    reencoded: int = 0
    frames: int = 0
    bytes: int = 0
    downloaded: int = 0
    seconds: float = 0.0
    timing_warnings: int = 0
    max_held: int = 0  # most objects downloading or waiting to be written at one time
    nudged: int = 0  # decode timestamps moved a tick forward to keep them increasing (see DecodeClock)
    reencoded_segments: list[str] = field(default_factory=list)

    def line(self) -> str:
        rate = self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        return (
            f"{self.output}: {self.segments} segments ({self.reencoded} re-encoded), {self.frames} frames, "
            f"{self.bytes} bytes in {self.seconds:.2f} s ({rate:.1f} MB/s)"
        )


def encoder_options(flow: Mapping[str, Any], codec: str) -> dict[str, str]:
    """Options for the encoder that re-encodes cut segments of ``flow`` (FFmpeg ``codec``): our
    quality settings plus, for H.264, the profile and level of the Flow's
    ``essence_parameters.avc_parameters`` (as ingest writes them), so re-encoded frames stay
    within what the Flow declares. Size, pixel format, frame rate and colour come from the
    decoded frames and the object's stream (see ``gop_cuts``)."""
    encoder_name = ENCODERS.get(codec, codec)
    options = dict(ENCODER_OPTIONS.get(encoder_name, {}))
    avc = (flow.get("essence_parameters") or {}).get("avc_parameters")
    if encoder_name != "libx264" or not isinstance(avc, Mapping):
        return options
    profile_idc, level_idc = avc.get("profile"), avc.get("level")
    if isinstance(profile_idc, int):
        if profile_idc in X264_PROFILES:
            options["profile"] = X264_PROFILES[profile_idc]
        else:
            logger.warning("the Flow's H.264 profile %d cannot be encoded by libx264; cut segments will use"
                           " libx264's choice", profile_idc)
    if isinstance(level_idc, int) and level_idc > 0:
        # level_idc is ten times the level number; 9 is level 1b in the High profiles.
        options["level"] = "1b" if level_idc == 9 else f"{level_idc // 10}.{level_idc % 10}"
    return options


def _essence(flow: Mapping[str, Any]) -> tuple[str, str, Fraction | None]:
    """(kind, FFmpeg codec name, frame rate) for a Flow we can export; OutgestError otherwise."""
    flow_id = flow.get("id", "?")
    fmt = str(flow.get("format", ""))
    if fmt == "urn:x-nmos:format:multi":
        members = ", ".join(str(m.get("id")) for m in flow.get("flow_collection") or []) or "none listed"
        raise OutgestError(
            f"Flow {flow_id} is a multi-essence Flow; export each of its Flows with its own --flow-id ({members})"
        )
    kinds = {"urn:x-nmos:format:video": "video", "urn:x-nmos:format:audio": "audio"}
    if fmt not in kinds:
        raise OutgestError(f"Flow {flow_id} has format {fmt or 'none'}; only video and audio Flows can be exported")
    container = str(flow.get("container") or "")
    if container.lower() not in SUPPORTED_CONTAINERS:
        raise OutgestError(
            f"Flow {flow_id} has container {container or 'none'}; supported: {', '.join(sorted(SUPPORTED_CONTAINERS))}"
        )
    params = flow.get("essence_parameters") or {}
    codec_mime = str(flow.get("codec") or "")
    codec = CODECS.get(codec_mime.lower())
    if codec is None:
        raise OutgestError(f"Flow {flow_id} has codec {codec_mime or 'none'}, which this tool does not support")
    rate = params.get("frame_rate")
    frame_rate = Fraction(int(rate["numerator"]), int(rate.get("denominator", 1))) if rate else None
    return kinds[fmt], codec, frame_rate


def _copies_whole_objects(flow: Mapping[str, Any], output: Path, check_timing: bool) -> bool:
    """Whether an export of ``flow`` to ``output`` may write whole objects as they are (RawJoin):
    then PyAV is imported only when a segment turns out to need it."""
    try:
        kind, codec, frame_rate = _essence(flow)
    except OutgestError:
        return False
    return (FlowFileWriter.format_of(output) == "mpegts" and str(flow.get("container")).lower() == "video/mp2t"
            and kind == "video" and codec in ("h264", "hevc") and frame_rate is not None and not check_timing)


# An object downloaded into memory (fetch_in_order's ``memory``) larger than this goes to its file
# instead, so that ``--concurrency`` objects held stay within a few hundred MB whatever they hold.
MEMORY_OBJECT_LIMIT = 32 << 20


async def _download(client: TAMSClient, url: Mapping[str, Any], path: Path, head: bytes = b"",
                    memory: dict[Path, bytearray] | None = None) -> int:
    """Stream the object at ``url`` into ``path`` after ``head`` (or, given ``memory``, into
    ``memory[path]``, up to MEMORY_OBJECT_LIMIT bytes); return the object's size."""
    size = 0
    async with client.stream_object(url) as chunks:
        if memory is not None:
            data = bytearray(head)
            async for chunk in chunks:
                data += chunk
                size += len(chunk)
                if len(data) > MEMORY_OBJECT_LIMIT:
                    break  # the rest goes to the file
            else:
                memory[path] = data
                return size
        with path.open("wb") as out:
            out.write(head if memory is None else data)
            async for chunk in chunks:
                out.write(chunk)
                size += len(chunk)
    return size


class InitObjects:
    """The init objects of fMP4 Flows in one export, each downloaded once, whose bytes go ahead of
    every media object that names it: each file read is then a whole fMP4 (moov, then fragments)."""

    def __init__(self, client: TAMSClient) -> None:
        self._client = client
        self._tasks: dict[str, asyncio.Task[bytes]] = {}

    async def head(self, flow_id: str, segment: SegmentRef) -> bytes:
        if segment.init is None:
            return b""
        task = self._tasks.get(segment.init.object_id)
        if task is None:
            task = self._tasks[segment.init.object_id] = asyncio.create_task(self._get(flow_id, segment, segment.init))
        return await asyncio.shield(task)

    async def _get(self, flow_id: str, segment: SegmentRef, init: InitRef) -> bytes:
        """The init object's bytes, from each of its get_urls in turn; on 401/403 from storage (an
        expired presigned URL) the store is asked once for the segment's fresh URLs, as for media."""
        failure: TAMSError | None = None
        urls = init.get_urls
        for attempt in range(2):
            for url in urls:
                try:
                    async with self._client.stream_object(url) as chunks:
                        return b"".join([chunk async for chunk in chunks])
                except TAMSError as exc:
                    failure = exc
            if attempt or not (isinstance(failure, TAMSResponseError) and failure.status in (401, 403)):
                break
            urls = ()
            async for item in self._client.segments(flow_id, timerange=segment.timerange, object_id=segment.object_id):
                fresh = SegmentRef.from_json(item).init
                urls = fresh.get_urls if fresh is not None else ()
                break
        reason = failure or "it has no get_urls"
        raise OutgestError(f"segment {segment.timerange}: cannot download init object {init.object_id}: {reason}")

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


async def _fetch(client: TAMSClient, flow_id: str, segment: SegmentRef, path: Path, inits: InitObjects,
                 memory: dict[Path, bytearray] | None = None) -> int:
    """Stream the segment's object into ``path`` (after its init object's bytes, if it has one;
    into ``memory[path]`` instead if given), trying each of its get_urls in turn; returns the
    object's size. On 401/403 from storage (an expired presigned URL, say) asks the store for
    fresh URLs once."""
    urls = segment.get_urls
    if not urls:
        raise OutgestError(f"segment {segment.timerange}: object {segment.object_id} has no get_urls")
    head = await inits.head(flow_id, segment)
    failure: TAMSError | None = None
    for attempt in range(2):
        for url in urls:
            try:
                return await _download(client, url, path, head, memory)
            except TAMSError as exc:
                failure = exc
        if attempt or not (isinstance(failure, TAMSResponseError) and failure.status in (401, 403)):
            break
        urls = ()
        async for item in client.segments(flow_id, timerange=segment.timerange, object_id=segment.object_id):
            urls = SegmentRef.from_json(item).get_urls
            break
    raise OutgestError(f"segment {segment.timerange}: cannot download object {segment.object_id}: {failure}")


def _first_error(group: BaseExceptionGroup) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group


T = TypeVar("T")


async def finished(commit: asyncio.Future[int]) -> int:
    """The result of ``commit``, the muxer thread finishing the output and renaming it into place.
    That thread cannot be stopped half-way, so a cancellation that comes meanwhile waits for it,
    however often it comes, without holding up the event loop (leaving the muxer's executor
    would wait for it too, but blocking the loop), and is raised once the file is in place: whole,
    and left there. The commit's own failure, if it has one, is raised instead."""
    try:
        return await asyncio.shield(commit)
    except asyncio.CancelledError:
        while not commit.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(commit)
        commit.result()
        raise


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What tells one file at ``path`` from another put there later (None: no file)."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino, found.st_mtime_ns


async def fetch_in_order(
    client: TAMSClient,
    segments: AsyncIterable[tuple[str, SegmentRef, T]],
    scratch: Path,
    concurrency: int,
    handle: Callable[[SegmentRef, T, Path, int], Awaitable[None]],
    inits: InitObjects | None = None,
    memory: dict[Path, bytearray] | None = None,
) -> int:
    """Download the objects of ``segments`` ((Flow id, segment, tag) triples) into ``scratch``
    (or, given ``memory``, into ``memory[path]``, which the handler may take), up to
    ``concurrency`` downloading or waiting at once, and ``await handle(segment, tag, path,
    size)`` for each in the given order; each file is removed once handled. Returns the most objects held at
    one time. The first failure (download or handler) is raised and the rest are cancelled."""
    slots = asyncio.Semaphore(concurrency)  # one per object downloading or waiting to be handled
    queue: asyncio.Queue[tuple[SegmentRef, T, asyncio.Task[int], Path] | None] = asyncio.Queue()
    held = most = 0
    own_inits = inits is None
    inits = InitObjects(client) if inits is None else inits

    async def produce(tg: asyncio.TaskGroup) -> None:
        nonlocal held, most
        number = 0
        async for flow_id, segment, tag in segments:
            await slots.acquire()
            held += 1
            most = max(most, held)
            path = scratch / f"{number:08d}.obj"
            number += 1
            await queue.put((segment, tag, tg.create_task(_fetch(client, flow_id, segment, path, inits, memory)), path))
        await queue.put(None)

    async def consume() -> None:
        nonlocal held
        while (entry := await queue.get()) is not None:
            segment, tag, download, path = entry
            size = await download
            try:
                await handle(segment, tag, path, size)
            finally:
                path.unlink(missing_ok=True)
                if memory is not None:
                    memory.pop(path, None)
            held -= 1
            slots.release()

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(produce(tg))
            tg.create_task(consume())
    except BaseExceptionGroup as group:
        raise _first_error(group) from None
    finally:
        if own_inits:
            await inits.close()
    return most


MAX_PRECHARGE = 4  # objects fetched before a segment whose first frames need earlier media


def follows(earlier: SegmentRef, later: SegmentRef, tolerance: Fraction) -> bool:
    """Whether ``earlier``'s object is the media just before ``later``'s: same ts_offset, the same
    init object if any (fMP4 fragments decode only with their own parameter sets), and one
    object's timeline ends where the other's starts (within ``tolerance`` seconds)."""
    end, start = earlier.media_timerange.end, later.media_timerange.start
    same_init = (earlier.init.object_id if earlier.init else None) == (later.init.object_id if later.init else None)
    return (earlier.ts_offset == later.ts_offset and same_init and end is not None and start is not None
            and abs(_to_fraction(end) - _to_fraction(start)) <= tolerance)


async def _predecessor(client: TAMSClient, flow_id: str, segment: SegmentRef, tolerance: Fraction) -> SegmentRef | None:
    """The Flow's segment just before ``segment`` when it holds the media before it, else None."""
    if segment.timerange.start is None:
        return None
    before = TimeRange(None, segment.timerange.start, TimeRange.INCLUDE_START)
    async for item in client.segments(flow_id, timerange=before, reverse_order=True, limit=1):
        earlier = SegmentRef.from_json(item)
        return earlier if follows(earlier, segment, tolerance) else None
    return None


Runner = Callable[[SegmentRef, Path, bool, Sequence[tuple[SegmentRef, Path]], bool], Awaitable[SegmentResult]]


@dataclass
class RawObject:
    """A whole MPEG-TS object the export can write as it is (``RawJoin.admit``)."""

    segment: SegmentRef
    path: Path
    context: bool
    data: bytearray
    scan: ts_scan.TsScan
    frames: int
    first_dts: int  # Flow time, 90 kHz ticks
    last_dts: int
    delay: int  # reorder delay, ticks


class RawJoin:
    """Whole MPEG-TS objects into an MPEG-TS export byte for byte, where those bytes are exactly
    what muxing their frames would give (counters aside), without demuxing them.

    A segment qualifies when its object is one H.264/HEVC stream (``ts_scan.scan``), every frame
    of it is one the segment and the request take (by ``plan_segment``: the rule every export
    uses) and is as many as the segment's duration holds at the Flow's frame rate, its
    ``ts_offset`` is 0 or whole 2^33 wraps to the 90 kHz tick (stored in nanoseconds, 2^33 ticks
    are 95443.717688888 s: the stored pts/dts are then the Flow times an export writes, modulo
    2^33), and it decodes from its own first frame or follows the object written before it.
    Consecutive objects must share PIDs and tables, keep decode times increasing and reorder by
    the same delay.

    A segment that does not qualify goes through the muxer, which uses the objects' PIDs and
    program, and whose counters and tables count on from the objects' (and theirs from its). The
    last qualifying object is held back until the next segment is known: if that one is muxed,
    the held one is muxed too, so that the decode clock meets a change of GOP structure with the
    frames before it still waiting (see ``DecodeClock``). Cut exports so copy their whole middle
    segments and mux only around the cuts.
    """

    def __init__(self, writer: FlowFileWriter, codec: str, frame_rate: Fraction, request: TimeRange | None) -> None:
        self.writer = writer
        self.codec = codec
        self.frame_rate = frame_rate
        self.request = request

    def admit(self, segment: SegmentRef, path: Path, context: bool, data: bytearray | None = None) -> RawObject | None:
        """``segment``'s object (``data``, or at ``path``) if it qualifies, else None."""
        if data is None:
            try:
                data = bytearray(path.read_bytes())
            except OSError as exc:
                raise OutgestError(f"cannot read the downloaded object: {exc.strerror or exc}") from exc
        found = ts_scan.scan(data)
        if isinstance(found, str):
            logger.debug("segment %s (object %s) is muxed: %s", segment.timerange, segment.object_id, found)
            return None
        # Even a segment muxed for what follows gives a first muxer the objects' PIDs, so that
        # whole objects can follow it.
        self.writer.expect_layout(found.layout, found.pcr_lag)
        offset = _to_fraction(segment.ts_offset) * TS_CLOCK
        shift = round(offset)  # the ticks a muxed frame's time moves by, as FlowFileWriter rounds it
        start, end = segment.timerange.start, segment.timerange.end
        if abs(offset - shift) >= Fraction(1, 2) or shift % MPEGTS_WRAP or start is None or end is None:
            return None
        duration = (_to_fraction(end) - _to_fraction(start)) * self.frame_rate
        if found.layout.codec != self.codec or abs(duration - len(found.pts)) >= Fraction(1, 2):
            return None
        anchor = segment.media_timerange.start
        pts = unwrap_mpegts(found.pts, anchor.to_count(TS_CLOCK) if anchor is not None else None)
        frames = [FrameTiming(p, p - _wrapped_distance(raw, d), i == 0 and found.first_is_key)
                  for i, (p, raw, d) in enumerate(zip(pts, found.pts, found.dts))]
        plan = plan_segment(frames, WORK_TIME_BASE, segment, request=self.request, frame_duration=1 / self.frame_rate)
        if len(plan.packets) != len(frames) or not (context or not needs_prior(frames)):
            return None
        return RawObject(segment, path, context, data, found, len(frames), frames[0].dts + shift,
                         frames[-1].dts + shift, _reorder_ticks(frames))

    @staticmethod
    def continues(earlier: RawObject, later: RawObject) -> bool:
        """Whether ``later`` can follow ``earlier`` in the one stream, as it is."""
        return (later.scan.layout == earlier.scan.layout and later.first_dts > earlier.last_dts
                and later.delay == earlier.delay)


class OnDemand(Sequence["ObjectMedia"]):
    """The precharge objects of a segment, each read only if the segment's first frames turn out to
    need it (most segments start with a keyframe and need none): ``len`` and truth count them
    without reading any."""

    def __init__(self, read: Callable[[SegmentRef, Path], ObjectMedia],
                 items: Sequence[tuple[SegmentRef, Path]]) -> None:
        self._read = read
        self._items = items
        self._media: list[ObjectMedia] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> ObjectMedia:  # type: ignore[override]
        if self._media is None:
            self._media = [self._read(segment, path) for segment, path in self._items]
        return self._media[index]


class VideoSequence:
    """A video Flow's segments written in timeline order, each given what its first frames need.

    The last object written is kept (its file renamed past ``fetch_in_order``'s cleanup) as the
    next one's context (its leading frames may be copied after an unbroken GOP) and precharge.
    When a segment's first frames need media from before the object (an open GOP's leading
    pictures, a segment starting mid-GOP) and the kept object does not hold it, the Flow's
    segments before it are fetched, up to MAX_PRECHARGE, and decoded first; with none to fetch,
    ``--exact`` fails with one line and a whole-segment export leaves those frames out with a
    warning naming them. ``run(segment, path, context, chain, lose_prior)`` writes one segment
    (``write_segment`` in the writer's thread); ``inits`` are the export's fMP4 init objects.

    With ``raw`` (a ``RawJoin``), objects arrive in ``memory`` and each one that qualifies is held
    to be copied as it is; the held one is the kept previous object, given a file only if it is
    muxed after all. ``offload`` runs a function in the writer's thread. Call ``finish`` once the
    last segment is written.
    """

    def __init__(self, client: TAMSClient, flow_id: str, scratch: Path, frame_rate: Fraction | None,
                 exact: bool, run: Runner, inits: InitObjects, raw: RawJoin | None = None,
                 offload: Callable[..., Awaitable[Any]] | None = None) -> None:
        self.raw = raw  # while set, whole MPEG-TS objects are written as they are
        self.offload = offload  # runs a function in the writer's thread
        self.memory: dict[Path, bytearray] | None = {} if raw is not None else None  # objects downloaded
        self.held: RawObject | None = None
        self.client = client
        self.inits = inits
        self.flow_id = flow_id
        self.scratch = scratch
        self.tolerance = bound_tolerance(1 / frame_rate if frame_rate else None)
        self.exact = exact
        self.run = run
        self.previous: tuple[SegmentRef, Path, SegmentResult] | None = None
        self.downloaded = 0  # bytes of the precharge objects fetched
        self._fetched = 0

    async def write(self, segment: SegmentRef, path: Path) -> SegmentResult:
        previous = self.previous
        joined = previous is not None and follows(previous[0], segment, self.tolerance)
        context = joined and previous is not None and previous[2].clean_end
        chain: list[tuple[SegmentRef, Path]] = [previous[:2]] if joined and previous is not None else []
        fetched: list[Path] = []
        data = self.memory.pop(path, None) if self.memory is not None else None
        result = await self._as_it_is(segment, path, context, data) if self.raw is not None else None
        try:
            if result is None:
                if data is not None:  # the muxer reads files
                    await self._file(path, data)
                result = await self._precharged(segment, path, context, chain, fetched)
        finally:
            for target in fetched:
                target.unlink(missing_ok=True)
        if previous is not None:
            previous[1].unlink(missing_ok=True)
        kept = path.with_suffix(".previous")
        if self.held is not None and self.held.path == path:
            self.held.path = kept  # in memory: a file only if it is muxed after all
        else:
            path.rename(kept)
        self.previous = (segment, kept, result)
        return result

    async def _file(self, path: Path, data: bytearray) -> None:
        assert self.offload is not None
        try:
            await self.offload(path.write_bytes, data)
        except OSError as exc:
            raise OutgestError(f"cannot keep the downloaded object in {path.parent}: {exc.strerror or exc}") from exc

    async def _as_it_is(self, segment: SegmentRef, path: Path, context: bool,
                        data: bytearray | None) -> SegmentResult | None:
        """Hold ``segment``'s object (downloaded to ``path``, or ``data``) to be written as it is
        (``RawJoin``), writing the one held before; or, if it does not qualify, mux the held one
        and return None (the caller muxes ``segment``)."""
        assert self.raw is not None and self.offload is not None
        # On the event loop: the scan is well under a millisecond a 1080p object, much less than
        # handing it to the writer's thread and back, and holds the GIL there as much as here.
        candidate = self.raw.admit(segment, path, context, data)
        held, self.held = self.held, None
        if candidate is not None and (held is None or self.raw.continues(held, candidate)):
            if held is not None:
                await self._write_held(held)
            self.held = candidate
            return SegmentResult(candidate.frames, False, clean_end=True)
        logger.debug("segment %s (object %s) is muxed", segment.timerange, segment.object_id)
        if held is not None:
            await self._mux_held(held)
        return None

    async def _write_held(self, held: RawObject) -> None:
        assert self.raw is not None and self.offload is not None
        if not await self.offload(self.raw.writer.write_raw, held):
            await self._mux_held(held)

    async def _mux_held(self, held: RawObject) -> None:
        """Mux an object held to be written as it is after all (it is the kept previous object)."""
        await self._file(held.path, held.data)
        await self.run(held.segment, held.path, held.context, (), False)

    async def finish(self) -> None:
        """Write the object still held (call once every segment has been written)."""
        if self.held is not None:
            held, self.held = self.held, None
            await self._write_held(held)

    async def _precharged(self, segment: SegmentRef, path: Path, context: bool,
                          chain: list[tuple[SegmentRef, Path]], fetched: list[Path]) -> SegmentResult:
        while True:
            try:
                return await self.run(segment, path, context, chain, False)
            except NeedPrecharge as need:
                before = await _predecessor(self.client, self.flow_id, chain[0][0] if chain else segment,
                                            self.tolerance)
                if before is None or len(chain) >= MAX_PRECHARGE:
                    if self.exact:
                        raise OutgestError(
                            f"segment {segment.timerange} (object {segment.object_id}): the cut needs "
                            f"{len(need.frames)} frames from before the object's first keyframe, and the Flow has"
                            " no segment of the same media before it to precharge from") from None
                    break
                self._fetched += 1
                target = self.scratch / f"precharge-{self._fetched:08d}.obj"
                fetched.append(target)
                self.downloaded += await _fetch(self.client, self.flow_id, before, target, self.inits)
                chain.insert(0, (before, target))
        result = await self.run(segment, path, context, (), True)
        logger.warning(
            "segment %s (object %s): %d frames at %s left out: they need media from before the object's"
            " first keyframe, and the Flow has no segment of the same media before it",
            segment.timerange, segment.object_id, len(result.lost), ", ".join(str(_at(t)) for t in result.lost),
        )
        return result


async def outgest(
    client: TAMSClient,
    flow_id: str,
    output: Path,
    *,
    timerange: TimeRange | None = None,
    exact: bool = False,
    concurrency: int = 8,
    check_timing: bool = False,
    progress: bool = False,
    audio_flow_id: str | None = None,
) -> OutgestSummary:
    """Write the Flow's frames in ``timerange`` (default: all) to ``output``.

    Audio Flows, multi-essence Flows and a video Flow with ``audio_flow_id`` go to
    ``outgest_audio.outgest_av``: one file with both streams in sync, audio exact to the sample.

    Without ``exact`` every segment overlapping ``timerange`` is written whole (as far as the
    segment itself uses its object); with it, only frames whose Flow time lies in ``timerange``.
    Raises OutgestError or TAMSError; nothing is left under ``output`` on failure.
    """
    started = time.monotonic()
    timerange = timerange if timerange is not None else TimeRange.eternity()
    if concurrency < 1:
        raise OutgestError("--concurrency must be at least 1")
    # PyAV loads in a thread, and the first page of segments is asked for, while the Flow is; an
    # MPEG-TS export waits for the Flow, since it may copy whole objects and need no PyAV.
    loading = None if FlowFileWriter.format_of(output) == "mpegts" else asyncio.create_task(asyncio.to_thread(load_av))
    try:
        async with _asked_ahead(
            client.segments(flow_id, timerange=timerange, include_object_timerange=True)
        ) as listing:
            try:
                flow = await client.get_flow(flow_id, include_timerange=True)
            except NotFound as exc:
                raise OutgestError(f"Flow {flow_id} not found") from exc
            if loading is None and (audio_flow_id is not None or not _copies_whole_objects(flow, output, check_timing)):
                loading = asyncio.create_task(asyncio.to_thread(load_av))
            if audio_flow_id is None and flow.get("format") not in (
                "urn:x-nmos:format:multi", "urn:x-nmos:format:audio"
            ):
                return await _outgest_flow(client, flow_id, flow, listing, output, timerange=timerange, exact=exact,
                                           concurrency=concurrency, check_timing=check_timing, progress=progress,
                                           started=started)
        import outgest_audio  # imports this module

        essences = await outgest_audio.resolve_essences(client, flow, audio_flow_id)
        return await outgest_audio.outgest_av(client, essences, output, timerange=timerange, exact=exact,
                                              concurrency=concurrency, check_timing=check_timing,
                                              progress=progress)
    finally:
        # A failed import shows again where PyAV is first used; the thread must end before the loop.
        if loading is not None:
            await asyncio.gather(loading, return_exceptions=True)


@contextlib.asynccontextmanager
async def _asked_ahead(items: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """``items`` with its first item asked for at once (for a paged listing: its first request
    goes out while the caller awaits something else); closed, or its request cancelled, on
    leaving the block."""
    end = object()

    async def first_item() -> object:
        return await anext(items, end)

    first = asyncio.create_task(first_item())

    async def rest() -> AsyncIterator[T]:
        item = await first
        if item is end:
            return
        yield cast(T, item)
        async for item in items:
            yield item

    try:
        yield rest()
    finally:
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await cast(Any, items).aclose()


async def _outgest_flow(
    client: TAMSClient,
    flow_id: str,
    flow: Mapping[str, Any],
    listing: AsyncIterator[dict],
    output: Path,
    *,
    timerange: TimeRange,
    exact: bool,
    concurrency: int,
    check_timing: bool,
    progress: bool,
    started: float,
) -> OutgestSummary:
    """``outgest`` of one video Flow, ``flow``, whose segments in ``timerange`` ``listing`` gives."""
    kind, codec, frame_rate = _essence(flow)
    options = encoder_options(flow, codec)
    flow_range = _timerange(flow.get("timerange")) or TimeRange.never()
    span = flow_range.intersect_with(timerange)
    total = _seconds(span)
    request = timerange if exact else None

    summary = OutgestSummary(output)
    writer = FlowFileWriter(output, frame_rate)
    bar = _progress_bar(total, progress)

    timing = TimingChecks(check_timing)

    def process(segment: SegmentRef, path: Path, context: bool, chain: Sequence[tuple[SegmentRef, Path]],
                lose_prior: bool) -> SegmentResult:
        try:
            with contextlib.ExitStack() as stack:
                media, earlier = open_segment(stack, path, segment, kind=kind, codec=codec, frame_rate=frame_rate,
                                              chain=chain, timing=timing)
                result = write_segment(writer, media, segment, request=request, options=options, context=context,
                                       chain=earlier, lose_prior=lose_prior)
        except OutgestError as exc:
            raise OutgestError(f"segment {segment.timerange} (object {segment.object_id}): {exc}") from exc
        return result

    inits = InitObjects(client)  # fMP4 init objects, for the objects in order and their precharge
    try:
        # One thread does all the PyAV work, in timeline order. Leaving the ``with`` waits for
        # it, so a failure elsewhere cannot leave it writing after the output is discarded.
        scratch_dir = tempfile.TemporaryDirectory(prefix="outgest-")
        with (
            scratch_dir as scratch,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="outgest-mux") as muxer,
        ):
            loop = asyncio.get_running_loop()

            async def listed() -> AsyncIterator[tuple[str, SegmentRef, None]]:
                async for item in listing:
                    yield flow_id, SegmentRef.from_json(item), None

            async def run(*args: Any) -> SegmentResult:
                return await loop.run_in_executor(muxer, process, *args)

            async def offload(function: Callable[..., T], *args: Any) -> T:
                return await loop.run_in_executor(muxer, function, *args)

            raw = None
            if frame_rate is not None and _copies_whole_objects(flow, output, check_timing):
                raw = RawJoin(writer, codec, frame_rate, request)
            sequence = VideoSequence(client, flow_id, Path(scratch), frame_rate, request is not None, run, inits,
                                     raw, offload)

            async def written(segment: SegmentRef, _: None, path: Path, size: int) -> None:
                summary.downloaded += size
                result = await sequence.write(segment, path)
                summary.segments += 1
                summary.frames += result.frames
                if result.reencoded:
                    summary.reencoded += 1
                    summary.reencoded_segments.append(str(segment.timerange))
                    logger.info(
                        "re-encoded segment %s (object %s, %d frames): %s",
                        segment.timerange, segment.object_id, result.frames, result.reason,
                    )
                elif result.frames == 0 and request is None and not result.lost:
                    logger.warning(
                        "segment %s (object %s) gives no frames in the timerange; check its ts_offset",
                        segment.timerange, segment.object_id,
                    )
                if bar is not None:
                    covered = _seconds(segment.timerange.intersect_with(span))
                    if covered:
                        bar.update(covered)

            summary.max_held = await fetch_in_order(client, listed(), Path(scratch), concurrency, written, inits,
                                                    sequence.memory)
            await sequence.finish()
            summary.downloaded += sequence.downloaded
            if summary.segments == 0:
                raise OutgestError(f"Flow {flow_id} has no segments in {timerange.to_sec_nsec_range()}")
            if summary.frames == 0:
                raise OutgestError(f"Flow {flow_id} has no frames in {timerange.to_sec_nsec_range()}")
            # Gone before the output is renamed: a directory removed after that waits for the file
            # system to write the output's data out (its journal orders the two).
            scratch_dir.cleanup()
            summary.bytes = await finished(loop.run_in_executor(muxer, writer.commit))
    except BaseException:
        writer.discard()
        raise
    finally:
        await inits.close()
        if bar is not None:
            bar.close()
    summary.nudged = writer.nudged
    summary.timing_warnings = timing.warnings
    if writer.nudged:
        logger.info("moved %d decode timestamps forward to keep them increasing across joins", writer.nudged)
    summary.seconds = time.monotonic() - started
    return summary


def _progress_bar(total: float | None, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm  # type: ignore[import-untyped]

    shape = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of Flow [{elapsed}<{remaining}]"
    return tqdm(total=total, unit="s", file=sys.stderr, desc="outgest", leave=False,
                bar_format=shape if total else "{desc}: {n:.1f} s of Flow [{elapsed}]")


# --------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Export a TAMS Flow, or part of one, to an MPEG-TS (or .mp4) file with exactly "
        "the frames the Flow references.",
        formatter_class=HelpFormatter,
    )
    add_credential_args(parser)
    parser.add_argument("--flow-id", required=True,
                        help="the Flow to export: video, audio, or multi-essence (its video and audio muxed)")
    parser.add_argument("--audio-flow-id", default=None,
                        help="an audio Flow to mux with the video --flow-id, both placed by their Flow times")
    parser.add_argument("--output", required=True, type=Path, help="file to write; MP4 when it ends in .mp4, else MPEG-TS")
    parser.add_argument("--timerange", default="_", help="Flow timerange to export, e.g. '[10:0_20:0)'")
    parser.add_argument("--exact", action="store_true",
                        help="trim to the frames (audio: the samples) inside --timerange, instead of whole"
                        " overlapping segments")
    parser.add_argument("--concurrency", type=int, default=8, help="objects downloaded (and held) at once")
    parser.add_argument("--check-timing", action="store_true",
                        help="warn where a segment's media + ts_offset differs from its registered timerange")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, summary or info messages")
    parser.add_argument("--verbose", action="store_true", help="debug logging, with the encoders' and decoders' own logs")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> OutgestSummary:
    url, credentials = connection_from_args(args)
    try:
        timerange = TimeRange.from_str(args.timerange)
    except Exception as exc:  # mediatimestamp raises several types for bad strings
        raise OutgestError(f"bad --timerange {args.timerange!r}: {exc}") from exc
    async with TAMSClient(url, credentials, concurrency=max(args.concurrency, 1) + 2) as client:
        return await outgest(
            client,
            args.flow_id,
            args.output,
            timerange=timerange,
            exact=args.exact,
            concurrency=args.concurrency,
            check_timing=args.check_timing,
            progress=not args.quiet and sys.stderr.isatty(),
            audio_flow_id=args.audio_flow_id,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    set_verbose(args.verbose)
    before = _identity(args.output)
    try:
        if args.quiet or not sys.stderr.isatty():
            summary = run_async(run(args))
        else:
            from tqdm.contrib.logging import logging_redirect_tqdm  # type: ignore[import-untyped]

            with logging_redirect_tqdm():
                summary = run_async(run(args))
    except (OutgestError, TAMSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        what, status = interruption(exc)
        if _identity(args.output) not in (before, None):  # it came once the output was in place
            print(f"{what} as the export ended: {args.output} is complete", file=sys.stderr)
            return 0
        print(f"error: {what}; nothing written", file=sys.stderr)
        return status
    if not args.quiet:
        print_result(summary.line())
    return 0

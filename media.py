"""Media timing and properties for TAMS, done once and exactly (shared by ingest and outgest).

Everything here reads media with PyAV by demuxing only: no frame is decoded, so it is fast.

Time
    ``pts_to_timestamp(pts, time_base)``
        Exact conversion of a tick count to a ``mediatimestamp`` ``Timestamp``: the rational
        ``Fraction(pts) * time_base`` seconds, rounded once to the nanosecond by
        ``Timestamp.from_count`` (floor for non-negative times, as TAMS' MPEG-TS notes expect,
        towards zero for negative ones). Never goes through a float.
    ``unwrap_near(pts, reference)``
        ``pts`` moved by whole 2**33 periods to the value nearest ``reference``.
    ``PtsUnwrapper``
        Undoes the 33-bit MPEG-TS PTS wrap (2**33 ticks at 90 kHz, about 26.5 hours). Feed it pts
        values in order; it returns them on one continuous timeline. The first value is reduced to
        the raw 33-bit range (libavformat reports values just before a wrap as negative numbers when
        a file starts near the wrap); every later value is placed in the wrap period that puts it
        nearest to the previous value. For forward wraps this is the application note's rule
        (pts < last and last > 2**33 - 2**31: add 2**33), and it also accepts values that
        libavformat has already unwrapped either way.

Timing of a file (a segment)
    ``read_timing(source) -> MediaTiming``
        The presentation timing of the first video and first audio stream of an MPEG-TS (or MP4,
        ...) file given as a path, bytes or a binary file object. For each stream a
        ``StreamTiming``: ``first`` (the smallest pts, the first sample in presentation order, even
        with B-frames), ``last`` (the largest pts), ``last_duration`` (ticks, a ``Fraction`` for
        rates that are not a whole number of ticks), ``end = last + last_duration`` (exclusive),
        packet, key frame and byte counts, and ``timerange()`` as a ``TimeRange`` ``[first_end)``.
        MPEG-TS has no index, so every packet header is demuxed (cheap, no decoding); MP4 answers
        from its index without reading any packets. Given the frame rate, an MPEG-TS object in
        memory holding one H.264 or HEVC stream is read from its packet, PES and NAL unit headers
        instead (``ts_scan.access_units``), where those show what demuxing it gives: the same
        ``StreamTiming``, without PyAV. In MPEG-TS ``first`` is the raw 33-bit value
        and later values are unwrapped (``last`` may exceed 2**33 when the file crosses the wrap).
        A video frame's duration is the nominal one from the stream's frame rate when the packet
        spacing agrees with it (within a tick), otherwise the most common pts spacing; an audio
        packet's duration is the demuxer's (for AAC 1024 samples).
    ``media_timerange(source, kind="video") -> TimeRange``
        The shortcut for one stream's ``[first_end)``.

Properties of a file, without decoding
    ``probe(source) -> MediaProperties`` with ``container`` (MIME type), ``video``
    (``VideoProperties``: codec name and MIME type, width, height, exact rational frame rate,
    interlace mode, component type, chroma subsampling, bit depth, pixel and display aspect
    ratio, H.264 profile/level/flags) and ``audio`` (``AudioProperties``: codec, sample rate,
    channels, coded frame size, bit rate). ``VideoProperties.flow_fields()`` and
    ``AudioProperties.flow_fields()`` give the TAMS Flow fields (``format``, ``codec``,
    ``essence_parameters``). An MPEG-TS object in memory holding only H.264 video is read from
    its packet and PES headers and its SPS instead (``h264_sps``), where those leave no doubt
    what PyAV's probe gives (see ``_scanned_properties``): the same ``MediaProperties``, without
    PyAV, so that a video-only ingest never imports it (about 40 ms) nor decodes a key frame.

Which frames a timerange holds
    ``in_timerange(t, timerange, tolerance)`` with ``bound_tolerance(frame_duration)``: a frame
    within a quarter of a frame duration (``FRAME_TOLERANCE``) of a bound counts as on it, so cuts
    placed on an exact frame grid and frames whose pts a container has quantised agree.

Other helpers
    ``segment_bit_rates(segments, target)``: the Flow ``avg_bit_rate`` and ``max_bit_rate`` in
    kbit/s by TAMS AppNote 0013 (segment bits over segment durations; the peak over contiguous
    runs lasting 0.5 to 1.5 target durations, or single longer segments).
    ``split_essences(data)``: remux an MPEG-TS segment, without re-encoding, into one MPEG-TS
    per essence (video, audio), keeping every timestamp.

Errors are ``MediaError`` (with the file named), never PyAV exceptions.

PyAV is imported on first use (``av`` here stands in for the module until then; ``load_av()``
imports it, e.g. in a thread while a script's first requests to the store are out), since the
scripts need none of it for their start-up, which it would lengthen by about 40 ms.
"""

from __future__ import annotations

import importlib
import io
import logging
import types
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from typing import Any, BinaryIO

from mediatimestamp.immutable import TimeRange, Timestamp

import h264_sps
import ts_scan

__all__ = [
    "FRAME_TOLERANCE",
    "PROBE_OPTIONS",
    "PTS_WRAP",
    "QUICK_TIMING_OPTIONS",
    "TICK_TOLERANCE",
    "TS_CLOCK",
    "AudioProperties",
    "MediaError",
    "MediaProperties",
    "MediaTiming",
    "PtsUnwrapper",
    "StreamTiming",
    "VideoProperties",
    "bound_tolerance",
    "container_mime",
    "in_timerange",
    "load_av",
    "media_timerange",
    "probe",
    "pts_to_timestamp",
    "read_timing",
    "segment_bit_rates",
    "split_essences",
    "unwrap_near",
]

logger = logging.getLogger(__name__)


class _Deferred(types.ModuleType):
    """Stands in for the module of the same name until one of its attributes is used, then
    imports it (``importlib`` holds a per-module lock, so two threads may do so at once) and
    takes on its attributes."""

    def __getattr__(self, name: str) -> Any:
        module = importlib.import_module(self.__name__)
        self.__dict__.update(vars(module))
        return getattr(module, name)


av: Any = _Deferred("av")  # PyAV; see the module docstring


def load_av() -> None:
    """Import PyAV now (safe in any thread), so that its first use does not wait for it."""
    importlib.import_module("av")


TS_CLOCK = 90000
PTS_WRAP = 1 << 33
# Which frames a timerange holds, the one rule of outgest_file.py and simple_edit.py: a frame
# belongs to a timerange when its Flow time is inside it, and a frame within FRAME_TOLERANCE of a frame duration of a bound counts as
# exactly on that bound (so the bound's inclusivity decides). Stored times are quantised (to
# nanoseconds; MPEG-TS to 90 kHz ticks, so at 24000/1001 a frame's pts is up to 0.75 tick before
# its exact place on the frame grid where an edit puts a cut), while two frames are always at least
# a frame duration apart: a quarter of one absorbs any quantisation and never confuses two frames.
FRAME_TOLERANCE = Fraction(1, 4)
# The tolerance (seconds) when the frame duration is unknown (a single frame of unknown rate):
# half a 90 kHz tick, which still absorbs nanosecond rounding of registered timeranges.
TICK_TOLERANCE = Fraction(1, 2 * TS_CLOCK)
# Remuxed MPEG-TS keeps timestamps exactly: no mux delay, no shift of values libavformat reports
# as negative near a 33-bit wrap (they are written modulo 2**33, as they were read).
_TS_MUX_OPTIONS = {"mpegts_copyts": "1", "avoid_negative_ts": "disabled"}

Source = Path | str | bytes | bytearray | memoryview | BinaryIO

_CONTAINER_MIME = {
    "mpegts": "video/mp2t",
    "mov,mp4,m4a,3gp,3g2,mj2": "video/mp4",
    "mp4": "video/mp4",
    "matroska,webm": "video/x-matroska",
    "mxf": "application/mxf",
    "adts": "audio/aac",
    "wav": "audio/wav",
}
_CODEC_MIME = {
    "h264": "video/h264",
    "hevc": "video/h265",
    "mpeg2video": "video/mp2v",
    "av1": "video/av1",
    "vp9": "video/vp9",
    "prores": "video/prores",
    "jpeg2000": "video/jpeg2000",
    "mjpeg": "video/jpeg",
    "rawvideo": "video/raw",
    "aac": "audio/aac",
    "mp2": "audio/mpeg",
    "mp3": "audio/mpeg",
    "ac3": "audio/ac3",
    "eac3": "audio/eac3",
    "opus": "audio/opus",
    "flac": "audio/flac",
    "pcm_s16le": "audio/x-raw-int",
    "pcm_s24le": "audio/x-raw-int",
    "pcm_f32le": "audio/x-raw-float",
}
# libavcodec's AVFieldOrder, which PyAV reports as an int (or, in some versions, a name)
_FIELD_ORDER = {
    1: "progressive",
    2: "interlaced_tff",  # top coded first, top displayed first
    3: "interlaced_bff",
    4: "interlaced_tff",  # top coded first, bottom displayed first: top field is still first in time
    5: "interlaced_bff",
    "progressive": "progressive",
    "tt": "interlaced_tff",
    "tb": "interlaced_tff",
    "bb": "interlaced_bff",
    "bt": "interlaced_bff",
}
# AAC audio object types by libavcodec profile name. The spec's own example Flow gives
# ``mp4_oti: 2`` for AAC-LC (the object type in "mp4a.40.2"), so that is the value we write.
_AAC_OBJECT_TYPE = {"Main": 1, "LC": 2, "SSR": 3, "LTP": 4, "HE-AAC": 5, "HE-AACv2": 29}


def bound_tolerance(frame_duration: Fraction | None) -> Fraction:
    """How far (seconds) a frame's time may be from a timerange bound and still count as on it:
    FRAME_TOLERANCE of ``frame_duration`` (video frame, or audio coded frame), else TICK_TOLERANCE."""
    if not frame_duration:
        return TICK_TOLERANCE
    return max(TICK_TOLERANCE, frame_duration * FRAME_TOLERANCE)


def in_timerange(t: Fraction, tr: TimeRange, tolerance: Fraction = TICK_TOLERANCE) -> bool:
    """Whether a frame at Flow time ``t`` (seconds) belongs to ``tr``: the membership rule.

    A time within ``tolerance`` of a bound (see :func:`bound_tolerance`) is taken as exactly on it,
    so ``[`` and ``]`` take that frame and ``(`` and ``)`` leave it out; otherwise plain ``t in tr``.
    ``simple_edit``'s planning applies the same rule to frames on an exact grid.
    """
    if tr.is_empty():
        return False
    if tr.start is not None:
        start = Fraction(tr.start.to_nanosec(), 10**9)
        if tr.includes_start() and t < start - tolerance:
            return False
        if not tr.includes_start() and t <= start + tolerance:
            return False
    if tr.end is not None:
        end = Fraction(tr.end.to_nanosec(), 10**9)
        if tr.includes_end() and t > end + tolerance:
            return False
        if not tr.includes_end() and t >= end - tolerance:
            return False
    return True


class MediaError(Exception):
    """The media could not be read, or does not hold what was asked for."""


# --------------------------------------------------------------------------------------------
# Time


def pts_to_timestamp(pts: int | Fraction, time_base: Fraction) -> Timestamp:
    """``pts * time_base`` seconds as a Timestamp, exactly, rounded once to the nanosecond the way
    ``Timestamp.from_count`` rounds (down for non-negative times, towards zero for negative ones)."""
    seconds = Fraction(pts) * Fraction(time_base)
    return Timestamp.from_count(seconds.numerator, seconds.denominator)


def unwrap_near(pts: int, reference: int, bits: int = 33) -> int:
    """``pts`` moved by whole wrap periods (2**bits) to the value nearest ``reference``."""
    period = 1 << bits
    base = reference - reference % period + pts % period
    return min((base - period, base, base + period), key=lambda value: abs(value - reference))


class PtsUnwrapper:
    """Places successive MPEG-TS pts values on one continuous (unwrapped) timeline."""

    def __init__(self, bits: int = 33) -> None:
        self.bits = bits
        self.last: int | None = None

    def unwrap(self, pts: int) -> int:
        if self.last is None:
            value = pts % (1 << self.bits)
        else:
            value = unwrap_near(pts, self.last, self.bits)
        self.last = value
        return value


# --------------------------------------------------------------------------------------------
# Timing


@dataclass(frozen=True)
class StreamTiming:
    """Presentation timing of one stream of one file, in ``time_base`` ticks."""

    kind: str
    index: int
    time_base: Fraction
    first: int
    last: int
    last_duration: Fraction
    packets: int
    key_frames: int
    bytes: int
    nominal_duration: Fraction | None = None  # one frame at the stream's frame rate, if known

    @property
    def end(self) -> Fraction:
        """Exclusive end: the last sample's pts plus its duration."""
        return self.last + self.last_duration

    def timestamp(self, ticks: int | Fraction) -> Timestamp:
        return pts_to_timestamp(ticks, self.time_base)

    def timerange(self, offset: int = 0, end: int | Fraction | None = None) -> TimeRange:
        """``[first_end)`` shifted by ``offset`` ticks; ``end`` (ticks, unshifted) overrides the end."""
        stop = self.end if end is None else Fraction(end)
        if stop <= self.last:
            return TimeRange(self.timestamp(self.first + offset), self.timestamp(self.last + offset), TimeRange.INCLUSIVE)
        return TimeRange(self.timestamp(self.first + offset), self.timestamp(stop + offset), TimeRange.INCLUDE_START)


@dataclass(frozen=True)
class MediaTiming:
    """Timing of the first video and audio streams of a file."""

    format_name: str
    size: int
    streams: dict[str, StreamTiming] = field(default_factory=dict)

    @property
    def video(self) -> StreamTiming | None:
        return self.streams.get("video")

    @property
    def audio(self) -> StreamTiming | None:
        return self.streams.get("audio")


# Opening a container runs libavformat's stream probe, which decodes frames to learn what a
# stream is (up to several 1080p pictures: most of the cost of reading a segment's timing).
# Packet timing needs none of that, so timing reads tell the probe's decoders to skip every
# frame: the demuxer and parsers still give each packet's pts, dts, duration and key flag.
TIMING_OPTIONS = {"skip_frame": "all"}
# When the frame rate is known already (from a probe of a Flow's first segment), a timing read needs
# nothing from the stream probe but the streams' time bases, which the first packets give: it reads
# only the start of the file before demuxing (half the cost of a segment's timing read).
QUICK_TIMING_OPTIONS = {**TIMING_OPTIONS, "probesize": "32768", "analyzeduration": "0"}
# A probe learns the picture format (and field order) by decoding; one key frame tells it all, so
# the others are skipped (a third of a 1080p probe). A file whose probe meets no key frame is
# probed again in full. One decoder thread: starting a pool of them for a frame or two costs more
# than it saves (a 1080p probe takes 10 ms instead of 17).
PROBE_OPTIONS = {"skip_frame": "nokey", "threads": "1"}


def _open(source: Source, name: str | None = None, options: dict[str, str] | None = None) -> tuple[Any, str, int]:
    """Open ``source`` for reading; return the container, a name for messages and its size."""
    label = name or (str(source) if isinstance(source, (str, Path)) else "<media>")
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            return av.open(io.BytesIO(data), options=options), label, len(data)
        if isinstance(source, (str, Path)):
            size = Path(source).stat().st_size
            return av.open(str(source), options=options), label, size
        start = source.tell()
        source.seek(0, io.SEEK_END)
        size = source.tell() - start
        source.seek(start)
        return av.open(source, options=options), label, size
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"cannot read {label}: {exc}") from exc


def _open_enough(source: Source, name: str | None, options: dict[str, str], fallback: dict[str, str] | None,
                 enough: Callable[[Any], bool]) -> tuple[Any, str, int]:
    """``_open`` with ``options``, or again with ``fallback`` where what that opened is not ``enough``."""
    start = 0 if isinstance(source, (str, Path, bytes, bytearray, memoryview)) else source.tell()
    opened = _open(source, name, options)
    if enough(opened[0]):
        return opened
    opened[0].close()
    if not isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        source.seek(start)
    return _open(source, name, fallback)


def _first_streams(container: Any, kinds: Iterable[str]) -> dict[str, Any]:
    chosen = {}
    for kind in kinds:
        streams = getattr(container.streams, kind)
        if streams:
            chosen[kind] = streams[0]
    return chosen


def _nominal_rate(stream: Any) -> Fraction | None:
    """The stream's frame rate as an exact rational, if the container or codec states one."""
    for rate in (stream.guessed_rate, stream.average_rate, stream.base_rate):
        if rate:
            value = Fraction(rate)
            if 0 < value <= 1000:
                return value
    return None


def _video_duration(pts_sorted: list[int], nominal: Fraction | None, packet_duration: int) -> Fraction:
    spacing = Counter(b - a for a, b in pairwise(pts_sorted) if b > a)
    common = Fraction(spacing.most_common(1)[0][0]) if spacing else None
    if nominal is not None and (common is None or abs(common - nominal) <= 1):
        return nominal
    if common is not None:
        return common
    return Fraction(packet_duration)


def read_timing(source: Source, *, kinds: Iterable[str] = ("video", "audio"), name: str | None = None,
                frame_rate: Fraction | None = None) -> MediaTiming:
    """The presentation timing of the first stream of each kind in ``source`` (see module doc).

    ``frame_rate``: the video's frame rate where it is known already (the Flow's): it gives the
    nominal frame duration, and only the start of the file is probed (``QUICK_TIMING_OPTIONS``;
    all of it again when that does not show a stream of each kind).
    """
    kinds = tuple(kinds)
    if frame_rate and kinds == ("video",) and isinstance(source, (bytes, bytearray)):
        scanned = _scanned_timing(source, frame_rate)
        if scanned is not None:
            return MediaTiming(format_name="mpegts", size=len(source), streams={"video": scanned})
    if frame_rate is None:
        container, label, size = _open(source, name, TIMING_OPTIONS)
    else:  # a stream that starts later in the file needs all of it probed
        container, label, size = _open_enough(source, name, QUICK_TIMING_OPTIONS, TIMING_OPTIONS,
                                              lambda opened: _quick_probe_enough(opened, kinds))
    with container:
        streams = _first_streams(container, kinds)
        if not streams:
            raise MediaError(f"{label} has no {' or '.join(kinds)} stream")
        fmt = container.format.name
        result: dict[str, StreamTiming] = {}
        if "mp4" in fmt.split(","):
            result = _timing_from_index(streams, frame_rate)
        if len(result) < len(streams):
            result = _timing_from_packets(container, streams, wraps=fmt == "mpegts", label=label, frame_rate=frame_rate)
    return MediaTiming(format_name=fmt, size=size, streams=result)


def _scanned_timing(data: bytes | bytearray, frame_rate: Fraction) -> StreamTiming | None:
    """The video timing of an MPEG-TS object read from its packet, PES and NAL unit headers
    (``ts_scan``), without PyAV, where those show what demuxing it gives (None otherwise)."""
    found = ts_scan.scan(data)
    if isinstance(found, str):
        return None
    units = ts_scan.access_units(data, found)
    if isinstance(units, str):
        return None
    unwrapper = PtsUnwrapper()
    pts_all = [unwrapper.unwrap(pts) for pts in found.pts]
    time_base = Fraction(1, TS_CLOCK)
    nominal = 1 / (frame_rate * time_base)
    return StreamTiming(
        kind="video",
        index=0,  # the program's only stream
        time_base=time_base,
        first=min(pts_all),
        last=max(pts_all),
        last_duration=_video_duration(sorted(pts_all), nominal, 0),
        packets=len(pts_all),
        key_frames=sum(units.key),
        bytes=sum(units.sizes),
        nominal_duration=nominal,
    )


def _quick_probe_enough(container: Any, kinds: tuple[str, ...]) -> bool:
    """A stream of each kind, and the audio's sample rate: without it (a PMT lists the audio, but
    its first packet lies past the quick probe) libavformat gives its packets no duration."""
    streams = _first_streams(container, kinds)
    audio = streams.get("audio")
    return len(streams) == len(kinds) and (audio is None or bool(audio.codec_context.sample_rate))


def _timing_from_index(streams: dict[str, Any], frame_rate: Fraction | None = None) -> dict[str, StreamTiming]:
    """MP4 keeps every sample's timing in its index: use it and read no packets."""
    result = {}
    for kind, stream in streams.items():
        tb = Fraction(stream.time_base)
        if stream.start_time is None or not stream.duration or not stream.frames:
            return {}
        nominal = None
        if kind == "video":
            rate = frame_rate or _nominal_rate(stream)
            nominal = 1 / (rate * tb) if rate else None
        keys = sum(1 for entry in stream.index_entries if entry.is_keyframe) if kind == "video" else stream.frames
        end = stream.start_time + stream.duration
        per_sample = Fraction(stream.duration, stream.frames)
        duration = nominal if nominal is not None else per_sample
        result[kind] = StreamTiming(
            kind=kind,
            index=stream.index,
            time_base=tb,
            first=stream.start_time,
            last=round(end - duration),
            last_duration=end - round(end - duration),
            packets=stream.frames,
            key_frames=keys,
            bytes=sum(entry.size for entry in stream.index_entries),
            nominal_duration=nominal,
        )
    return result


def _timing_from_packets(container: Any, streams: dict[str, Any], *, wraps: bool, label: str,
                         frame_rate: Fraction | None = None) -> dict[str, StreamTiming]:
    by_index = {stream.index: kind for kind, stream in streams.items()}
    unwrappers = {index: PtsUnwrapper() for index in by_index}
    pts_lists: dict[int, list[int]] = {index: [] for index in by_index}
    sizes = dict.fromkeys(by_index, 0)
    keys = dict.fromkeys(by_index, 0)
    last_packet_duration = dict.fromkeys(by_index, 0)
    max_pts: dict[int, int] = {}
    try:
        for packet in container.demux(list(streams.values())):
            if packet.pts is None or packet.size == 0:
                continue
            index = packet.stream.index
            pts = unwrappers[index].unwrap(packet.pts) if wraps else packet.pts
            pts_lists[index].append(pts)
            sizes[index] += packet.size
            keys[index] += packet.is_keyframe
            if index not in max_pts or pts >= max_pts[index]:
                max_pts[index] = pts
                last_packet_duration[index] = packet.duration or 0
    except av.error.FFmpegError as exc:
        raise MediaError(f"cannot demux {label}: {exc}") from exc
    result = {}
    for index, kind in by_index.items():
        pts_all = pts_lists[index]
        if not pts_all:
            raise MediaError(f"{label}: the {kind} stream has no packets with timestamps")
        stream = streams[kind]
        tb = Fraction(stream.time_base)
        nominal: Fraction | None = None
        if kind == "video":
            rate = frame_rate or _nominal_rate(stream)
            nominal = 1 / (rate * tb) if rate else None
            duration = _video_duration(sorted(pts_all), nominal, last_packet_duration[index])
        else:
            duration = Fraction(last_packet_duration[index])
            frame_size = getattr(stream.codec_context, "frame_size", 0)
            if not duration and frame_size and stream.codec_context.sample_rate:
                duration = Fraction(frame_size, stream.codec_context.sample_rate) / tb
        result[kind] = StreamTiming(
            kind=kind,
            index=index,
            time_base=tb,
            first=min(pts_all),
            last=max(pts_all),
            last_duration=duration,
            packets=len(pts_all),
            key_frames=keys[index],
            bytes=sizes[index],
            nominal_duration=nominal,
        )
    return result


def media_timerange(source: Source, kind: str = "video") -> TimeRange:
    """The exact ``[first_end)`` presentation timerange of the first ``kind`` stream of ``source``."""
    timing = read_timing(source, kinds=(kind,))
    return timing.streams[kind].timerange()


# --------------------------------------------------------------------------------------------
# Properties


def container_mime(format_name: str) -> str:
    return _CONTAINER_MIME.get(format_name, f"application/x-{format_name.split(',')[0]}")


@dataclass(frozen=True)
class VideoProperties:
    codec_name: str
    codec: str  # MIME type
    width: int
    height: int
    frame_rate: Fraction | None
    interlace_mode: str | None
    component_type: str | None
    horiz_chroma_subs: int | None
    vert_chroma_subs: int | None
    bit_depth: int | None
    pixel_aspect_ratio: Fraction
    avc: tuple[int, int, int] | None  # (profile_idc, constraint flags, level_idc)
    bit_rate: int | None  # bit/s as declared by the stream, if any

    @property
    def aspect_ratio(self) -> Fraction:
        return Fraction(self.width, self.height) * self.pixel_aspect_ratio

    def flow_fields(self) -> dict[str, Any]:
        """The TAMS video Flow's ``format``, ``codec`` and ``essence_parameters``."""
        params: dict[str, Any] = {"frame_width": self.width, "frame_height": self.height}
        if self.frame_rate is not None:
            params["frame_rate"] = {"numerator": self.frame_rate.numerator, "denominator": self.frame_rate.denominator}
        else:
            params["vfr"] = True
        optional = {
            "interlace_mode": self.interlace_mode,
            "component_type": self.component_type,
            "horiz_chroma_subs": self.horiz_chroma_subs,
            "vert_chroma_subs": self.vert_chroma_subs,
            "bit_depth": self.bit_depth,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        params["aspect_ratio"] = _ratio(self.aspect_ratio)
        params["pixel_aspect_ratio"] = _ratio(self.pixel_aspect_ratio)
        if self.avc is not None:
            params["avc_parameters"] = {"profile": self.avc[0], "flags": self.avc[1], "level": self.avc[2]}
        return {"format": "urn:x-nmos:format:video", "codec": self.codec, "essence_parameters": params}


@dataclass(frozen=True)
class AudioProperties:
    codec_name: str
    codec: str
    sample_rate: int
    channels: int
    coded_frame_size: int | None
    bit_rate: int | None
    object_type: int | None = None  # MPEG-4 audio object type (AAC)

    def flow_fields(self) -> dict[str, Any]:
        """The TAMS audio Flow's ``format``, ``codec`` and ``essence_parameters``."""
        params: dict[str, Any] = {"sample_rate": self.sample_rate, "channels": self.channels}
        codec_params: dict[str, int] = {}
        if self.coded_frame_size:
            codec_params["coded_frame_size"] = self.coded_frame_size
        if self.object_type is not None:
            codec_params["mp4_oti"] = self.object_type
        if codec_params:
            params["codec_parameters"] = codec_params
        return {"format": "urn:x-nmos:format:audio", "codec": self.codec, "essence_parameters": params}


@dataclass(frozen=True)
class MediaProperties:
    format_name: str
    container: str  # MIME type
    video: VideoProperties | None
    audio: AudioProperties | None


def _ratio(value: Fraction) -> dict[str, int]:
    return {"numerator": value.numerator, "denominator": value.denominator}


def _avc_from_bytes(data: bytes) -> tuple[int, int, int] | None:
    """Profile, constraint flags and level from an avcC record or the first Annex B SPS."""
    if len(data) >= 4 and data[0] == 1:
        return data[1], data[2], data[3]
    start = 0
    while True:
        start = data.find(b"\x00\x00\x01", start)
        if start < 0 or start + 6 > len(data):
            return None
        if data[start + 3] & 0x1F == 7:
            return data[start + 4], data[start + 5], data[start + 6]
        start += 3


def _field_order(value: object) -> str | None:
    if isinstance(value, str):
        return _FIELD_ORDER.get(value.lower())
    try:
        return _FIELD_ORDER.get(int(value))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _video_properties(container: Any, stream: Any, label: str) -> VideoProperties:
    ctx = stream.codec_context
    if not ctx.width or not ctx.height:
        raise MediaError(f"{label}: cannot tell the picture size of the video stream")
    fmt = ctx.format
    component_type = horiz = vert = depth = None
    if fmt is not None:
        vf = av.VideoFormat(fmt.name, ctx.width, ctx.height)
        component_type = "RGB" if vf.is_rgb else "YCbCr"
        depth = vf.components[0].bits if vf.components else None
        if not vf.is_rgb and len(vf.components) >= 3 and vf.components[1].width:
            horiz = max(1, ctx.width // vf.components[1].width)
            vert = max(1, ctx.height // vf.components[1].height)
    sar = ctx.sample_aspect_ratio or stream.sample_aspect_ratio
    par = Fraction(sar) if sar else Fraction(1)
    avc = None
    if ctx.name == "h264":
        avc = _avc_from_bytes(bytes(ctx.extradata or b""))
        if avc is None:
            for packet in container.demux(stream):
                if packet.size and packet.is_keyframe:
                    avc = _avc_from_bytes(bytes(packet))
                    break
    return VideoProperties(
        codec_name=ctx.name,
        codec=_CODEC_MIME.get(ctx.name, f"video/x-{ctx.name}"),
        width=ctx.width,
        height=ctx.height,
        frame_rate=_nominal_rate(stream),
        interlace_mode=_field_order(ctx.field_order),
        component_type=component_type,
        horiz_chroma_subs=horiz,
        vert_chroma_subs=vert,
        bit_depth=depth,
        pixel_aspect_ratio=par,
        avc=avc,
        bit_rate=ctx.bit_rate or None,
    )


def _audio_properties(stream: Any) -> AudioProperties:
    ctx = stream.codec_context
    return AudioProperties(
        codec_name=ctx.name,
        codec=_CODEC_MIME.get(ctx.name, f"audio/x-{ctx.name}"),
        sample_rate=ctx.sample_rate,
        channels=ctx.channels,
        coded_frame_size=ctx.frame_size or None,
        bit_rate=ctx.bit_rate or None,
        object_type=_AAC_OBJECT_TYPE.get(str(ctx.profile)) if ctx.name == "aac" else None,
    )


# What libavformat's stream probe reads of an MPEG-TS object before it has estimated the frame
# rate from the decode times (see _scanned_properties): the first 24 access units, within half of
# its 5 MB probesize and well within its 7 s analyze duration for MPEG-TS.
SCANNED_PROBE_FRAMES = 24
SCANNED_PROBE_BYTES = 2_500_000
SCANNED_PROBE_STEPS = range(429, 18001)  # 90 kHz ticks: from 209.8 down to 5 frames a second


def _decoded_sar(sps: h264_sps.Sps) -> Fraction | None:
    """The sample aspect ratio libavcodec's H.264 decoder gives for ``sps`` (1 where it gives none),
    or None where it takes more than this to tell (a ratio that leaves almost no picture)."""
    if sps.sample_aspect_ratio is None or sps.sample_aspect_ratio[0] == 0:
        return Fraction(1)
    width, height = sps.sample_aspect_ratio
    sar = Fraction(width, height or 1)  # libavcodec reads a height of 0 as 1
    if sar != 1 and min(sps.width * sar, sps.height / sar) < 1:
        return None  # av_image_check_sar refuses a ratio that scales the picture to nothing
    return sar


def _scanned_properties(data: bytes) -> MediaProperties | None:
    """The properties of an MPEG-TS object holding only H.264 video, read from its packet and PES
    headers (``ts_scan``) and its SPS (``h264_sps``) without PyAV, where those leave no doubt what
    PyAV's probe makes of it; None otherwise.

    That is: the demuxer's access units are the PES packets (``ts_scan.access_units``) and the
    first is a key frame, so the probe decodes it; every SPS is the same one, the PPSs and the
    first slice refer to it, and it is of 8-bit 4:2:0 progressive frames (``frame_mbs_only_flag``),
    cropped only right and bottom, with no HRD parameters (a bit rate) or picture structure (a
    field order) in its VUI. For the frame rate, libavformat's estimate from the decode times: at
    least 24 frames follow one another by the same step, in decode and in presentation order, that
    step is 5 to 209.8 frames a second, the first 24 access units hold less than 2.5 MB, and the
    VUI's timing info states a rate no lower (a lower one can take over in av_guess_frame_rate).
    The probe then gives the 90 kHz clock over that step as the frame rate, the SPS's sample
    aspect ratio as libavcodec reads it (``_decoded_sar``), YCbCr at 8 bits, and a progressive
    field order.

    A stream whose key frame does not decode (corrupt slices) is described from its SPS, where
    PyAV's probe would find no picture format.
    """
    found = ts_scan.scan(data)
    if isinstance(found, str) or found.layout.codec != "h264":
        return None
    units = ts_scan.access_units(data, found)
    headers = ts_scan.h264_headers(data, found)
    if isinstance(units, str) or not units.key[0] or isinstance(headers, str):
        return None
    first_slice = headers[2]
    sets, pictures = [nal.rstrip(b"\0") for nal in headers[0]], [nal.rstrip(b"\0") for nal in headers[1]]
    sps = h264_sps.parse(sets[0]) if sets else None
    if (sps is None or any(other != sets[0] for other in sets[1:])
            or (sps.chroma_format_idc, sps.separate_colour_planes, sps.bit_depth_luma, sps.bit_depth_chroma)
            != (1, False, 8, 8)
            or not sps.frame_mbs_only or sps.crop_left or sps.crop_top or sps.hrd or sps.pic_struct_present
            or sps.matrix_coefficients == 0):  # 0: GBR, which the decoder gives as RGB
        return None
    ids = [h264_sps.pps_sps_id(nal) for nal in pictures]
    if not ids or any(pair is None or pair[1] != sps.sps_id for pair in ids) or \
            h264_sps.slice_pps_id(first_slice) not in {pair[0] for pair in ids if pair is not None}:
        return None
    # libavformat's estimate: with more than 15 steps between decode times analysed (the first 4
    # left out), all the same, the clock over their greatest common divisor, the step itself. A
    # rate such as 24000/1001, whose steps on the 90 kHz clock alternate, is estimated another
    # way: PyAV probes those.
    unwrapper = PtsUnwrapper()
    dts = [unwrapper.unwrap(value) for value in found.dts]
    steps = {b - a for a, b in pairwise(dts)}
    pts = sorted(unwrapper.unwrap(value) for value in found.pts)
    if (len(dts) < SCANNED_PROBE_FRAMES or len(steps) != 1 or {b - a for a, b in pairwise(pts)} != steps
            or sum(units.sizes[:SCANNED_PROBE_FRAMES]) >= SCANNED_PROBE_BYTES):
        return None
    step = steps.pop()
    rate = Fraction(TS_CLOCK, step)
    stated = sps.frame_rate
    sar = _decoded_sar(sps)
    if step not in SCANNED_PROBE_STEPS or stated is None or stated < rate or sar is None:
        return None
    video = VideoProperties(
        codec_name="h264", codec=_CODEC_MIME["h264"], width=sps.width, height=sps.height, frame_rate=rate,
        interlace_mode="progressive", component_type="YCbCr", horiz_chroma_subs=2, vert_chroma_subs=2, bit_depth=8,
        pixel_aspect_ratio=sar, avc=(sps.profile_idc, sps.constraint_flags, sps.level_idc), bit_rate=None,
    )
    return MediaProperties(format_name="mpegts", container=container_mime("mpegts"), video=video, audio=None)


def probe(source: Source, *, name: str | None = None) -> MediaProperties:
    """Container, video and audio properties of ``source``, read from headers and at most the key
    frames the stream probe decodes (``PROBE_OPTIONS``). An MPEG-TS object of H.264 video alone,
    given as bytes, is read without PyAV where its headers leave no doubt (``_scanned_properties``)."""
    if isinstance(source, bytes):
        scanned = _scanned_properties(source)
        if scanned is not None:
            return scanned
    # no key frame where the probe looked (no picture format): decode what it takes
    container, label, _ = _open_enough(source, name, PROBE_OPTIONS, None,
                                       lambda opened: all(s.codec_context.format is not None for s in opened.streams.video[:1]))
    with container:
        streams = _first_streams(container, ("video", "audio"))
        if not streams:
            raise MediaError(f"{label} has no video or audio stream")
        try:
            audio = _audio_properties(streams["audio"]) if "audio" in streams else None
            video = _video_properties(container, streams["video"], label) if "video" in streams else None
        except av.error.FFmpegError as exc:
            raise MediaError(f"cannot read {label}: {exc}") from exc
        fmt = container.format.name
    return MediaProperties(format_name=fmt, container=container_mime(fmt), video=video, audio=audio)


# --------------------------------------------------------------------------------------------
# Segments


def segment_bit_rates(segments: list[tuple[int, Fraction]], target: Fraction) -> tuple[int, int]:
    """``(avg_bit_rate, max_bit_rate)`` in kbit/s for contiguous segments given as (bytes, seconds).

    The average is all bits over all seconds; the peak is the highest rate over any run of
    consecutive segments lasting 0.5 to 1.5 target durations, or over any single segment longer
    than that (AppNote 0013). Both are floored, as the AppNote's ``int()`` does.
    """
    runs = [(8 * size, Fraction(seconds)) for size, seconds in segments if seconds > 0]
    if not runs:
        return 0, 0
    low, high = Fraction(target) / 2, Fraction(target) * 3 / 2
    peak = Fraction(0)
    for start, (first_bits, first_seconds) in enumerate(runs):
        if first_seconds > high:
            peak = max(peak, first_bits / first_seconds)
        bits, seconds = 0, Fraction(0)
        for size_bits, length in runs[start:]:
            bits += size_bits
            seconds += length
            if seconds > high:
                break
            if seconds >= low:
                peak = max(peak, bits / seconds)
    if peak == 0:  # too little media for any qualifying run
        peak = max(bits / seconds for bits, seconds in runs)
    average = Fraction(sum(bits for bits, _ in runs)) / sum(seconds for _, seconds in runs)
    return int(average / 1000), int(peak / 1000)


def split_essences(data: bytes, kinds: Iterable[str] = ("video", "audio"), *, name: str | None = None) -> dict[str, bytes]:
    """One MPEG-TS per essence from an MPEG-TS holding several, by remuxing (timestamps kept)."""
    container, label, _ = _open(data, name)
    outputs: dict[str, Any] = {}
    buffers: dict[str, io.BytesIO] = {}
    with container:
        streams = _first_streams(container, kinds)
        targets: dict[int, tuple[Any, Any]] = {}
        try:
            for kind, stream in streams.items():
                buffers[kind] = io.BytesIO()
                outputs[kind] = av.open(buffers[kind], "w", format="mpegts", container_options=_TS_MUX_OPTIONS)
                targets[stream.index] = (outputs[kind], outputs[kind].add_stream_from_template(stream))
            for packet in container.demux(list(streams.values())):
                if packet.pts is None or packet.size == 0:
                    continue
                output, out_stream = targets[packet.stream.index]
                packet.stream = out_stream
                output.mux(packet)
            for output in outputs.values():
                output.close()
        except av.error.FFmpegError as exc:
            raise MediaError(f"cannot remux {label}: {exc}") from exc
    return {kind: buffer.getvalue() for kind, buffer in buffers.items()}

"""Muxed audio + video export and sample-exact audio for ``outgest_file.py``.

``outgest_av`` writes one MPEG-TS or MP4 file from a video Flow and an audio Flow (the members of a
multi-essence Flow, or ``--flow-id`` plus ``--audio-flow-id``), or from an audio Flow alone. Both
streams are placed by their Flow times, so they stay in sync whatever their segments' ``ts_offset``:
segments of the two Flows are fetched concurrently and written in timeline order, so the muxer
interleaves them with about one segment held.

Audio is exact to the sample. A sample belongs to a timerange by ``media.in_timerange`` with half a
sample of tolerance, on a sample grid anchored at the export's first audio packet (so packet times
quantised to 90 kHz ticks or nanoseconds never drop or repeat a sample). Coded AAC frames always hold
1024 samples, so a frame that a bound cuts is handled by the container:

- MP4: the frames are copied whole and the trim is declared the way players expect: the frame
  before the first one kept goes in as priming, and the first packet's pts is moved before zero
  by the priming plus the samples to skip, so libavformat's mov muxer writes an edit list whose
  ``media_time`` skips them (its demuxer gives them back as ``skip_samples`` and discards the
  priming packet after decoding it); the last packet's duration is cut to the samples kept, which
  the muxer writes as that sample's ``stts`` duration and the edit's duration (``movie_timescale``
  is set to a multiple of the sample rate so that duration is exact). libavformat reports the end
  as the stream's duration and the last packet's duration; it does not trim the last decoded frame.
- MPEG-TS, which cannot declare a trim: the frames a bound cuts are decoded (with the frames around
  them), their samples outside the timerange silenced, and encoded again; every other frame is
  copied. AAC codes overlapping windows, so a packet's samples also depend on the packet before:
  a head cut is preceded by a re-encoded frame of silence (decoded first, so the kept samples come
  out whole), and at a tail cut the frame before is re-encoded too (the original still carries the
  samples being silenced). The file holds whole frames; the summary says how many samples of it
  are silence.

Frames cut inside the export (where two segments' timeranges meet mid-frame) are silenced and
re-encoded in both containers, since an edit list trims only a track's ends. Measured on the tests'
1 kHz / 1.5 kHz tones (128 kbit/s AAC): the kept samples keep the source's phase within 0.4 of a
sample, and what is left in the silenced parts is coding noise more than 20 dB down.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import tempfile
import time
from array import array
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import av
import av.bitstream
import av.error
from mediatimestamp.immutable import TimeRange

import outgest_core as of
from client import NotFound, TAMSClient
from media import in_timerange

__all__ = ["AVSummary", "MuxedFileWriter", "SampleClock", "kept_samples", "outgest_av", "resolve_essences"]

logger = logging.getLogger(__name__)

AAC_TIME_BASE_TS = of.WORK_TIME_BASE


@dataclass
class AVSummary(of.OutgestSummary):
    """The export summary, with the audio the file holds."""

    audio_samples: int = 0  # samples of the timerange the file plays
    silent_samples: int = 0  # samples of silence in re-encoded frames (MPEG-TS and inner cuts only)
    sample_rate: int | None = None
    audio_reencoded_frames: int = 0
    has_video: bool = True

    def line(self) -> str:
        rate = self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        parts = [f"{self.output}: {self.segments} segments ({self.reencoded} re-encoded)"]
        if self.has_video:
            parts.append(f"{self.frames} frames")
        if self.sample_rate:
            audio = f"{self.audio_samples} audio samples ({self.audio_samples / self.sample_rate:.6f} s at {self.sample_rate} Hz"
            if self.silent_samples:
                audio += f", plus {self.silent_samples} of silence filling whole AAC frames"
            if self.audio_reencoded_frames:
                audio += f"; {self.audio_reencoded_frames} AAC frames re-encoded at cuts"
            parts.append(audio + ")")
        parts.append(f"{self.bytes} bytes in {self.seconds:.2f} s ({rate:.1f} MB/s)")
        return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Which samples


class SampleClock:
    """The export's audio sample grid: anchored at the first audio packet's Flow time, every later
    packet starts at a whole number of samples from it."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.anchor: Fraction | None = None

    def position(self, t: Fraction) -> int:
        if self.anchor is None:
            self.anchor = t
        return round((t - self.anchor) * self.sample_rate)

    def time(self, position: int) -> Fraction:
        assert self.anchor is not None
        return self.anchor + Fraction(position, self.sample_rate)


def kept_samples(start: Fraction, count: int, sample_rate: int, timerange: TimeRange) -> tuple[int, int]:
    """``(lo, hi)``: the samples ``lo <= i < hi`` of a frame of ``count`` samples whose first is at Flow
    time ``start`` that lie in ``timerange`` by ``in_timerange`` with half a sample of tolerance
    (so a bound on or near a sample's time decides by its inclusivity). ``lo == hi`` when none."""
    if timerange.is_empty():
        return 0, 0
    half = Fraction(1, 2)
    lo, hi = 0, count
    if timerange.start is not None:
        x = (of._to_fraction(timerange.start) - start) * sample_rate
        lo = max(lo, math.ceil(x - half) if timerange.includes_start() else math.floor(x + half) + 1)
    if timerange.end is not None:
        x = (of._to_fraction(timerange.end) - start) * sample_rate
        hi = min(hi, math.ceil(x - half) if not timerange.includes_end() else math.floor(x + half) + 1)
    if hi <= lo:
        return 0, 0
    # the same rule as in_timerange, sample by sample, at the two ends
    tolerance = Fraction(1, 2 * sample_rate)
    assert in_timerange(start + Fraction(lo, sample_rate), timerange, tolerance)
    assert in_timerange(start + Fraction(hi - 1, sample_rate), timerange, tolerance)
    return lo, hi


# --------------------------------------------------------------------------------------------
# Writing two streams


class MuxedFileWriter(of.FlowFileWriter):
    """One output file with a stream per kind ("video", "audio"), under a temporary name until
    ``commit()`` (``FlowFileWriter``'s temporary name, commit and discard).

    Packets come with Flow times (seconds). Nothing is muxed until every kind has given its first
    packet (the streams are made from the objects' streams, and the MP4 origin is the earliest
    start); until then packets wait in memory (the first segment of each). MPEG-TS is written at
    90 kHz on the Flow timeline. MP4 starts at zero, like ``FlowFileWriter``'s: ``moov`` first, HEVC
    tagged hvc1 when one set of parameter sets serves the whole file, video on the frame rate's
    time base (``mp4_time_base``: exact 29.97/59.94; the video's start against the audio is
    rounded to it, within 40 microseconds), audio at its sample rate.
    """

    def __init__(self, path: Path, kinds: Sequence[str], sample_rate: int | None = None,
                 frame_rate: Fraction | None = None) -> None:
        super().__init__(path)
        self.video_time_base = of.mp4_time_base(frame_rate) if frame_rate else of.WORK_TIME_BASE
        self.kinds = tuple(kinds)
        self._templates: dict[str, av.stream.Stream] = {}
        self._starts: dict[str, Fraction] = {}
        self._streams: dict[str, av.stream.Stream] = {}
        self._bsf: av.bitstream.BitStreamFilterContext | None = None
        self._pending: list[tuple[str, av.Packet, Fraction, Fraction, Fraction, Fraction | None]] | None = []
        self.expected_rate = sample_rate  # the audio Flow's, for the MP4 movie timescale
        self._dts_by_kind: dict[str, int] = {}
        self._mp4_origin = Fraction(0)
        self.sample_rate: int | None = None

    def declare(self, kind: str, template: av.stream.Stream, start: Fraction) -> None:
        """The stream ``kind`` is made like ``template`` (now, while its object is open) and presents
        its first sample at ``start``."""
        if kind == "video":
            self._parameter_sets.add(bytes(template.codec_context.extradata or b""))
        if kind in self._templates:
            name = self._templates[kind].codec_context.name
            if template.codec_context.name != name:
                raise of.OutgestError(f"an object holds {template.codec_context.name}, earlier ones {name}")
            return
        self._templates[kind] = template
        self._starts[kind] = start
        if kind == "audio":
            self.sample_rate = cast(av.audio.codeccontext.AudioCodecContext, template.codec_context).sample_rate
        try:
            if self._output is None:
                options = {"avoid_negative_ts": "disabled"} if self.format == "mpegts" else self._mp4_options()
                self._output = av.open(str(self.temp_path), "w", format=self.format, options=options)
            stream = self._output.add_stream_from_template(template)
            if kind == "video":
                self._codec = template.codec_context.name
                if self.format == "mp4" and self._codec == "hevc":
                    stream.codec_context.codec_tag = "hev1"  # until commit() finds one set of parameter sets
            if kind == "video" and self.format == "mp4":
                stream.time_base = self.video_time_base
            elif kind == "audio" and self.format == "mp4":
                stream.time_base = Fraction(1, self.sample_rate or of.TS_CLOCK)
                # MPEG-TS carries AAC as ADTS frames; MP4 wants raw frames and an AudioSpecificConfig
                self._bsf = av.bitstream.BitStreamFilterContext("aac_adtstoasc", template, stream)
                stream.codec_tag = "mp4a"  # not MPEG-TS's stream type, which the filter copied
            else:
                stream.time_base = of.WORK_TIME_BASE
        except ValueError as exc:
            raise of.OutgestError(f"cannot write {template.codec_context.name} into {self.format}: {exc}") from exc
        except (av.error.FFmpegError, OSError) as exc:
            raise of.OutgestError(f"cannot write {self.path}: {exc}") from exc
        self._streams[kind] = stream

    def _mp4_options(self) -> dict[str, str]:
        # edit durations are in the movie timescale: make every stream's unit whole in it
        scale = math.lcm(self.video_time_base.denominator, self.expected_rate or of.TS_CLOCK)
        return {**super()._mp4_options(), "movie_timescale": str(scale)}

    def put(self, kind: str, packet: av.Packet, pts: Fraction, dts: Fraction, duration: Fraction | None) -> None:
        """Mux ``packet`` of stream ``kind`` at Flow times ``pts``/``dts`` (seconds); video decode
        times come from the writer's ``DecodeClock`` instead (``set_reorder_delay``)."""
        if kind == "video":
            for (held, length), at, shown, delay in self._clock.push((packet, duration), pts):
                self._queue("video", held, at, shown, delay, length)
            return
        self._queue(kind, packet, pts, dts, Fraction(0), duration)

    def _queue(self, kind: str, packet: av.Packet, pts: Fraction, shown: Fraction, delay: Fraction,
               duration: Fraction | None) -> None:
        """Mux ``packet`` (dts ``shown - delay``, as ``DecodeClock`` gives them) once every stream is known."""
        if self._pending is not None:
            self._pending.append((kind, packet, pts, shown, delay, duration))
            if set(self._streams) >= set(self.kinds):
                self._start()
            return
        self._mux(kind, packet, pts, shown, delay, duration)

    def _start(self) -> None:
        """Every stream is known: fix the MP4 origin and write what waited."""
        if self.format == "mp4":
            self._mp4_origin = min(self._starts.values())
        pending, self._pending = self._pending or [], None
        for entry in pending:
            self._mux(*entry)

    def _mux(self, kind: str, packet: av.Packet, pts: Fraction, shown: Fraction, delay: Fraction,
             duration: Fraction | None) -> None:
        stream = self._streams[kind]
        base = Fraction(stream.time_base) if stream.time_base is not None else of.WORK_TIME_BASE
        pts_units = round((pts - self._mp4_origin) / base)
        dts_units = of.decode_ticks(pts_units, round((shown - self._mp4_origin) / base), delay, base)
        last = self._dts_by_kind.get(kind)
        if last is not None and dts_units <= last:
            dts_units = last + 1
            self.nudged += 1
            if dts_units > pts_units:
                raise of.OutgestError(
                    f"decode order breaks at Flow time {of._at(pts)}: frames would have to be decoded after they are shown"
                )
        self._dts_by_kind[kind] = dts_units
        if kind == "audio" and self._bsf is not None:
            # the filter takes the packet's data; the object's packets may still be decoded for a cut
            packet = av.Packet(bytes(packet))
        packet.stream = stream
        packet.time_base = base
        packet.pts = pts_units
        packet.dts = dts_units
        packet.duration = round(duration / base) if duration else 0
        assert self._output is not None
        try:
            if kind == "audio" and self._bsf is not None:
                for filtered in self._bsf.filter(packet):
                    filtered.stream = stream
                    self._output.mux(filtered)
            else:
                self._output.mux(packet)
        except av.error.FFmpegError as exc:
            raise of.OutgestError(f"cannot write {self.path}: {exc}") from exc

    def commit(self) -> int:
        """Finish the file and move it to its name; returns its size in bytes."""
        for (packet, duration), pts, shown, delay in self._clock.flush():
            self._queue("video", packet, pts, shown, delay, duration)
        if self._pending:
            self._start()
        if not self._dts_by_kind:  # nothing muxed
            self.discard()
            raise of.OutgestError("no frames to write")
        return super().commit()

    def discard(self) -> None:
        self._pending = None
        super().discard()


class _VideoTrack:
    """The ``FlowFileWriter.write`` interface onto the writer's video stream, for ``write_segment``."""

    def __init__(self, writer: MuxedFileWriter) -> None:
        self.writer = writer
        self.frames = 0

    @property
    def mixed_parameter_sets(self) -> bool:
        return self.writer.mixed_parameter_sets

    @mixed_parameter_sets.setter
    def mixed_parameter_sets(self, value: bool) -> None:
        self.writer.mixed_parameter_sets = value

    def set_reorder_delay(self, seconds: Fraction) -> None:
        self.writer.set_reorder_delay(seconds)

    def write(self, packet: av.Packet, template: av.stream.Stream, pts: Fraction, dts: Fraction,
              duration: Fraction | None) -> None:
        self.writer.declare("video", template, pts)
        self.writer.put("video", packet, pts, dts, duration)
        self.frames += 1


# --------------------------------------------------------------------------------------------
# Audio segments


@dataclass
class AudioResult:
    samples: int = 0
    silent: int = 0
    reencoded: int = 0
    frames: int = 0

    def merge(self, other: AudioResult) -> None:
        self.samples += other.samples
        self.silent += other.silent
        self.reencoded += other.reencoded
        self.frames += other.frames


def _reencoded_pair(media: of.ObjectMedia, index: int, lo: int, hi: int) -> tuple[av.Packet, av.Packet]:
    """Frames ``index - 1`` and ``index`` of ``media`` encoded again, as ADTS frames (the form
    MPEG-TS carries), with the samples of frame ``index`` outside ``[lo, hi)`` silenced, and the
    audio before it silenced too when ``lo > 0``, after it when ``hi`` is short of its end.

    AAC codes overlapping windows of two frames: what a packet decodes to also depends on the
    packet before it. So a cut's frame is re-encoded together with the frame before: at a head cut
    that one is silence, decoded first so the kept samples come out whole; at a tail cut it
    replaces the original, which still carries the samples being silenced. The frames around them
    are decoded (or are silence) so the encoder sees the signal the copied frames continue."""
    if media.codec != "aac":
        raise of.OutgestError(f"cannot cut {media.codec} audio inside a coded frame (only AAC is re-encoded)")
    order = of.presentation_order(media.frames)
    position = order.index(index)
    decoder = av.CodecContext.create("aac", "r")
    template = cast(av.audio.codeccontext.AudioCodecContext, media.stream.codec_context)
    if template.extradata:
        decoder.extradata = template.extradata
    decoded: dict[int, av.AudioFrame] = {}  # by position in presentation order
    try:
        # two frames more at the front: a decoder's first output is not yet the signal
        for p in range(max(0, position - 4), min(len(order), position + 2)):
            packet = av.Packet(bytes(media.packets[order[p]]))
            packet.pts = packet.dts = p * 1024
            frames = list(decoder.decode(packet))
            if frames:
                decoded[p] = frames[-1]
    except av.error.FFmpegError as exc:
        raise of.OutgestError(f"cannot decode the audio frame a cut falls in: {exc}") from exc
    if position not in decoded:
        raise of.OutgestError("cannot decode the audio frame a cut falls in")
    current = decoded[position]
    samples, layout, sample_rate = current.samples, current.layout.name, current.sample_rate
    silence = [array("f", bytes(4 * samples)) for _ in current.planes]

    def pcm(p: int, keep: bool) -> list[array]:
        frame = decoded.get(p)
        if not keep or frame is None or frame.samples != samples:
            return silence
        return [array("f", bytes(plane)[: 4 * samples]) for plane in frame.planes]

    middle = pcm(position, True)
    for values in middle:
        for i in range(samples):
            if not lo <= i < hi:
                values[i] = 0.0
    head_cut, tail_cut = lo > 0, hi < samples
    # encoder input: two frames before (for the second's overlap), the cut frame, one after
    inputs = [pcm(position - 2, not head_cut), pcm(position - 1, not head_cut), middle,
              pcm(position + 1, not tail_cut)]
    encoder = cast(av.audio.codeccontext.AudioCodecContext, av.CodecContext.create("aac", "w"))
    encoder.sample_rate = sample_rate
    encoder.layout = layout
    encoder.format = "fltp"
    encoder.bit_rate = template.bit_rate or 128000
    encoder.time_base = Fraction(1, sample_rate)
    try:
        out_packets: list[av.Packet] = []
        for number, data in enumerate(inputs):
            frame = av.AudioFrame(format="fltp", layout=layout, samples=samples)
            for plane, values in zip(frame.planes, data):
                plane.update(values.tobytes())
            frame.sample_rate = sample_rate
            frame.pts = number * samples
            frame.time_base = Fraction(1, sample_rate)
            out_packets += encoder.encode(frame)
        out_packets += encoder.encode(None)
        # a packet's pts is where the samples it decodes to are presented, as in the source
        by_pts = {p.pts: p for p in out_packets}
        first, second = by_pts.get(samples), by_pts.get(2 * samples)
        if first is None or second is None:
            raise of.OutgestError("the AAC encoder gave no frame for the cut")
        framed = []
        for packet in (first, second):
            buffer = io.BytesIO()
            with av.open(buffer, "w", format="adts") as adts:
                stream = adts.add_stream("aac", rate=sample_rate)
                stream.codec_context.layout = layout
                stream.codec_context.extradata = encoder.extradata
                packet.stream = stream
                adts.mux(packet)
            framed.append(av.Packet(buffer.getvalue()))
    except av.error.FFmpegError as exc:
        raise of.OutgestError(f"cannot re-encode the audio frame a cut falls in: {exc}") from exc
    return framed[0], framed[1]


@dataclass
class _Held:
    """The last audio frame, muxed only when the next comes (a tail cut re-encodes it) or at the end
    (an MP4 track's last frame is cut short by the edit list)."""

    packet: av.Packet
    start: Fraction
    samples: int
    kept: int  # samples kept from its start (less than ``samples`` when a bound cuts it)
    sample_rate: int
    media: of.ObjectMedia | None  # while its object is open, for a tail cut in the next frame
    position: int  # in the object's presentation order
    trimmed: av.Packet | None = None  # MP4: the frame silenced after ``kept``, should audio follow


@dataclass
class _AudioState:
    clock: SampleClock | None = None
    written: int = 0  # packets muxed or held so far
    held: _Held | None = None


def _release(writer: MuxedFileWriter, state: _AudioState, result: AudioResult, *, ends_track: bool) -> None:
    held = state.held
    if held is None:
        return
    state.held = None
    duration = held.samples
    packet = held.packet
    if held.kept < held.samples:
        if ends_track and writer.format == "mp4":
            duration = held.kept  # the edit list ends the track at the last sample kept
        elif held.trimmed is not None:
            packet = held.trimmed
            result.silent += held.samples - held.kept
            result.reencoded += 1
    writer.put("audio", packet, held.start, held.start, Fraction(duration, held.sample_rate))


def _hold(writer: MuxedFileWriter, state: _AudioState, result: AudioResult, held: _Held) -> None:
    _release(writer, state, result, ends_track=False)
    state.held = held
    state.written += 1


def write_audio_segment(
    writer: MuxedFileWriter,
    media: of.ObjectMedia,
    segment: of.SegmentRef,
    state: _AudioState,
    *,
    request: TimeRange | None = None,
) -> AudioResult:
    """Write the samples of ``media`` that ``segment`` (and ``request``, for ``--exact``) take."""
    result = AudioResult()
    rate = media.sample_rate
    if not rate:
        raise of.OutgestError("the audio stream has no sample rate")
    if state.clock is None:
        state.clock = SampleClock(rate)
    clock = state.clock
    order = of.presentation_order(media.frames)
    n = round((media.frame_duration or Fraction(1024, rate)) * rate)
    frame = Fraction(n, rate)
    mp4 = writer.format == "mp4"

    def held(packet: av.Packet, start: Fraction, position: int, kept: int = n,
             trimmed: av.Packet | None = None) -> _Held:
        return _Held(packet, start, n, kept, rate, media, position, trimmed)

    for position, index in enumerate(order):
        timing = media.frames[index]
        start = clock.time(clock.position(of.flow_time(timing.pts, media.time_base, segment.ts_offset)))
        lo, hi = kept_samples(start, n, rate, segment.timerange)
        if request is not None and hi > lo:
            rlo, rhi = kept_samples(start, n, rate, request)
            lo, hi = max(lo, rlo), min(hi, rhi)
        if hi <= lo:
            continue
        writer.declare("audio", media.stream, start + Fraction(lo, rate))
        result.samples += hi - lo
        result.frames += 1
        head_trim = mp4 and state.written == 0
        if head_trim and position > 0:
            # priming: the frame before, decoded and discarded, so the first kept samples decode right
            _hold(writer, state, result, held(media.packets[order[position - 1]], start - frame, position - 1))
        if lo > 0 and not head_trim:
            before, packet = _reencoded_pair(media, index, lo, hi)
            previous = state.held
            if previous is None or previous.start + 2 * frame <= start:
                # where nothing is written just before: a frame of silence, decoded first
                _hold(writer, state, result, held(before, start - frame, position - 1))
                result.silent += n
                result.reencoded += 1
            result.silent += lo + n - hi
            result.reencoded += 1
            _hold(writer, state, result, held(packet, start, position))
        elif hi < n:
            before, packet = _reencoded_pair(media, index, lo, hi)
            previous = state.held
            if not mp4:
                if previous is not None and previous.media is media and previous.position == position - 1:
                    previous.packet = before  # it carries the samples after the cut into this frame
                    result.reencoded += 1
                result.reencoded += 1
                result.silent += n - hi
                _hold(writer, state, result, held(packet, start, position))
            else:
                _hold(writer, state, result, held(media.packets[index], start, position, hi, packet))
        else:
            _hold(writer, state, result, held(media.packets[index], start, position))
    if state.held is not None:
        state.held.media = None  # the object closes after this segment
    return result


def finish_audio(writer: MuxedFileWriter, state: _AudioState) -> AudioResult:
    """Mux the held last frame: the track ends with it."""
    result = AudioResult()
    _release(writer, state, result, ends_track=True)
    return result


# --------------------------------------------------------------------------------------------
# Which Flows


async def resolve_essences(
    client: TAMSClient, flow: Mapping[str, Any], audio_flow_id: str | None
) -> list[tuple[str, Mapping[str, Any]]]:
    """``[(kind, flow)]`` to export: a multi-essence Flow's first video and first audio member, a
    video Flow with the ``audio_flow_id`` Flow, or an audio Flow alone."""
    flow_id = flow.get("id", "?")
    fmt = str(flow.get("format", ""))
    chosen: dict[str, Mapping[str, Any]] = {}
    if fmt == "urn:x-nmos:format:multi":
        if audio_flow_id is not None:
            raise of.OutgestError(f"Flow {flow_id} is a multi-essence Flow; --audio-flow-id goes with a video Flow")
        for member in flow.get("flow_collection") or []:
            try:
                child = await client.get_flow(str(member.get("id")), include_timerange=True)
            except NotFound as exc:
                raise of.OutgestError(f"Flow {flow_id} collects Flow {member.get('id')}, which is not in the store") from exc
            kind = {"urn:x-nmos:format:video": "video", "urn:x-nmos:format:audio": "audio"}.get(str(child.get("format")))
            if kind is None:
                logger.warning("Flow %s collects %s Flow %s; it is not exported", flow_id, child.get("format"), child.get("id"))
            elif kind in chosen:
                logger.warning("Flow %s collects more than one %s Flow; exporting %s only", flow_id, kind, chosen[kind].get("id"))
            else:
                chosen[kind] = child
        if not chosen:
            raise of.OutgestError(f"Flow {flow_id} is a multi-essence Flow that collects no video or audio Flow")
    else:
        kind = {"urn:x-nmos:format:video": "video", "urn:x-nmos:format:audio": "audio"}.get(fmt)
        if kind is None:
            of._essence(flow)  # raises its one-line reason
        assert kind is not None
        chosen[kind] = flow
        if audio_flow_id is not None:
            if kind != "video":
                raise of.OutgestError(f"--audio-flow-id goes with a video --flow-id; Flow {flow_id} is {kind}")
            try:
                audio = await client.get_flow(audio_flow_id, include_timerange=True)
            except NotFound as exc:
                raise of.OutgestError(f"Flow {audio_flow_id} not found") from exc
            if audio.get("format") != "urn:x-nmos:format:audio":
                raise of.OutgestError(f"--audio-flow-id {audio_flow_id} is not an audio Flow (format {audio.get('format')})")
            chosen["audio"] = audio
    for member in chosen.values():
        of._essence(member)  # unknown codec or container: one line naming the Flow
    return [(kind, chosen[kind]) for kind in ("video", "audio") if kind in chosen]


# --------------------------------------------------------------------------------------------
# The export


async def outgest_av(
    client: TAMSClient,
    essences: Sequence[tuple[str, Mapping[str, Any]]],
    output: Path,
    *,
    timerange: TimeRange | None = None,
    exact: bool = False,
    concurrency: int = 8,
    check_timing: bool = False,
    progress: bool = False,
) -> AVSummary:
    """Write the ``essences`` (``[(kind, flow)]`` from ``resolve_essences``) in ``timerange`` to one
    ``output`` file, each stream placed by its Flow times. ``exact`` cuts video to the frame and
    audio to the sample; otherwise whole segments (audio: the samples of their timeranges)."""
    started = time.monotonic()
    timerange = timerange if timerange is not None else TimeRange.eternity()
    if concurrency < 1:
        raise of.OutgestError("--concurrency must be at least 1")
    request = timerange if exact else None
    kinds = [kind for kind, _ in essences]
    details: dict[str, tuple[str, Mapping[str, Any], str, Fraction | None, dict[str, str]]] = {}
    for kind, flow in essences:
        _, codec, frame_rate = of._essence(flow)
        details[kind] = (str(flow["id"]), flow, codec, frame_rate, of.encoder_options(flow, codec))

    entries: list[tuple[Fraction, int, str, of.SegmentRef]] = []
    for rank, kind in enumerate(kinds):
        flow_id = details[kind][0]
        async for item in client.segments(flow_id, timerange=timerange, include_object_timerange=True):
            segment = of.SegmentRef.from_json(item)
            start = of._to_fraction(segment.timerange.start) if segment.timerange.start is not None else Fraction(0)
            entries.append((start, rank, kind, segment))
    entries.sort(key=lambda e: (e[0], e[1]))
    if not entries:
        names = " and ".join(f"Flow {details[k][0]}" for k in kinds)
        raise of.OutgestError(f"{names} {'have' if len(kinds) > 1 else 'has'} no segments in {timerange.to_sec_nsec_range()}")

    summary = AVSummary(output, has_video="video" in kinds)
    audio_params = (details["audio"][1].get("essence_parameters") or {}) if "audio" in details else {}
    writer = MuxedFileWriter(output, kinds, audio_params.get("sample_rate"),
                             details["video"][3] if "video" in details else None)
    video = _VideoTrack(writer)
    audio_state = _AudioState()
    total = sum(
        (of._seconds(((of._timerange(d[1].get("timerange")) or TimeRange.never()).intersect_with(timerange))) or 0.0)
        for d in details.values()
    )
    bar = of._progress_bar(total or None, progress)
    inits = of.InitObjects(client)  # fMP4 init objects, for the objects in order and the video's precharge

    timing = {kind: of.TimingChecks(check_timing, f"Flow {details[kind][0]} ") for kind in details}

    def process(kind: str, segment: of.SegmentRef, path: Path, context: bool = False,
                chain: Sequence[tuple[of.SegmentRef, Path]] = (), lose_prior: bool = False) -> of.SegmentResult | None:
        """Write one segment; for video, with ``write_segment``'s context and precharge ``chain``
        (see ``outgest_core.VideoSequence``), returning its result."""
        flow_id, flow, codec, frame_rate, options = details[kind]
        try:
            with contextlib.ExitStack() as stack:
                media, earlier = of.open_segment(stack, path, segment, kind=kind, codec=codec, frame_rate=frame_rate,
                                                 chain=chain, timing=timing[kind])
                if kind == "video":
                    return of.write_segment(cast(of.FlowFileWriter, video), media, segment, request=request,
                                            options=options, context=context, chain=earlier, lose_prior=lose_prior)
                audio = write_audio_segment(writer, media, segment, audio_state, request=request)
                summary.audio_samples += audio.samples
                summary.silent_samples += audio.silent
                if audio.reencoded:
                    summary.audio_reencoded_frames += audio.reencoded
                summary.sample_rate = media.sample_rate
                return None
        except of.OutgestError as exc:
            raise of.OutgestError(f"Flow {flow_id} segment {segment.timerange} (object {segment.object_id}): {exc}") from exc

    try:
        scratch_dir = tempfile.TemporaryDirectory(prefix="outgest-")
        with (
            scratch_dir as scratch,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="outgest-mux") as muxer,
        ):
            loop = asyncio.get_running_loop()
            async def listed() -> AsyncIterator[tuple[str, of.SegmentRef, str]]:
                for _, _, kind, segment in entries:
                    yield details[kind][0], segment, kind

            async def run_video(*args: Any) -> of.SegmentResult:
                result = await loop.run_in_executor(muxer, process, "video", *args)
                assert result is not None
                return result

            sequence = (of.VideoSequence(client, details["video"][0], Path(scratch), details["video"][3], exact,
                                         run_video, inits) if "video" in details else None)

            async def written(segment: of.SegmentRef, kind: str, path: Path, size: int) -> None:
                summary.downloaded += size
                if kind == "video" and sequence is not None:
                    result = await sequence.write(segment, path)
                    summary.frames += result.frames
                    if result.reencoded:
                        summary.reencoded += 1
                        summary.reencoded_segments.append(str(segment.timerange))
                        logger.info("re-encoded segment %s (object %s, %d frames): %s", segment.timerange,
                                    segment.object_id, result.frames, result.reason)
                else:
                    await loop.run_in_executor(muxer, process, kind, segment, path)
                summary.segments += 1
                if bar is not None:
                    covered = of._seconds(segment.timerange.intersect_with(timerange))
                    if covered:
                        bar.update(covered)

            summary.max_held = await of.fetch_in_order(client, listed(), Path(scratch), concurrency, written, inits)
            if sequence is not None:
                summary.downloaded += sequence.downloaded

            def finish() -> int:
                last = finish_audio(writer, audio_state)
                summary.silent_samples += last.silent
                summary.audio_reencoded_frames += last.reencoded
                return writer.commit()

            if "video" in kinds and summary.frames == 0:
                raise of.OutgestError(f"Flow {details['video'][0]} has no frames in {timerange.to_sec_nsec_range()}")
            if "audio" in kinds and summary.audio_samples == 0:
                raise of.OutgestError(f"Flow {details['audio'][0]} has no samples in {timerange.to_sec_nsec_range()}")
            scratch_dir.cleanup()  # before the output is renamed (see outgest_core._outgest_flow)
            summary.bytes = await of.finished(loop.run_in_executor(muxer, finish))
    except BaseException:
        writer.discard()
        raise
    finally:
        await inits.close()
        if bar is not None:
            bar.close()
    if summary.audio_reencoded_frames:
        logger.info("re-encoded %d audio frames that cuts fall in", summary.audio_reencoded_frames)
    summary.nudged = writer.nudged
    if writer.nudged:
        logger.info("moved %d decode timestamps forward to keep them increasing across joins", writer.nudged)
    summary.timing_warnings = sum(check.warnings for check in timing.values())
    summary.seconds = time.monotonic() - started
    return summary

#!/usr/bin/env python3
"""Sample HLS content for the TAMS toolkit, and a reader for its burnt-in frame numbers.

`make sample_content` runs this script to write ``sample_content/hls_output.m3u8`` and its
MPEG-TS segments. Where the Big Buck Bunny film (``bbb_sunflower_1080p_30fps_normal.mp4``) is in
the current directory, or can be downloaded quickly, its video is remuxed without re-encoding into
~5 s segments. Otherwise, and always with ``--synthetic``, content is synthesised with PyAV alone
(libx264 H.264, optional AAC audio) so that CI needs no network and no ffmpeg binary.

Synthetic content is made for checking media by machine:

- the first frame has pts 6000 at 90 kHz (the film's own start), so the first segment's timerange
  starts at ``0:66666666``; frame *n* has pts ``6000 + floor(n * 90000 / fps)``;
- every segment starts with an IDR frame at a whole number of segment lengths from the first frame,
  and GOPs (``gop_seconds``, default 1 s) are shorter than segments, so cuts can fall on and inside
  GOPs; x264's B-frames are left on, so decode order differs from presentation order (fewer of them
  when the first pts leaves no room for the decode delay: no dts may be negative);
- frame *n* carries *n* twice: as a code of 24 big blocks (20 bits of *n* plus 4 check bits) over
  a second row holding the inverse of each block, read back by comparing each block with its
  inverse, which survives heavy compression and scaling; and as a 7-segment counter for people;
- with ``audio=True`` an AAC stereo track (48 kHz, a 1 kHz / 1.5 kHz tone with a pip each second)
  is muxed into the same segments; its first packet also has pts 6000.

``read_frame_numbers(path)`` decodes any file PyAV reads (MPEG-TS, MP4, ...) and returns the
numbers in presentation order (-1 for a frame whose code does not read back cleanly).

Command line::

    python sample_content.py [--synthetic] [--width W --height H --fps F --duration S
                              --segment-seconds S --gop-seconds S] --output-dir DIR [--audio]
    python sample_content.py ... --live-window N   # then play it out as a live playlist
    python sample_content.py --read-frame-numbers FILE

``LiveWindow`` makes a live playlist that advances (a sliding window without ``EXT-X-ENDLIST``,
discontinuities, program date times) from content made here; ``play_live`` plays one out in real
time.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import logging
import math
import os
import re
import shutil
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
import zipfile
import zlib
from array import array
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.bitstream
import av.error

from credentials import HelpFormatter

__all__ = [
    "CODE_BITS",
    "FILM_FILENAME",
    "FILM_URL",
    "AUDIO_FORMS",
    "HLS_FORMS",
    "LiveSegment",
    "LiveWindow",
    "MIN_HEIGHT",
    "MIN_WIDTH",
    "PLAYLIST_NAME",
    "TS_CLOCK",
    "SampleContentError",
    "frame_pts",
    "interval_edit_frames",
    "make_sample_content",
    "package_hls",
    "play_live",
    "read_frame_numbers",
    "remux_to_hls",
    "synthesize",
]

logger = logging.getLogger(__name__)

PLAYLIST_NAME = "hls_output.m3u8"
SEGMENT_PATTERN = "hls_output_{:05d}.ts"
TS_CLOCK = 90000
FILM_FILENAME = "bbb_sunflower_1080p_30fps_normal.mp4"
FILM_URL = "https://download.blender.org/demo/movies/BBB/bbb_sunflower_1080p_30fps_normal.mp4.zip"

# Keep timestamps exactly as given: no mux delay (mpegts_copyts) and no shift when libavformat
# reports pts just before a 33-bit wrap as negative numbers (avoid_negative_ts).
TS_MUX_OPTIONS = {"mpegts_copyts": "1", "avoid_negative_ts": "disabled"}
CODE_BITS = 20  # frame numbers up to 2**20 - 1 (9.7 hours at 30 fps)
CHECK_BITS = 4
_BLOCKS = CODE_BITS + CHECK_BITS
_BLACK = 16
_WHITE = 235
_MIN_CONTRAST = 48  # a block and its inverse must differ by this much luma to count as read
_AUDIO_RATE = 48000
_AAC_FRAME = 1024
_MIN_BLOCK_W = 4  # narrower code blocks do not survive compression
MIN_HEIGHT = 36


class SampleContentError(Exception):
    """Content could not be written or read (bad input file, bad parameters)."""


# --------------------------------------------------------------------------------------------
# Frame code: layout, drawing and reading


@dataclass(frozen=True)
class _Layout:
    """Where the code blocks and counter digits sit in a width x height picture."""

    width: int
    height: int
    block_x: tuple[int, ...]  # left edge of each code block
    block_w: int
    row_y: tuple[int, int]  # top of the code row and of its inverse row
    block_h: int
    digit_x: tuple[int, ...]
    digit_y: int
    digit_w: int
    digit_h: int
    stroke: int

    @staticmethod
    def margin_and_block_width(width: int) -> tuple[int, int]:
        margin_x = max(2, width // 40)
        return margin_x, (width - 2 * margin_x) // _BLOCKS

    @classmethod
    def for_size(cls, width: int, height: int) -> _Layout:
        margin_x, block_w = cls.margin_and_block_width(width)
        block_h = max(4, height // 12)
        top = max(2, height // 30)
        if block_w < _MIN_BLOCK_W:
            raise SampleContentError(f"picture {width}x{height} is too small for the frame code")
        digits = 7
        digit_h = max(10, height // 4)
        digit_w = max(6, digit_h // 2)
        gap = max(2, digit_w // 3)
        total = digits * digit_w + (digits - 1) * gap
        left = max(0, (width - total) // 2)
        return cls(
            width=width,
            height=height,
            block_x=tuple(margin_x + i * block_w for i in range(_BLOCKS)),
            block_w=block_w,
            row_y=(top, top + block_h),
            block_h=block_h,
            digit_x=tuple(left + i * (digit_w + gap) for i in range(digits)),
            digit_y=top + 2 * block_h + max(2, height // 15),
            digit_w=digit_w,
            digit_h=digit_h,
            stroke=max(2, digit_h // 10),
        )


# The narrowest even picture whose code blocks are wide enough to read back.
MIN_WIDTH = next(w for w in range(2, 2 * _BLOCKS * _MIN_BLOCK_W, 2)
                 if _Layout.margin_and_block_width(w)[1] >= _MIN_BLOCK_W)


def _check_bits(n: int) -> int:
    """XOR of the code's nibbles: catches any single misread block."""
    check = 0
    for shift in range(0, CODE_BITS, CHECK_BITS):
        check ^= (n >> shift) & 0xF
    return check


def _code_bits(n: int) -> list[int]:
    value = n | (_check_bits(n) << CODE_BITS)
    return [(value >> i) & 1 for i in range(_BLOCKS)]


# 7-segment digits: segments a (top), b (top right), c (bottom right), d (bottom),
# e (bottom left), f (top left), g (middle)
_SEGMENTS = {
    0: "abcdef", 1: "bc", 2: "abdeg", 3: "abcdg", 4: "bcfg",
    5: "acdfg", 6: "acdefg", 7: "abc", 8: "abcdefg", 9: "abcdfg",
}  # fmt: skip


def _digit_rects(x: int, y: int, w: int, h: int, s: int, digit: int) -> list[tuple[int, int, int, int]]:
    half = h // 2
    rects = {
        "a": (x, y, w, s),
        "b": (x + w - s, y, s, half),
        "c": (x + w - s, y + half, s, h - half),
        "d": (x, y + h - s, w, s),
        "e": (x, y + half, s, h - half),
        "f": (x, y, s, half),
        "g": (x, y + half - s // 2, w, s),
    }
    return [rects[name] for name in _SEGMENTS[digit]]


class _Canvas:
    """A luma plane as a bytearray, with rectangle fills (no numpy needed)."""

    def __init__(self, width: int, height: int, data: bytes) -> None:
        self.width = width
        self.height = height
        self.data = bytearray(data)

    def fill(self, x: int, y: int, w: int, h: int, value: int) -> None:
        x0, x1 = max(0, x), min(self.width, x + w)
        if x1 <= x0:
            return
        run = bytes([value]) * (x1 - x0)
        for row in range(max(0, y), min(self.height, y + h)):
            start = row * self.width
            self.data[start + x0 : start + x1] = run


def _draw_luma(n: int, layout: _Layout, background: bytes) -> bytes:
    canvas = _Canvas(layout.width, layout.height, background)
    w, h = layout.width, layout.height
    # Something that moves, so P and B frames carry real changes.
    bar_w = max(4, w // 16)
    canvas.fill((n * max(1, w // 90)) % (w + bar_w) - bar_w, h // 2, bar_w, h - h // 2, 200)
    for i, bit in enumerate(_code_bits(n)):
        x = layout.block_x[i]
        canvas.fill(x, layout.row_y[0], layout.block_w, layout.block_h, _WHITE if bit else _BLACK)
        canvas.fill(x, layout.row_y[1], layout.block_w, layout.block_h, _BLACK if bit else _WHITE)
    pad = layout.stroke
    canvas.fill(
        layout.digit_x[0] - pad,
        layout.digit_y - pad,
        layout.digit_x[-1] + layout.digit_w - layout.digit_x[0] + 2 * pad,
        layout.digit_h + 2 * pad,
        _BLACK,
    )
    text = f"{n % 10 ** len(layout.digit_x):0{len(layout.digit_x)}d}"
    for x, char in zip(layout.digit_x, text):
        for rect in _digit_rects(x, layout.digit_y, layout.digit_w, layout.digit_h, layout.stroke, int(char)):
            canvas.fill(*rect, _WHITE)
    return bytes(canvas.data)


def _block_mean(plane: bytes, stride: int, x: int, y: int, w: int, h: int) -> float:
    # The middle half of the block: edges blur under compression and scaling.
    x0, x1 = x + w // 4, x + w - w // 4
    y0, y1 = y + h // 4, y + h - h // 4
    total = 0
    for row in range(y0, y1):
        total += sum(plane[row * stride + x0 : row * stride + x1])
    return total / max(1, (x1 - x0) * (y1 - y0))


def _read_code(plane: bytes, stride: int, layout: _Layout) -> int:
    value = 0
    for i, x in enumerate(layout.block_x):
        upper = _block_mean(plane, stride, x, layout.row_y[0], layout.block_w, layout.block_h)
        lower = _block_mean(plane, stride, x, layout.row_y[1], layout.block_w, layout.block_h)
        if abs(upper - lower) < _MIN_CONTRAST:
            return -1
        if upper > lower:
            value |= 1 << i
    n = value & ((1 << CODE_BITS) - 1)
    return n if value >> CODE_BITS == _check_bits(n) else -1


def interval_edit_frames(first: list[int], second: list[int], interval_frames: int) -> list[int]:
    """The frame numbers an interval edit of two inputs must hold, worked out independently of
    the editor: turn k shows frames k*n .. (k+1)*n - 1 of input k mod 2 (each input runs on in its
    own timeline), and the edit ends with the first turn its input cannot fill, keeping that
    turn's frames."""
    out: list[int] = []
    turn = 0
    while True:
        piece = (first, second)[turn % 2][turn * interval_frames:(turn + 1) * interval_frames]
        out += piece
        if len(piece) < interval_frames:
            return out
        turn += 1


def read_frame_numbers(path: Path | str) -> list[int]:
    """Decode the first video stream of ``path`` and return each frame's number, in presentation order.

    A frame whose code does not read back (no code, or a check-bit mismatch) gives -1.
    Raises ``SampleContentError`` if the file cannot be opened or has no video.
    """
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise SampleContentError(f"cannot read {path}: {exc}") from exc
    numbers: list[tuple[int, int, int]] = []  # (pts or -inf substitute, decode index, number)
    with container:
        if not container.streams.video:
            raise SampleContentError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        layouts: dict[tuple[int, int], _Layout] = {}
        try:
            for index, frame in enumerate(container.decode(stream)):
                key = (frame.width, frame.height)
                if key not in layouts:
                    layouts[key] = _Layout.for_size(*key)
                if frame.format.name not in ("yuv420p", "yuvj420p", "yuv422p", "yuv444p", "gray", "nv12"):
                    frame = frame.reformat(format="gray")
                plane = frame.planes[0]
                number = _read_code(bytes(plane), plane.line_size, layouts[key])
                numbers.append((frame.pts if frame.pts is not None else index, index, number))
        except av.error.FFmpegError as exc:
            raise SampleContentError(f"cannot decode {path}: {exc}") from exc
    # Decoders emit presentation order already; sorting by pts (stable) guards odd demuxers.
    numbers.sort(key=lambda item: (item[0], item[1]))
    return [number for _, _, number in numbers]


# --------------------------------------------------------------------------------------------
# Synthesis


def frame_pts(n: int, fps: Fraction, start_pts: int = 6000) -> int:
    """The 90 kHz pts of synthesized frame ``n`` (exact when 90000/fps is whole, floored otherwise)."""
    return start_pts + (n * TS_CLOCK * fps.denominator) // fps.numerator


def _background(width: int, height: int) -> bytes:
    row = bytes(40 + (120 * x) // max(1, width - 1) for x in range(width))
    return row * height


def _padded(data: bytes, width: int, height: int, line_size: int) -> bytes:
    if line_size == width:
        return data
    pad = bytes(line_size - width)
    return b"".join(data[r * width : (r + 1) * width] + pad for r in range(height))


def _tone_table() -> tuple[bytes, bytes]:
    """Two seconds of float32 samples per channel: 1 kHz left, 1.5 kHz right, a pip each second."""
    left = array("f")
    right = array("f")
    for i in range(2 * _AUDIO_RATE):
        gain = 0.5 if (i % _AUDIO_RATE) < _AUDIO_RATE // 10 else 0.1
        left.append(gain * math.sin(2 * math.pi * 1000 * i / _AUDIO_RATE))
        right.append(gain * math.sin(2 * math.pi * 1500 * i / _AUDIO_RATE))
    if sys.byteorder != "little":
        left.byteswap()
        right.byteswap()
    return left.tobytes(), right.tobytes()


def _encode_full_ts(
    path: Path,
    *,
    width: int,
    height: int,
    fps: Fraction,
    frames: int,
    segment_frames: int,
    gop_frames: int,
    audio: bool,
    start_pts: int,
    preset: str,
    first_frame: int = 0,
) -> None:
    """Encode the whole programme into one MPEG-TS file, later cut into segments by remuxing."""
    tb = Fraction(1, TS_CLOCK)
    with av.open(str(path), "w", format="mpegts", container_options=TS_MUX_OPTIONS) as out:
        video = out.add_stream("libx264", rate=fps)
        video.width = width
        video.height = height
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = tb
        # x264's B-frames delay decoding by up to two frames, so the first dts is that much before
        # the first pts. A negative dts would make the muxer shift every timestamp, so allow only
        # as much reordering as start_pts leaves room for (two frames fit in 6000 ticks at 30 fps).
        room = start_pts * fps.numerator // (TS_CLOCK * fps.denominator)
        reorder = "" if room >= 2 else ":bframes=1:b-pyramid=none" if room == 1 else ":bframes=0"
        video.options = {
            "preset": preset,
            "x264-params": f"keyint={gop_frames}:min-keyint={gop_frames}:scenecut=0{reorder}",
        }
        sound = None
        if audio:
            sound = out.add_stream("aac", rate=_AUDIO_RATE, layout="stereo")
            sound.bit_rate = 128000
        layout = _Layout.for_size(width, height)
        background = _background(width, height)
        chroma_size = (width // 2) * (height // 2)
        chroma_u = bytes([128]) * chroma_size
        chroma_v = bytes([128]) * chroma_size
        end_pts = frame_pts(frames, fps, start_pts)
        audio_sample = 0
        # The AAC encoder delays its output by one frame of priming samples; starting the input
        # that much later puts the first packet's pts exactly at start_pts, like the video.
        audio_start = start_pts * _AUDIO_RATE // TS_CLOCK + _AAC_FRAME
        tone = _tone_table() if audio else (b"", b"")

        def audio_until(limit_pts: int) -> None:
            nonlocal audio_sample
            assert sound is not None
            while (audio_start + audio_sample - _AAC_FRAME) * TS_CLOCK < limit_pts * _AUDIO_RATE:
                frame = av.AudioFrame(format="fltp", layout="stereo", samples=_AAC_FRAME)
                offset = 4 * (audio_sample % _AUDIO_RATE)
                for plane, table in zip(frame.planes, tone):
                    plane.update(table[offset : offset + 4 * _AAC_FRAME])
                frame.sample_rate = _AUDIO_RATE
                frame.pts = audio_start + audio_sample
                frame.time_base = Fraction(1, _AUDIO_RATE)
                audio_sample += _AAC_FRAME
                out.mux(sound.encode(frame))

        for n in range(frames):
            frame = av.VideoFrame(width, height, "yuv420p")
            luma = _draw_luma(first_frame + n, layout, background)
            frame.planes[0].update(_padded(luma, width, height, frame.planes[0].line_size))
            for plane, data in zip(frame.planes[1:], (chroma_u, chroma_v)):
                plane.update(_padded(data, width // 2, height // 2, plane.line_size))
            frame.pts = frame_pts(n, fps, start_pts)
            frame.time_base = tb
            if n % segment_frames == 0:
                frame.pict_type = av.video.frame.PictureType.I
            out.mux(video.encode(frame))
            if sound is not None:
                audio_until(frame_pts(n + 1, fps, start_pts))
        out.mux(video.encode(None))
        if sound is not None:
            audio_until(end_pts)
            out.mux(sound.encode(None))


def synthesize(
    output_dir: Path | str,
    *,
    width: int = 320,
    height: int = 180,
    fps: Fraction | int | str = Fraction(30),
    duration: Fraction | float | str = 20,
    segment_seconds: Fraction | int | str = 2,
    audio: bool = False,
    start_pts: int = 6000,
    gop_seconds: Fraction | int | str | None = 1,
    preset: str = "veryfast",
    first_frame: int = 0,
    form: str = "ts",
    audio_form: str = "muxed",
) -> Path:
    """Synthesize numbered H.264 content as an HLS playlist in ``output_dir``; return the .m3u8 path.

    ``duration`` is rounded down to whole frames; segments hold ``segment_seconds * fps`` frames
    (rounded) and start with an IDR frame; GOPs are ``gop_seconds * fps`` frames (None: one GOP per
    segment). Frame ``n`` has pts ``frame_pts(n, fps, start_pts)`` on the 90 kHz clock and carries
    the number ``first_frame + n`` (content that continues other content, as after a splice).
    ``form`` "ts" cuts MPEG-TS segments here; the other ``HLS_FORMS`` are packaged by libavformat's
    ``hls`` muxer (``package_hls``), as are the ``AUDIO_FORMS`` other than "muxed" (which imply
    ``audio``): the audio as an ``EXT-X-MEDIA`` rendition of a master playlist, or alone.
    """
    output_dir = Path(output_dir)
    fps = Fraction(fps)
    if width % 2 or height % 2 or width < MIN_WIDTH or height < MIN_HEIGHT:
        raise SampleContentError(f"width and height must be even and at least {MIN_WIDTH}x{MIN_HEIGHT}")
    if fps <= 0:
        raise SampleContentError("fps must be positive")
    frames = math.floor(Fraction(duration) * fps)
    segment_frames = max(1, round(Fraction(segment_seconds) * fps))
    gop_frames = segment_frames if gop_seconds is None else max(1, round(Fraction(gop_seconds) * fps))
    if frames < 1:
        raise SampleContentError("duration is shorter than one frame")
    if first_frame < 0:
        raise SampleContentError("first_frame must not be negative")
    if form not in HLS_FORMS:
        raise SampleContentError(f"unknown HLS form {form!r}; one of {', '.join(HLS_FORMS)}")
    if audio_form not in AUDIO_FORMS:
        raise SampleContentError(f"unknown audio form {audio_form!r}; one of {', '.join(AUDIO_FORMS)}")
    audio = audio or audio_form != "muxed"
    if first_frame + frames >= 1 << CODE_BITS:
        raise SampleContentError(f"at most {(1 << CODE_BITS) - 1} frames can carry a frame number")
    output_dir.mkdir(parents=True, exist_ok=True)
    full = output_dir / ".synthesized_full.ts"
    try:
        _encode_full_ts(
            full,
            width=width,
            height=height,
            fps=fps,
            frames=frames,
            segment_frames=segment_frames,
            gop_frames=gop_frames,
            audio=audio,
            start_pts=start_pts,
            preset=preset,
            first_frame=first_frame,
        )
        segment_ticks = Fraction(segment_frames * TS_CLOCK) / fps
        if form != "ts" or audio_form != "muxed":
            return package_hls(full, output_dir, form=form, segment_seconds=segment_ticks / TS_CLOCK,
                               video_only=not audio, audio_form=audio_form)
        return remux_to_hls(full, output_dir, segment_seconds=segment_ticks / TS_CLOCK, video_only=not audio)
    finally:
        full.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Remuxing into HLS segments (no re-encoding)


class _SegmentFile:
    """One MPEG-TS segment being written, with the streams copied from the source."""

    def __init__(self, path: Path, sources: list[av.stream.Stream], start: int) -> None:
        self.path = path
        # mpegts_copyts keeps the source's timestamps: no mux delay, no shift to zero.
        self.container = av.open(str(path), "w", format="mpegts", container_options=TS_MUX_OPTIONS)
        self.streams = {src.index: self.container.add_stream_from_template(src) for src in sources}
        self.start = start  # first video pts, source time base

    def write(self, packet: av.Packet) -> None:
        packet.stream = self.streams[packet.stream.index]
        self.container.mux(packet)

    def close(self) -> None:
        self.container.close()


def _video_frame_ticks(stream: av.video.stream.VideoStream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or stream.time_base is None:
        raise SampleContentError("cannot tell the video frame rate")
    return 1 / (Fraction(rate) * Fraction(stream.time_base))


def remux_to_hls(
    source: Path | str,
    output_dir: Path | str,
    *,
    segment_seconds: Fraction | int | str = 5,
    video_only: bool = True,
) -> Path:
    """Cut ``source`` into MPEG-TS segments at the first keyframe at or after each multiple of
    ``segment_seconds`` from the first video frame, without re-encoding; write the playlist.

    Timestamps are kept as they are in the source (no mux delay). Audio packets go to the segment
    whose video span holds their pts. Returns the playlist path.
    """
    source = Path(source)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for old in output_dir.glob("hls_output_*.ts"):
        old.unlink()
    try:
        container = av.open(str(source))
    except (av.error.FFmpegError, OSError) as exc:
        raise SampleContentError(f"cannot read {source}: {exc}") from exc
    with container:
        if not container.streams.video:
            raise SampleContentError(f"{source} has no video stream")
        video = container.streams.video[0]
        streams: list[av.stream.Stream] = [video]
        if not video_only:
            streams += [s for s in container.streams.audio[:1]]
        frame_ticks = _video_frame_ticks(video)
        assert video.time_base is not None
        segment_ticks = Fraction(segment_seconds) / Fraction(video.time_base)
        first_pts: int | None = None
        next_cut = Fraction(0)
        max_end = Fraction(0)
        current: _SegmentFile | None = None
        previous: _SegmentFile | None = None  # closed once audio passes its end
        previous_end = 0
        done: list[_SegmentFile] = []
        for packet in container.demux(streams):
            if packet.pts is None or packet.size == 0:
                continue
            if packet.stream.type == "video":
                if first_pts is None:
                    first_pts = packet.pts
                    next_cut = first_pts + segment_ticks
                if current is None or (packet.is_keyframe and packet.pts >= next_cut):
                    if previous is not None:
                        previous.close()
                    previous, previous_end = current, packet.pts
                    current = _SegmentFile(output_dir / SEGMENT_PATTERN.format(len(done)), streams, packet.pts)
                    done.append(current)
                    while next_cut <= packet.pts:
                        next_cut += segment_ticks
                max_end = max(max_end, packet.pts + frame_ticks)
                current.write(packet)
            elif current is None:
                continue  # audio before the first video frame has no segment
            elif previous is not None and packet.pts * packet.time_base < previous_end * video.time_base:
                previous.write(packet)
            else:
                if previous is not None:
                    previous.close()
                    previous = None
                current.write(packet)
        if previous is not None:
            previous.close()
        if current is not None:
            current.close()
        if not done or first_pts is None:
            raise SampleContentError(f"{source} has no video packets")
        tb = Fraction(video.time_base)
        durations = [
            ((done[i + 1].start if i + 1 < len(done) else max_end) - seg.start) * tb
            for i, seg in enumerate(done)
        ]
    playlist = output_dir / PLAYLIST_NAME
    _write_playlist(playlist, [seg.path.name for seg in done], durations)
    logger.info("wrote %s: %d segments", playlist, len(done))
    return playlist


def _write_playlist(path: Path, names: list[str], durations: list[Fraction]) -> None:
    target = max(math.ceil(d) for d in durations)
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:VOD",
    ]
    for name, duration in zip(names, durations):
        millionths = round(duration * 1_000_000)
        lines.append(f"#EXTINF:{millionths // 1_000_000}.{millionths % 1_000_000:06d},")
        lines.append(name)
    lines.append("#EXT-X-ENDLIST")
    tmp = path.with_suffix(".m3u8.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Packaging with libavformat's own hls muxer (the forms other packagers write)

HLS_FORMS = ("ts", "fmp4", "ts-byterange", "fmp4-byterange")
# Where the audio goes: in the video's segments, in a rendition of its own beside them (a master
# playlist with EXT-X-MEDIA TYPE=AUDIO), or alone (an audio-only playlist).
AUDIO_FORMS = ("muxed", "rendition", "only")


def package_hls(
    source: Path | str,
    output_dir: Path | str,
    *,
    form: str = "fmp4",
    segment_seconds: Fraction | int | str = 2,
    video_only: bool = True,
    name: str = PLAYLIST_NAME,
    audio_form: str = "muxed",
    base_url: str | None = None,
    ts_offset: Fraction | None = None,
) -> Path:
    """Remux ``source`` into HLS with libavformat's ``hls`` muxer, as a packager would; return the
    playlist path.

    ``form`` is one of ``HLS_FORMS``: MPEG-TS or fMP4 segments (fMP4 with an ``EXT-X-MAP`` init
    section), each either as a file per segment or as one file addressed by ``EXT-X-BYTERANGE``
    (``hls_flags=single_file``). The muxer cuts at the first keyframe after each ``segment_seconds``.
    Packets are copied: the frames and their numbers are the source's. MPEG-TS packets carry no
    duration, which fragments need for every sample, so each is given its frame's.

    ``audio_form`` (one of ``AUDIO_FORMS``) other than "muxed" takes the audio whatever
    ``video_only`` says: "rendition" writes a master playlist ``name`` whose video variant plays
    with an ``EXT-X-MEDIA TYPE=AUDIO`` rendition (media playlists ``<stem>_0.m3u8`` for the video
    and ``<stem>_1.m3u8`` for the audio, as the muxer's ``var_stream_map`` names them; the muxer
    lists the audio as a variant too); "only" writes an audio-only playlist.

    ``base_url`` makes the playlist name its segments by absolute URL (``hls_base_url``: the files
    are still written here, for a server to serve from there); ``ts_offset`` (seconds) moves every
    timestamp by that much (``output_ts_offset``), as an encoder running for a day has them.
    """
    if form not in HLS_FORMS:
        raise SampleContentError(f"unknown HLS form {form!r}; one of {', '.join(HLS_FORMS)}")
    if audio_form not in AUDIO_FORMS:
        raise SampleContentError(f"unknown audio form {audio_form!r}; one of {', '.join(AUDIO_FORMS)}")
    rendition = audio_form == "rendition"
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    fmp4 = form.startswith("fmp4")
    single = form.endswith("byterange")
    stem = Path(name).stem
    extension = "m4s" if fmp4 else "ts"
    each = f"{stem}_%v" if rendition else stem  # the muxer's name for each variant stream's files
    options = {
        "hls_time": str(float(Fraction(segment_seconds))),
        "hls_playlist_type": "vod",
        "hls_segment_type": "fmp4" if fmp4 else "mpegts",
        "hls_segment_filename": str(output_dir / (f"{each}.{extension}" if single else f"{each}_%05d.{extension}")),
    }
    if fmp4:
        options["hls_fmp4_init_filename"] = f"{each}_init.mp4"
    if single:
        options["hls_flags"] = "single_file"
    if base_url is not None:
        options["hls_base_url"] = base_url
    if ts_offset is not None:
        options["output_ts_offset"] = str(float(ts_offset))
    playlist = output_dir / name
    written = playlist
    if rendition:
        options["var_stream_map"] = "v:0,agroup:audio a:0,agroup:audio"
        options["master_pl_name"] = name
        written = output_dir / f"{each}.m3u8"
    try:
        container = av.open(str(source))
    except (av.error.FFmpegError, OSError) as exc:
        raise SampleContentError(f"cannot read {source}: {exc}") from exc
    with container, av.open(str(written), "w", format="hls", options=options) as out:
        if audio_form != "muxed" and not container.streams.audio:
            raise SampleContentError(f"{source} has no audio stream")
        if audio_form != "only" and not container.streams.video:
            raise SampleContentError(f"{source} has no video stream")
        inputs: list[av.stream.Stream] = [] if audio_form == "only" else [container.streams.video[0]]
        if not video_only or audio_form != "muxed":
            inputs += container.streams.audio[:1]
        outputs = {stream.index: out.add_stream_from_template(stream) for stream in inputs}
        durations = {stream.index: _packet_ticks(stream) for stream in inputs}
        # fMP4 holds AAC as raw frames with its configuration in the init segment, not ADTS.
        filters = {stream.index: av.bitstream.BitStreamFilterContext("aac_adtstoasc", stream, outputs[stream.index])
                   for stream in inputs if fmp4 and stream.codec_context.name == "aac"}
        for packet in container.demux(inputs):
            if packet.pts is None or packet.size == 0:
                continue
            index = packet.stream.index
            if not packet.duration:
                packet.duration = durations[index]
            for ready in filters[index].filter(packet) if index in filters else [packet]:
                ready.stream = outputs[index]
                out.mux(ready)
    logger.info("wrote %s (%s, audio %s)", playlist, form, audio_form)
    return playlist


def _packet_ticks(stream: av.stream.Stream) -> int:
    """One packet's duration in ``stream``'s time base: a frame of video, an AAC frame of audio."""
    if stream.type == "video":
        return round(_video_frame_ticks(stream))  # type: ignore[arg-type]
    assert stream.time_base is not None
    rate = getattr(stream.codec_context, "sample_rate", 0) or _AUDIO_RATE
    return round(Fraction(_AAC_FRAME, rate) / Fraction(stream.time_base))


# --------------------------------------------------------------------------------------------
# A live window


@dataclass(frozen=True)
class LiveSegment:
    """One segment of a live window: where its media comes from and what the playlist says of it."""

    source: Path
    duration: Fraction
    discontinuity: bool = False  # EXT-X-DISCONTINUITY before it
    program_date_time: datetime.datetime | None = None
    init: Path | None = None  # its fMP4 init segment (EXT-X-MAP), if it is a fragment


def _vod_segments(playlist: Path) -> list[tuple[Path, Fraction, Path | None]]:
    """(file, EXTINF, EXT-X-MAP file or None) of each segment of a playlist made here (a file each)."""
    segments = []
    duration: Fraction | None = None
    init: Path | None = None
    for line in playlist.read_text().splitlines():
        if line.startswith("#EXTINF:"):
            duration = Fraction(line[len("#EXTINF:"):].split(",", 1)[0])
        elif line.startswith("#EXT-X-MAP:"):
            found = re.search(r'URI="([^"]+)"', line)
            if found is None or "BYTERANGE" in line:
                raise SampleContentError(f"{playlist}: a live window takes an EXT-X-MAP of a whole file: {line}")
            init = playlist.parent / found.group(1)
        elif line and not line.startswith("#"):
            if duration is None:
                raise SampleContentError(f"{playlist}: {line} has no #EXTINF")
            segments.append((playlist.parent / line, duration, init))
            duration = None
    return segments


class LiveWindow:
    """A live HLS playlist that advances, as a live packager writes one.

    ``add`` queues the segments of playlists made here (``synthesize``), the first of each after a
    discontinuity if asked (a splice: a new encoder, maybe a new timestamp base) and dated with
    ``EXT-X-PROGRAM-DATE-TIME`` if given. ``publish(n)`` writes the next ``n`` segments into the
    directory (``live_<media sequence>.ts``) and rewrites the playlist atomically to list the last
    ``window`` of them, without ``EXT-X-ENDLIST``; ``end`` adds it. ``rewrite(first)`` lists the
    window from an earlier media sequence, as a broken packager does after a restart.
    """

    def __init__(self, directory: Path | str, *, window: int = 3, name: str = "live.m3u8") -> None:
        if window < 1:
            raise SampleContentError("a live window holds at least one segment")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.playlist = self.directory / name
        self.window = window
        self.segments: list[LiveSegment] = []  # every segment added; media sequence = position
        self.published = 0
        self.ended = False

    def add(self, playlist: Path | str, *, discontinuity: bool = False,
            program_date_time: datetime.datetime | None = None) -> None:
        elapsed = Fraction(0)
        for i, (path, duration, init) in enumerate(_vod_segments(Path(playlist))):
            when = None
            if program_date_time is not None:
                when = program_date_time + datetime.timedelta(microseconds=round(elapsed * 10**6))
            self.segments.append(LiveSegment(path, duration, discontinuity and i == 0, when, init))
            elapsed += duration

    def uri(self, sequence: int) -> str:
        return f"live_{sequence:05d}.{'ts' if self.segments[sequence].init is None else 'm4s'}"

    def _init_uri(self, init: Path) -> str:
        """Each init segment once, under a name of its own (a splice may bring a new one)."""
        inits = list(dict.fromkeys(seg.init for seg in self.segments if seg.init is not None))
        return f"live_init_{inits.index(init)}.mp4"

    def publish(self, count: int = 1) -> None:
        if self.published + count > len(self.segments):
            raise SampleContentError(f"only {len(self.segments) - self.published} segments are left to publish")
        for sequence in range(self.published, self.published + count):
            segment = self.segments[sequence]
            if segment.init is not None and not (self.directory / self._init_uri(segment.init)).exists():
                shutil.copyfile(segment.init, self.directory / self._init_uri(segment.init))
            shutil.copyfile(segment.source, self.directory / self.uri(sequence))
        self.published += count
        self._write(max(0, self.published - self.window), self.published)

    def end(self) -> None:
        self.ended = True
        self._write(max(0, self.published - self.window), self.published)

    def rewrite(self, first: int) -> None:
        self._write(first, min(first + self.window, self.published))

    def _write(self, first: int, stop: int) -> None:
        listed = self.segments[first:stop]
        target = max((math.ceil(seg.duration) for seg in self.segments), default=1)
        discontinuities = sum(seg.discontinuity for seg in self.segments[:first])
        version = 6 if any(seg.init is not None for seg in listed) else 3  # EXT-X-MAP outside I-frame playlists: 6
        lines = ["#EXTM3U", f"#EXT-X-VERSION:{version}", f"#EXT-X-TARGETDURATION:{target}",
                 f"#EXT-X-MEDIA-SEQUENCE:{first}", f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuities}"]
        mapped: Path | None = None
        for offset, seg in enumerate(listed):
            if seg.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            if seg.init is not None and seg.init != mapped:
                lines.append(f'#EXT-X-MAP:URI="{self._init_uri(seg.init)}"')
                mapped = seg.init
            if seg.program_date_time is not None and (offset == 0 or seg.discontinuity):
                stamp = seg.program_date_time.astimezone(datetime.UTC)
                lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{stamp.isoformat(timespec='milliseconds')}")
            millionths = round(seg.duration * 1_000_000)
            lines.append(f"#EXTINF:{millionths // 1_000_000}.{millionths % 1_000_000:06d},")
            lines.append(self.uri(first + offset))
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        tmp = self.playlist.with_suffix(".m3u8.tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.playlist)


def play_live(vod: Path | str, directory: Path | str, *, window: int = 3, speed: float = 1.0) -> Path:
    """Play a playlist made here out as a live window in ``directory``, in real time (``speed``
    times as fast): ``window`` segments at once, then one more each segment duration, then
    ``EXT-X-ENDLIST``. Returns the live playlist's path."""
    live = LiveWindow(directory, window=window)
    live.add(vod)
    first = min(window, len(live.segments))
    live.publish(first)
    logger.info("live playlist %s: %d segments, one more every segment duration", live.playlist, first)
    while live.published < len(live.segments):
        time.sleep(float(live.segments[live.published].duration) / speed)
        live.publish(1)
    live.end()
    return live.playlist


# --------------------------------------------------------------------------------------------
# The film


def _resolves(host: str, timeout: float) -> bool:
    """Resolve ``host`` in a daemon thread, so an offline resolver cannot stall us past ``timeout``."""
    result: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _download_film(url: str, destination: Path, timeout: float) -> bool:
    """Fetch the film (zipped or not) to ``destination``.

    Both the download and the extraction write to ``.part`` names that are renamed into place only
    when complete, so an interrupted run never leaves a truncated film for the next run to use.
    """
    host = urllib.parse.urlsplit(url).hostname or ""
    if not _resolves(host, timeout):
        logger.info("cannot resolve %s; synthesizing instead", host)
        return False
    downloaded = destination.with_name(destination.name + ".download.part")
    extracted = destination.with_name(destination.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, downloaded.open("wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
            expected = response.headers.get("Content-Length")
            if expected is not None and expected.isdigit() and out.tell() < int(expected):
                # a connection closed early ends the copy quietly: only the length tells
                raise http.client.IncompleteRead(b"", int(expected) - out.tell())
        if url.endswith(".zip"):
            with zipfile.ZipFile(downloaded) as archive:
                member = next(n for n in archive.namelist() if n.endswith(".mp4"))
                with archive.open(member) as src, extracted.open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            os.replace(extracted, destination)
        else:
            os.replace(downloaded, destination)
    except (OSError, http.client.HTTPException, zipfile.BadZipFile, zlib.error, EOFError, StopIteration) as exc:
        # URLError is an OSError; a download cut short is an HTTPException (IncompleteRead)
        logger.info("cannot download %s (%s); synthesizing instead", url, exc)
        return False
    finally:
        downloaded.unlink(missing_ok=True)
        extracted.unlink(missing_ok=True)
    return True


def make_sample_content(
    output_dir: Path,
    *,
    synthetic: bool,
    film: Path,
    film_url: str | None,
    download_timeout: float,
    segment_seconds: Fraction,
    **synth: object,
) -> Path:
    """The film remuxed if it is here or can be fetched, else synthetic content."""
    if not synthetic:
        if not film.exists() and film_url:
            logger.info("%s not found; trying %s", film, film_url)
            _download_film(film_url, film, download_timeout)
        if film.exists():
            logger.info("remuxing %s into %s", film, output_dir)
            return remux_to_hls(film, output_dir, segment_seconds=segment_seconds, video_only=True)
        logger.info("no film available; synthesizing")
    return synthesize(output_dir, segment_seconds=segment_seconds, **synth)  # type: ignore[arg-type]


def _positive_fraction(text: str) -> Fraction:
    """An argparse type: a number or fraction above zero ("30", "29.97", "30000/1001")."""
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or fraction") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not above zero")
    return value


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write sample HLS content (the Big Buck Bunny film or synthetic numbered frames), "
        "or read back the frame numbers burnt into synthetic content.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--output-dir", type=Path, default=Path("sample_content"), help="where to write")
    parser.add_argument("--synthetic", action="store_true", help="synthesize even if the film is available")
    parser.add_argument("--width", type=int, default=640, help="synthetic picture width")
    parser.add_argument("--height", type=int, default=360, help="synthetic picture height")
    parser.add_argument("--fps", type=_positive_fraction, default=Fraction(30),
                        help="synthetic frame rate, e.g. 30000/1001")
    parser.add_argument("--duration", type=_positive_fraction, default=Fraction(60),
                        help="synthetic duration, seconds")
    parser.add_argument("--segment-seconds", type=_positive_fraction, default=Fraction(5),
                        help="segment length, seconds")
    parser.add_argument("--gop-seconds", type=_positive_fraction, default=Fraction(1),
                        help="synthetic GOP length, seconds")
    parser.add_argument("--audio", action="store_true", help="add an AAC stereo track to synthetic content")
    parser.add_argument("--start-pts", type=int, default=6000, help="first frame's pts at 90 kHz")
    parser.add_argument("--preset", default="veryfast", help="x264 preset for synthetic content")
    parser.add_argument("--film", type=Path, default=Path(FILM_FILENAME), help="the film's local path")
    parser.add_argument("--film-url", default=FILM_URL, help="where to download the film ('' = never)")
    parser.add_argument("--download-timeout", type=float, default=5.0, help="seconds to wait for the download to start")
    parser.add_argument("--hls-form", choices=HLS_FORMS, default="ts",
                        help="synthetic content's HLS form: MPEG-TS or fMP4 (EXT-X-MAP) segments, a file each "
                        "or one file of EXT-X-BYTERANGE segments (the last three packaged by libavformat's hls muxer)")
    parser.add_argument("--audio-form", choices=AUDIO_FORMS, default="muxed",
                        help="where synthetic content's audio goes: in the video's segments (with --audio), "
                        "in an EXT-X-MEDIA TYPE=AUDIO rendition beside the video under a master playlist, or "
                        "alone in an audio-only playlist (the last two imply --audio; packaged by the hls muxer)")
    parser.add_argument("--live-window", type=int, default=0, metavar="N",
                        help="then play the content out in real time as a live playlist of N segments "
                        "(OUTPUT_DIR/live/live.m3u8, one segment more each segment duration, then EXT-X-ENDLIST; "
                        "0: no live playlist)")
    parser.add_argument("--read-frame-numbers", type=Path, metavar="FILE", help="print FILE's frame numbers and exit")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        if args.read_frame_numbers is not None:
            if not args.read_frame_numbers.is_file():
                raise SampleContentError(f"no such file: {args.read_frame_numbers}")
            print("\n".join(str(n) for n in read_frame_numbers(args.read_frame_numbers)))
            return 0
        playlist = make_sample_content(
            args.output_dir,
            synthetic=args.synthetic,
            film=args.film,
            film_url=args.film_url or None,
            download_timeout=args.download_timeout,
            segment_seconds=args.segment_seconds,
            width=args.width,
            height=args.height,
            fps=args.fps,
            duration=args.duration,
            audio=args.audio,
            start_pts=args.start_pts,
            gop_seconds=args.gop_seconds,
            preset=args.preset,
            form=args.hls_form,
            audio_form=args.audio_form,
        )
        if args.live_window > 0:
            live = args.output_dir / "live"
            print(live / "live.m3u8", flush=True)
            play_live(playlist, live, window=args.live_window)
            return 0
    except (SampleContentError, av.error.FFmpegError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(playlist)
    return 0


if __name__ == "__main__":
    sys.exit(main())

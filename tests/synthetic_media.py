"""Synthesized HLS content for tests, made once per session, with its expected timing worked out
independently of ``media.py`` (plain integer arithmetic on the synthesis parameters).

``synthesized(tmp_path_factory, ...)`` makes (or reuses) content; the session fixtures built on it
are in ``tests/media_fixtures.py`` (declare ``pytest_plugins = ["tests.media_fixtures"]``).

Frame ``n`` of synthesized content has pts ``start_pts + floor(n * 90000 / fps)`` on the 90 kHz
clock, segment ``k`` holds frames ``[k * segment_frames, (k + 1) * segment_frames)``, and AAC
packets (1024 samples at 48 kHz = 1920 ticks) start at ``start_pts`` and go to the segment whose
video span holds their pts.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import pytest
from mediatimestamp.immutable import TimeRange, Timestamp

import sample_content

__all__ = ["SynthesizedHLS", "copy_content", "synthesized", "ticks_to_ns"]

AUDIO_PACKET_TICKS = 1920  # 1024 samples at 48 kHz on the 90 kHz clock


def ticks_to_ns(ticks: int) -> int:
    """90 kHz ticks to nanoseconds, floored (what TAMS timestamps of MPEG-TS media hold)."""
    return ticks * 10**9 // 90000


def _ts(ticks: int) -> Timestamp:
    return Timestamp.from_nanosec(ticks_to_ns(ticks))


@dataclass(frozen=True)
class SynthesizedHLS:
    """A synthesized playlist and what its media must hold."""

    playlist: Path
    width: int
    height: int
    fps: Fraction
    duration: Fraction
    segment_seconds: Fraction
    gop_seconds: Fraction
    audio: bool
    start_pts: int

    @property
    def directory(self) -> Path:
        return self.playlist.parent

    @property
    def frame_count(self) -> int:
        return math.floor(self.duration * self.fps)

    @property
    def segment_frames(self) -> int:
        return round(self.segment_seconds * self.fps)

    @property
    def segment_count(self) -> int:
        return -(-self.frame_count // self.segment_frames)

    def segment_paths(self) -> list[Path]:
        lines = self.playlist.read_text().splitlines()
        return [self.directory / line for line in lines if line and not line.startswith("#")]

    def frame_pts(self, n: int) -> int:
        return self.start_pts + n * 90000 * self.fps.denominator // self.fps.numerator

    def frames(self, k: int) -> list[int]:
        return list(range(k * self.segment_frames, min((k + 1) * self.segment_frames, self.frame_count)))

    def video_ticks(self, k: int) -> tuple[int, int]:
        """Segment ``k``'s video span in ticks: first frame's pts, and the next segment's first pts
        (for the last segment, where a frame after the last one would be)."""
        frames = self.frames(k)
        return self.frame_pts(frames[0]), self.frame_pts(frames[-1] + 1)

    def video_timerange(self, k: int) -> TimeRange:
        start, end = self.video_ticks(k)
        return TimeRange(_ts(start), _ts(end), TimeRange.INCLUDE_START)

    def audio_first_ticks(self, k: int) -> int:
        """The pts of segment ``k``'s first AAC packet: the first packet at or after its video start."""
        video_start = self.video_ticks(k)[0]
        packets = -(-(video_start - self.start_pts) // AUDIO_PACKET_TICKS)
        return self.start_pts + packets * AUDIO_PACKET_TICKS

    @property
    def audio_end_ticks(self) -> int:
        """Where the last AAC packet ends. Synthesis feeds the encoder whole 1024-sample frames until
        the video's end is covered (``ceil(video ticks / 1920)`` frames); the encoder's output lags
        its input by one frame of priming samples, and flushing it gives that frame as one more
        packet, so the audio runs one packet past the last full frame of input."""
        video_ticks = self.frame_pts(self.frame_count) - self.start_pts
        packets = -(-video_ticks // AUDIO_PACKET_TICKS) + 1
        return self.start_pts + packets * AUDIO_PACKET_TICKS

    def audio_timerange(self, k: int) -> TimeRange:
        """Segment ``k``'s audio span; audio packets are contiguous, so it ends where the next starts,
        and the last segment's ends with the last packet (``audio_end_ticks``)."""
        end = self.audio_end_ticks if k == self.segment_count - 1 else self.audio_first_ticks(k + 1)
        return TimeRange(_ts(self.audio_first_ticks(k)), _ts(end), TimeRange.INCLUDE_START)


_cache: dict[tuple[object, ...], SynthesizedHLS] = {}


def synthesized(
    tmp_path_factory: pytest.TempPathFactory,
    *,
    width: int = 320,
    height: int = 180,
    fps: Fraction | int = 30,
    duration: Fraction | int = 20,
    segment_seconds: Fraction | int = 2,
    gop_seconds: Fraction | int = 1,
    audio: bool = False,
    start_pts: int = 6000,
) -> SynthesizedHLS:
    """Synthesized content with these parameters, made at most once per test session.
    Treat it as read-only; ``copy_content`` gives a copy to damage."""
    key = (width, height, Fraction(fps), Fraction(duration), Fraction(segment_seconds), Fraction(gop_seconds),
           audio, start_pts)
    if key not in _cache:
        directory = tmp_path_factory.mktemp("hls")
        playlist = sample_content.synthesize(
            directory,
            width=width,
            height=height,
            fps=Fraction(fps),
            duration=Fraction(duration),
            segment_seconds=Fraction(segment_seconds),
            gop_seconds=Fraction(gop_seconds),
            audio=audio,
            start_pts=start_pts,
        )
        _cache[key] = SynthesizedHLS(playlist, width, height, Fraction(fps), Fraction(duration),
                                     Fraction(segment_seconds), Fraction(gop_seconds), audio, start_pts)
    return _cache[key]


def copy_content(content: SynthesizedHLS, destination: Path) -> SynthesizedHLS:
    """A copy of ``content`` in ``destination`` (for tests that change files)."""
    shutil.copytree(content.directory, destination)
    return SynthesizedHLS(destination / content.playlist.name, content.width, content.height, content.fps,
                          content.duration, content.segment_seconds, content.gop_seconds, content.audio,
                          content.start_pts)

"""sample_content.py: synthesized HLS content, its burnt-in frame numbers, the film remux path."""

from __future__ import annotations

import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import m3u8  # type: ignore[import-untyped]
import pytest

import sample_content
from tests.synthetic_media import SynthesizedHLS, synthesized

pytest_plugins = ["tests.media_fixtures"]

SCRIPT = Path(sample_content.__file__).resolve()


class Pkt(NamedTuple):
    pts: int
    dts: int
    is_keyframe: bool


def _packets(path: Path, kind: str = "video") -> list[Pkt]:
    """The stream's packets in file (decode) order."""
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        return [
            Pkt(p.pts, p.dts if p.dts is not None else p.pts, p.is_keyframe)
            for p in container.demux(stream)
            if p.pts is not None and p.size
        ]


def test_each_segment_carries_its_frame_numbers_in_presentation_order(hls_content: SynthesizedHLS) -> None:
    paths = hls_content.segment_paths()
    assert len(paths) == hls_content.segment_count == 10
    for k, path in enumerate(paths):
        assert sample_content.read_frame_numbers(path) == hls_content.frames(k)


def test_segments_start_on_keyframes_at_exact_pts_with_gops_inside(hls_content: SynthesizedHLS) -> None:
    for k, path in enumerate(hls_content.segment_paths()):
        packets = _packets(path)
        assert packets[0].is_keyframe
        assert min(p.pts for p in packets) == packets[0].pts == 6000 + k * 60 * 3000
        # 1-second GOPs in 2-second segments: a cut can fall on or inside a GOP
        assert sum(p.is_keyframe for p in packets) == 2
    assert _packets(hls_content.segment_paths()[0])[0].pts == 6000  # 0:66666666


def test_b_frames_make_decode_order_differ_from_presentation_order(hls_content: SynthesizedHLS) -> None:
    packets = _packets(hls_content.segment_paths()[0])
    assert any(p.dts != p.pts for p in packets)
    assert [p.pts for p in packets] != sorted(p.pts for p in packets)
    assert all(p.dts >= 0 for p in packets)  # no negative dts at the start (no shifted timestamps)


def test_playlist_is_a_vod_hls_playlist_with_exact_durations(hls_content: SynthesizedHLS) -> None:
    playlist = m3u8.load(str(hls_content.playlist))
    assert playlist.is_endlist and playlist.target_duration == 2
    assert [s.duration for s in playlist.segments] == [2.0] * 10
    assert hls_content.playlist.name == "hls_output.m3u8"


def test_audio_is_aac_in_every_segment_starting_with_the_video(hls_audio_content: SynthesizedHLS) -> None:
    for k, path in enumerate(hls_audio_content.segment_paths()):
        with av.open(str(path)) as container:
            assert container.streams.audio[0].codec_context.name == "aac"
            assert container.streams.audio[0].codec_context.sample_rate == 48000
        audio = _packets(path, "audio")
        assert min(p.pts for p in audio) == hls_audio_content.audio_first_ticks(k)
        assert sorted(p.pts for p in audio) == list(range(audio[0].pts, audio[0].pts + 1920 * len(audio), 1920))
    assert hls_audio_content.audio_first_ticks(0) == 6000


def test_frame_numbers_survive_heavy_recompression_and_scaling(hls_content: SynthesizedHLS, tmp_path: Path) -> None:
    source = hls_content.segment_paths()[3]
    target = tmp_path / "small.ts"
    with av.open(str(source)) as inp, av.open(str(target), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 90, "yuv420p"
        stream.options = {"preset": "ultrafast", "qp": "45"}
        for frame in inp.decode(video=0):
            small = frame.reformat(width=160, height=90)
            small.pts, small.time_base = frame.pts, frame.time_base
            out.mux(stream.encode(small))
        out.mux(stream.encode(None))
    assert sample_content.read_frame_numbers(target) == hls_content.frames(3)


def test_a_frame_without_a_code_reads_as_minus_one(tmp_path: Path) -> None:
    target = tmp_path / "grey.ts"
    with av.open(str(target), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        for n in range(30):
            frame = av.VideoFrame(320, 180, "yuv420p")
            for plane in frame.planes:
                plane.update(bytes([128]) * plane.buffer_size)
            frame.pts, frame.time_base = n, Fraction(1, 30)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    assert sample_content.read_frame_numbers(target) == [-1] * 30


def test_cli_synthesizes_and_reads_back_frame_numbers(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--synthetic", "--width", "128", "--height", "72", "--fps", "25",
         "--duration", "2", "--segment-seconds", "1", "--output-dir", str(out), "--quiet"],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "hls_output.m3u8").is_file()
    segments = sorted(out.glob("*.ts"))
    assert len(segments) == 2
    read = subprocess.run([sys.executable, str(SCRIPT), "--read-frame-numbers", str(segments[1])],
                          capture_output=True, text=True, check=False, timeout=60)
    assert read.returncode == 0, read.stderr
    assert read.stdout.split() == [str(n) for n in range(25, 50)]


def test_cli_read_frame_numbers_of_a_non_media_file_is_one_line_and_fails(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not media\n")
    done = subprocess.run([sys.executable, str(SCRIPT), "--read-frame-numbers", str(bogus)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode != 0
    assert done.stderr.startswith("error:") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def _film(tmp_path: Path, content: SynthesizedHLS) -> Path:
    """An MP4 'film' holding the content's video, made by remuxing (as a camera file would be)."""
    film = tmp_path / "film.mp4"
    with av.open(str(film), "w") as out:
        stream = None
        for path in content.segment_paths():
            with av.open(str(path)) as inp:
                if stream is None:
                    stream = out.add_stream_from_template(inp.streams.video[0])
                for packet in inp.demux(inp.streams.video[0]):
                    if packet.pts is not None and packet.size:
                        packet.stream = stream
                        out.mux(packet)
    return film


def test_film_is_remuxed_without_reencoding_into_segments(hls_content: SynthesizedHLS, tmp_path: Path) -> None:
    film = _film(tmp_path, hls_content)
    out = tmp_path / "film_hls"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--film", str(film), "--film-url", "", "--segment-seconds", "4",
         "--output-dir", str(out)],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "remuxing" in done.stderr
    segments = [out / s.uri for s in m3u8.load(str(out / "hls_output.m3u8")).segments]
    assert len(segments) == 5
    with av.open(str(film)) as inp:
        film_packets = [(p.size, p.is_keyframe) for p in inp.demux(video=0) if p.size]
    seg_packets = [p for path in segments for p in _packets(path)]
    # Same number of coded pictures, keyframes in the same places: nothing was re-encoded.
    assert [p.is_keyframe for p in seg_packets] == [k for _, k in film_packets]
    numbers = [n for path in segments for n in sample_content.read_frame_numbers(path)]
    assert numbers == list(range(hls_content.frame_count))


def test_unreachable_film_download_falls_back_to_synthesis_quickly(tmp_path: Path) -> None:
    out = tmp_path / "fallback"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--film", str(tmp_path / "absent.mp4"), "--film-url",
         "http://127.0.0.1:9/film.mp4.zip", "--download-timeout", "2", "--width", "128", "--height", "72",
         "--duration", "2", "--segment-seconds", "1", "--output-dir", str(out)],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "synthesizing" in done.stderr
    assert time.monotonic() - started < 30
    assert sample_content.read_frame_numbers(out / "hls_output_00000.ts") == list(range(30))


def test_synthesize_rejects_odd_sizes(tmp_path: Path) -> None:
    with pytest.raises(sample_content.SampleContentError):
        sample_content.synthesize(tmp_path, width=321, height=180, duration=1)


def test_fractional_frame_rates_keep_exact_pts(tmp_path_factory: pytest.TempPathFactory) -> None:
    content = synthesized(tmp_path_factory, width=128, height=72, fps=Fraction(30000, 1001), duration=4,
                          segment_seconds=2)
    second = _packets(content.segment_paths()[1])
    assert min(p.pts for p in second) == 6000 + 60 * 3003
    assert sorted(p.pts for p in second) == [6000 + n * 3003 for n in content.frames(1)]

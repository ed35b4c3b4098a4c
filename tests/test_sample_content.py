"""sample_content.py: synthesized HLS content, its burnt-in frame numbers, the film remux path."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import time
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import av
import m3u8  # type: ignore[import-untyped]
import pytest
from aiohttp import web

import media
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
    """An MP4 'film' holding the content's video, made by remuxing (as a camera file would be).

    Like the real film, its first picture is presented at 6000/90000 s (after two frames of B-frame
    decode delay): without an edit list the MP4 keeps the content's own timestamps, where an edit
    list would round that start to the 1 ms movie timescale (5940 ticks)."""
    film = tmp_path / "film.mp4"
    with av.open(str(film), "w", container_options={"use_editlist": "0"}) as out:
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
    # The segments keep the film's own presentation times: the first starts where the film does.
    with av.open(str(film)) as inp:
        stream = inp.streams.video[0]
        assert stream.start_time is not None and stream.time_base is not None
        film_start = media.pts_to_timestamp(stream.start_time, Fraction(stream.time_base))
    assert film_start == media.pts_to_timestamp(6000, Fraction(1, 90000))
    first = media.read_timing(segments[0]).video
    assert first is not None and (first.first, first.time_base) == (6000, Fraction(1, 90000))
    assert media.media_timerange(segments[0]).start == film_start
    assert str(media.media_timerange(segments[0])) == "[0:66666666_4:66666666)"


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


def test_size_check_allows_exactly_the_smallest_picture_the_frame_code_fits(tmp_path: Path) -> None:
    assert (sample_content.MIN_WIDTH, sample_content.MIN_HEIGHT) == (100, 36)
    for width, height in ((98, 36), (64, 36), (100, 34)):
        with pytest.raises(sample_content.SampleContentError, match="at least 100x36"):
            sample_content.synthesize(tmp_path / f"{width}x{height}", width=width, height=height, duration=1)
        assert not (tmp_path / f"{width}x{height}").exists()  # refused before anything was written
    playlist = sample_content.synthesize(tmp_path / "smallest", width=100, height=36, duration=1, segment_seconds=1)
    assert sample_content.read_frame_numbers(playlist.parent / "hls_output_00000.ts") == list(range(30))


def test_cli_too_small_a_picture_is_one_line_naming_the_real_limit(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = sample_content.main(["--synthetic", "--width", "64", "--height", "36", "--duration", "1",
                                "--output-dir", str(tmp_path / "out"), "--quiet"])
    assert code == 1
    assert capsys.readouterr().err == "error: width and height must be even and at least 100x36\n"


@pytest.mark.parametrize("option, value", [
    ("--fps", "1/0"), ("--duration", "1/0"), ("--segment-seconds", "1/0"), ("--gop-seconds", "1/0"),
    ("--fps", "0"), ("--duration", "-2"), ("--segment-seconds", "0/5"), ("--fps", "thirty"),
])  # fmt: skip
def test_cli_non_positive_or_malformed_fractions_are_an_argparse_error(
    option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        sample_content.main(["--synthetic", option, value, "--output-dir", str(tmp_path / "out")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and "Traceback" not in err
    assert f": error: argument {option}: '{value}' is not " in err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_cli_zero_division_fraction_gives_usage_error_from_a_shell(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--synthetic", "--fps", "1/0", "--output-dir",
                           str(tmp_path / "out")], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "ZeroDivisionError" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "sample_content.py: error: argument --fps: '1/0' is not a number or fraction"


def _zipped(film: Path, *, cut: bool = False) -> bytes:
    """``film`` deflated in a zip; with ``cut`` the member's compressed data stops half way (the
    archive's directory still describes it), so extraction writes part of the film and then fails,
    as an interrupted one would."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate, as zip members hold it
    data = film.read_bytes()
    compressed = compressor.compress(data) + compressor.flush()
    if cut:
        compressed = compressed[: len(compressed) // 2]
    name = sample_content.FILM_FILENAME.encode()
    crc = zlib.crc32(data)
    # version 20, no flags, method 8 (deflate), time 0, date 1980-01-01
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 33, crc, len(compressed), len(data),
                        len(name), 0)
    central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 33, crc, len(compressed),
                          len(data), len(name), 0, 0, 0, 0, 0, 0)
    body = local + name + compressed
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central) + len(name), len(body), 0)
    return body + central + name + end


async def _run_script(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(sys.executable, str(SCRIPT), *args,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_interrupted_film_download_or_extraction_leaves_no_film_and_a_later_run_completes_it(
    hls_content: SynthesizedHLS, tmp_path: Path, aiohttp_server: Any
) -> None:
    film = _film(tmp_path, hls_content)
    zipped_replies = iter([_zipped(film, cut=True), _zipped(film)])
    requests: list[str] = []

    async def cut_short(request: web.Request) -> web.StreamResponse:
        requests.append(request.path)
        data = film.read_bytes()
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        assert request.transport is not None
        request.transport.close()  # the connection drops half way through
        return response

    async def zipped(request: web.Request) -> web.Response:
        requests.append(request.path)
        return web.Response(body=next(zipped_replies), content_type="application/zip")

    name = sample_content.FILM_FILENAME
    app = web.Application()
    app.router.add_get(f"/{name}", cut_short)
    app.router.add_get(f"/{name}.zip", zipped)
    server = await aiohttp_server(app)
    destination = tmp_path / "download" / name
    destination.parent.mkdir()

    async def attempt(path: str, out: str) -> str:
        code, err = await _run_script(
            "--film", str(destination), "--film-url", str(server.make_url(path)), "--segment-seconds", "4",
            "--width", "128", "--height", "72", "--duration", "2", "--output-dir", str(tmp_path / out),
        )
        assert code == 0, err
        assert "Traceback" not in err
        return err

    for path, out in ((f"/{name}", "cut_download"), (f"/{name}.zip", "cut_extraction")):
        assert "synthesizing instead" in await attempt(path, out)
        assert list(destination.parent.iterdir()) == []  # no truncated film, no leftover .part files
        assert sample_content.read_frame_numbers(tmp_path / out / "hls_output_00000.ts") == list(range(60))

    assert "remuxing" in await attempt(f"/{name}.zip", "whole")
    assert requests == [f"/{name}", f"/{name}.zip", f"/{name}.zip"]
    assert [p.name for p in destination.parent.iterdir()] == [name]
    assert destination.read_bytes() == film.read_bytes()
    assert sample_content.read_frame_numbers(tmp_path / "whole" / "hls_output_00000.ts") == list(range(120))


def test_cli_live_window_plays_the_content_out_and_ends_the_playlist(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code = sample_content.main(["--synthetic", "--width", "100", "--height", "36", "--fps", "10", "--duration", "3",
                                "--segment-seconds", "1", "--live-window", "2", "--output-dir", str(tmp_path / "out"),
                                "--quiet"])
    assert code == 0
    live = tmp_path / "out" / "live" / "live.m3u8"
    assert capsys.readouterr().out == f"{live}\n"
    assert time.monotonic() - started >= 1  # one more segment after a segment's duration
    text = live.read_text()
    assert "#EXT-X-MEDIA-SEQUENCE:1" in text and text.endswith("#EXT-X-ENDLIST\n")
    assert [line for line in text.splitlines() if not line.startswith("#")] == ["live_00001.ts", "live_00002.ts"]
    assert sample_content.read_frame_numbers(live.parent / "live_00002.ts") == list(range(20, 30))

"""fMP4/CMAF playlists (EXT-X-MAP init sections) end to end against the real local store:
ingest_hls.py registers the init segment as an init object and each fragment's exact timing,
outgest_file.py exports the Flow to .mp4 and .ts (whole and --exact cuts), simple_edit.py edits
such Flows by reference, and bad fMP4 input gets one line and leaves nothing in the store.

The content is made as a packager would make it: numbered frames (``sample_content``) packaged
by libavformat's own ``hls`` muxer with ``hls_segment_type=fmp4``."""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import pytest
from mediatimestamp.immutable import TimeRange, Timestamp

import ingest_core
import sample_content
from client import TAMSClient
from credentials import OAuth2ClientCredentials
from tests.test_ingest import _one_error_line

if TYPE_CHECKING:
    from tests.conftest import RunningStore
    from tests.synthetic_media import SynthesizedHLS

pytest_plugins = ["tests.media_fixtures"]

FPS = 30
SEGMENT_FRAMES = 60  # 2 s segments
FRAMES = 240  # 4 segments


@dataclass(frozen=True)
class Fmp4:
    playlist: Path
    init: Path
    segments: list[Path]
    first_pts: int  # the first frame's presentation time, in ``time_base``, as the fMP4 says
    time_base: Fraction

    def frame_time(self, n: int) -> Fraction:
        return self.first_pts * self.time_base + Fraction(n, FPS)


def _timestamp(seconds: Fraction) -> Timestamp:
    return Timestamp.from_count(seconds.numerator, seconds.denominator)


def _demuxed(init: bytes, fragment: bytes) -> tuple[list[int], Fraction]:
    """Presentation times of a fragment's video samples, read by libavformat with its init segment."""
    with av.open(io.BytesIO(init + fragment)) as container:
        stream = container.streams.video[0]
        assert stream.time_base is not None
        return sorted(p.pts for p in container.demux(stream) if p.size and p.pts is not None), Fraction(stream.time_base)


@pytest.fixture(scope="module")
def fmp4(tmp_path_factory: pytest.TempPathFactory) -> Fmp4:
    directory = tmp_path_factory.mktemp("fmp4")
    playlist = sample_content.synthesize(directory, duration=Fraction(FRAMES, FPS), segment_seconds=2, form="fmp4")
    text = playlist.read_text()
    assert '#EXT-X-MAP:URI="hls_output_init.mp4"' in text
    segments = [directory / line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(segments) == FRAMES // SEGMENT_FRAMES
    init = directory / "hls_output_init.mp4"
    pts, time_base = _demuxed(init.read_bytes(), segments[0].read_bytes())
    return Fmp4(playlist, init, segments, pts[0], time_base)


@pytest.fixture(scope="module")
def store(shared_store: RunningStore) -> RunningStore:
    return shared_store


def _client(store: RunningStore) -> TAMSClient:
    credentials = OAuth2ClientCredentials(store.oauth2_url, store.env["CLIENT_ID"], store.env["CLIENT_SECRET"])
    return TAMSClient(store.url, credentials)


def _run(store: RunningStore, script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(Path(ingest_core.__file__).parent / script), *args], capture_output=True,
                          text=True, check=False, timeout=180, cwd=cwd, env={**os.environ, **store.env})


def _ingested(store: RunningStore, playlist: Path, cwd: Path, *args: str) -> str:
    done = _run(store, "ingest_hls.py", "--hls-filename", str(playlist), *args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    found = re.search(r"into video ([0-9a-f-]{36})", done.stdout)
    assert found, done.stdout
    return found.group(1)


def _exported(store: RunningStore, flow_id: str, output: Path, *args: str) -> list[int]:
    done = _run(store, "outgest_file.py", "--flow-id", flow_id, "--output", str(output), *args, cwd=output.parent)
    assert done.returncode == 0, done.stderr
    return sample_content.read_frame_numbers(output)


async def _flow_and_segments(store: RunningStore, flow_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    async with _client(store) as client:
        flow = await client.get_flow(flow_id)
        segments = [s async for s in client.segments(flow_id, include_object_timerange=True)]
    return flow, segments


async def _download(store: RunningStore, url: dict[str, Any]) -> bytes:
    async with _client(store) as client, client.stream_object(url) as chunks:
        return b"".join([chunk async for chunk in chunks])


async def _flow_ids(store: RunningStore) -> set[str]:
    async with _client(store) as client:
        return {str(flow["id"]) async for flow in client.flows()}


# -- ingest ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ingested(store: RunningStore, fmp4: Fmp4, tmp_path_factory: pytest.TempPathFactory) -> str:
    return _ingested(store, fmp4.playlist, tmp_path_factory.mktemp("run"))


def test_an_fmp4_flow_declares_init_segments_and_every_segment_names_the_uploaded_init(
    store: RunningStore, fmp4: Fmp4, ingested: str
) -> None:
    flow, segments = asyncio.run(_flow_and_segments(store, ingested))
    assert (flow["container"], flow["codec"]) == ("video/mp4", "video/h264")
    assert flow["essence_parameters"]["init_segments"] is True
    assert len(segments) == len(fmp4.segments)
    init_ids = {segment["init_object"]["object_id"] for segment in segments}
    assert len(init_ids) == 1  # one init object, shared by every segment
    assert init_ids.isdisjoint(segment["object_id"] for segment in segments)
    init_bytes = asyncio.run(_download(store, segments[0]["init_object"]["get_urls"][0]))
    assert init_bytes == fmp4.init.read_bytes()
    media_bytes = asyncio.run(_download(store, segments[1]["get_urls"][0]))
    assert media_bytes == fmp4.segments[1].read_bytes()  # the fragment alone, as the packager wrote it


def test_fmp4_segment_timeranges_come_from_each_fragments_own_timing(
    store: RunningStore, fmp4: Fmp4, ingested: str
) -> None:
    _, segments = asyncio.run(_flow_and_segments(store, ingested))
    init = fmp4.init.read_bytes()
    for k, (segment, path) in enumerate(zip(segments, fmp4.segments, strict=True)):
        pts, time_base = _demuxed(init, path.read_bytes())
        assert len(pts) == SEGMENT_FRAMES
        assert TimeRange.from_str(segment["timerange"]).start == _timestamp(pts[0] * time_base)
        assert pts[0] * time_base == fmp4.frame_time(k * SEGMENT_FRAMES)
        if k + 1 < len(segments):  # contiguous: each ends where the next begins
            assert TimeRange.from_str(segment["timerange"]).end == TimeRange.from_str(segments[k + 1]["timerange"]).start
        assert segment["key_frame_count"] == 2  # 1 s GOPs


def test_a_rerun_of_an_fmp4_ingest_registers_nothing_twice(
    store: RunningStore, fmp4: Fmp4, ingested: str, tmp_path: Path
) -> None:
    done = _run(store, "ingest_hls.py", "--hls-filename", str(fmp4.playlist), "--flow-id", ingested, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"ingested 0 segments ({len(fmp4.segments)} already present)" in done.stdout
    _, segments = asyncio.run(_flow_and_segments(store, ingested))
    assert len(segments) == len(fmp4.segments)


# -- export ---------------------------------------------------------------------------------


@pytest.mark.parametrize("extension", ["mp4", "ts"])
def test_an_fmp4_flow_exports_every_frame_once_in_order(
    store: RunningStore, ingested: str, tmp_path: Path, extension: str
) -> None:
    assert _exported(store, ingested, tmp_path / f"all.{extension}") == list(range(FRAMES))


@pytest.mark.parametrize("extension", ["mp4", "ts"])
def test_an_exact_cut_of_an_fmp4_flow_holds_exactly_the_frames_of_the_timerange(
    store: RunningStore, fmp4: Fmp4, ingested: str, tmp_path: Path, extension: str
) -> None:
    # Bounds half a frame from any frame, in the middle of GOPs of two different segments.
    start, end = fmp4.frame_time(40) + Fraction(1, 2 * FPS), fmp4.frame_time(170) + Fraction(1, 2 * FPS)
    timerange = TimeRange(_timestamp(start), _timestamp(end), TimeRange.INCLUDE_START)
    frames = _exported(store, ingested, tmp_path / f"cut.{extension}", "--timerange", str(timerange), "--exact")
    assert frames == list(range(41, 171))


# -- edit -----------------------------------------------------------------------------------


def test_fmp4_flows_ingested_from_a_playlist_concatenate_by_reference(
    store: RunningStore, fmp4: Fmp4, ingested: str, tmp_path: Path
) -> None:
    edited = str(uuid.uuid4())
    done = _run(store, "simple_edit.py", "--input1-flow-id", ingested, "--input2-flow-id", ingested,
                "--output-flow-id", edited, "--label", "twice", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    flow, segments = asyncio.run(_flow_and_segments(store, edited))
    _, originals = asyncio.run(_flow_and_segments(store, ingested))
    assert flow["essence_parameters"]["init_segments"] is True
    assert {s["object_id"] for s in segments} == {s["object_id"] for s in originals}  # by reference, no copies
    assert {s["init_object"]["object_id"] for s in segments} == {s["init_object"]["object_id"] for s in originals}
    assert _exported(store, edited, tmp_path / "twice.mp4") == list(range(FRAMES)) * 2


# -- bad input ------------------------------------------------------------------------------


def _copy(fmp4: Fmp4, directory: Path) -> Path:
    shutil.copytree(fmp4.playlist.parent, directory)
    return directory / fmp4.playlist.name


def test_a_missing_init_segment_is_one_line_and_creates_no_flow(
    store: RunningStore, fmp4: Fmp4, tmp_path: Path
) -> None:
    playlist = _copy(fmp4, tmp_path / "content")
    (playlist.parent / fmp4.init.name).unlink()
    before = asyncio.run(_flow_ids(store))
    line = _one_error_line(_run(store, "ingest_hls.py", "--hls-filename", str(playlist), cwd=tmp_path))
    assert "init segment" in line and fmp4.init.name in line
    assert asyncio.run(_flow_ids(store)) == before


def test_an_unreadable_init_segment_is_one_line_and_creates_no_flow(
    store: RunningStore, fmp4: Fmp4, tmp_path: Path
) -> None:
    playlist = _copy(fmp4, tmp_path / "content")
    (playlist.parent / fmp4.init.name).write_bytes(b"\x00\x00\x00\x10junkjunkjunkjunk" * 8)
    before = asyncio.run(_flow_ids(store))
    line = _one_error_line(_run(store, "ingest_hls.py", "--hls-filename", str(playlist), cwd=tmp_path))
    assert f"init segment {playlist.parent / fmp4.init.name} is not an MP4 initialization segment" in line
    assert asyncio.run(_flow_ids(store)) == before


def test_an_mpegts_segment_under_an_init_section_is_one_line_naming_it(
    store: RunningStore, fmp4: Fmp4, tmp_path: Path, hls_content: SynthesizedHLS
) -> None:
    playlist = _copy(fmp4, tmp_path / "content")
    (playlist.parent / fmp4.segments[0].name).write_bytes(hls_content.segment_paths()[0].read_bytes())
    before = asyncio.run(_flow_ids(store))
    line = _one_error_line(_run(store, "ingest_hls.py", "--hls-filename", str(playlist), cwd=tmp_path))
    assert f"segment {playlist.parent / fmp4.segments[0].name} is not an fMP4 fragment" in line
    assert asyncio.run(_flow_ids(store)) == before


def test_fmp4_fragments_without_an_init_section_are_one_line_naming_the_segment(
    store: RunningStore, fmp4: Fmp4, tmp_path: Path
) -> None:
    playlist = _copy(fmp4, tmp_path / "content")
    playlist.write_text("\n".join(line for line in playlist.read_text().splitlines()
                                  if not line.startswith("#EXT-X-MAP")) + "\n")
    line = _one_error_line(_run(store, "ingest_hls.py", "--hls-filename", str(playlist), cwd=tmp_path))
    assert "is an fMP4 fragment, but the playlist gives it no init section (EXT-X-MAP)" in line


def test_a_later_bad_fragment_stops_the_ingest_with_one_line_and_registers_nothing_after_it(
    store: RunningStore, fmp4: Fmp4, tmp_path: Path
) -> None:
    playlist = _copy(fmp4, tmp_path / "content")
    (playlist.parent / fmp4.segments[2].name).write_bytes(b"not a fragment at all" * 10)
    before = asyncio.run(_flow_ids(store))
    done = _run(store, "ingest_hls.py", "--hls-filename", str(playlist), "--concurrency", "1", "--quiet", cwd=tmp_path)
    line = _one_error_line(done)
    assert f"segment {playlist.parent / fmp4.segments[2].name} is not an fMP4 fragment" in line
    (created,) = asyncio.run(_flow_ids(store)) - before
    _, segments = asyncio.run(_flow_and_segments(store, created))
    starts = {TimeRange.from_str(s["timerange"]).start for s in segments}
    later = {_timestamp(fmp4.frame_time(n * SEGMENT_FRAMES)) for n in (2, 3)}
    assert starts.isdisjoint(later)  # the segments before it may be registered (a re-run completes them)
    assert all("init_object" in s for s in segments)


@pytest.fixture(scope="module")
def muxed_fmp4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("muxed_fmp4")
    yield sample_content.synthesize(directory, duration=4, segment_seconds=2, form="fmp4", audio=True)


def test_fmp4_with_video_and_audio_in_one_fragment_is_refused_in_one_line(
    store: RunningStore, muxed_fmp4: Path, tmp_path: Path
) -> None:
    before = asyncio.run(_flow_ids(store))
    line = _one_error_line(_run(store, "ingest_hls.py", "--hls-filename", str(muxed_fmp4), cwd=tmp_path))
    assert "fMP4 segments that carry video and audio together are not supported" in line
    assert asyncio.run(_flow_ids(store)) == before


@pytest.mark.parametrize("exact", [False, True])
def test_mp4_exports_of_an_fmp4_flow_hold_length_prefixed_samples_as_mp4_players_expect(
    store: RunningStore, fmp4: Fmp4, ingested: str, tmp_path: Path, exact: bool
) -> None:
    # An exact cut joins re-encoded frames (Annex B from the encoder) to copied ones (length-prefixed
    # in the fMP4 objects): the file must hold one form, with the keyframes flagged.
    output = tmp_path / "out.mp4"
    timerange = TimeRange(_timestamp(fmp4.frame_time(30) + Fraction(1, 60)), _timestamp(fmp4.frame_time(200)))
    cut = ["--timerange", str(timerange), "--exact"]
    done = _run(store, "outgest_file.py", "--flow-id", ingested, "--output", str(output), *(cut if exact else []),
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with av.open(str(output)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.extradata is not None and stream.codec_context.extradata[0] == 1  # avcC
        packets = [p for p in container.demux(stream) if p.size]
    for packet in packets:
        data = bytes(packet)
        at = 0
        while at < len(data):  # 4-byte lengths that tile the sample exactly
            at += 4 + int.from_bytes(data[at:at + 4], "big")
        assert at == len(data)
    assert packets[0].is_keyframe
    assert sum(p.is_keyframe for p in packets) >= 4


# -- live -----------------------------------------------------------------------------------


async def _follow(store: RunningStore, live: sample_content.LiveWindow, flow_id: str, cwd: Path,
                  until: int) -> subprocess.CompletedProcess[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(ingest_core.__file__).with_name("ingest_hls.py")), "--hls-filename", str(live.playlist),
        "--flow-id", flow_id,
        "--follow", "--quiet", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=cwd,
        env={**os.environ, **store.env},
    )
    await asyncio.sleep(1.0)  # the first load, then one segment every half target duration
    while live.published < until:
        live.publish(1)
        await asyncio.sleep(0.5)
    live.end()
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return subprocess.CompletedProcess([], process.returncode, stdout.decode(), stderr.decode())


async def test_follow_ingests_a_live_fmp4_window_spliced_to_a_new_init_every_frame_once(
    store: RunningStore, tmp_path: Path
) -> None:
    # Two encodes of 1 s fMP4 segments at 10 fps: frames 0-39, then after a discontinuity frames
    # 40-79 with an init segment of their own and a new timestamp base.
    first = sample_content.synthesize(tmp_path / "a", fps=10, duration=4, segment_seconds=1, form="fmp4")
    second = sample_content.synthesize(tmp_path / "b", fps=10, duration=4, segment_seconds=1, form="fmp4",
                                       start_pts=7_000_000, first_frame=40)
    live = sample_content.LiveWindow(tmp_path / "live", window=3)
    live.add(first)
    live.add(second, discontinuity=True)
    live.publish(2)
    flow_id = str(uuid.uuid4())
    done = await _follow(store, live, flow_id, tmp_path, until=8)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ingested 8 segments (0 already present)"), done.stdout
    text = live.playlist.read_text()
    assert text.count("#EXT-X-MAP:") == 1 and "live_init_1.mp4" in text  # the window shows the second init
    _, segments = await _flow_and_segments(store, flow_id)
    assert len({s["init_object"]["object_id"] for s in segments}) == 2
    ranges = [TimeRange.from_str(s["timerange"]) for s in segments]
    assert all(a.end == b.start for a, b in zip(ranges, ranges[1:]))  # placed right after the first part
    output = tmp_path / "live.mp4"
    assert _exported(store, flow_id, output) == list(range(80))


# -- one file of byte ranges ----------------------------------------------------------------


def test_single_file_fmp4_stores_the_init_range_and_each_fragment_range_as_their_own_objects(
    store: RunningStore, tmp_path: Path
) -> None:
    # hls_flags=single_file: the init section and every fragment are byte ranges of one .m4s.
    playlist = sample_content.synthesize(tmp_path / "single", duration=Fraction(FRAMES, FPS), segment_seconds=2,
                                         form="fmp4-byterange")
    text = playlist.read_text()
    init_range = re.search(r'#EXT-X-MAP:URI="([^"]+)",BYTERANGE="(\d+)@(\d+)"', text)
    ranges = [(int(length), int(offset)) for length, offset in re.findall(r"#EXT-X-BYTERANGE:(\d+)@(\d+)", text)]
    assert init_range and len(ranges) == FRAMES // SEGMENT_FRAMES
    whole = (playlist.parent / init_range.group(1)).read_bytes()
    flow_id = _ingested(store, playlist, tmp_path)
    _, segments = asyncio.run(_flow_and_segments(store, flow_id))
    assert len(segments) == len(ranges)
    init_length, init_offset = int(init_range.group(2)), int(init_range.group(3))
    assert asyncio.run(_download(store, segments[0]["init_object"]["get_urls"][0])) == \
        whole[init_offset:init_offset + init_length]
    for segment, (length, offset) in zip(segments, ranges, strict=True):
        assert asyncio.run(_download(store, segment["get_urls"][0])) == whole[offset:offset + length]
    assert _exported(store, flow_id, tmp_path / "single.ts") == list(range(FRAMES))


def test_a_corrupt_fmp4_sample_is_one_line_and_leaves_no_output(
    store: RunningStore, fmp4: Fmp4, tmp_path: Path
) -> None:
    # The fragment's index is intact, so it ingests, but its first sample's first NAL unit claims
    # more bytes than the sample has: converting it for MPEG-TS fails.
    playlist = _copy(fmp4, tmp_path / "content")
    fragment = playlist.parent / fmp4.segments[2].name
    data = bytearray(fragment.read_bytes())
    at = data.index(b"mdat") + 4
    data[at:at + 4] = (0x7FFFFFFF).to_bytes(4, "big")
    fragment.write_bytes(bytes(data))
    flow_id = _ingested(store, playlist, tmp_path, "--quiet")
    output = tmp_path / "out" / "corrupt.ts"
    output.parent.mkdir()
    done = _run(store, "outgest_file.py", "--flow-id", flow_id, "--output", str(output), "--quiet", cwd=tmp_path)
    line = _one_error_line(done)
    assert "a h264 frame of the object is corrupt" in line, line
    assert list(output.parent.iterdir()) == []


def test_only_an_object_with_the_same_init_counts_as_the_media_before_a_fragment() -> None:
    # Precharge decodes the object before with the later object's parameter sets: after a new
    # EXT-X-MAP (new SPS/PPS) the one before is not the same media, however its times join.
    from outgest_core import InitRef, SegmentRef, follows

    def segment(name: str, start: int, init: str | None) -> SegmentRef:
        return SegmentRef(name, TimeRange(_timestamp(Fraction(start)), _timestamp(Fraction(start + 2)),
                                          TimeRange.INCLUDE_START), init=InitRef(init) if init else None)

    first = segment("a", 0, "init-1")
    assert follows(first, segment("b", 2, "init-1"), Fraction(1, 60))
    assert not follows(first, segment("c", 2, "init-2"), Fraction(1, 60))
    assert not follows(first, segment("d", 2, None), Fraction(1, 60))
    assert follows(segment("e", 0, None), segment("f", 2, None), Fraction(1, 60))


def test_signed_segment_urls_keep_their_signatures_out_of_errors_and_logs(
    store: RunningStore, fmp4: Fmp4, tmp_path: Path
) -> None:
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    shutil.copytree(fmp4.playlist.parent, served)
    (served / fmp4.init.name).write_bytes(b"\x00\x00\x00\x10junkjunkjunkjunk" * 8)  # not an init segment
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    signed = "?X-Amz-Credential=AKIDEXAMPLE&X-Amz-Signature=sekrit0123456789"
    try:
        text = fmp4.playlist.read_text().replace(f'URI="{fmp4.init.name}"', f'URI="{base}/{fmp4.init.name}{signed}"')
        text = "\n".join(f"{base}/{line}{signed}" if line.endswith(".m4s") else line for line in text.splitlines())
        playlist = tmp_path / "signed.m3u8"
        playlist.write_text(text + "\n")
        done = _run(store, "ingest_hls.py", "--hls-filename", str(playlist), "--verbose", cwd=tmp_path)
    finally:
        server.shutdown()
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"init segment {base}/{fmp4.init.name} is not an MP4 initialization segment" in done.stderr
    assert "sekrit" not in done.stderr + done.stdout and "AKIDEXAMPLE" not in done.stderr + done.stdout


async def test_an_expired_init_object_url_is_asked_for_again_like_a_media_url(
    store_factory: Any, fmp4: Fmp4, tmp_path: Path
) -> None:
    import outgest_core

    short = store_factory(extra_args=["--presigned-url-ttl", "1"])
    flow_id = _ingested(short, fmp4.playlist, tmp_path, "--quiet")
    async with _client(short) as client:
        listed = [outgest_core.SegmentRef.from_json(s) async for s in client.segments(flow_id, presigned=True)]
        assert listed[0].init is not None and "?" in str(listed[0].init.get_urls[0]["url"])  # presigned
        await asyncio.sleep(2.1)  # every URL listed has expired
        inits = outgest_core.InitObjects(client)
        try:
            path = tmp_path / "object.mp4"
            size = await outgest_core._fetch(client, flow_id, listed[1], path, inits)
        finally:
            await inits.close()
    assert size == len(fmp4.segments[1].read_bytes())
    assert path.read_bytes() == fmp4.init.read_bytes() + fmp4.segments[1].read_bytes()

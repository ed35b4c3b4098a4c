"""ingest_hls.py on the playlist forms of issue 13 that libavformat's ``hls`` muxer writes
(``sample_content.package_hls``): one MPEG-TS file addressed by ``EXT-X-BYTERANGE``, audio-only
playlists, and master playlists whose video variant plays with an ``EXT-X-MEDIA TYPE=AUDIO``
rendition. Each is ingested into the real local store and exported again with outgest_file.py;
the checks read the burnt-in frame numbers and the tones' samples back from the exported files.
Bad input (ranges past the end, segments that are not the container they claim, a rendition
that is not audio) is one line, a non-zero exit and nothing in the store.

Content: 320x180 at 30 fps, 6 s in 2 s segments, AAC stereo at 48 kHz where there is audio; the
first frame and the first AAC packet have pts 6000 (``tests/synthetic_media.py`` works out what
each segment must hold).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import uuid
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import pytest
from aiohttp import web
from mediatimestamp.immutable import TimeRange

import ingest_core
import sample_content
from client import TAMSClient
from credentials import BasicCredentials
from outgest_core import outgest
from tests.synthetic_media import AUDIO_PACKET_TICKS, SynthesizedHLS, ticks_to_ns
from tests.test_ingest import _one_error_line
from tests.test_outgest_av import RATE, WINDOW, assert_samples_are, decode_audio, flow_samples

if TYPE_CHECKING:
    from tests.conftest import RunningStore

pytest_plugins = ["tests.media_fixtures"]

SCRIPT = Path(ingest_core.__file__).with_name("ingest_hls.py").resolve()
DURATION = 6


def _content(tmp_path_factory: pytest.TempPathFactory, name: str, **forms: str) -> SynthesizedHLS:
    directory = tmp_path_factory.mktemp(name)
    playlist = sample_content.synthesize(directory, duration=DURATION, **forms)
    audio = forms.get("audio_form", "muxed") != "muxed"
    return SynthesizedHLS(playlist, 320, 180, Fraction(30), Fraction(DURATION), Fraction(2), Fraction(1), audio, 6000)


@pytest.fixture(scope="module")
def byterange_content(tmp_path_factory: pytest.TempPathFactory) -> SynthesizedHLS:
    return _content(tmp_path_factory, "byterange", form="ts-byterange")


@pytest.fixture(scope="module")
def audio_only_content(tmp_path_factory: pytest.TempPathFactory) -> SynthesizedHLS:
    return _content(tmp_path_factory, "audio-only", audio_form="only")


@pytest.fixture(scope="module")
def rendition_content(tmp_path_factory: pytest.TempPathFactory) -> SynthesizedHLS:
    return _content(tmp_path_factory, "rendition", audio_form="rendition")


def _connect(store: RunningStore) -> TAMSClient:
    return TAMSClient(store.url, BasicCredentials(store.username, store.password))


async def _ingest(store: RunningStore, hls: str, **options: Any) -> ingest_core.IngestResult:
    async with _connect(store) as client:
        return await ingest_core.ingest(client, ingest_core.IngestOptions(hls=hls, **options))


async def _segments(store: RunningStore, flow_id: str) -> list[dict[str, Any]]:
    async with _connect(store) as client:
        return [s async for s in client.segments(flow_id)]


def _byteranges(playlist: Path) -> list[tuple[int, int]]:
    """(offset, length) of each entry, read from the playlist text the muxer wrote."""
    ranges = []
    for line in playlist.read_text().splitlines():
        if line.startswith("#EXT-X-BYTERANGE:"):
            length, _, offset = line.split(":", 1)[1].partition("@")
            ranges.append((int(offset), int(length)))
    return ranges


def _run(store: RunningStore, playlist: Path | str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--hls-filename", str(playlist), "--quiet", *args],
                          capture_output=True, text=True, check=False, timeout=120, cwd=cwd,
                          env={**os.environ, **store.env})


async def _flows(store: RunningStore) -> list[dict[str, Any]]:
    async with _connect(store) as client:
        return [f async for f in client.flows()]


def _first_audio_ticks(data: bytes) -> int:
    """The pts of the first AAC packet of an MPEG-TS object, read with PyAV alone."""
    import io

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        return min(p.pts for p in container.demux(stream) if p.pts is not None and p.size)


def _assert_audio_segments_tile_the_tone(segments: list[dict[str, Any]], objects: list[bytes],
                                         content: SynthesizedHLS) -> None:
    """Audio segments run without gaps or overlaps from the first AAC packet (pts 6000) to the end
    of the last one, each starting at its own object's first packet, on the 1920-tick packet grid."""
    ranges = [TimeRange.from_str(s["timerange"]) for s in segments]
    assert ranges[0].start.to_nanosec() == ticks_to_ns(content.start_pts)
    assert ranges[-1].end.to_nanosec() == ticks_to_ns(content.audio_end_ticks)
    for before, after in zip(ranges, ranges[1:]):
        assert before.end == after.start
    for timerange, data in zip(ranges, objects, strict=True):
        first = _first_audio_ticks(data)
        assert (first - content.start_pts) % AUDIO_PACKET_TICKS == 0
        assert timerange.start.to_nanosec() == ticks_to_ns(first)


# -- EXT-X-BYTERANGE ---------------------------------------------------------------------------


async def test_byte_range_entries_are_one_segment_each_with_exactly_their_bytes_and_frames(
    shared_store: RunningStore, byterange_content: SynthesizedHLS, tmp_path: Path
) -> None:
    content = byterange_content
    ranges = _byteranges(content.playlist)
    whole = (content.directory / "hls_output.ts").read_bytes()
    assert len(ranges) == content.segment_count == 3 and sum(length for _, length in ranges) == len(whole)
    result = await _ingest(shared_store, str(content.playlist), flow_id=str(uuid.uuid4()))
    assert (result.registered, set(result.flow_ids)) == (3, {"video"})
    segments = await _segments(shared_store, result.flow_ids["video"])
    assert [s["timerange"] for s in segments] == [str(content.video_timerange(k)) for k in range(3)]
    async with _connect(shared_store) as client:
        objects = [await client.download_object(s["get_urls"][0]) for s in segments]
        out = tmp_path / "whole.ts"
        await outgest(client, result.flow_ids["video"], out)
    assert objects == [whole[offset:offset + length] for offset, length in ranges]
    for k, data in enumerate(objects):
        path = tmp_path / f"object{k}.ts"
        path.write_bytes(data)
        assert sample_content.read_frame_numbers(path) == content.frames(k)
    assert sample_content.read_frame_numbers(out) == list(range(content.frame_count))


@pytest.mark.parametrize("server_ranges", [True, False], ids=["range-requests", "server-ignores-range"])
async def test_byte_ranges_over_http_ask_for_just_the_range(
    shared_store: RunningStore, byterange_content: SynthesizedHLS, aiohttp_server: Any, server_ranges: bool
) -> None:
    content = byterange_content
    asked: list[str | None] = []

    async def whole_file(request: web.Request) -> web.Response:  # a server without Range support
        return web.Response(body=(content.directory / request.match_info["name"]).read_bytes())

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.endswith(".ts") and request.method == "GET":
            asked.append(request.headers.get("Range"))
        return await handler(request)

    app = web.Application(middlewares=[record])
    if not server_ranges:
        app.router.add_get("/{name:.*\\.ts}", whole_file)
    app.router.add_static("/", content.directory)
    server = await aiohttp_server(app)
    result = await _ingest(shared_store, str(server.make_url("/hls_output.m3u8")), flow_id=str(uuid.uuid4()))
    assert result.registered == 3
    assert sorted(asked) == sorted(f"bytes={offset}-{offset + length - 1}" for offset, length in
                                   _byteranges(content.playlist))
    segments = await _segments(shared_store, result.flow_ids["video"])
    assert [s["timerange"] for s in segments] == [str(content.video_timerange(k)) for k in range(3)]
    whole = (content.directory / "hls_output.ts").read_bytes()
    async with _connect(shared_store) as client:
        objects = [await client.download_object(s["get_urls"][0]) for s in segments]
    assert objects == [whole[offset:offset + length] for offset, length in _byteranges(content.playlist)]


def test_a_byte_range_past_the_end_is_one_line_naming_it_and_registers_nothing(
    tams_store: RunningStore, byterange_content: SynthesizedHLS, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    whole = (byterange_content.directory / "hls_output.ts").read_bytes()
    (broken / "hls_output.ts").write_bytes(whole)
    offset, length = _byteranges(byterange_content.playlist)[-1]
    text = byterange_content.playlist.read_text().replace(f"{length}@{offset}", f"{length + 1000}@{offset}")
    (broken / "hls_output.m3u8").write_text(text)
    line = _one_error_line(_run(tams_store, broken / "hls_output.m3u8", tmp_path))
    assert "segment 2" in line and f"{length + 1000}@{offset}" in line and "past the end" in line, line
    assert f"({len(whole)} bytes)" in line
    assert asyncio.run(_flows(tams_store)) == []


# -- audio-only playlists ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".mp4", ".ts"])
async def test_an_audio_only_playlist_is_an_audio_flow_that_exports_its_samples(
    shared_store: RunningStore, audio_only_content: SynthesizedHLS, tmp_path: Path, suffix: str
) -> None:
    content = audio_only_content
    result = await _ingest(shared_store, str(content.playlist), flow_id=str(uuid.uuid4()))
    assert set(result.flow_ids) == {"audio"}
    flow_id = result.flow_ids["audio"]
    async with _connect(shared_store) as client:
        flow = await client.get_flow(flow_id, include_timerange=True)
        segments = [s async for s in client.segments(flow_id)]
        objects = [await client.download_object(s["get_urls"][0]) for s in segments]
        out = tmp_path / f"audio{suffix}"
        summary = await outgest(client, flow_id, out)
    assert (flow["format"], flow["codec"], flow["container"]) == ("urn:x-nmos:format:audio", "audio/aac", "video/mp2t")
    assert flow["essence_parameters"]["sample_rate"] == RATE and flow["essence_parameters"]["channels"] == 2
    assert len(segments) == len(content.playlist.read_text().split("#EXTINF")) - 1
    _assert_audio_segments_tile_the_tone(segments, objects, content)
    timerange = TimeRange.from_str(flow["timerange"])
    samples = flow_samples(timerange.end) - flow_samples(timerange.start)
    assert summary.audio_samples == samples  # type: ignore[attr-defined]
    decoded = decode_audio(out)
    assert len(decoded.left) == samples
    with av.open(str(out)) as container:
        assert [s.type for s in container.streams] == ["audio"]
    start = flow_samples(timerange.start)
    assert_samples_are(decoded, 4 * 1024, start + 4 * 1024)  # past the encoder's settling frames
    assert_samples_are(decoded, samples - WINDOW, start + samples - WINDOW)


# -- EXT-X-MEDIA TYPE=AUDIO renditions ---------------------------------------------------------


@pytest.fixture(scope="module")
def rendition_flows(shared_store: RunningStore, rendition_content: SynthesizedHLS) -> dict[str, str]:
    result = asyncio.run(_ingest(shared_store, str(rendition_content.playlist), flow_id=str(uuid.uuid4())))
    video, audio = result.by_rendition["video"], result.by_rendition["audio"]
    assert (video, audio) == (3, result.registered - 3) and audio > video  # the audio playlist is cut on its own
    assert result.summary().startswith(f"ingested {video + audio} segments ({video} video + {audio} audio) (0 already")
    return result.flow_ids


async def test_an_audio_rendition_is_an_audio_flow_collected_with_the_video_as_muxed_audio_is(
    shared_store: RunningStore, rendition_content: SynthesizedHLS, rendition_flows: dict[str, str]
) -> None:
    content = rendition_content
    ids = rendition_flows
    assert set(ids) == {"video", "audio", "multi"}
    async with _connect(shared_store) as client:
        video, audio, multi = [await client.get_flow(ids[k]) for k in ("video", "audio", "multi")]
        video_segments = [s async for s in client.segments(ids["video"])]
        audio_segments = [s async for s in client.segments(ids["audio"])]
        audio_objects = [await client.download_object(s["get_urls"][0]) for s in audio_segments]
    # the master lists the audio playlist as a variant too, with the higher bandwidth: the video is chosen
    assert video["format"] == "urn:x-nmos:format:video" and video["codec"] == "video/h264"
    assert (audio["format"], audio["codec"]) == ("urn:x-nmos:format:audio", "audio/aac")
    assert multi["format"] == "urn:x-nmos:format:multi"
    assert multi["flow_collection"] == [{"id": ids["video"], "role": "video"}, {"id": ids["audio"], "role": "audio"}]
    assert video["collected_by"] == [ids["multi"]] and audio["collected_by"] == [ids["multi"]]
    assert len({video["source_id"], audio["source_id"], multi["source_id"]}) == 3
    assert [s["timerange"] for s in video_segments] == [str(content.video_timerange(k)) for k in range(3)]
    # the audio playlist is cut on its own (four segments for three of video): each from its own media
    assert len(audio_segments) == len((content.directory / "hls_output_1.m3u8").read_text().split("#EXTINF")) - 1
    _assert_audio_segments_tile_the_tone(audio_segments, audio_objects, content)
    again = await _ingest(shared_store, str(content.playlist), flow_id=ids["video"])
    assert (again.registered, again.flow_ids) == (0, ids)
    assert again.skipped == len(video_segments) + len(audio_segments)
    assert again.summary().startswith(f"ingested 0 segments (0 video + 0 audio) ({again.skipped} already present)")


async def test_a_rendition_ingest_asks_nothing_of_the_flows_it_just_made(
    shared_store: RunningStore, rendition_content: SynthesizedHLS, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ingest_hls"):
        result = await _ingest(shared_store, str(rendition_content.playlist), flow_id=str(uuid.uuid4()))
    said = [r.getMessage() for r in caplog.records]
    assert sum("created" in line for line in said) == 3
    assert not [line for line in said if "resuming" in line or "already" in line.split(":")[0]]
    assert result.skipped == 0 and result.registered == sum(result.by_rendition.values())


@pytest.mark.parametrize("suffix", [".ts", ".mp4"])
async def test_a_rendition_flow_exports_muxed_with_video_and_audio_in_sync(
    shared_store: RunningStore, rendition_content: SynthesizedHLS, rendition_flows: dict[str, str], tmp_path: Path,
    suffix: str,
) -> None:
    content = rendition_content
    out = tmp_path / f"av{suffix}"
    async with _connect(shared_store) as client:
        audio = await client.get_flow(rendition_flows["audio"], include_timerange=True)
        summary = await outgest(client, rendition_flows["multi"], out)
    assert sample_content.read_frame_numbers(out) == list(range(content.frame_count))
    timerange = TimeRange.from_str(audio["timerange"])
    audio_start = flow_samples(timerange.start)
    samples = flow_samples(timerange.end) - audio_start
    assert summary.audio_samples == samples  # type: ignore[attr-defined]
    decoded = decode_audio(out)
    assert len(decoded.left) == samples
    assert_samples_are(decoded, 4 * 1024, audio_start + 4 * 1024)
    assert_samples_are(decoded, samples - WINDOW, audio_start + samples - WINDOW)
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        starts = {"video": Fraction(video.start_time) * Fraction(video.time_base),
                  "audio": decoded.first_pts * decoded.time_base}
    # the first frame and the first sample both at pts 6000, where their Flow times put them: as
    # they are in MPEG-TS, and both at 0 in MP4 (which starts at the first frame)
    assert Fraction(audio_start, RATE) == Fraction(content.frame_pts(0), 90000) == Fraction(6000, 90000)
    expected = Fraction(6000, 90000) if suffix == ".ts" else Fraction(0)
    assert starts == {"video": expected, "audio": expected}


async def test_cmaf_renditions_are_fmp4_flows_with_init_objects_that_export_muxed(
    shared_store: RunningStore, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """CMAF packagers give video and audio each its own fMP4 rendition (EXT-X-MAP each)."""
    content = _content(tmp_path_factory, "cmaf-rendition", form="fmp4", audio_form="rendition")
    ids = (await _ingest(shared_store, str(content.playlist), flow_id=str(uuid.uuid4()))).flow_ids
    assert set(ids) == {"video", "audio", "multi"}
    out = tmp_path / "av.mp4"
    async with _connect(shared_store) as client:
        video, audio = [await client.get_flow(ids[k], include_timerange=True) for k in ("video", "audio")]
        segments = {k: [s async for s in client.segments(ids[k])] for k in ("video", "audio")}
        summary = await outgest(client, ids["multi"], out)
    for flow in (video, audio):
        assert flow["container"] == "video/mp4" and flow["essence_parameters"]["init_segments"] is True
    assert (video["codec"], audio["codec"]) == ("video/h264", "audio/aac")
    assert len(segments["video"]) == 3 and len(segments["audio"]) == 4
    for kind in ("video", "audio"):
        assert len({s["init_object"]["object_id"] for s in segments[kind]}) == 1  # one init object per Flow
    assert sample_content.read_frame_numbers(out) == list(range(content.frame_count))
    timerange = TimeRange.from_str(audio["timerange"])
    samples = flow_samples(timerange.end) - flow_samples(timerange.start)
    assert summary.audio_samples == samples  # type: ignore[attr-defined]
    decoded = decode_audio(out)
    assert len(decoded.left) == samples


def test_a_rendition_that_holds_no_audio_is_one_line_and_registers_nothing(
    tams_store: RunningStore, rendition_content: SynthesizedHLS, tmp_path: Path
) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(rendition_content.directory, broken)
    # the audio rendition's playlist names the video's segments
    video_list = (broken / "hls_output_0.m3u8").read_text()
    (broken / "hls_output_1.m3u8").write_text(video_list)
    line = _one_error_line(_run(tams_store, broken / "hls_output.m3u8", tmp_path))
    assert "hls_output_0_00000.ts" in line and "has no audio stream" in line, line
    assert asyncio.run(_flows(tams_store)) == []


def test_a_rendition_with_a_missing_later_segment_is_one_line_and_creates_no_flow(
    tams_store: RunningStore, rendition_content: SynthesizedHLS, tmp_path: Path
) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(rendition_content.directory, broken)
    audio_segments = sorted(broken.glob("hls_output_1_*"))
    audio_segments[-1].unlink()  # the audio rendition's last segment
    line = _one_error_line(_run(tams_store, broken / "hls_output.m3u8", tmp_path))
    assert f"no such segment file: {audio_segments[-1]}" in line, line
    assert asyncio.run(_flows(tams_store)) == []


# -- segments that are not the container they claim -------------------------------------------


def _as_mp4(segment: Path, destination: Path) -> None:
    """The segment's packets remuxed into MP4 (same frames), written under ``destination``'s name."""
    import io

    buffer = io.BytesIO()
    with av.open(str(segment)) as source, av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.pts is None or packet.size == 0:
                continue
            packet.stream = stream
            out.mux(packet)
    destination.write_bytes(buffer.getvalue())


def test_a_first_segment_that_is_not_mpeg_ts_is_one_line_and_registers_nothing(
    tams_store: RunningStore, hls_content: SynthesizedHLS, tmp_path: Path
) -> None:
    from tests.synthetic_media import copy_content

    content = copy_content(hls_content, tmp_path / "mp4-named-ts")
    first = content.segment_paths()[0]
    _as_mp4(hls_content.segment_paths()[0], first)
    line = _one_error_line(_run(tams_store, content.playlist, tmp_path))
    assert first.name in line and "is not MPEG-TS as its name says" in line and "mp4" in line, line
    assert asyncio.run(_flows(tams_store)) == []


def test_a_later_segment_in_another_container_stops_with_only_whole_segments_registered(
    tams_store: RunningStore, hls_content: SynthesizedHLS, tmp_path: Path
) -> None:
    from tests.synthetic_media import copy_content

    content = copy_content(hls_content, tmp_path / "one-mp4")
    bad = content.segment_paths()[4]
    # named as what it is, so only its difference from the playlist's first segment tells
    _as_mp4(hls_content.segment_paths()[4], bad.with_suffix(".mp4"))
    content.playlist.write_text(content.playlist.read_text().replace(bad.name, bad.with_suffix(".mp4").name))
    flow_id = str(uuid.uuid4())
    line = _one_error_line(_run(tams_store, content.playlist, tmp_path, "--flow-id", flow_id, "--concurrency", "1"))
    assert bad.with_suffix(".mp4").name in line and "not mpegts like the playlist's first segment" in line, line
    segments = asyncio.run(_segments(tams_store, flow_id))
    assert {s["timerange"] for s in segments} <= {str(content.video_timerange(k)) for k in range(10) if k != 4}


# -- sample content ----------------------------------------------------------------------------


def test_sample_content_cli_makes_an_audio_rendition_master_and_an_audio_only_playlist(tmp_path: Path) -> None:
    script = Path(sample_content.__file__).resolve()
    common = ["--synthetic", "--width", "320", "--height", "180", "--duration", "4", "--segment-seconds", "2",
              "--quiet"]
    for form in ("rendition", "only"):
        done = subprocess.run([sys.executable, str(script), *common, "--audio-form", form,
                               "--output-dir", str(tmp_path / form)], capture_output=True, text=True, check=False,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(tmp_path / form / "hls_output.m3u8")
    master = (tmp_path / "rendition" / "hls_output.m3u8").read_text()
    assert '#EXT-X-MEDIA:TYPE=AUDIO' in master and 'URI="hls_output_1.m3u8"' in master
    video = sorted((tmp_path / "rendition").glob("hls_output_0_*.ts"))
    audio = sorted((tmp_path / "rendition").glob("hls_output_1_*.ts")) + sorted((tmp_path / "only").glob("*.ts"))
    assert len(video) == 2 and audio
    assert [n for path in video for n in sample_content.read_frame_numbers(path)] == list(range(120))
    for path in audio:
        with av.open(str(path)) as container:
            assert [s.type for s in container.streams] == ["audio"]
    for path in video:
        with av.open(str(path)) as container:
            assert [s.type for s in container.streams] == ["video"]

"""outgest_file.py: frame-exact export of Flows from a real local store, read back frame by frame.

Content is synthesized once per module (320x180, 30 fps, 2 s segments, 1 s GOPs, B-frames, AAC
audio) with frame numbers burnt into the pictures; frame n has pts 6000 + 3000 n. The copy crossing
2^33 is H.264 Constrained Baseline, which libx264 does not choose by itself, so its re-encoded cuts
show whether they follow the Flow's profile. Segments are
registered through the client with chosen timerange / ts_offset / object_timerange /
sample_offset / sample_count, exported, and the frame numbers and timestamps of the output are
checked exactly.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import pytest
from mediatimestamp.immutable import TimeRange, Timestamp

from client import RetryPolicy, TAMSClient
from credentials import BasicCredentials
from ingest_core import IngestOptions, ingest
from media import PTS_WRAP, TICK_TOLERANCE, in_timerange, media_timerange, pts_to_timestamp, split_essences
from outgest_core import (
    FlowFileWriter,
    FrameTiming,
    OutgestError,
    OutgestSummary,
    SegmentRef,
    outgest,
    plan_segment,
    unwrap_mpegts,
)
from sample_content import read_frame_numbers, synthesize
from tests.conftest import REPO_ROOT, RunningStore, signalled_as_the_client_closes, start_store

TICK = Fraction(1, 90000)
FRAME = 3000  # ticks per frame at 30 fps
FIRST_PTS = 6000
SEGMENT_FRAMES = 60
SEGMENTS = 4
FRAMES = SEGMENT_FRAMES * SEGMENTS
WRAP_START = PTS_WRAP - 90000  # wrapped content: frame 0 one second before the 2^33 wrap


def ts(ticks: int) -> Timestamp:
    return pts_to_timestamp(ticks, TICK)


def span(start_ticks: int, end_ticks: int) -> TimeRange:
    return TimeRange(ts(start_ticks), ts(end_ticks), TimeRange.INCLUDE_START)


def frame_pts(n: int, first: int = FIRST_PTS) -> int:
    return first + FRAME * n


# --------------------------------------------------------------------------------------------
# Content and store (module scope: synthesized and registered once)


@dataclass
class Content:
    playlist: Path  # the synthesized HLS (video and audio in each segment)
    video: list[Path]  # one MPEG-TS per segment, video only
    audio: list[Path]  # the same segments' audio
    wrapped_playlist: Path  # the same pictures with frame 0 at WRAP_START (wrap inside segment 0)
    wrapped: list[Path]


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> Content:
    root = tmp_path_factory.mktemp("outgest_content")
    playlist = synthesize(root / "hls", duration=8, segment_seconds=2, gop_seconds=1, audio=True)
    files = sorted(playlist.parent.glob("hls_output_*.ts"))
    assert len(files) == SEGMENTS
    # x264's ultrafast preset uses no B-frames, CABAC or 8x8 transforms: Constrained Baseline.
    wrapped_playlist = synthesize(root / "wrapped", duration=8, segment_seconds=2, gop_seconds=1, start_pts=WRAP_START,
                                  preset="ultrafast")
    wrapped = sorted(wrapped_playlist.parent.glob("hls_output_*.ts"))
    result = Content(playlist, [], [], wrapped_playlist, wrapped)
    for index, path in enumerate(files):
        parts = split_essences(path.read_bytes())
        for kind, bucket in (("video", result.video), ("audio", result.audio)):
            target = root / f"{kind}_{index}.ts"
            target.write_bytes(parts[kind])
            bucket.append(target)
    return result


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStore]:
    running = start_store(tmp_path_factory.mktemp("outgest_store") / "data")
    yield running
    running.stop()


def connect(store: RunningStore, **options: object) -> TAMSClient:
    return TAMSClient(store.url, BasicCredentials(store.username, store.password), **options)  # type: ignore[arg-type]


async def put_flow(client: TAMSClient, kind: str = "video", *, codec: str | None = None,
                   container: str = "video/mp2t") -> str:
    flow_id = str(uuid.uuid4())
    if kind == "video":
        flow = {
            "format": "urn:x-nmos:format:video",
            "codec": codec or "video/h264",
            "essence_parameters": {"frame_width": 320, "frame_height": 180,
                                   "frame_rate": {"numerator": 30, "denominator": 1}},
        }
    else:
        flow = {
            "format": "urn:x-nmos:format:audio",
            "codec": codec or "audio/aac",
            "essence_parameters": {"sample_rate": 48000, "channels": 2},
        }
    await client.put_flow(flow_id, {"id": flow_id, "source_id": str(uuid.uuid4()), "container": container, **flow})
    return flow_id


async def upload(client: TAMSClient, flow_id: str, files: list[Path]) -> list[str]:
    ids = []
    targets = aiter(client.allocate_storage(flow_id, batch=len(files)))
    for path in files:
        target = await anext(targets)
        await client.upload_object(target, path)
        ids.append(target.object_id)
    return ids


async def post(client: TAMSClient, flow_id: str, segments: list[dict]) -> None:
    body = [{k: str(v) if isinstance(v, (TimeRange, Timestamp)) else v for k, v in s.items()} for s in segments]
    assert await client.post_segments(flow_id, body) == []


@dataclass
class Flows:
    """Flow ids registered in the module's store, and the object ids they share."""

    ids: dict[str, str] = field(default_factory=dict)
    video_objects: list[str] = field(default_factory=list)
    object_spans: list[TimeRange] = field(default_factory=list)
    audio_spans: list[TimeRange] = field(default_factory=list)


# Partial use of objects: (object index, first frame, stop frame) with frame numbers of the
# content; placed back to back on the Flow timeline from PARTIAL_START.
PARTIAL_PIECES = [
    (0, 10, 45),  # starts and ends inside GOPs: re-encoded
    (1, 90, 120),  # starts on a GOP, ends at the object's end: copied
    (2, 120, 150),  # the object's start to a GOP boundary: copied
    (3, 190, 201),  # inside one GOP: re-encoded
]
PARTIAL_START = 900000  # 10 s on the Flow timeline


def partial_segments(flows: Flows, *, by_samples: bool) -> list[dict]:
    segments = []
    place = PARTIAL_START
    for obj, first, stop in PARTIAL_PIECES:
        offset = place - frame_pts(first)
        segment = {
            "object_id": flows.video_objects[obj],
            "timerange": span(place, place + FRAME * (stop - first)),
            "ts_offset": ts(offset),
            "object_timerange": flows.object_spans[obj],
        }
        if by_samples:
            segment["sample_offset"] = first - obj * SEGMENT_FRAMES
            segment["sample_count"] = stop - first
        segments.append(segment)
        place += FRAME * (stop - first)
    return segments


@pytest.fixture(scope="module")
def flows(store: RunningStore, content: Content) -> Flows:
    async def setup() -> Flows:
        result = Flows()
        async with connect(store) as client:
            plain = await put_flow(client)
            result.ids["plain"] = plain
            result.video_objects = await upload(client, plain, content.video)
            result.object_spans = [media_timerange(p) for p in content.video]
            await post(client, plain, [
                {"object_id": oid, "timerange": tr} for oid, tr in zip(result.video_objects, result.object_spans)
            ])

            audio = await put_flow(client, "audio")
            result.ids["audio"] = audio
            result.audio_spans = [media_timerange(p, "audio") for p in content.audio]
            audio_ids = await upload(client, audio, content.audio)
            await post(client, audio, [{"object_id": oid, "timerange": tr} for oid, tr in zip(audio_ids, result.audio_spans)])

            # ts_offset: the first two segments 1000 s later on the Flow timeline, the last two
            # 1001 s later, leaving a one-second gap.
            shifted = await put_flow(client)
            result.ids["offset"] = shifted
            segments = []
            for index, (oid, tr) in enumerate(zip(result.video_objects, result.object_spans)):
                offset = 90000 * (1000 if index < 2 else 1001)
                segments.append({
                    "object_id": oid,
                    "timerange": span(frame_pts(index * SEGMENT_FRAMES) + offset,
                                      frame_pts((index + 1) * SEGMENT_FRAMES) + offset),
                    "ts_offset": ts(offset),
                    "object_timerange": tr,
                })
            await post(client, shifted, segments)

            for name, by_samples in (("partial_timerange", False), ("partial_samples", True)):
                flow_id = await put_flow(client)
                result.ids[name] = flow_id
                await post(client, flow_id, partial_segments(result, by_samples=by_samples))

            # Content crossing 2^33: ts_offset carries the high bits of each segment's first pts.
            wrapped = await put_flow(client)
            result.ids["wrapped"] = wrapped
            wrapped_ids = await upload(client, wrapped, content.wrapped)
            segments = []
            for index, oid in enumerate(wrapped_ids):
                first = frame_pts(index * SEGMENT_FRAMES, WRAP_START)  # unwrapped
                stop = frame_pts((index + 1) * SEGMENT_FRAMES, WRAP_START)
                high = first - first % PTS_WRAP
                segments.append({
                    "object_id": oid,
                    "timerange": span(first, stop),
                    "ts_offset": ts(high),
                    "object_timerange": span(first - high, stop - high),
                })
            await post(client, wrapped, segments)

            # The second segment's object registered 10 frames later than its media says.
            mistimed = await put_flow(client)
            result.ids["mistimed"] = mistimed
            late = [{"object_id": oid, "timerange": tr} for oid, tr in zip(result.video_objects, result.object_spans)]
            (fresh,) = await upload(client, mistimed, content.video[1:2])
            late[1] = {"object_id": fresh, "timerange": span(frame_pts(70), frame_pts(130))}
            await post(client, mistimed, late[:2])

            # Two segments, the second's only URL answers 404.
            broken = await put_flow(client)
            result.ids["broken"] = broken
            await post(client, broken, [
                {"object_id": result.video_objects[0], "timerange": result.object_spans[0]},
                {"object_id": f"missing-{uuid.uuid4()}", "timerange": result.object_spans[1],
                 "get_urls": [{"url": f"{store.url}/no/such/object.ts", "label": "nowhere"}]},
            ])

            result.ids["vp9"] = await put_flow(client, codec="video/vp9")
            result.ids["webm"] = await put_flow(client, container="video/webm")
        return result

    return asyncio.run(setup())


# --------------------------------------------------------------------------------------------
# Reading outputs back


def video_pts(path: Path) -> list[int]:
    """The output's video pts in presentation order, unwrapped (90 kHz for MPEG-TS)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        raw = [p.pts for p in container.demux(stream) if p.size and p.pts is not None]
        fmt = container.format.name
    values = unwrap_mpegts(raw) if fmt == "mpegts" else raw
    return sorted(values)


def sps_parameters(path: Path) -> list[tuple[int, int]]:
    """(profile_idc, level_idc) of every H.264 sequence parameter set in the file's video packets."""
    found = []
    with av.open(str(path)) as container:
        for packet in container.demux(container.streams.video[0]):
            data = bytes(packet)
            start = data.find(b"\x00\x00\x01")
            while start >= 0 and start + 6 < len(data):
                if data[start + 3] & 0x1F == 7:  # NAL unit type 7: SPS
                    found.append((data[start + 4], data[start + 6]))
                start = data.find(b"\x00\x00\x01", start + 3)
    return found


def audio_pts(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return sorted(unwrap_mpegts([p.pts for p in container.demux(stream) if p.size and p.pts is not None]))


def assert_continuous(pts: list[int], first: int) -> None:
    assert pts[0] == first
    assert all(b - a == FRAME for a, b in itertools.pairwise(pts)), "timestamps are not continuous"


async def export(store: RunningStore, flow_id: str, path: Path, **options: object) -> OutgestSummary:
    async with connect(store) as client:
        return await outgest(client, flow_id, path, **options)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Whole Flows


async def test_whole_flow_holds_every_frame_with_flow_timestamps(store: RunningStore, flows: Flows, tmp_path: Path) -> None:
    out = tmp_path / "whole.ts"
    summary = await export(store, flows.ids["plain"], out)
    assert read_frame_numbers(out) == list(range(FRAMES))
    assert_continuous(video_pts(out), FIRST_PTS)
    assert (summary.segments, summary.frames, summary.reencoded) == (SEGMENTS, FRAMES, 0)
    assert summary.bytes == out.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["whole.ts"]


async def test_mp4_output_when_name_ends_in_mp4(store: RunningStore, flows: Flows, tmp_path: Path) -> None:
    out = tmp_path / "whole.mp4"
    await export(store, flows.ids["plain"], out, timerange=span(frame_pts(60), frame_pts(120)))
    with av.open(str(out)) as container:
        assert "mp4" in container.format.name.split(",")
    assert read_frame_numbers(out) == list(range(60, 120))
    pts = video_pts(out)
    with av.open(str(out)) as container:
        time_base = Fraction(container.streams.video[0].time_base)
    # MP4 starts at zero, in a timescale where each 1/30 s frame is a whole number of ticks
    assert [(p - pts[0]) * time_base for p in pts] == [Fraction(i, 30) for i in range(60)]
    assert (1 / time_base) % 30 == 0


async def test_concurrency_bounds_objects_held(store: RunningStore, flows: Flows, tmp_path: Path) -> None:
    one = await export(store, flows.ids["plain"], tmp_path / "one.ts", concurrency=1)
    two = await export(store, flows.ids["plain"], tmp_path / "two.ts", concurrency=2)
    many = await export(store, flows.ids["plain"], tmp_path / "many.ts", concurrency=8)
    assert (one.max_held, two.max_held, many.max_held) == (1, 2, SEGMENTS)
    data = (tmp_path / "one.ts").read_bytes()
    assert (tmp_path / "two.ts").read_bytes() == data == (tmp_path / "many.ts").read_bytes()


async def test_audio_flow_keeps_every_audio_frame(store: RunningStore, flows: Flows, content: Content, tmp_path: Path) -> None:
    out = tmp_path / "audio.ts"
    await export(store, flows.ids["audio"], out)
    expected = sorted(pts for path in content.audio for pts in audio_pts(path))
    assert audio_pts(out) == expected
    with av.open(str(out)) as container:
        assert [s.type for s in container.streams] == ["audio"]
    # --exact on audio cuts to the sample: MPEG-TS keeps the AAC frames the bounds fall in, re-encoded
    # with the samples outside silenced (tests/test_outgest_av.py checks the samples themselves)
    window = span(frame_pts(45), frame_pts(150))
    out = tmp_path / "audio_cut.ts"
    summary = await export(store, flows.ids["audio"], out, timerange=window, exact=True)
    # with silence that primes the decoder ahead of them, and the frame before the tail re-encoded too
    overlapping = [p for p in expected if p + 1920 > frame_pts(45) and p < frame_pts(150)]
    assert audio_pts(out) == [overlapping[0] - 1920, *overlapping]
    assert summary.reencoded == 0 and summary.audio_reencoded_frames == 4  # type: ignore[attr-defined]
    assert summary.audio_samples == (frame_pts(150) - frame_pts(45)) * 48000 // 90000  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# --timerange


def frame_decoded_after_next(path: Path, first_frame: int) -> int:
    """A frame number n of the segment file at ``path`` (whose first frame is ``first_frame``)
    that is decoded after frame n + 1: a B-frame that needs the frame after it."""
    with av.open(str(path)) as container:
        pts = [p.pts for p in container.demux(container.streams.video[0]) if p.size and p.pts is not None]
    decode_index = {(value - FIRST_PTS) // FRAME: i for i, value in enumerate(pts)}
    return next(n for n in sorted(decode_index)[5:] if n + 1 in decode_index and decode_index[n] > decode_index[n + 1])


async def test_exact_timerange_cuts_mid_segment_inside_gops(
    store: RunningStore, flows: Flows, content: Content, tmp_path: Path
) -> None:
    out = tmp_path / "cut.ts"
    last = frame_decoded_after_next(content.video[3], 180)  # ending on it cuts off a reference
    window = span(frame_pts(40), frame_pts(last + 1))  # starts on frame 40, inside the second GOP
    summary = await export(store, flows.ids["plain"], out, timerange=window, exact=True)
    assert read_frame_numbers(out) == list(range(40, last + 1))
    assert_continuous(video_pts(out), frame_pts(40))
    assert summary.reencoded_segments == [str(flows.object_spans[0]), str(flows.object_spans[3])]
    assert summary.frames == last + 1 - 40


async def test_exact_timerange_on_gop_boundaries_is_copied(store: RunningStore, flows: Flows, tmp_path: Path) -> None:
    out = tmp_path / "gops.ts"
    window = span(frame_pts(30), frame_pts(150))  # GOPs start at frames 30 and 150
    summary = await export(store, flows.ids["plain"], out, timerange=window, exact=True)
    assert read_frame_numbers(out) == list(range(30, 150))
    assert_continuous(video_pts(out), frame_pts(30))
    assert summary.reencoded == 0


async def test_timerange_without_exact_writes_whole_overlapping_segments(
    store: RunningStore, flows: Flows, tmp_path: Path
) -> None:
    out = tmp_path / "overlap.ts"
    summary = await export(store, flows.ids["plain"], out, timerange=span(frame_pts(70), frame_pts(130)))
    assert read_frame_numbers(out) == list(range(60, 180))
    assert summary.reencoded == 0


# --------------------------------------------------------------------------------------------
# ts_offset, partial objects, 2^33


async def test_ts_offset_puts_frames_on_the_flow_timeline_and_keeps_gaps(
    store: RunningStore, flows: Flows, tmp_path: Path
) -> None:
    out = tmp_path / "offset.ts"
    summary = await export(store, flows.ids["offset"], out, check_timing=True)
    assert summary.timing_warnings == 0
    assert read_frame_numbers(out) == list(range(FRAMES))
    pts = video_pts(out)
    expected = [frame_pts(n) + 90000 * (1000 if n < 120 else 1001) for n in range(FRAMES)]
    assert pts == expected  # continuous inside each half, a one-second gap between them
    # --exact across the gap, on the Flow timeline
    out = tmp_path / "offset_cut.ts"
    window = span(frame_pts(100) + 90000 * 1000, frame_pts(140) + 90000 * 1001)
    await export(store, flows.ids["offset"], out, timerange=window, exact=True)
    assert read_frame_numbers(out) == list(range(100, 140))


@pytest.mark.parametrize("name", ["partial_timerange", "partial_samples"])
async def test_segments_using_part_of_their_object(store: RunningStore, flows: Flows, tmp_path: Path, name: str) -> None:
    out = tmp_path / f"{name}.ts"
    summary = await export(store, flows.ids[name], out, check_timing=True)
    assert summary.timing_warnings == 0
    expected = [n for _, first, stop in PARTIAL_PIECES for n in range(first, stop)]
    assert read_frame_numbers(out) == expected
    assert_continuous(video_pts(out), PARTIAL_START)
    assert summary.reencoded == 2  # the two pieces cut inside GOPs; the others are copied
    assert summary.frames == len(expected)


async def test_content_crossing_2_33(store: RunningStore, flows: Flows, tmp_path: Path) -> None:
    out = tmp_path / "wrapped.ts"
    summary = await export(store, flows.ids["wrapped"], out, check_timing=True)
    assert read_frame_numbers(out) == list(range(FRAMES))
    pts = video_pts(out)
    assert_continuous(pts, WRAP_START)
    assert pts[-1] > PTS_WRAP
    assert summary.timing_warnings == 0
    # an exact cut from before the wrap to the next segment, both inside GOPs
    out = tmp_path / "wrapped_cut.ts"
    window = span(frame_pts(15, WRAP_START), frame_pts(75, WRAP_START))
    await export(store, flows.ids["wrapped"], out, timerange=window, exact=True)
    assert read_frame_numbers(out) == list(range(15, 75))
    assert_continuous(video_pts(out), frame_pts(15, WRAP_START))


async def test_check_timing_warns_on_mismatch(
    store: RunningStore, flows: Flows, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="outgest_file"):
        good = await export(store, flows.ids["plain"], tmp_path / "good.ts", check_timing=True)
    assert good.timing_warnings == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with caplog.at_level(logging.WARNING, logger="outgest_file"):
        bad = await export(store, flows.ids["mistimed"], tmp_path / "bad.ts", check_timing=True)
    assert bad.timing_warnings >= 1
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert str(flows.object_spans[1]) in warned and "registered" in warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="outgest_file"):  # muxed with audio: counted alike
        muxed = await export(store, flows.ids["mistimed"], tmp_path / "muxed.ts", check_timing=True,
                             audio_flow_id=flows.ids["audio"])
    assert muxed.timing_warnings == bad.timing_warnings
    assert f"Flow {flows.ids['mistimed']} segment" in " ".join(r.getMessage() for r in caplog.records)


async def test_ingest_then_outgest_round_trip(
    store: RunningStore, content: Content, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with connect(store) as client:
        ingested = await ingest(client, IngestOptions(hls=str(content.playlist), segment_count=None,
                                                      flow_id=str(uuid.uuid4())))
        video = await outgest(client, ingested.flow_ids["video"], tmp_path / "video.ts", check_timing=True)
        audio = await outgest(client, ingested.flow_ids["audio"], tmp_path / "audio.ts", check_timing=True)
        window = span(frame_pts(50), frame_pts(170))
        await outgest(client, ingested.flow_ids["video"], tmp_path / "cut.ts", timerange=window, exact=True)
        await outgest(client, ingested.flow_ids["multi"], tmp_path / "multi.ts")  # both, muxed
    assert read_frame_numbers(tmp_path / "video.ts") == list(range(FRAMES))
    assert_continuous(video_pts(tmp_path / "video.ts"), FIRST_PTS)
    assert audio_pts(tmp_path / "audio.ts") == sorted(p for path in content.audio for p in audio_pts(path))
    assert video.timing_warnings == audio.timing_warnings == 0
    assert read_frame_numbers(tmp_path / "cut.ts") == list(range(50, 170))
    assert read_frame_numbers(tmp_path / "multi.ts") == list(range(FRAMES))
    assert audio_pts(tmp_path / "multi.ts") == audio_pts(tmp_path / "audio.ts")


async def test_ingest_then_outgest_across_2_33(store: RunningStore, content: Content, tmp_path: Path) -> None:
    async with connect(store) as client:
        ingested = await ingest(client, IngestOptions(hls=str(content.wrapped_playlist), segment_count=None,
                                                      flow_id=str(uuid.uuid4())))
        whole = await outgest(client, ingested.flow_ids["video"], tmp_path / "video.ts", check_timing=True)
        window = span(frame_pts(20, WRAP_START), frame_pts(100, WRAP_START))
        cut = await outgest(client, ingested.flow_ids["video"], tmp_path / "cut.ts", timerange=window, exact=True)
        avc = (await client.get_flow(ingested.flow_ids["video"]))["essence_parameters"]["avc_parameters"]
    assert read_frame_numbers(tmp_path / "video.ts") == list(range(FRAMES))
    assert_continuous(video_pts(tmp_path / "video.ts"), WRAP_START)
    assert whole.timing_warnings == 0
    assert read_frame_numbers(tmp_path / "cut.ts") == list(range(20, 100))
    assert_continuous(video_pts(tmp_path / "cut.ts"), frame_pts(20, WRAP_START))
    # The cut starts inside a GOP, so the output begins with re-encoded frames: they carry the
    # Flow's H.264 profile and level (Constrained Baseline, which libx264 would not pick on its
    # own), as do the copied ones.
    assert cut.reencoded >= 1 and avc["profile"] == 66
    with av.open(str(tmp_path / "cut.ts")) as container:
        context = container.streams.video[0].codec_context
        assert (context.profile, context.level) == ("Constrained Baseline", avc["level"])
    parameters = sps_parameters(tmp_path / "cut.ts")
    assert len(parameters) >= 2 and set(parameters) == {(avc["profile"], avc["level"])}


# --------------------------------------------------------------------------------------------
# Failures: one line, non-zero exit, nothing under the requested name


def run_cli(store: RunningStore, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **store.env}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "outgest_file.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_cli_writes_summary_line(store: RunningStore, flows: Flows, tmp_path: Path) -> None:
    out = tmp_path / "cli.ts"
    result = run_cli(store, tmp_path, "--flow-id", flows.ids["plain"], "--output", str(out),
                     "--timerange", str(span(frame_pts(40), frame_pts(90))), "--exact")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("MB/s)")
    assert "2 segments (1 re-encoded), 50 frames" in result.stdout  # the second ends on a GOP
    assert "re-encoded segment" in result.stderr
    assert read_frame_numbers(out) == list(range(40, 90))
    quiet = run_cli(store, tmp_path, "--flow-id", flows.ids["plain"], "--output", str(out), "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_a_reader_gone_from_stdout_is_no_traceback_and_the_export_is_whole(
    store: RunningStore, flows: Flows, tmp_path: Path
) -> None:
    """``outgest_file.py ... | head -0``, unbuffered as in many containers: the summary line has
    nowhere to go, so it is dropped; the file is written all the same, and the status is 120."""
    out = tmp_path / "piped.ts"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, str(REPO_ROOT / "outgest_file.py"), "--flow-id", flows.ids["plain"], "--output", str(out)],
            cwd=tmp_path, env={**os.environ, **store.env, "PYTHONUNBUFFERED": "1"}, stdout=write_end,
            stderr=subprocess.PIPE, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (120, "")
    assert read_frame_numbers(out) == list(range(FRAMES))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown", "not found"),
        ("empty", "no segments"),
        ("vp9", "codec video/vp9"),
        ("webm", "container video/webm"),
        ("broken", "cannot download"),
        ("unwritable", "cannot write"),
        ("bad_timerange", "bad --timerange"),
    ],
)
def test_bad_input_gives_one_line_and_no_output(
    store: RunningStore, flows: Flows, tmp_path: Path, case: str, message: str
) -> None:
    flow_id = flows.ids.get(case, flows.ids["plain"])
    out = tmp_path / "out.ts"
    extra: list[str] = []
    if case == "unknown":
        flow_id = str(uuid.uuid4())
    elif case == "empty":
        extra = ["--timerange", "[5000:0_5001:0)"]
    elif case == "unwritable":
        (tmp_path / "a_file").write_text("")
        out = tmp_path / "a_file" / "out.ts"
    elif case == "bad_timerange":
        extra = ["--timerange", "[nonsense"]
    result = run_cli(store, tmp_path, "--flow-id", flow_id, "--output", str(out), "--quiet", *extra)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["a_file"] if case == "unwritable" else [])


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_mid_export_leaves_no_output_and_no_scratch(
    store_factory: Callable[..., RunningStore], content: Content, tmp_path: Path, stop: signal.Signals
) -> None:
    """``kill``, a closed terminal or Ctrl-C while an export downloads: the partial output and the
    scratch directory are removed, one line says so, and the status is the shell's 128 + signal."""
    slow = store_factory(latency_ms=400)  # each request 0.4 s later: the export is still running when stopped

    async def setup() -> str:
        async with connect(slow) as client:
            flow_id = await put_flow(client)
            ids = await upload(client, flow_id, content.video)
            await post(client, flow_id, [{"object_id": oid, "timerange": media_timerange(path)}
                                         for oid, path in zip(ids, content.video)])
            return flow_id

    flow_id = asyncio.run(setup())
    out_dir, scratch = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    scratch.mkdir()
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "outgest_file.py"), "--flow-id", flow_id,
         "--output", str(out_dir / "stopped.ts"), "--concurrency", "1"],
        cwd=tmp_path, env={**os.environ, **slow.env, "TMPDIR": str(scratch)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (list(out_dir.iterdir()) and list(scratch.iterdir())):  # downloading into both
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    process.send_signal(stop)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + stop, stderr
    what = "interrupted" if stop == signal.SIGINT else f"stopped by {stop.name}"
    assert stderr.strip().splitlines() == [f"error: {what}; nothing written"], stderr
    assert stdout == ""
    assert list(out_dir.iterdir()) == [] and list(scratch.iterdir()) == []


@pytest.mark.parametrize(("kind", "cancels"), [("plain", 1), ("plain", 2), ("audio", 1)],
                         ids=["video", "video, cancelled again", "audio"])
async def test_a_stop_as_the_output_is_being_finished_leaves_the_whole_file(
    store: RunningStore, flows: Flows, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, cancels: int
) -> None:
    """Cancelled (once, or again) as the muxer thread finishes the file and renames it into
    place: that thread cannot be stopped half-way, so the export waits for it, with the event
    loop free meanwhile, and ends cancelled with the file whole (as an export left alone writes
    it), not deleted and not half-renamed. Audio exports go through outgest_audio alike."""
    whole = tmp_path / "reference" / "whole.ts"
    whole.parent.mkdir()
    await export(store, flows.ids[kind], whole)
    committing = threading.Event()
    commit = FlowFileWriter.commit

    def slow_commit(writer: FlowFileWriter) -> int:  # the same commit, with a window to stop it in
        committing.set()
        time.sleep(0.3)
        return commit(writer)

    monkeypatch.setattr(FlowFileWriter, "commit", slow_commit)
    out = tmp_path / "finished.ts"
    export_task = asyncio.create_task(export(store, flows.ids[kind], out))
    while not committing.is_set():
        assert not export_task.done()
        await asyncio.sleep(0.01)
    ticks: list[float] = []

    async def tick() -> None:  # the loop's other work, while the export waits for its commit
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(tick())
    for _ in range(cancels):
        export_task.cancel()
        await asyncio.sleep(0.05)
    with pytest.raises(asyncio.CancelledError):
        await export_task
    ticking.cancel()
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 0.2  # blocked, the loop would stall 0.25 s or more
    assert out.read_bytes() == whole.read_bytes()
    if kind == "plain":
        assert read_frame_numbers(out) == list(range(FRAMES))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finished.ts", "reference"]


def test_a_signal_once_the_output_is_in_place_is_no_failure(store: RunningStore, flows: Flows, tmp_path: Path) -> None:
    """SIGTERM as the export closes its connection, the file already whole under its name: the
    export is done, so it says so and exits 0, instead of claiming nothing was written."""
    out = tmp_path / "done.ts"
    late_signal = signalled_as_the_client_closes("outgest_core")
    result = subprocess.run(
        [sys.executable, "-c", late_signal, "--flow-id", flows.ids["plain"], "--output", str(out), "--quiet"],
        cwd=REPO_ROOT, env={**os.environ, **store.env}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, f"stopped by SIGTERM as the export ended: {out} is complete\n")
    assert read_frame_numbers(out) == list(range(FRAMES))


async def test_unreachable_object_fails_after_retries(store: RunningStore, tmp_path: Path, content: Content) -> None:
    async with connect(store) as client:
        flow_id = await put_flow(client)
        await post(client, flow_id, [{
            "object_id": f"gone-{uuid.uuid4()}", "timerange": media_timerange(content.video[0]),
            "get_urls": [{"url": "http://127.0.0.1:9/gone.ts", "label": "closed-port"}],
        }])  # fmt: skip
    out = tmp_path / "never.ts"
    async with connect(store, retry=RetryPolicy(attempts=2, base=0.01)) as client:
        with pytest.raises(OutgestError, match="cannot download"):
            await outgest(client, flow_id, out)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# The pure core: unwrapping and cut planning


def test_unwrap_mpegts_handles_wrap_and_negative_values() -> None:
    # as the demuxer reports a file starting just before the wrap: negative, then small positive
    assert unwrap_mpegts([-6000, -3000, 0, 3000]) == [PTS_WRAP - 6000, PTS_WRAP - 3000, PTS_WRAP, PTS_WRAP + 3000]
    # raw 33-bit values wrapping inside the sequence
    assert unwrap_mpegts([PTS_WRAP - 3000, 0, 3000]) == [PTS_WRAP - 3000, PTS_WRAP, PTS_WRAP + 3000]
    # the anchor (registered object timeline start) picks the wrap period
    assert unwrap_mpegts([3000, 6000], anchor=-PTS_WRAP + 3000) == [3000 - PTS_WRAP, 6000 - PTS_WRAP]
    assert unwrap_mpegts([90000, 93000], anchor=90000) == [90000, 93000]


# A GOP of 9 frames with two B-frames between anchors, in decode order:
# I0 P3 B1 B2 P6 B4 B5 P8 B7 | I9 P12 B10 B11 ...
DECODE_ORDER = [0, 3, 1, 2, 6, 4, 5, 8, 7, 9, 12, 10, 11, 15, 13, 14, 17, 16]


def gop_frames() -> list[FrameTiming]:
    return [FrameTiming(pts=n * FRAME, dts=(i - 2) * FRAME, keyframe=n % 9 == 0) for i, n in enumerate(DECODE_ORDER)]


def frames_segment(first: int, stop: int, **extra: object) -> SegmentRef:
    return SegmentRef(object_id="o", timerange=span(first * FRAME, stop * FRAME), **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("first", "stop", "copy"),
    [
        (0, 18, True),  # the whole object
        (0, 9, True),  # one whole GOP: the next frame is a keyframe
        (9, 18, True),  # from a keyframe to the end
        (0, 4, True),  # I0 P3 B1 B2: an unbroken run in decode order
        (0, 3, False),  # B1 B2 need P3, which is cut
        (0, 5, False),  # B4 needs P6
        (1, 9, False),  # starts on a B-frame inside the GOP
        (3, 9, False),  # starts on a P-frame
        (9, 13, True),  # I9 P12 B10 B11
        (9, 11, False),  # B10 needs P12
    ],
)
def test_plan_copies_only_when_no_kept_frame_needs_a_dropped_one(first: int, stop: int, copy: bool) -> None:
    plan = plan_segment(gop_frames(), TICK, frames_segment(first, stop))
    assert (plan.first, plan.stop, plan.copy) == (first, stop, copy)
    assert sorted(DECODE_ORDER[i] for i in plan.packets) == list(range(first, stop))


def test_plan_uses_sample_offset_and_count_in_presentation_order() -> None:
    # the timerange covers the whole object; sample_offset/sample_count pick frames 9..12
    segment = frames_segment(0, 18, sample_offset=9, sample_count=4)
    plan = plan_segment(gop_frames(), TICK, segment)
    assert (plan.first, plan.stop, plan.copy) == (9, 13, True)
    plan = plan_segment(gop_frames(), TICK, frames_segment(0, 18, sample_offset=2, sample_count=5))
    assert (plan.first, plan.stop, plan.copy) == (2, 7, False)


def test_plan_narrows_to_request_on_the_flow_timeline() -> None:
    offset = Timestamp.from_str("100:0")
    timerange = TimeRange(ts(0) + offset, ts(18 * FRAME) + offset, TimeRange.INCLUDE_START)
    segment = SegmentRef(object_id="o", timerange=timerange, ts_offset=offset)
    request = TimeRange(ts(4 * FRAME) + offset, ts(9 * FRAME) + offset, TimeRange.INCLUDE_START)
    plan = plan_segment(gop_frames(), TICK, segment, request=request)
    assert (plan.first, plan.stop, plan.copy) == (4, 9, False)


def test_plan_at_23_976_takes_frames_whose_pts_is_just_before_a_grid_cut() -> None:
    """At 24000/1001 a frame lasts 3753.75 ticks and its pts is rounded down to a tick, so it
    can be 0.75 tick before its exact time, where an edit puts a cut: frames 9 and 17 here.
    Membership within a quarter frame of a bound makes the cut unambiguous."""
    rate = Fraction(24000, 1001)
    exact = [Fraction(6000) + n * Fraction(90000) / rate for n in range(48)]
    frames = [FrameTiming(pts=int(t), dts=int(t), keyframe=n == 0) for n, t in enumerate(exact)]
    assert exact[9] - frames[9].pts == exact[17] - frames[17].pts == Fraction(3, 4)

    def cut(n: int) -> Timestamp:  # an edit's cut at frame n: its exact time, rounded down to 1 ns
        return Timestamp(ns=int(exact[n] * TICK * 10**9))

    segment = SegmentRef(object_id="o", timerange=TimeRange(cut(9), cut(17), TimeRange.INCLUDE_START))
    for duration in (1 / rate, None):  # the Flow's frame duration, or measured from the pts
        plan = plan_segment(frames, TICK, segment, frame_duration=duration)
        assert (plan.first, plan.stop) == (9, 17)
    # Half a tick of tolerance (the old rule) took frame 17 at the exclusive end and lost frame 9.
    t17, t9 = Fraction(frames[17].pts) * TICK, Fraction(frames[9].pts) * TICK
    assert in_timerange(t17, segment.timerange, TICK_TOLERANCE) and not in_timerange(t9, segment.timerange, TICK_TOLERANCE)
    # Inclusive and exclusive bounds keep their meaning for the frame on them.
    closed = TimeRange(cut(9), cut(17), TimeRange.INCLUSIVE)
    assert (plan_segment(frames, TICK, SegmentRef(object_id="o", timerange=closed), frame_duration=1 / rate).stop) == 18
    opened = TimeRange(cut(9), cut(17), TimeRange.EXCLUSIVE)
    assert (plan_segment(frames, TICK, SegmentRef(object_id="o", timerange=opened), frame_duration=1 / rate).first) == 10

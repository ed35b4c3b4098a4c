"""Whole MPEG-TS objects exported as they are (``outgest_core.RawJoin``, ``ts_scan``).

An export to ``.ts`` of segments that use their whole objects writes the objects' bytes, with
only the continuity counters renumbered so that every PID counts on across the joins; the first
segment that needs more (a cut, another layout, a deeper reorder delay) and all after it go
through the muxer, which carries on the same PIDs and counters. Checked on the bytes (the output
is the objects, counters aside), on the counters of every packet, and on the frames.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import pytest
from mediatimestamp.immutable import TimeRange, Timestamp

import outgest_core
import ts_scan
from media import PTS_WRAP
from sample_content import read_frame_numbers, synthesize
from tests.conftest import REPO_ROOT, RunningStore, start_store
from tests.gop_media import make_hls
from tests.whole_objects_support import (
    FIRST_PTS,
    FRAME,
    Ingested,
    assert_one_clean_stream,
    connect,
    counter_breaks,
    counters_blanked,
    export,
    ingest_video,
    pids,
    video_packets,
    window,
)

SEGMENTS = 4
FRAMES = 60 * SEGMENTS


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStore]:
    running = start_store(tmp_path_factory.mktemp("whole_objects_store") / "data")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def video(store: RunningStore, tmp_path_factory: pytest.TempPathFactory) -> Ingested:
    """Four 2 s segments of numbered 30 fps H.264 (1 s GOPs, B-frames), video only."""
    playlist = synthesize(tmp_path_factory.mktemp("whole_video"), duration=8, segment_seconds=2, gop_seconds=1)
    return asyncio.run(ingest_video(store, playlist))


async def test_a_whole_ts_flow_is_its_objects_with_counters_counting_on(
    store: RunningStore, video: Ingested, tmp_path: Path
) -> None:
    out = tmp_path / "whole.ts"
    summary = await export(store, video.flow_id, out)
    data = out.read_bytes()
    joined = b"".join(video.objects)
    assert data != joined  # each object's counters start afresh: renumbered
    assert counters_blanked(data) == counters_blanked(joined)
    assert counter_breaks(joined) and counter_breaks(data) == []
    assert read_frame_numbers(out) == list(range(FRAMES))
    assert sorted(p for p, _, _ in video_packets(out)) == [FIRST_PTS + FRAME * n for n in range(FRAMES)]
    assert_one_clean_stream(out)
    assert (summary.segments, summary.frames, summary.reencoded, summary.bytes) == (SEGMENTS, FRAMES, 0, len(data))


async def test_objects_over_the_memory_limit_go_through_files_alike(
    store: RunningStore, video: Ingested, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outgest_core, "MEMORY_OBJECT_LIMIT", min(len(o) for o in video.objects) // 3)
    whole, cut = tmp_path / "whole.ts", tmp_path / "cut.ts"
    await export(store, video.flow_id, whole)
    assert counters_blanked(whole.read_bytes()) == counters_blanked(b"".join(video.objects))
    data = await _cut(store, video.flow_id, cut, 10, 200)
    assert counters_blanked(data).find(counters_blanked(video.objects[1])) > 0  # copied between the cuts
    assert_one_clean_stream(whole)
    assert_one_clean_stream(cut)


async def _cut(store: RunningStore, flow_id: str, out: Path, first: int, stop: int) -> bytes:
    """Export frames [first, stop) with ``exact``, check them, and return the file's bytes."""
    await export(store, flow_id, out, timerange=window(first, stop), exact=True)
    assert read_frame_numbers(out) == list(range(first, stop))
    return out.read_bytes()


async def test_a_cut_inside_the_last_segment_muxes_from_the_segment_before_and_counts_on(
    store: RunningStore, video: Ingested, tmp_path: Path
) -> None:
    out = tmp_path / "cut.ts"
    data = await _cut(store, video.flow_id, out, 0, 200)
    # Segments 0 and 1 as they are; segment 2 (held back) and the cut segment 3 through the muxer.
    as_is = b"".join(video.objects[:2])
    assert counters_blanked(data[:len(as_is)]) == counters_blanked(as_is)
    assert counters_blanked(data[len(as_is):len(as_is) + 188 * 50]) != counters_blanked(video.objects[2][:188 * 50])
    assert pids(data) == pids(as_is)  # the muxer carried on the objects' PIDs
    first, later = ts_scan.scan(as_is[:len(video.objects[0])]), ts_scan.scan(data[len(as_is):][:188 * 400])
    assert not isinstance(first, str) and not isinstance(later, str)
    assert later.layout.version == (first.layout.version + 1) % 32  # so demuxers read the muxer's PMT
    assert (later.layout.pmt_pid, later.layout.video_pid, later.layout.program) == \
        (first.layout.pmt_pid, first.layout.video_pid, first.layout.program)
    assert_one_clean_stream(out)


async def test_a_cut_at_both_ends_copies_the_whole_segments_between_as_they_are(
    store: RunningStore, video: Ingested, tmp_path: Path
) -> None:
    out = tmp_path / "middle.ts"
    data = await _cut(store, video.flow_id, out, 10, 200)
    # Segment 0 (cut) muxed, segment 1 as it is, segment 2 (held back when 3 needed the muxer)
    # and the cut segment 3 muxed again: three parts, one stream.
    blanked = counters_blanked(data)
    at = blanked.find(counters_blanked(video.objects[1]))
    assert at > 0 and at % 188 == 0
    assert blanked.find(counters_blanked(video.objects[2])) == -1
    assert pids(data) == pids(video.objects[1])
    versions = []
    for part in (data[:at], data[at:at + len(video.objects[1])], data[at + len(video.objects[1]):]):
        found = ts_scan.scan(part[:188 * 400])
        assert not isinstance(found, str)
        versions.append(found.layout.version)
    assert versions[2] == (versions[1] + 1) % 32  # the second muxer's tables are read anew
    assert_one_clean_stream(out)


async def test_a_flow_across_the_2_33_wrap_is_copied_as_it_is(store: RunningStore, tmp_path: Path) -> None:
    first_pts = PTS_WRAP - 90000  # the wrap one second in
    playlist = synthesize(tmp_path / "wrap", duration=4, segment_seconds=2, gop_seconds=1, start_pts=first_pts)
    ingested = await ingest_video(store, playlist)
    out = tmp_path / "wrap.ts"
    await export(store, ingested.flow_id, out)
    assert counters_blanked(out.read_bytes()) == counters_blanked(b"".join(ingested.objects))
    assert read_frame_numbers(out) == list(range(120))
    shown = sorted((p - first_pts) % PTS_WRAP for p, _, _ in video_packets(out))
    assert shown == [FRAME * n for n in range(120)]
    assert_one_clean_stream(out)


async def test_hevc_open_gop_objects_are_copied_after_the_object_before(store: RunningStore, tmp_path: Path) -> None:
    # x265's CRA keyframes: each segment's leading pictures reference the segment before.
    playlist = make_hls(tmp_path / "x265", encoder="x265", fps=Fraction(25), frames=100,
                        segment_seconds=Fraction(1), gop_frames=25)
    ingested = await ingest_video(store, playlist)
    out = tmp_path / "x265.ts"
    await export(store, ingested.flow_id, out)
    assert counters_blanked(out.read_bytes()) == counters_blanked(b"".join(ingested.objects))
    assert read_frame_numbers(out) == list(range(100))
    assert_one_clean_stream(out)


async def test_whole_objects_follow_a_first_segment_muxed_for_its_ts_offset(
    store: RunningStore, video: Ingested, tmp_path: Path
) -> None:
    # A new Flow by reference: the last object first, moved 8 s back by its ts_offset (so muxed),
    # then the first three objects where they were: copied after it, on the objects' own PIDs.
    async with connect(store) as client:
        flow = await client.get_flow(video.flow_id)
        stored = [item async for item in client.segments(video.flow_id)]
        flow_id = str(uuid.uuid4())
        await client.put_flow(flow_id, {**{k: v for k, v in flow.items() if k not in ("id", "timerange", "collected_by")},
                                        "id": flow_id})
        moved = TimeRange.from_str(stored[3]["timerange"])
        back = Timestamp(8, 0)
        assert moved.start is not None and moved.end is not None
        body = [{"object_id": stored[3]["object_id"], "ts_offset": str(Timestamp() - back),
                 "timerange": str(TimeRange(moved.start - back, moved.end - back, TimeRange.INCLUDE_START))}]
        body += [{"object_id": item["object_id"], "timerange": item["timerange"]} for item in stored[:3]]
        assert await client.post_segments(flow_id, body) == []
    out = tmp_path / "moved.ts"
    await export(store, flow_id, out)
    assert read_frame_numbers(out) == list(range(180, 240)) + list(range(180))
    blanked = counters_blanked(out.read_bytes())
    assert blanked.find(counters_blanked(video.objects[1])) > 0  # copied after the muxed segment
    assert pids(out.read_bytes()) == pids(video.objects[0])
    assert_one_clean_stream(out)


async def test_objects_holding_audio_are_demuxed_for_their_video(store: RunningStore, tmp_path: Path) -> None:
    playlist = synthesize(tmp_path / "muxed", duration=4, segment_seconds=2, gop_seconds=1, audio=True)
    ingested = await ingest_video(store, playlist)
    out = tmp_path / "video.ts"
    await export(store, ingested.flow_id, out)
    with av.open(str(out)) as container:
        assert [s.type for s in container.streams] == ["video"]
    assert read_frame_numbers(out) == list(range(120))


def test_a_whole_ts_export_runs_without_pyav(store: RunningStore, video: Ingested, tmp_path: Path) -> None:
    out = tmp_path / "cli.ts"
    # The script ends its process itself (credentials.exit_now), running the atexit handlers first.
    code = ("import atexit, runpy, sys\n"
            "atexit.register(lambda: print(sorted(m for m in sys.modules if m.split('.')[0] == 'av')))\n"
            f"sys.argv = ['outgest_file.py', '--flow-id', {video.flow_id!r}, '--output', {str(out)!r}, '--quiet']\n"
            "runpy.run_path('outgest_file.py', run_name='__main__')\n")
    env = {**os.environ, "TAMS_URL": store.url, "USERNAME": store.username, "PASSWORD": store.password}
    env.pop("OAUTH2_URL", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert read_frame_numbers(out) == list(range(FRAMES))


# --------------------------------------------------------------------------------------------
# ts_scan on its own


@pytest.mark.parametrize("encoder, split_by_time", [("x264-pyramid", False), ("x264-pyramid", True), ("x265", False),
                                                    ("x265", True), ("x264-ip", True)])
def test_scan_reads_the_timestamps_and_first_keyframe_pyav_reads(tmp_path: Path, encoder: str,
                                                                  split_by_time: bool) -> None:
    playlist = make_hls(tmp_path, encoder=encoder, fps=Fraction(25), frames=60, segment_seconds=Fraction(1),
                        gop_frames=30 if split_by_time else 25, split_by_time=split_by_time)
    segments = sorted(playlist.parent.glob("seg_*.ts"))
    assert len(segments) >= 2
    for path in segments:
        found = ts_scan.scan(path.read_bytes())
        assert not isinstance(found, str), found
        with av.open(str(path)) as container:
            packets = [p for p in container.demux(container.streams.video[0]) if p.size]
            expected = [(p.pts, p.dts) for p in packets]
            first_key = packets[0].is_keyframe
        assert list(zip(found.pts, found.dts)) == expected
        assert found.first_is_key == first_key
        assert found.layout.codec == ("hevc" if encoder == "x265" else "h264")


def _first_object(tmp_path: Path, audio: bool = False) -> bytes:
    playlist = synthesize(tmp_path, duration=2, segment_seconds=2, gop_seconds=1, audio=audio)
    return sorted(playlist.parent.glob("hls_output_*.ts"))[0].read_bytes()


def test_scan_refuses_what_it_cannot_vouch_for(tmp_path: Path) -> None:
    data = _first_object(tmp_path / "video")
    assert not isinstance(ts_scan.scan(data), str)
    scrambled = bytearray(data)
    scrambled[188 * 7 + 3] |= 0x80
    lost_sync = bytearray(data)
    lost_sync[188 * 7] = 0
    cases = {
        "it is not whole 188-byte packets": data[:-1],
        "a packet has no sync byte": bytes(lost_sync),
        "a packet is marked errored or scrambled": bytes(scrambled),
    }
    found = ts_scan.scan(data)
    assert not isinstance(found, str)
    headless = bytearray(data)
    headless[found.first_video * 188 + 1] &= ~0x40  # its start flag cleared: the packet continues a PES
    cases["it starts inside an access unit"] = bytes(headless)
    at = ts_scan._payload(data, found.first_video)
    assert at is not None
    overlong = bytearray(data)
    overlong[at + 8] = 188  # PES_header_data_length: the header would run on into the next packet
    cases["a PES header is not within one packet"] = bytes(overlong)
    short = bytearray(data)
    short[at + 7] |= 0xC0  # pts and dts flagged...
    short[at + 8] = 5  # ...in room for a pts only
    cases["a PES header is shorter than its timestamps"] = bytes(short)
    for reason, bad in cases.items():
        assert ts_scan.scan(bad) == reason
    muxed = ts_scan.scan(_first_object(tmp_path / "muxed", audio=True))
    assert isinstance(muxed, str) and "not one H.264 or HEVC stream" in muxed


def test_continuity_counts_on_across_objects_and_touches_nothing_else(tmp_path: Path) -> None:
    data = _first_object(tmp_path)
    found = ts_scan.scan(data)
    assert not isinstance(found, str)
    counting = ts_scan.Continuity()
    pieces = []
    for _ in range(3):
        piece = bytearray(data)
        counting.join(piece, found)
        pieces.append(bytes(piece))
    joined = b"".join(pieces)
    assert counter_breaks(data * 3) and counter_breaks(joined) == []
    assert counters_blanked(joined) == counters_blanked(data * 3)

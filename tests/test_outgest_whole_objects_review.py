"""Whole MPEG-TS objects and muxed parts in one export (``outgest_core.RawJoin``): the cases a
review found, where the parts did not make one stream.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import pytest
from mediatimestamp.immutable import TimeRange, Timestamp

import ts_scan
from ingest_core import IngestOptions, ingest
from sample_content import TS_MUX_OPTIONS, read_frame_numbers, synthesize
from tests.conftest import REPO_ROOT, RunningStore, start_store
from tests.gop_media import make_hls
from tests.whole_objects_support import (
    assert_one_clean_stream,
    connect,
    counters_blanked,
    export,
    ingest_video,
    pids,
    video_packets,
    window,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStore]:
    running = start_store(tmp_path_factory.mktemp("whole_objects_review_store") / "data")
    yield running
    running.stop()


def _remux(path: Path, **options: str) -> None:
    """Rewrite the MPEG-TS object at ``path`` packet for packet with the muxer ``options``."""
    remuxed = path.with_suffix(".remuxed")
    with av.open(str(path)) as source, av.open(str(remuxed), "w", format="mpegts",
                                                 container_options={**TS_MUX_OPTIONS, **options}) as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.size:
                packet.stream = stream
                out.mux(packet)
    remuxed.replace(path)


def _mark_errored(path: Path, pid: int) -> None:
    """Set the transport_error_indicator of the first packet on ``pid`` (not the video's: the
    frames demux as before, but ``ts_scan`` refuses the object)."""
    data = bytearray(path.read_bytes())
    at = next(i for i in range(0, len(data), 188) if ((data[i + 1] & 0x1F) << 8 | data[i + 2]) == pid)
    data[at + 1] |= 0x80
    path.write_bytes(bytes(data))


async def test_objects_with_their_own_pids_after_a_muxed_first_object_that_scan_refused(
    store: RunningStore, tmp_path: Path
) -> None:
    # The first object is refused before its PIDs are read, so its muxer took libavformat's
    # default PIDs; the objects after it, on PIDs of their own, were copied after it anyway (and
    # a demuxer then met a second video stream half way: PyAV could not even demux the file).
    playlist = synthesize(tmp_path / "pids", duration=6, segment_seconds=2, gop_seconds=1)
    objects = sorted(playlist.parent.glob("hls_output_*.ts"))
    for path in objects:
        _remux(path, mpegts_start_pid="0x200", mpegts_pmt_start_pid="0x300", mpegts_service_id="7")
    _mark_errored(objects[0], ts_scan.SDT_PID)
    assert ts_scan.scan(objects[0].read_bytes()) == "a packet is marked errored or scrambled"
    assert all(not isinstance(ts_scan.scan(path.read_bytes()), str) for path in objects[1:])
    ingested = await ingest_video(store, playlist)
    out = tmp_path / "pids.ts"
    await export(store, ingested.flow_id, out)
    assert read_frame_numbers(out) == list(range(180))
    with av.open(str(out)) as container:
        assert len(container.streams.video) == 1
    assert len(pids(out.read_bytes()) - {ts_scan.PAT_PID, ts_scan.SDT_PID}) == 2  # one PMT, one video PID
    assert_one_clean_stream(out)


def _crc_mpeg2(data: bytes) -> int:
    """The CRC_32 of a PSI section (ISO/IEC 13818-1 Annex A: polynomial 0x04C11DB7, not reflected)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    return crc


def _section_at(data: bytes | bytearray, offset: int) -> tuple[int, int] | None:
    """(start, end) in ``data`` of the PSI section that the packet at ``offset`` starts."""
    if not data[offset + 1] & 0x40:
        return None
    start = offset + 4 + (1 + data[offset + 4] if data[offset + 3] & 0x20 else 0)
    start += 1 + data[start]  # pointer_field
    return start, start + 3 + (((data[start + 1] & 0x0F) << 8) | data[start + 2])


def _section_with(section: bytes, *, stream_types: set[int] | None = None, version: int | None = None,
                  pcr_pid: int | None = None) -> bytes:
    """A PMT ``section`` keeping only the elementary streams of ``stream_types``, or with
    another ``version`` or PCR_PID, its length and CRC made anew."""
    body = bytearray(section[3:-4])
    if version is not None:
        body[2] = (body[2] & 0xC1) | (version << 1)
    if pcr_pid is not None:
        body[5:7] = (0xE000 | pcr_pid).to_bytes(2, "big")
    if stream_types is not None:
        info = ((section[10] & 0x0F) << 8) | section[11]
        at, kept = 12 + info, bytearray()
        while at + 5 <= len(section) - 4:
            end = at + 5 + (((section[at + 3] & 0x0F) << 8) | section[at + 4])
            if section[at] in stream_types:
                kept += section[at:end]
            at = end
        body = body[:9 + info] + kept
    head = bytes([section[0], (section[1] & 0xF0) | ((len(body) + 4) >> 8), (len(body) + 4) & 0xFF]) + body
    return head + _crc_mpeg2(head).to_bytes(4, "big")

def _rewrite_sections(path: Path, pid: int, change: Callable[[bytes, int], bytes]) -> None:
    """Replace the n-th PSI section on ``pid`` (each within its packet) of the object at ``path``
    by ``change(section, n)`` (stuffing after a shorter one)."""
    data = bytearray(path.read_bytes())
    count = 0
    for offset in range(0, len(data), 188):
        if ((data[offset + 1] & 0x1F) << 8 | data[offset + 2]) == pid and (found := _section_at(data, offset)):
            start, end = found
            data[start:end] = change(bytes(data[start:end]), count).ljust(end - start, b"\xff")
            count += 1
    path.write_bytes(bytes(data))


def _unsignalled_table_changes(data: bytes, pids: set[int]) -> list[tuple[int, int]]:
    """(packet index, PID) of every PSI section on ``pids`` whose bytes differ from the one
    before it on that PID while its version_number is the same (a demuxer keeps the old table)."""
    last: dict[int, bytes] = {}
    found = []
    for offset in range(0, len(data), 188):
        pid = (data[offset + 1] & 0x1F) << 8 | data[offset + 2]
        if pid in pids and (bounds := _section_at(data, offset)):
            section = data[bounds[0]:bounds[1]]
            if pid in last and section != last[pid] and (section[5] >> 1) & 0x1F == (last[pid][5] >> 1) & 0x1F:
                found.append((offset // 188, pid))
            last[pid] = section
    return found


async def test_a_first_muxer_gives_its_tables_a_version_the_objects_after_it_do_not_have(
    store: RunningStore, tmp_path: Path
) -> None:
    # A cut in the first segment: it is muxed, the whole objects after it are copied. The muxer
    # writes its own PMT (PCR on the video PID); the objects' PMT says otherwise. Both had
    # version 0, so a demuxer or player kept the muxer's PMT over the copied objects.
    playlist = synthesize(tmp_path / "tables", duration=6, segment_seconds=2, gop_seconds=1)
    objects = sorted(playlist.parent.glob("hls_output_*.ts"))
    first = ts_scan.scan(objects[0].read_bytes())
    assert not isinstance(first, str)
    for path in objects:
        # another PCR_PID: a PMT that differs from the one a muxer writes, as another packager's would
        _rewrite_sections(path, first.layout.pmt_pid, lambda section, _: _section_with(section, pcr_pid=0x1FFF))
    changed = ts_scan.scan(objects[0].read_bytes())
    assert not isinstance(changed, str) and changed.layout.pmt != first.layout.pmt
    ingested = await ingest_video(store, playlist)
    out = tmp_path / "tables.ts"
    await export(store, ingested.flow_id, out, timerange=window(10, 180), exact=True)
    assert read_frame_numbers(out) == list(range(10, 180))
    data = out.read_bytes()
    assert data.find(changed.layout.pmt) > 0  # the copied objects' own PMT, after the muxer's
    assert _unsignalled_table_changes(data, {ts_scan.PAT_PID, ts_scan.SDT_PID, first.layout.pmt_pid}) == []
    assert_one_clean_stream(out)


def _audio_announced_later(path: Path, pmt_pid: int) -> None:
    """The object's first PMT lists only its video; the later ones list its audio too (as a
    new version): a demuxer finds the audio stream part way through."""
    _rewrite_sections(path, pmt_pid, lambda section, n: _section_with(section, stream_types={0x1B}) if n == 0
                  else _section_with(section, version=1))


def _assert_refused_with_audio(path: Path, reason: str) -> None:
    """A demuxer finds the object's audio and video; ``ts_scan`` refuses it for ``reason``."""
    with av.open(str(path)) as container:
        assert sorted(s.type for s in container.streams) == ["audio", "video"]
    assert ts_scan.scan(path.read_bytes()) == reason


async def _assert_exports_its_video_only(store: RunningStore, playlist: Path, out: Path) -> None:
    """The playlist's 4 s of 30 fps video ingested and exported whole to ``out``: its frames, and
    no other stream."""
    ingested = await ingest_video(store, playlist)
    await export(store, ingested.flow_id, out)
    with av.open(str(out)) as container:
        assert [s.type for s in container.streams] == ["video"]
    assert read_frame_numbers(out) == list(range(120))


async def test_an_object_whose_later_pmt_adds_audio_is_demuxed_for_its_video(
    store: RunningStore, tmp_path: Path
) -> None:
    # ts_scan read only the first PMT, so such an object was copied whole, audio and all.
    playlist = synthesize(tmp_path / "later_pmt", duration=4, segment_seconds=2, gop_seconds=1, audio=True)
    objects = sorted(playlist.parent.glob("hls_output_*.ts"))
    for path in objects:
        _audio_announced_later(path, 0x1000)  # libavformat's PMT PID
        _assert_refused_with_audio(path, "its PAT or PMT changes within it")
    await _assert_exports_its_video_only(store, playlist, tmp_path / "later_pmt.ts")


async def test_an_object_with_audio_its_pmt_does_not_list_is_demuxed_for_its_video(
    store: RunningStore, tmp_path: Path
) -> None:
    # libavformat's demuxer finds a PES stream on a PID no PMT lists; copied whole, the object
    # brought that audio into the export.
    playlist = synthesize(tmp_path / "unlisted", duration=4, segment_seconds=2, gop_seconds=1, audio=True)
    objects = sorted(playlist.parent.glob("hls_output_*.ts"))
    for path in objects:
        _rewrite_sections(path, 0x1000, lambda section, _: _section_with(section, stream_types={0x1B}))
        _assert_refused_with_audio(path, "it holds PES packets on PID 0x101, which its PMT does not list")
    await _assert_exports_its_video_only(store, playlist, tmp_path / "unlisted.ts")


def _pcrs(data: bytes) -> list[int]:
    """Every PCR in ``data``, in order (27 MHz)."""
    found = []
    for offset in range(0, len(data), 188):
        if data[offset + 3] & 0x20 and data[offset + 4] >= 7 and data[offset + 5] & 0x10:
            field = int.from_bytes(data[offset + 6:offset + 12], "big")
            found.append((field >> 15) * 300 + (field & 0x1FF))
    return found


async def test_muxed_parts_keep_the_pcr_as_far_behind_as_the_objects_do(store: RunningStore, tmp_path: Path) -> None:
    # Packagers send the PCR ahead of the decode times (ffmpeg's command line by 0.7 s); the
    # muxer's PCRs were the decode times themselves, so the PCR stepped back 0.7 s where whole
    # objects followed a muxed part (and jumped as far forward after them).
    first_pts = 900000  # room before the first frame for a PCR 0.7 s earlier
    playlist = synthesize(tmp_path / "pcr", duration=8, segment_seconds=2, gop_seconds=1, start_pts=first_pts)
    for path in sorted(playlist.parent.glob("hls_output_*.ts")):
        _remux(path, max_delay="700000")
        found = ts_scan.scan(path.read_bytes())
        assert not isinstance(found, str) and found.pcr_lag == 63000
    ingested = await ingest_video(store, playlist)
    out = tmp_path / "pcr.ts"
    window = TimeRange(Timestamp.from_count(first_pts + 3000 * 10, 90000),
                       Timestamp.from_count(first_pts + 3000 * 230, 90000), TimeRange.INCLUDE_START)
    # Segment 0 (cut) muxed, segment 1 as it is, segments 2 (held back) and 3 (cut) muxed.
    await export(store, ingested.flow_id, out, timerange=window, exact=True)
    assert counters_blanked(out.read_bytes()).find(counters_blanked(ingested.objects[1])) > 0
    assert read_frame_numbers(out) == list(range(10, 230))
    assert sorted(p for p, _, _ in video_packets(out)) == [first_pts + 3000 * n for n in range(10, 230)]
    pcrs = _pcrs(out.read_bytes())
    assert len(pcrs) > 30 and all(b > a for a, b in zip(pcrs, pcrs[1:]))
    assert_one_clean_stream(out)


def _file_size_limit(limit: int) -> Callable[[], None]:
    """A ``preexec_fn`` under which no file grows past ``limit`` bytes (writes fail with EFBIG,
    as on a full disk) instead of the process being killed."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_write_failing_in_a_muxed_part_after_whole_objects_is_one_line(store: RunningStore, tmp_path: Path) -> None:
    # Segments 0 and 1 go out as they are; the muxer writes segments 2 and 3 after them, through
    # the file object that renumbers its counters. The output may not grow past half an object more
    # than the two whole ones: a write of the muxer's fails, as when the disk fills.
    playlist = synthesize(tmp_path / "full", duration=8, segment_seconds=2, gop_seconds=1)
    ingested = asyncio.run(ingest_video(store, playlist))
    sizes = [len(o) for o in ingested.objects]
    out = tmp_path / "out" / "full.ts"
    out.parent.mkdir()
    window = TimeRange(Timestamp.from_count(6000, 90000), Timestamp.from_count(6000 + 3000 * 200, 90000),
                       TimeRange.INCLUDE_START)
    env = {**os.environ, "TAMS_URL": store.url, "USERNAME": store.username, "PASSWORD": store.password}
    env.pop("OAUTH2_URL", None)
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "outgest_file.py"), "--flow-id", ingested.flow_id, "--output", str(out),
         "--timerange", str(window), "--exact", "--quiet"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
        preexec_fn=_file_size_limit(sizes[0] + sizes[1] + sizes[2] // 2),
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "File too large" in lines[0], done.stderr
    assert list(out.parent.iterdir()) == []


async def test_a_deeper_reordering_encode_after_a_muxed_cut_is_muxed_until_its_delay_is_taken_on(
    store: RunningStore, tmp_path: Path
) -> None:
    # One segment without B-frames, cut (muxed), then two of a B-pyramid (decode times two frames
    # behind). The first pyramid object was to be copied: the muxer was closed, all its packets
    # out, and then its decode times could not follow; muxed after that, the deeper delay had no
    # packets left to spread over and the export failed ("decode order breaks").
    fps = Fraction(25)
    parts = [make_hls(tmp_path / "ip", encoder="x264-ip", fps=fps, frames=25, segment_seconds=Fraction(1),
                      gop_frames=25),
             make_hls(tmp_path / "pyramid", encoder="x264-pyramid", fps=fps, frames=50, segment_seconds=Fraction(1),
                      gop_frames=25, first_frame=25)]
    flow_id = str(uuid.uuid4())
    async with connect(store) as client:
        for playlist in parts:
            await ingest(client, IngestOptions(hls=str(playlist), segment_count=None, flow_id=flow_id, video_only=True))
        segments = [item async for item in client.segments(flow_id)]
        last_object = await client.download_object(segments[-1]["get_urls"][0])
    start = TimeRange.from_str(segments[0]["timerange"]).start
    assert start is not None and len(segments) == 3
    out = tmp_path / "deeper.ts"
    window = TimeRange(start + Timestamp.from_count(13, fps), start + Timestamp.from_count(75, fps),
                       TimeRange.INCLUDE_START)
    summary = await export(store, flow_id, out, timerange=window, exact=True)
    assert read_frame_numbers(out) == list(range(13, 75))
    assert summary.nudged == 0
    packets = video_packets(out)
    assert all(d <= p for p, d, _ in packets)
    assert_one_clean_stream(out)
    # the last segment, once the pyramid's delay is taken on, as it is
    assert counters_blanked(out.read_bytes()).find(counters_blanked(last_object)) > 0


async def test_objects_of_transport_stream_id_0_are_muxed_when_a_cut_needs_the_muxer(
    store: RunningStore, tmp_path: Path
) -> None:
    # transport_stream_id 0 is a valid PAT's, but libavformat's muxer takes only 1-65535: the
    # muxer, told to carry the objects' id on, could not even open, and a cut export failed.
    playlist = synthesize(tmp_path / "tsid", duration=4, segment_seconds=2, gop_seconds=1)
    objects = sorted(playlist.parent.glob("hls_output_*.ts"))

    def transport_stream_id_0(section: bytes, _: int) -> bytes:
        changed = section[:3] + b"\0\0" + section[5:-4]
        return changed + _crc_mpeg2(changed).to_bytes(4, "big")

    for path in objects:
        _rewrite_sections(path, ts_scan.PAT_PID, transport_stream_id_0)
        assert ts_scan.scan(path.read_bytes()) == "its transport_stream_id is outside the range a muxer can continue"
    ingested = await ingest_video(store, playlist)
    out = tmp_path / "tsid.ts"
    await export(store, ingested.flow_id, out, timerange=window(10, 120), exact=True)
    assert read_frame_numbers(out) == list(range(10, 120))
    assert_one_clean_stream(out)

"""Whole MPEG-TS objects and muxed parts in one export (``outgest_file.RawJoin``): the cases a
review found, where the parts did not make one stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

import ts_scan
from sample_content import TS_MUX_OPTIONS, read_frame_numbers, synthesize
from tests.conftest import RunningStore, start_store
from tests.test_outgest_whole_objects import _assert_one_clean_stream, _export, _ingest, _pids

SDT_PID = 0x11


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
    _mark_errored(objects[0], SDT_PID)
    assert ts_scan.scan(objects[0].read_bytes()) == "a packet is marked errored or scrambled"
    assert all(not isinstance(ts_scan.scan(path.read_bytes()), str) for path in objects[1:])
    ingested = await _ingest(store, playlist)
    out = tmp_path / "pids.ts"
    await _export(store, ingested.flow_id, out)
    assert read_frame_numbers(out) == list(range(180))
    with av.open(str(out)) as container:
        assert len(container.streams.video) == 1
    assert len(_pids(out.read_bytes()) - {ts_scan.PAT_PID, SDT_PID}) == 2  # one PMT, one video PID
    _assert_one_clean_stream(out)

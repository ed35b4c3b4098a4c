"""What the whole-object export tests share (``tests/test_outgest_whole_objects*.py``): numbered
H.264 content ingested into a store, exports, and checks of an MPEG-TS file's packets: its
continuity counters, PIDs and video packets, and the bytes with the counters blanked out (the
copied objects, whatever their renumbering).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
from mediatimestamp.immutable import TimeRange, Timestamp

from client import TAMSClient
from credentials import BasicCredentials
from ingest_core import IngestOptions, ingest
from outgest_core import OutgestSummary, outgest
from tests.conftest import RunningStore

__all__ = ["FIRST_PTS", "FRAME", "Ingested", "assert_one_clean_stream", "connect", "counter_breaks",
           "counters_blanked", "export", "ingest_video", "pids", "video_packets", "window"]

FRAME = 3000  # ticks per frame at sample_content's 30 fps
FIRST_PTS = 6000  # sample_content's first pts


def connect(store: RunningStore) -> TAMSClient:
    return TAMSClient(store.url, BasicCredentials(store.username, store.password))


@dataclass(frozen=True)
class Ingested:
    flow_id: str
    objects: list[bytes]  # the stored objects, in timeline order


async def ingest_video(store: RunningStore, playlist: Path) -> Ingested:
    """``playlist`` ingested video only into a new Flow, and its stored objects."""
    async with connect(store) as client:
        result = await ingest(client, IngestOptions(hls=str(playlist), segment_count=None,
                                                    flow_id=str(uuid.uuid4()), video_only=True))
        flow_id = result.flow_ids["video"]
        objects = [await client.download_object(item["get_urls"][0]) async for item in client.segments(flow_id)]
    return Ingested(flow_id, objects)


def counters_blanked(data: bytes) -> bytes:
    """``data`` with every packet's continuity counter set to 0."""
    out = bytearray(data)
    out[3::188] = bytes(b & 0xF0 for b in out[3::188])
    return bytes(out)


def counter_breaks(data: bytes) -> list[tuple[int, int]]:
    """(packet index, PID) of every packet whose continuity counter does not count on."""
    last: dict[int, int] = {}
    breaks = []
    for index in range(len(data) // 188):
        offset = index * 188
        pid = ((data[offset + 1] & 0x1F) << 8) | data[offset + 2]
        count, payload = data[offset + 3] & 0x0F, data[offset + 3] & 0x10
        if pid in last and pid != 0x1FFF and count != ((last[pid] + 1) & 0x0F if payload else last[pid]):
            breaks.append((index, pid))
        last[pid] = count
    return breaks


def pids(data: bytes) -> set[int]:
    return {((data[i + 1] & 0x1F) << 8) | data[i + 2] for i in range(0, len(data), 188)}


def video_packets(path: Path) -> list[tuple[int, int, bool]]:
    with av.open(str(path)) as container:
        return [(p.pts, p.dts, p.is_corrupt) for p in container.demux(container.streams.video[0]) if p.size]


def assert_one_clean_stream(out: Path) -> None:
    """Every PID counts on, no packet reads as corrupt, decode times rise throughout."""
    assert counter_breaks(out.read_bytes()) == []
    packets = video_packets(out)
    assert not any(corrupt for _, _, corrupt in packets)
    assert all(b[1] > a[1] for a, b in zip(packets, packets[1:]))


def window(first: int, stop: int) -> TimeRange:
    def at(frame: int) -> Timestamp:
        return Timestamp.from_count(FIRST_PTS + FRAME * frame, 90000)
    return TimeRange(at(first), at(stop), TimeRange.INCLUDE_START)


async def export(store: RunningStore, flow_id: str, out: Path, **options: Any) -> OutgestSummary:
    async with connect(store) as client:
        return await outgest(client, flow_id, out, **options)

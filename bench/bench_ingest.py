#!/usr/bin/env python3
"""Benchmark of ingest_hls.py: ingest MB/s at --concurrency 8 and 1 against a plain upload, and
timerange extraction (demux only) against a full decode.

Starts its own local store with ``--latency-ms 20`` (every answer, API or media, is delayed 20 ms,
as from a store far away) and synthesizes numbered content (default 640x360, 30 fps, 60 s, 2 s
segments). In one run it then measures, on the same segment files:

- ingest with ``--concurrency 8`` and with ``--concurrency 1`` (each into a new Flow): MB/s is
  segment bytes over wall-clock seconds of ``ingest()`` (playlist, timing, Flow, storage
  allocation, uploads, segment registration, bit rates);
- a plain upload of the same bytes, 8 at a time (storage allocation and object PUTs only, no
  timing, no Flow registration): what the store and network allow;
- per segment, ``media.read_timing`` (demux, no decoding) against decoding every frame.

Figures only; nothing here asserts a time. ``run()`` returns them as a list of
``{"figure", "value", "unit", "baseline", "ratio"}`` dicts.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import tempfile
import time
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any

# bench/ itself, then (through common) the repository root: this file also runs as a script.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import av
from common import bench_store, content_parser, print_table

import media
from client import TAMSClient
from credentials import BasicCredentials
from ingest_core import IngestOptions, ingest
from sample_content import synthesize

LATENCY_MS = 20


async def _ingest(client: TAMSClient, playlist: Path, concurrency: int) -> tuple[float, int, int]:
    started = time.perf_counter()
    result = await ingest(client, IngestOptions(hls=str(playlist), segment_count=None, concurrency=concurrency,
                                                flow_id=str(uuid.uuid4())))
    return time.perf_counter() - started, result.bytes, result.registered


async def _plain_upload(client: TAMSClient, paths: list[Path], concurrency: int) -> float:
    """Upload the files as objects of a fresh Flow, ``concurrency`` at a time; wall seconds."""
    flow_id = str(uuid.uuid4())
    await client.put_flow(flow_id, {
        "id": flow_id, "source_id": str(uuid.uuid4()), "format": "urn:x-nmos:format:video",
        "codec": "video/h264", "container": "video/mp2t",
        "essence_parameters": {"frame_width": 16, "frame_height": 16, "frame_rate": {"numerator": 30}},
    })  # fmt: skip
    blobs = [path.read_bytes() for path in paths]
    started = time.perf_counter()
    targets = client.allocate_storage(flow_id, batch=min(concurrency, 8), content_type="video/mp2t")
    lock = asyncio.Lock()
    slots = asyncio.Semaphore(concurrency)

    async def one(blob: bytes) -> None:
        async with slots:
            async with lock:
                target = await targets.__anext__()
            await client.upload_object(target, blob)

    await asyncio.gather(*(one(blob) for blob in blobs))
    return time.perf_counter() - started


async def _measure(url: str, username: str, password: str, playlist: Path, paths: list[Path]) -> dict[str, Any]:
    credentials = BasicCredentials(username, password)
    async with TAMSClient(url, credentials, concurrency=16) as client:
        await client.get_service()  # connection warm
        eight = await _ingest(client, playlist, 8)
        one = await _ingest(client, playlist, 1)
        plain = await _plain_upload(client, paths, 8)
    return {"eight": eight, "one": one, "plain": plain}


def _per_segment_ms(paths: list[Path], work: Any) -> float:
    times = []
    for path in paths:
        started = time.perf_counter()
        work(path)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _decode_all(path: Path) -> None:
    with av.open(str(path)) as container:
        for _ in container.decode(video=0):
            pass


def run(width: int = 640, height: int = 360, duration: int = 60, segment_seconds: int = 2) -> list[dict[str, Any]]:
    """Run the benchmark; the figures as dicts (figure, value, unit, baseline, ratio)."""
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        playlist = synthesize(work / "hls", width=width, height=height, fps=Fraction(30), duration=duration,
                              segment_seconds=segment_seconds)
        paths = sorted(playlist.parent.glob("*.ts"))
        total = sum(path.stat().st_size for path in paths)
        with bench_store(latency_ms=LATENCY_MS) as store:
            measured = asyncio.run(_measure(store.url, store.username, store.password, playlist, paths))
        timing_ms = _per_segment_ms(paths, media.read_timing)
        decode_ms = _per_segment_ms(paths, _decode_all)
    (s8, b8, n8), (s1, b1, n1) = measured["eight"], measured["one"]
    if not (n8 == n1 == len(paths) and b8 == b1 == total):
        raise RuntimeError(f"ingest did not register every segment ({n8}, {n1} of {len(paths)})")
    rate8, rate1, plain = total / s8 / 1e6, total / s1 / 1e6, total / measured["plain"] / 1e6
    what = f"{len(paths)} segments of {segment_seconds} s, {width}x{height}, {total / 1e6:.2f} MB"
    return [
        {"figure": f"ingest --concurrency 1 ({what})", "value": round(rate1, 2), "unit": "MB/s",
         "baseline": None, "ratio": None},
        {"figure": "ingest --concurrency 8 vs --concurrency 1", "value": round(rate8, 2), "unit": "MB/s",
         "baseline": round(rate1, 2), "ratio": round(rate8 / rate1, 2)},
        {"figure": "ingest --concurrency 8 vs plain upload x8", "value": round(rate8, 2), "unit": "MB/s",
         "baseline": round(plain, 2), "ratio": round(rate8 / plain, 2)},
        {"figure": "ingest --concurrency 8, segments per second", "value": round(n8 / s8, 1), "unit": "seg/s",
         "baseline": round(n1 / s1, 1), "ratio": round((n8 / s8) / (n1 / s1), 2)},
        {"figure": "timerange extraction per segment vs full decode", "value": round(timing_ms, 2), "unit": "ms",
         "baseline": round(decode_ms, 2), "ratio": round(timing_ms / decode_ms, 3)},
    ]


def main() -> None:
    parser = content_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"local store with --latency-ms {LATENCY_MS} (emulating a far store); uploads and ingests share it")
    print_table(run(args.width, args.height, args.duration, args.segment_seconds))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Benchmark of outgest_file.py: export at --concurrency 8 against --concurrency 1 and against a
plain download of the same objects.

Starts its own local store with ``--latency-ms 20`` (every answer, API or media, is delayed 20
ms, as from a store far away), synthesizes numbered content (default 640x360, 60 s, 2 s
segments) and ingests it with ``ingest_hls``. In one run it then measures, on that Flow:

- the export of the whole Flow to MPEG-TS with ``--concurrency 1`` and with ``--concurrency 8``
  (listing, downloads, muxing); the output of both is checked to hold every frame;
- a plain download of the same objects with 8 concurrent GETs through ``TAMSClient`` (listing
  and GETs only, nothing written): what the store and the network allow.

MB/s is object bytes downloaded over wall-clock seconds, so every figure counts the same bytes.
Figures only; nothing here asserts a time. ``run()`` returns them as a list of
``{"figure", "value", "unit", "baseline", "ratio"}`` dicts.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any

# bench/ itself, then (through common) the repository root: this file also runs as a script.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_store, content_parser, print_table

from client import TAMSClient
from credentials import BasicCredentials
from ingest_core import IngestOptions, ingest
from outgest_core import OutgestSummary, outgest
from sample_content import read_frame_numbers, synthesize

LATENCY_MS = 20
PLAIN_CONCURRENCY = 8


async def _plain_download(client: TAMSClient, flow_id: str, concurrency: int) -> tuple[float, int]:
    """List the Flow's segments and GET each object, ``concurrency`` at a time; (seconds, bytes)."""
    started = time.perf_counter()
    slots = asyncio.Semaphore(concurrency)

    async def one(get_url: dict[str, Any]) -> int:
        async with slots:
            return len(await client.download_object(get_url))

    tasks = []
    async for segment in client.segments(flow_id):
        tasks.append(asyncio.create_task(one(segment["get_urls"][0])))
    sizes = await asyncio.gather(*tasks)
    return time.perf_counter() - started, sum(sizes)


async def _measure(url: str, username: str, password: str, playlist: Path, work: Path,
                   levels: tuple[int, ...]) -> tuple[dict[int, OutgestSummary], tuple[float, int]]:
    credentials = BasicCredentials(username, password)
    async with TAMSClient(url, credentials, concurrency=max(*levels, PLAIN_CONCURRENCY) + 2) as client:
        result = await ingest(client, IngestOptions(hls=str(playlist), segment_count=None, video_only=True,
                                                    flow_id=str(uuid.uuid4())))
        flow_id = result.flow_ids["video"]
        summaries = {}
        for level in levels:
            summaries[level] = await outgest(client, flow_id, work / f"out_{level}.ts", concurrency=level)
        plain = await _plain_download(client, flow_id, PLAIN_CONCURRENCY)
    return summaries, plain


def run(width: int = 640, height: int = 360, duration: int = 60, segment_seconds: int = 2) -> list[dict[str, Any]]:
    """Run the benchmark; the figures as dicts (figure, value, unit, baseline, ratio)."""
    with tempfile.TemporaryDirectory(prefix="bench-outgest-") as tmp:
        work = Path(tmp)
        playlist = synthesize(work / "hls", width=width, height=height, fps=Fraction(30), duration=duration,
                              segment_seconds=segment_seconds)
        frames = duration * 30
        with bench_store(latency_ms=LATENCY_MS) as store:
            summaries, (plain_seconds, plain_bytes) = asyncio.run(
                _measure(store.url, store.username, store.password, playlist, work, (1, 8)))
        for level, summary in summaries.items():
            numbers = read_frame_numbers(summary.output)
            if numbers != list(range(frames)):
                raise RuntimeError(f"--concurrency {level} output does not hold frames 0..{frames - 1}")
    one, eight = summaries[1], summaries[8]
    if not one.downloaded == eight.downloaded == plain_bytes:
        raise RuntimeError(f"the runs moved different bytes ({one.downloaded}, {eight.downloaded}, {plain_bytes})")
    rate_one = one.downloaded / one.seconds / 1e6
    rate_eight = eight.downloaded / eight.seconds / 1e6
    rate_plain = plain_bytes / plain_seconds / 1e6
    what = (f"{one.segments} segments of {segment_seconds} s, {width}x{height}, {plain_bytes / 1e6:.2f} MB, "
            f"store latency {LATENCY_MS} ms")
    return [
        {"figure": f"outgest --concurrency 1 ({what})", "value": round(rate_one, 2), "unit": "MB/s",
         "baseline": None, "ratio": None},
        {"figure": "outgest --concurrency 8 vs --concurrency 1", "value": round(rate_eight, 2), "unit": "MB/s",
         "baseline": round(rate_one, 2), "ratio": round(rate_eight / rate_one, 2)},
        {"figure": f"outgest --concurrency 8 vs plain download x{PLAIN_CONCURRENCY}", "value": round(rate_eight, 2),
         "unit": "MB/s", "baseline": round(rate_plain, 2), "ratio": round(rate_eight / rate_plain, 2)},
        {"figure": "outgest --concurrency 8 vs --concurrency 1, wall time", "value": round(eight.seconds, 2),
         "unit": "s", "baseline": round(one.seconds, 2), "ratio": round(eight.seconds / one.seconds, 2)},
    ]


def main() -> None:
    parser = content_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"local store with --latency-ms {LATENCY_MS} (emulating a far store)")
    print_table(run(args.width, args.height, args.duration, args.segment_seconds))


if __name__ == "__main__":
    main()

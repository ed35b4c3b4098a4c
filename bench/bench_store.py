#!/usr/bin/env python3
"""Benchmark of the local store: segment queries on a big Flow and segment POST throughput.

Starts ``python -m local_store`` on a free port with a temporary data dir, then:

1. loads one Flow with 100,000 segments and one with 1,000 (objects allocated through
   ``/storage`` in batches, segments registered with bulk list POSTs),
2. times ``GET /flows/{id}/segments?timerange=...&limit=100`` at random places in both Flows,
   taking turns (median and p95; each answer carries presigned ``get_urls``): the small Flow is
   the baseline, so the ratio is what 100 times as many segments cost a query,
3. measures single-segment POST throughput with 1 client (the baseline) and 8 concurrent
   clients, in the same run,
4. and again with 8 clients while a webhook receives every ``flows/segments_added`` event (a
   receiver in this process counts them; the figure waits until all have arrived): what event
   delivery costs the hot path (without webhooks it costs nothing: no event is even recorded).

Everything is sent through ``client.TAMSClient``. Figures only; nothing here asserts a time.
``run()`` returns the figures as a list of ``{"figure", "value", "unit", "baseline", "ratio"}``
dicts for ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

# bench/ itself, then (through common) the repository root: this file also runs as a script.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from aiohttp import web
from common import HookReceiver, RunningStore, bench_store, print_table

from client import TAMSClient
from credentials import Credentials, OAuth2ClientCredentials

NS = 1_000_000_000
SEGMENT_NS = 2 * NS  # 2-second segments
QUERY_LIMIT = 100
QUERY_SPAN = 150  # segments a timed query's timerange overlaps; the limit cuts the answer to 100
ALL_SCOPES = "tams-api/read tams-api/write tams-api/delete tams-api/admin"


async def make_flow(client: TAMSClient) -> str:
    flow_id = str(uuid.uuid4())
    flow = {
        "id": flow_id,
        "source_id": str(uuid.uuid4()),
        "format": "urn:x-nmos:format:video",
        "codec": "video/h264",
        "container": "video/mp2t",
        "essence_parameters": {
            "frame_width": 320,
            "frame_height": 180,
            "frame_rate": {"numerator": 30},
        },
    }
    await client.put_flow(flow_id, flow)
    return flow_id


async def allocate(client: TAMSClient, flow_id: str, n: int) -> list[str]:
    """``n`` new object ids, allocated up to 1000 at a time."""
    ids: list[str] = []
    async with contextlib.aclosing(client.allocate_storage(flow_id, batch=min(n, 1000))) as targets:
        async for target in targets:
            ids.append(target.object_id)
            if len(ids) == n:
                break
    return ids


def segment(object_id: str, index: int) -> dict[str, str]:
    start = index * SEGMENT_NS
    end = start + SEGMENT_NS
    return {
        "object_id": object_id,
        "timerange": f"[{start // NS}:{start % NS}_{end // NS}:{end % NS})",
    }


async def load_segments(client: TAMSClient, flow_id: str, n: int) -> float:
    """Register ``n`` consecutive segments in lists of 1000; the seconds the POSTs took."""
    object_ids = await allocate(client, flow_id, n)
    started = time.perf_counter()
    for first in range(0, n, 1000):
        batch = [segment(object_ids[i], i) for i in range(first, min(n, first + 1000))]
        failed = await client.post_segments(flow_id, batch)
        assert not failed, failed
    return time.perf_counter() - started


async def time_queries(client: TAMSClient, flows: dict[str, int], samples: int) -> dict[str, list[float]]:
    """Seconds per ``GET /flows/{id}/segments?timerange=...&limit=100`` at random places in each of
    ``flows`` (id: number of segments), the Flows taking turns so that they share the machine's
    ups and downs.

    ``client.request`` sends exactly this one query: ``client.segments`` would add
    ``include_object_timerange`` and follow the next-page link. The client's own work per query is
    the same on both Flows, a small part of either figure."""
    rng = random.Random(1)
    durations: dict[str, list[float]] = {flow_id: [] for flow_id in flows}
    for _ in range(samples):
        for flow_id, n_segments in flows.items():
            first = rng.randrange(0, n_segments - QUERY_LIMIT) * SEGMENT_NS + NS  # starts mid-segment
            last = first + QUERY_SPAN * SEGMENT_NS
            params = {"timerange": f"[{first // NS}:{first % NS}_{last // NS}:0)", "limit": QUERY_LIMIT}
            url = client.api_url("flows", flow_id, "segments", params=params)
            started = time.perf_counter()
            answer = (await client.request("GET", url)).json()
            durations[flow_id].append(time.perf_counter() - started)
            assert len(answer) == QUERY_LIMIT, len(answer)
    return durations


async def post_throughput(url: str, credentials: Credentials, clients: int, per_client: int) -> float:
    """Single-segment POSTs per second with ``clients`` concurrent clients on one new Flow."""
    async with TAMSClient(url, credentials) as setup:
        flow_id = await make_flow(setup)
        object_ids = await allocate(setup, flow_id, clients * per_client)

    async def post(k: int) -> None:
        async with TAMSClient(url, credentials) as client:
            for j in range(per_client):
                index = j * clients + k
                failed = await client.post_segments(flow_id, segment(object_ids[index], index))
                assert not failed, failed

    started = time.perf_counter()
    await asyncio.gather(*(post(k) for k in range(clients)))
    return clients * per_client / (time.perf_counter() - started)


class Receiver(HookReceiver):
    """A webhook receiver on a free port that counts the segments it is told about."""

    def __init__(self) -> None:
        super().__init__()
        self.segments = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.segments += len(body["event"]["segments"])
        return web.Response(status=200)



async def hooked_throughput(url: str, credentials: Credentials, clients: int, per_client: int) -> float:
    """``post_throughput`` with a webhook on every segments_added; waits for every delivery."""
    receiver = Receiver()
    await receiver.start()
    try:
        async with TAMSClient(url, credentials) as client:
            hook = {"url": receiver.url, "events": ["flows/segments_added"]}
            webhook_id = (await client.request("POST", client.api_url("service", "webhooks"), json_body=hook)).json()["id"]
            rate = await post_throughput(url, credentials, clients, per_client)
            deadline = time.monotonic() + 60
            while receiver.segments < clients * per_client:
                assert time.monotonic() < deadline, f"only {receiver.segments} segments were announced"
                await asyncio.sleep(0.05)
            await client.request("DELETE", client.api_url("service", "webhooks", webhook_id))
        return rate
    finally:
        await receiver.stop()


def percentile_95(ms: list[float]) -> float:
    ordered = sorted(ms)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def measure(store: RunningStore, n_segments: int, baseline_segments: int, samples: int,
                  posts_per_client: int) -> list[dict[str, Any]]:
    # One credentials object for every client: the token is fetched once, before any clock starts.
    credentials = OAuth2ClientCredentials(store.oauth2_url, store.env["CLIENT_ID"], store.env["CLIENT_SECRET"],
                                          scope=ALL_SCOPES)
    async with TAMSClient(store.url, credentials) as client:
        big = await make_flow(client)
        load_seconds = await load_segments(client, big, n_segments)
        small = await make_flow(client)
        await load_segments(client, small, baseline_segments)
        flows = {big: n_segments, small: baseline_segments}
        await time_queries(client, flows, 20)  # warm-up
        durations = await time_queries(client, flows, samples)
    single = await post_throughput(store.url, credentials, 1, posts_per_client * 2)
    eight = await post_throughput(store.url, credentials, 8, posts_per_client)
    hooked = await hooked_throughput(store.url, credentials, 8, posts_per_client)
    big_ms = [d * 1000 for d in durations[big]]
    small_ms = [d * 1000 for d in durations[small]]
    get = f"segment GET timerange+limit=100, {n_segments} vs {baseline_segments} segments"
    median, median_base = statistics.median(big_ms), statistics.median(small_ms)
    p95, p95_base = percentile_95(big_ms), percentile_95(small_ms)
    return [
        figure(f"{get}, median", round(median, 2), "ms", baseline=round(median_base, 2), ratio=round(median / median_base, 2)),
        figure(f"{get}, p95", round(p95, 2), "ms", baseline=round(p95_base, 2), ratio=round(p95 / p95_base, 2)),
        figure("bulk segment load (lists of 1000)", round(n_segments / load_seconds), "segments/s"),
        figure("segment POST throughput, 1 client", round(single), "segments/s"),
        figure(
            "segment POST throughput, 8 concurrent clients",
            round(eight),
            "segments/s",
            baseline=round(single),
            ratio=round(eight / single, 2),
        ),
        figure(
            "segment POST throughput, 8 clients, webhook on every segments_added",
            round(hooked),
            "segments/s",
            baseline=round(eight),
            ratio=round(hooked / eight, 2),
        ),
    ]


def figure(name: str, value: float, unit: str, *, baseline: float | None = None, ratio: float | None = None) -> dict[str, Any]:
    return {"figure": name, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio}


def run(n_segments: int = 100_000, samples: int = 200, posts_per_client: int = 400,
        baseline_segments: int = 1_000) -> list[dict[str, Any]]:
    """Run the benchmark; the figures as dicts (figure, value, unit, baseline, ratio)."""
    with bench_store() as store:
        return asyncio.run(measure(store, n_segments, baseline_segments, samples, posts_per_client))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--segments",
        type=int,
        default=100_000,
        help="segments loaded into the big Flow",
    )
    parser.add_argument(
        "--baseline-segments",
        type=int,
        default=1_000,
        help="segments loaded into the small Flow whose query latency is the baseline",
    )
    parser.add_argument("--samples", type=int, default=200, help="timed segment GETs per Flow")
    parser.add_argument(
        "--posts-per-client",
        type=int,
        default=400,
        help="single-segment POSTs per client (8 clients)",
    )
    args = parser.parse_args()
    if min(args.segments, args.baseline_segments) < 200 or args.samples < 1 or args.posts_per_client < 1:
        parser.error("--segments and --baseline-segments must be >= 200, --samples and --posts-per-client >= 1")
    print_table(run(args.segments, args.samples, args.posts_per_client, args.baseline_segments))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Benchmark of the local store: segment queries on a big Flow and segment POST throughput.

Starts ``python -m local_store`` on a free port with a temporary data dir, then:

1. loads one Flow with 100,000 segments (objects allocated through ``/storage`` in batches,
   segments registered with bulk list POSTs),
2. times ``GET /flows/{id}/segments?timerange=...&limit=100`` at random places in that Flow
   (median and p95; each answer carries presigned ``get_urls``),
3. measures single-segment POST throughput with 1 client (the baseline) and 8 concurrent
   clients, in the same run,
4. and again with 8 clients while a webhook receives every ``flows/segments_added`` event (a
   receiver in this process counts them; the figure waits until all have arrived): what event
   delivery costs the hot path (without webhooks it costs nothing: no event is even recorded).

Figures only; nothing here asserts a time. ``run()`` returns the figures as a list of
``{"figure", "value", "unit", "baseline", "ratio"}`` dicts for ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

REPO_ROOT = Path(__file__).resolve().parent.parent
ADMIN = {"client_id": "bench-admin", "client_secret": "bench-secret"}
NS = 1_000_000_000
SEGMENT_NS = 2 * NS  # 2-second segments


def start_store(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    clients = data_dir.parent / "clients.json"
    clients.write_text(
        '[{"client_id": "bench-admin", "client_secret": "bench-secret", '
        '"scopes": ["tams-api/read", "tams-api/write", "tams-api/delete", "tams-api/admin"], "groups": []}]'
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "local_store", "--port", "0", "--data-dir", str(data_dir),
         "--clients-file", str(clients), "--log-level", "WARNING"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()
    if not line.startswith("TAMS store at "):
        process.kill()
        raise RuntimeError(f"store did not start: {line!r}")
    return process, line.removeprefix("TAMS store at ")


async def get_token(session: aiohttp.ClientSession, url: str) -> dict[str, str]:
    async with session.post(
        url + "/oauth2/token",
        data={"grant_type": "client_credentials", **ADMIN},
    ) as response:
        response.raise_for_status()
        token = (await response.json())["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def make_flow(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> str:
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
    async with session.put(f"{url}/flows/{flow_id}", json=flow, headers=headers) as response:
        assert response.status == 201, await response.text()
    return flow_id


async def allocate(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    flow_id: str,
    n: int,
) -> list[str]:
    ids: list[str] = []
    while len(ids) < n:
        batch = min(1000, n - len(ids))
        async with session.post(f"{url}/flows/{flow_id}/storage", json={"limit": batch}, headers=headers) as response:
            assert response.status == 201, await response.text()
            ids += [m["object_id"] for m in (await response.json())["media_objects"]]
    return ids


def segment(object_id: str, index: int) -> dict[str, str]:
    start = index * SEGMENT_NS
    end = start + SEGMENT_NS
    return {
        "object_id": object_id,
        "timerange": f"[{start // NS}:{start % NS}_{end // NS}:{end % NS})",
    }


async def load_segments(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    flow_id: str,
    n: int,
) -> float:
    object_ids = await allocate(session, url, headers, flow_id, n)
    started = time.perf_counter()
    for first in range(0, n, 1000):
        body = [segment(object_ids[i], i) for i in range(first, min(n, first + 1000))]
        async with session.post(f"{url}/flows/{flow_id}/segments", json=body, headers=headers) as response:
            assert response.status == 201, await response.text()
    return time.perf_counter() - started


async def time_queries(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    flow_id: str,
    n_segments: int,
    samples: int,
) -> list[float]:
    rng = random.Random(1)
    durations: list[float] = []
    for _ in range(samples):
        first = rng.randrange(0, n_segments - 100) * SEGMENT_NS + NS  # starts mid-segment
        last = first + 150 * SEGMENT_NS
        params = {
            "timerange": f"[{first // NS}:{first % NS}_{last // NS}:0)",
            "limit": "100",
        }
        started = time.perf_counter()
        async with session.get(f"{url}/flows/{flow_id}/segments", params=params, headers=headers) as response:
            body = await response.json()
        durations.append(time.perf_counter() - started)
        assert response.status == 200 and len(body) == 100, (response.status, len(body))
    return durations


async def post_throughput(url: str, headers: dict[str, str], clients: int, per_client: int) -> float:
    """Single-segment POSTs per second with ``clients`` concurrent sessions on one new Flow."""
    async with aiohttp.ClientSession() as setup:
        flow_id = await make_flow(setup, url, headers)
        object_ids = await allocate(setup, url, headers, flow_id, clients * per_client)

    async def client(k: int) -> None:
        async with aiohttp.ClientSession() as session:
            for j in range(per_client):
                index = j * clients + k
                async with session.post(
                    f"{url}/flows/{flow_id}/segments",
                    json=segment(object_ids[index], index),
                    headers=headers,
                ) as response:
                    assert response.status == 201, await response.text()

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return clients * per_client / (time.perf_counter() - started)


class Receiver:
    """A webhook receiver on a free port that counts the segments it is told about."""

    def __init__(self) -> None:
        self.segments = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.segments += len(body["event"]["segments"])
        return web.Response(status=200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def hooked_throughput(url: str, headers: dict[str, str], clients: int, per_client: int) -> float:
    """``post_throughput`` with a webhook on every segments_added; waits for every delivery."""
    receiver = Receiver()
    await receiver.start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{url}/service/webhooks",
                json={"url": receiver.url, "events": ["flows/segments_added"]},
                headers=headers,
            ) as response,
        ):
            assert response.status == 201, await response.text()
            webhook_id = (await response.json())["id"]
        rate = await post_throughput(url, headers, clients, per_client)
        deadline = time.monotonic() + 60
        while receiver.segments < clients * per_client:
            assert time.monotonic() < deadline, f"only {receiver.segments} segments were announced"
            await asyncio.sleep(0.05)
        async with (
            aiohttp.ClientSession() as session,
            session.delete(f"{url}/service/webhooks/{webhook_id}", headers=headers) as response,
        ):
            assert response.status == 204, await response.text()
        return rate
    finally:
        await receiver.stop()


async def measure(n_segments: int, samples: int, posts_per_client: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        process, url = start_store(Path(tmp) / "data")
        try:
            async with aiohttp.ClientSession() as session:
                headers = await get_token(session, url)
                flow_id = await make_flow(session, url, headers)
                load_seconds = await load_segments(session, url, headers, flow_id, n_segments)
                await time_queries(session, url, headers, flow_id, n_segments, 20)  # warm-up
                durations = await time_queries(session, url, headers, flow_id, n_segments, samples)
            single = await post_throughput(url, headers, 1, posts_per_client * 2)
            eight = await post_throughput(url, headers, 8, posts_per_client)
            hooked = await hooked_throughput(url, headers, 8, posts_per_client)
        finally:
            process.terminate()
            process.wait(timeout=10)
    ms = sorted(d * 1000 for d in durations)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    get = f"segment GET timerange+limit=100 on {n_segments} segments"
    return [
        figure(f"{get}, median", round(statistics.median(ms), 2), "ms"),
        figure(f"{get}, p95", round(p95, 2), "ms"),
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


def run(n_segments: int = 100_000, samples: int = 200, posts_per_client: int = 400) -> list[dict[str, Any]]:
    """Run the benchmark; the figures as dicts (figure, value, unit, baseline, ratio)."""
    return asyncio.run(measure(n_segments, samples, posts_per_client))


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max(len(r["figure"]) for r in rows)
    print(f"{'figure':<{width}}  {'value':>10}  {'unit':<11} {'baseline':>9}  {'ratio':>6}")
    for r in rows:
        baseline = "" if r["baseline"] is None else str(r["baseline"])
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"{r['figure']:<{width}}  {r['value']:>10}  {r['unit']:<11} {baseline:>9}  {ratio:>6}")


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
    parser.add_argument("--samples", type=int, default=200, help="timed segment GETs")
    parser.add_argument(
        "--posts-per-client",
        type=int,
        default=400,
        help="single-segment POSTs per client (8 clients)",
    )
    args = parser.parse_args()
    if args.segments < 200 or args.samples < 1 or args.posts_per_client < 1:
        parser.error("--segments must be >= 200, --samples and --posts-per-client >= 1")
    print_table(run(args.segments, args.samples, args.posts_per_client))


if __name__ == "__main__":
    main()

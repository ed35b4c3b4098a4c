#!/usr/bin/env python3
"""Benchmark of webhook delivery through the outbox: latency, throughput and replay after a crash.

Starts ``python -m local_store`` on a free port with a temporary data dir and a webhook receiver
in this process, then measures, each with its baseline from the same run:

1. **latency**: one client changes a Flow's label again and again, one change at a time; the
   figure is the time from sending the change to the event's arrival at the receiver (median
   and p95). Baseline: the time from sending the same change to its acknowledgement, so the
   ratio says how long after the writer hears "done" a listener hears of it.
2. **throughput**: 8 clients change 8 Flows at once; the figure is events delivered per second,
   until the last has arrived. Baseline: the rate of the changes themselves with no webhook
   registered (nothing recorded), so the ratio says whether delivery keeps up with the writes.
3. **replay after kill -9**: with the receiver refusing everything, changes are acknowledged
   (their events wait in the outbox), the store is killed with SIGKILL and restarted, the
   receiver recovers, and the figure is the rate at which the stored backlog is delivered after
   the restart (start-up included). Baseline: the live throughput of (2).

Every event is checked to arrive exactly once. Figures only; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from common import HookReceiver, RunningStore, bench_store, print_table  # noqa: E402

PATIENT = ["--webhook-backoff", "0.05", "--webhook-backoff-cap", "0.2", "--webhook-attempts", "100000"]


class Receiver(HookReceiver):
    """Records when each event (by the label it carries) arrives; can refuse everything."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: dict[str, float] = {}
        self.repeats = 0
        self.refusing = False

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.refusing:
            return web.Response(status=503)
        label = body.get("event", {}).get("flow", {}).get("label", "")
        if label in self.arrived:
            self.repeats += 1
        self.arrived.setdefault(label, time.perf_counter())
        return web.Response(status=200)


    async def wait_for(self, labels: list[str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not all(label in self.arrived for label in labels):
            missing = sum(label not in self.arrived for label in labels)
            assert time.monotonic() < deadline, f"{missing} events never arrived"
            await asyncio.sleep(0.005)


class Api:
    def __init__(self, session: aiohttp.ClientSession, store: RunningStore) -> None:
        self.session = session
        self.url = store.url
        self.headers = {"Authorization": aiohttp.encode_basic_auth(store.env["USERNAME"], store.env["PASSWORD"])}

    async def call(self, method: str, path: str, body: Any, expect: int) -> Any:
        async with self.session.request(method, self.url + path, json=body, headers=self.headers) as reply:
            assert reply.status == expect, (method, path, reply.status, await reply.text())
            return await reply.json() if reply.content_type == "application/json" else None

    async def new_flow(self) -> str:
        flow_id = str(uuid.uuid4())
        body = {"id": flow_id, "source_id": str(uuid.uuid4()), "format": "urn:x-nmos:format:data",
                "codec": "text/plain", "container": "text/plain", "essence_parameters": {}}  # fmt: skip
        await self.call("PUT", f"/flows/{flow_id}", body, 201)
        return flow_id

    async def relabel(self, flow_id: str, label: str) -> None:
        await self.call("PUT", f"/flows/{flow_id}/label", label, 204)

    async def watch(self, receiver: Receiver, flow_ids: list[str]) -> str:
        hook = {"url": receiver.url, "events": ["flows/updated"], "flow_ids": flow_ids}
        return (await self.call("POST", "/service/webhooks", hook, 201))["id"]


def percentile_95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def latency(api: Api, receiver: Receiver, samples: int) -> tuple[list[float], list[float]]:
    """(ms from sending a change to its event's arrival, ms from sending it to its acknowledgement)."""
    flow_id = await api.new_flow()
    await api.watch(receiver, [flow_id])
    event_ms: list[float] = []
    ack_ms: list[float] = []
    for n in range(samples):
        label = f"latency-{n}"
        sent = time.perf_counter()
        await api.relabel(flow_id, label)
        ack_ms.append((time.perf_counter() - sent) * 1000)
        await receiver.wait_for([label])
        event_ms.append((receiver.arrived[label] - sent) * 1000)
    return event_ms, ack_ms


async def changes(api: Api, flows: list[str], per_flow: int, prefix: str) -> tuple[list[str], float]:
    """Every Flow relabelled ``per_flow`` times, the Flows at once; (labels, seconds)."""

    async def one(flow_id: str, k: int) -> list[str]:
        made = []
        for n in range(per_flow):
            label = f"{prefix}-{k}-{n}"
            await api.relabel(flow_id, label)
            made.append(label)
        return made

    started = time.perf_counter()
    made = await asyncio.gather(*(one(flow_id, k) for k, flow_id in enumerate(flows)))
    return [label for labels in made for label in labels], time.perf_counter() - started


async def measure(store: RunningStore, samples: int, per_flow: int) -> list[dict[str, Any]]:
    receiver = Receiver()
    await receiver.start()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, store)
            event_ms, ack_ms = await latency(api, receiver, samples)

            unwatched = [await api.new_flow() for _ in range(8)]
            _, bare_seconds = await changes(api, unwatched, per_flow, "bare")
            bare_rate = 8 * per_flow / bare_seconds

            watched = [await api.new_flow() for _ in range(8)]
            await api.watch(receiver, watched)
            started = time.perf_counter()
            labels, _ = await changes(api, watched, per_flow, "live")
            await receiver.wait_for(labels)
            live_rate = len(labels) / (max(receiver.arrived[label] for label in labels) - started)

            receiver.refusing = True
            backlog, _ = await changes(api, watched, per_flow, "stored")
            store.kill()
            receiver.refusing = False
            restarted = time.perf_counter()
            store.restart()
            await receiver.wait_for(backlog)
            replay_rate = len(backlog) / (max(receiver.arrived[label] for label in backlog) - restarted)
            assert receiver.repeats <= 1, f"{receiver.repeats} events arrived twice"
    finally:
        await receiver.stop()
    median, median_base = statistics.median(event_ms), statistics.median(ack_ms)
    p95, p95_base = percentile_95(event_ms), percentile_95(ack_ms)
    return [
        figure("webhook latency, change sent to its event received, median", round(median, 2), "ms",
               baseline=round(median_base, 2), ratio=round(median / median_base, 2)),
        figure("webhook latency, p95", round(p95, 2), "ms", baseline=round(p95_base, 2), ratio=round(p95 / p95_base, 2)),
        figure("webhook throughput, 8 writers, events delivered", round(live_rate), "events/s",
               baseline=round(bare_rate), ratio=round(live_rate / bare_rate, 2)),
        figure(f"webhook replay of {len(backlog)} stored events after kill -9 (restart included)", round(replay_rate),
               "events/s", baseline=round(live_rate), ratio=round(replay_rate / live_rate, 2)),
    ]  # fmt: skip


def figure(name: str, value: float, unit: str, *, baseline: float | None = None, ratio: float | None = None) -> dict[str, Any]:
    return {"figure": name, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio}


def run(samples: int = 200, per_flow: int = 125, quick: bool = False) -> list[dict[str, Any]]:
    """Run the benchmark; the figures as dicts (figure, value, unit, baseline, ratio)."""
    if quick:
        samples, per_flow = 10, 5
    with bench_store(extra_args=PATIENT) as store:
        return asyncio.run(measure(store, samples, per_flow))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--samples", type=int, default=200, help="changes timed one at a time for the latency figures")
    parser.add_argument("--per-flow", type=int, default=125, help="changes per Flow (8 Flows) for the throughput figures")
    parser.add_argument("--quick", action="store_true", help="a smoke test: a few events of each kind")
    args = parser.parse_args()
    if args.samples < 1 or args.per_flow < 1:
        parser.error("--samples and --per-flow must be >= 1")
    print_table(run(args.samples, args.per_flow, args.quick))


if __name__ == "__main__":
    main()

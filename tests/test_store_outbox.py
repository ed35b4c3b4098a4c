"""Durable webhooks: the event of every acknowledged change is stored with the change (the
outbox) and delivered after a restart, a SIGTERM or a ``kill -9``: exactly once, in order, to a
real receiver on loopback. The one repeat the store allows (its README and ``events.py`` say so)
is the delivery in flight at the moment the store died.

The store runs with quick retries that never give up during a test (``--webhook-backoff 0.05
--webhook-backoff-cap 0.2 --webhook-attempts 10000``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from store_http import StoreHttp, basic_http, new_flow
from webhook_support import Receiver, wait_until

from tests.conftest import RunningStore

PATIENT = ["--webhook-backoff", "0.05", "--webhook-backoff-cap", "0.2", "--webhook-attempts", "10000", "--webhook-timeout", "5"]


def outbox_rows(store: RunningStore) -> int:
    """Events still kept in the outbox of a stopped store."""
    with sqlite3.connect(store.data_dir / "tams.sqlite3") as conn:
        return conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]


async def watch(api: StoreHttp, receiver: Receiver, path: str, flow_id: str) -> dict[str, Any]:
    body = {"url": receiver.url(path), "events": ["flows/updated"], "flow_ids": [flow_id]}
    reply = await api.call("POST", "/service/webhooks", json=body, status=201, schema="webhook-get.json")
    return reply.body


def labels(receiver: Receiver, path: str) -> list[str]:
    return [body["event"]["flow"]["label"] for body in receiver.got(path)]


async def relabel(api: StoreHttp, flow_id: str, names: list[str]) -> None:
    for name in names:
        await api.call("PUT", f"/flows/{flow_id}/label", json=name, status=204)


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
async def test_undelivered_events_are_delivered_after_a_restart_exactly_once(
    store_factory: Callable[..., RunningStore], receiver: Receiver, how: str
) -> None:
    store = store_factory(extra_args=PATIENT)
    path = "/down-then-up"
    async with basic_http(store) as api:
        flow = new_flow()
        await api.put_flow(flow, status=201)
        await watch(api, receiver, path, flow["id"])
        await relabel(api, flow["id"], ["before"])
        await wait_until(lambda: labels(receiver, path) == ["before"])
        # The receiver goes down; changes go on being acknowledged.
        receiver.always_fail.add(path)
        names = [f"while-down-{n}" for n in range(25)]
        await relabel(api, flow["id"], names)
        await wait_until(lambda: receiver.attempts[path] >= 3)  # the store is retrying
        if how == "kill -9":
            store.kill()
        else:
            store.stop()
        receiver.always_fail.discard(path)
        store.restart()
        await wait_until(lambda: len(labels(receiver, path)) >= 1 + len(names))
        await relabel(api, flow["id"], ["after"])
        await wait_until(lambda: labels(receiver, path)[-1:] == ["after"])
    assert labels(receiver, path) == ["before", *names, "after"]
    sequence = [int(d.headers["X-TAMS-Event-Sequence"]) for d in receiver.deliveries]
    assert sequence == sorted(set(sequence)), "one sequence number per event, in commit order"
    store.stop()
    assert outbox_rows(store) == 0, "delivered events are pruned"


async def test_a_kill_mid_delivery_repeats_only_the_event_in_flight(
    store_factory: Callable[..., RunningStore], receiver: Receiver
) -> None:
    store = store_factory(extra_args=PATIENT)
    path = "/stalls"
    in_flight = asyncio.Event()
    stall_once = {"third"}

    async def stall(_path: str, body: dict[str, Any]) -> None:
        label = body["event"]["flow"]["label"]
        if label in stall_once:
            stall_once.discard(label)
            in_flight.set()
            await asyncio.sleep(1.0)  # the store dies meanwhile; this POST is then answered 200

    receiver.before_answer = stall
    names = ["first", "second", "third", "fourth", "fifth"]
    async with basic_http(store) as api:
        flow = new_flow()
        await api.put_flow(flow, status=201)
        await watch(api, receiver, path, flow["id"])
        await relabel(api, flow["id"], names)
        await asyncio.wait_for(in_flight.wait(), 10)
        store.kill()
        await asyncio.sleep(1.2)  # the stalled POST completes at the receiver
        store.restart()
        await wait_until(lambda: labels(receiver, path)[-1:] == ["fifth"])
        await asyncio.sleep(0.5)
    assert labels(receiver, path) == ["first", "second", "third", "third", "fourth", "fifth"]
    repeats = [d.headers["X-TAMS-Event-Sequence"] for d in receiver.deliveries if d.body["event"]["flow"]["label"] == "third"]
    assert len(set(repeats)) == 1, "the repeat carries the same sequence number"


async def test_refused_writes_store_no_event(store_factory: Callable[..., RunningStore], receiver: Receiver) -> None:
    store = store_factory(extra_args=PATIENT)
    path = "/refused"
    async with basic_http(store) as api:
        flow = new_flow()
        await api.put_flow(flow, status=201)
        await watch(api, receiver, path, flow["id"])
        receiver.always_fail.add(path)  # nothing is delivered: whatever is stored stays stored
        await api.call("PUT", f"/flows/{flow['id']}/read_only", json=True, status=204)
        await api.call("PUT", f"/flows/{flow['id']}/label", json="refused", status=403)
        await api.call("PUT", f"/flows/{flow['id']}", json={**flow, "label": "refused too"}, status=403)
        store.kill()
        assert outbox_rows(store) == 1, "only the read_only change is stored"
        receiver.always_fail.discard(path)
        store.restart()
        await wait_until(lambda: len(receiver.got(path)) == 1)
        await asyncio.sleep(0.5)
    (only,) = receiver.got(path)
    assert only["event"]["flow"]["read_only"] is True
    store.stop()


async def test_events_a_webhook_passes_over_do_not_pile_up(store_factory: Callable[..., RunningStore], receiver: Receiver) -> None:
    store = store_factory(extra_args=PATIENT)
    async with basic_http(store) as api:
        watched, busy = new_flow(), new_flow()
        for flow in (watched, busy):
            await api.put_flow(flow, status=201)
        await watch(api, receiver, "/quiet", watched["id"])
        await watch(api, receiver, "/busy", busy["id"])
        await relabel(api, busy["id"], [f"busy-{n}" for n in range(20)])
        await wait_until(lambda: len(receiver.got("/busy")) == 20)
        await asyncio.sleep(1.5)  # the quiet webhook's passing over is stored a moment later
    store.stop()
    assert receiver.got("/quiet") == []
    assert outbox_rows(store) == 0

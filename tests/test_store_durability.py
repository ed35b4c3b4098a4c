"""Durability and concurrency: acknowledged writes survive ``kill -9`` and a restart on the same
data dir, and concurrent segment POSTs to one Flow are each either recorded or refused."""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
from collections.abc import Callable

import aiohttp
import pytest
from store_http import StoreHttp, basic_header, new_flow

from tests.conftest import RunningStore


def api_for(session: aiohttp.ClientSession, store: RunningStore) -> StoreHttp:
    return StoreHttp(session, store.url, basic_header(store.username, store.password))


async def test_acknowledged_writes_survive_kill_9(
    store_factory: Callable[..., RunningStore],
) -> None:
    store = store_factory()
    async with aiohttp.ClientSession() as session:
        api = api_for(session, store)
        token = (
            await api.call(
                "POST",
                "/oauth2/token",
                data={"grant_type": "client_credentials"},
                headers=basic_header("test-admin", "test-admin-secret"),
                status=200,
                schema={"type": "object"},
            )
        ).body["access_token"]
        backend = (await api.call("GET", "/service/storage-backends", schema="storage-backends-list.json")).body
        flow = new_flow()
        await api.put_flow(flow, status=201)
        fid = flow["id"]
        objects = await api.allocate(fid, limit=200)
        (media,) = objects[:1]
        await api.call(
            "PUT",
            media["put_url"]["url"],
            data=b"durable bytes",
            headers={"Content-Type": "video/mp2t"},
            status=201,
        )
        acknowledged: list[str] = []
        stop = asyncio.Event()

        async def writer(k: int) -> None:
            # Keep POSTing until the store dies; remember every 201.
            for index in range(k, len(objects), 4):
                if stop.is_set():
                    return
                segment = {
                    "object_id": objects[index]["object_id"],
                    "timerange": f"[{index}:0_{index + 1}:0)",
                }
                try:
                    reply = await api.call(
                        "POST",
                        f"/flows/{fid}/segments",
                        json=segment,
                        schema="flow-segment-bulk-failure.json",
                    )
                except aiohttp.ClientError:
                    return
                if reply.status == 201:
                    acknowledged.append(segment["timerange"])

        async def killer() -> None:
            while len(acknowledged) < 60:
                await asyncio.sleep(0.005)
            store.process.send_signal(signal.SIGKILL)
            stop.set()

        await asyncio.gather(killer(), *(writer(k) for k in range(4)))
        store.kill()  # reaps the process
        assert len(acknowledged) >= 60
        store.restart()

        stored = []
        reply = await api.segments(fid, limit="1000")
        stored = [s["timerange"] for s in reply.body]
        assert set(acknowledged) <= set(stored)
        body = await api.get_flow_with_timerange(fid)
        first, last = stored[0], stored[-1]
        assert body["timerange"] == f"{first.split('_')[0]}_{last.split('_')[1]}"
        # Objects, keys, tokens and the backend id carried over.
        (segment,) = (await api.segments(fid, object_id=media["object_id"], presigned="true")).body
        await api.call("GET", segment["get_urls"][0]["url"], status=200)
        assert (await api.call("GET", segment["get_urls"][0]["url"])).raw == b"durable bytes"
        after = (await api.call("GET", "/service/storage-backends", schema="storage-backends-list.json")).body
        assert after[0]["id"] == backend[0]["id"]
        await api.call(
            "GET",
            "/flows",
            headers={"Authorization": f"Bearer {token}"},
            status=200,
            items="flow-get.json",
        )
        assert not list((store.data_dir / "tmp").iterdir())  # no half-written upload left behind


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_stop_signal_exits_cleanly_and_keeps_writes(
    store_factory: Callable[..., RunningStore],
    stop_signal: signal.Signals,
) -> None:
    store = store_factory()
    async with aiohttp.ClientSession() as session:
        api = api_for(session, store)
        flow = new_flow()
        await api.put_flow(flow, status=201)
        (media,) = await api.allocate(flow["id"])
        await api.call("PUT", media["put_url"]["url"], data=b"kept", headers={"Content-Type": "video/mp2t"}, status=201)
        await api.post_segments(flow["id"], {"object_id": media["object_id"], "timerange": "[0:0_2:0)"})
        store.process.send_signal(stop_signal)
        assert store.process.wait(timeout=10) == 0
        assert "Traceback" not in store.log_text()
        store.restart()
        api = api_for(session, store)
        await api.call("GET", f"/flows/{flow['id']}", status=200, schema="flow-get.json")
        (segment,) = (await api.segments(flow["id"], presigned="true")).body
        assert (segment["object_id"], segment["timerange"]) == (media["object_id"], "[0:0_2:0)")
        assert (await api.call("GET", segment["get_urls"][0]["url"], status=200)).raw == b"kept"


async def test_concurrent_overlapping_posts_are_each_recorded_or_refused(
    shared_store: RunningStore,
) -> None:
    rng = random.Random(11)
    async with aiohttp.ClientSession() as session:
        api = api_for(session, shared_store)
        flow = new_flow()
        await api.put_flow(flow, status=201)
        fid = flow["id"]
        objects = [o["object_id"] for o in await api.allocate(fid, limit=120)]
        # Random 1-4 s segments on a 0-100 s timeline: many overlap each other.
        candidates = []
        for object_id in objects:
            start = rng.randrange(0, 100_000) * 1_000_000
            length = rng.randrange(1, 5) * 1_000_000_000
            end = start + length
            timerange = f"[{start // 10**9}:{start % 10**9}_{end // 10**9}:{end % 10**9})"
            candidates.append((object_id, start, end, timerange))

        async def post(candidate: tuple[str, int, int, str]) -> int:
            object_id, _, _, timerange = candidate
            reply = await api.call(
                "POST",
                f"/flows/{fid}/segments",
                json={"object_id": object_id, "timerange": timerange},
                schema="flow-segment-bulk-failure.json",
            )
            assert reply.status in (201, 400), reply.raw
            if reply.status == 400:
                assert reply.body["type"] == "SegmentOverlap"
            return reply.status

        results = await asyncio.gather(*(post(c) for c in candidates))
        accepted = sorted(
            (c for c, status in zip(candidates, results, strict=True) if status == 201),
            key=lambda c: c[1],
        )
        assert 0 < len(accepted) < len(candidates)
        stored = (await api.segments(fid, limit="1000")).body
        assert [s["object_id"] for s in stored] == [c[0] for c in accepted]
        for earlier, later in itertools.pairwise(accepted):
            assert earlier[2] <= later[1]  # recorded segments never overlap
        # Every refused one really overlapped something recorded.
        for candidate, status in zip(candidates, results, strict=True):
            if status == 400:
                assert any(a[1] < candidate[2] and candidate[1] < a[2] for a in accepted)
        body = await api.get_flow_with_timerange(fid)
        assert body["timerange"] == f"{accepted[0][3].split('_')[0]}_{accepted[-1][3].split('_')[1]}"

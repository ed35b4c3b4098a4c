"""Garbage collection of media objects (``--gc-grace``, ``--gc-interval``), with a 1 s grace.

Checked on a real store: objects allocated but never registered, and objects no segment
references any more (after Flow and segment deletes), are removed from disk and from the
database after the grace period; objects a segment references are never removed, including an
object referenced again during its grace period and one shared with another Flow; a segment POST
racing the sweep either registers the object (which is then kept, bytes and all) or is refused
(and the object is gone: no segment ever points at missing bytes); an upload to a collected
object is refused; a restart finishes file removals and removes stray files; ``/service``
advertises ``min_object_timeout`` no lower than the spec's 300 s.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from store_http import StoreHttp, basic_header, basic_http, new_flow

from tests.conftest import REPO_ROOT, RunningStore, start_store

GRACE = 1.0
INTERVAL = 0.2
SETTLE = GRACE + 3 * INTERVAL + 0.2  # long enough for any object past its grace to be swept


@pytest.fixture(scope="module")
def gc_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStore]:
    store = start_store(tmp_path_factory.mktemp("gc-store") / "data", gc_grace=GRACE, gc_interval=INTERVAL)
    yield store
    store.stop()


@pytest.fixture
async def api(gc_store: RunningStore) -> AsyncIterator[StoreHttp]:
    async with basic_http(gc_store) as api:
        yield api


def object_file(store: RunningStore, object_id: str) -> Path:
    digest = hashlib.sha256(object_id.encode()).hexdigest()
    return store.data_dir / "objects" / digest[:2] / digest


async def upload(api: StoreHttp, target: dict[str, Any], data: bytes) -> None:
    put_url = target["put_url"]
    await api.call("PUT", put_url["url"], data=data, headers={"Content-Type": put_url["content-type"]}, status=201)


async def uploaded_objects(api: StoreHttp, flow_id: str, count: int) -> list[str]:
    targets = await api.allocate(flow_id, limit=count)
    for target in targets:
        await upload(api, target, f"bytes of {target['object_id']}".encode())
    return [t["object_id"] for t in targets]


async def flow_with_objects(api: StoreHttp, count: int) -> tuple[dict[str, Any], list[str]]:
    flow = new_flow()
    await api.put_flow(flow, status=201)
    return flow, await uploaded_objects(api, flow["id"], count)


async def register(api: StoreHttp, flow_id: str, object_id: str, timerange: str, status: int = 201, **fields: Any):
    return await api.post_segments(flow_id, {"object_id": object_id, "timerange": timerange, **fields}, status=status)


def object_path(object_id: str) -> str:
    return "/objects/" + urllib.parse.quote(object_id, safe="")  # ids may hold "/"


async def assert_kept(api: StoreHttp, store: RunningStore, object_id: str, flows: set[str]) -> None:
    obj = (await api.call("GET", object_path(object_id), status=200, schema="object.json")).body
    assert set(obj["referenced_by_flows"]) == flows
    assert object_file(store, object_id).is_file()
    plain = next(u["url"] for u in obj["get_urls"] if u["presigned"])
    data = await api.call("GET", plain, headers={"Authorization": ""}, status=200)
    assert data.raw == f"bytes of {object_id}".encode()


async def assert_removed(api: StoreHttp, store: RunningStore, object_id: str) -> None:
    """Gone from the API and the disk (allowing a loaded machine a little lag past SETTLE)."""
    deadline = time.monotonic() + 3
    while (await api.call("GET", object_path(object_id), status=(200, 404), schema="object.json")).status != 404:
        assert time.monotonic() < deadline, f"object {object_id} was not removed"
        await asyncio.sleep(0.1)
    assert not object_file(store, object_id).exists()


async def test_service_advertises_a_timeout_no_lower_than_the_spec_allows(
    api: StoreHttp, store_factory: Callable[..., RunningStore]
) -> None:
    body = (await api.call("GET", "/service", status=200, schema="service.json")).body
    assert body["min_object_timeout"] == "300:0"  # --gc-grace 1 is for tests; the spec's floor is 300
    assert body["min_presigned_url_timeout"] == "300:0"
    odd = store_factory(gc_grace=450.5)
    async with aiohttp.ClientSession() as session:
        other = StoreHttp(session, odd.url, basic_header(odd.username, odd.password))
        body = (await other.call("GET", "/service", status=200, schema="service.json")).body
    assert body["min_object_timeout"] == "450:500000000"
    for bad in (["--gc-grace", "0"], ["--gc-grace", "nan"], ["--gc-interval", "-1"], ["--gc-grace", "soon"]):
        done = subprocess.run([sys.executable, "-m", "local_store", "--port", "0", *bad], cwd=REPO_ROOT, capture_output=True, timeout=30)
        assert done.returncode != 0 and b"Traceback" not in done.stderr, (bad, done.stderr[-300:])


async def test_unregistered_objects_go_after_the_grace_and_registered_ones_stay(api: StoreHttp, gc_store: RunningStore) -> None:
    flow, (kept, orphan_a, orphan_b) = await flow_with_objects(api, 3)
    (never_uploaded,) = [t["object_id"] for t in await api.allocate(flow["id"], limit=1)]
    await register(api, flow["id"], kept, "[0:0_1:0)")
    assert object_file(gc_store, orphan_a).is_file() and object_file(gc_store, orphan_b).is_file()
    await asyncio.sleep(SETTLE)
    for orphan in (orphan_a, orphan_b, never_uploaded):
        await assert_removed(api, gc_store, orphan)
    await assert_kept(api, gc_store, kept, {flow["id"]})
    # A segment naming a collected object is refused: its bytes are gone.
    reply = await register(api, flow["id"], orphan_a, "[1:0_2:0)", status=400)
    assert "garbage collection" in reply.body["summary"]
    segments = await api.segments(flow["id"])
    assert [s["object_id"] for s in segments.body] == [kept]


async def test_unreferenced_objects_go_after_deletes_but_shared_ones_stay(api: StoreHttp, gc_store: RunningStore) -> None:
    flow_a, (shared, only_a, init) = await flow_with_objects(api, 3)
    flow_b = new_flow()
    await api.put_flow(flow_b, status=201)
    await register(api, flow_a["id"], shared, "[0:0_1:0)")
    await register(api, flow_a["id"], only_a, "[1:0_2:0)", init_object_id=init)
    await register(api, flow_b["id"], shared, "[10:0_11:0)", ts_offset="10:0")
    await api.call("DELETE", f"/flows/{flow_a['id']}", status=204)
    await asyncio.sleep(SETTLE)
    await assert_removed(api, gc_store, only_a)
    await assert_kept(api, gc_store, shared, {flow_b["id"]})
    # The init object was referenced by only_a until only_a went: its grace starts then.
    await api.call("GET", f"/objects/{init}", status=200, schema="object.json")
    await asyncio.sleep(SETTLE)
    await assert_removed(api, gc_store, init)
    await api.call("DELETE", f"/flows/{flow_b['id']}/segments", status=204)
    await asyncio.sleep(SETTLE)
    await assert_removed(api, gc_store, shared)


async def test_an_object_referenced_again_during_its_grace_is_kept(api: StoreHttp, gc_store: RunningStore) -> None:
    flow_a, (reused, init) = await flow_with_objects(api, 2)
    flow_b = new_flow()
    await api.put_flow(flow_b, status=201)
    await register(api, flow_a["id"], reused, "[0:0_2:0)", init_object_id=init)
    await api.call("DELETE", f"/flows/{flow_a['id']}/segments", status=204)
    await asyncio.sleep(GRACE / 3)  # part way through the grace period
    await register(api, flow_b["id"], reused, "[0:0_1:0)", init_object_id=init)
    await asyncio.sleep(SETTLE + GRACE)
    await assert_kept(api, gc_store, reused, {flow_b["id"]})
    await assert_kept(api, gc_store, init, {flow_b["id"]})
    # Unreferenced once more: the grace period starts again, and then it goes.
    await api.call("DELETE", f"/flows/{flow_b['id']}", status=204)
    await asyncio.sleep(SETTLE)
    await assert_removed(api, gc_store, reused)


async def test_segment_posts_racing_the_sweep_never_leave_a_segment_without_bytes(api: StoreHttp, gc_store: RunningStore) -> None:
    flow, objects = await flow_with_objects(api, 36)
    uploaded_at = time.monotonic()  # when the last object's upload finished
    # Uploaded in this order, so the "early" ones are the youngest and the "late" the oldest.
    late, boundary, early = objects[:8], objects[8:28], objects[28:]

    async def post_at(delay: float, index: int, object_id: str) -> tuple[str, int, Any]:
        await asyncio.sleep(max(0.0, uploaded_at + delay - time.monotonic()))
        reply = await api.post_segments(flow["id"], {"object_id": object_id, "timerange": f"[{index}:0_{index + 1}:0)"}, status=(201, 400))
        return object_id, reply.status, reply.body

    jobs = [post_at(0.1, i, oid) for i, oid in enumerate(early)]
    # Around the deadline: a POST every 40 ms from before the grace ends to after a sweep ran.
    jobs += [post_at(GRACE - 0.2 + 0.04 * i, 100 + i, oid) for i, oid in enumerate(boundary)]
    results = await asyncio.gather(*jobs)
    # Long past the grace, in one bulk POST: every one refused in failed_segments.
    bulk = [{"object_id": oid, "timerange": f"[{200 + i}:0_{201 + i}:0)"} for i, oid in enumerate(late)]
    await asyncio.sleep(max(0.0, uploaded_at + SETTLE - time.monotonic()))
    reply = await api.post_segments(flow["id"], bulk, status=200)
    assert sorted(f["object_id"] for f in reply.body["failed_segments"]) == sorted(late)
    assert all("garbage collection" in f["error"]["summary"] for f in reply.body["failed_segments"])

    assert all(status == 201 for oid, status, _ in results if oid in early)
    accepted = {oid for oid, status, _ in results if status == 201}
    refused = {oid for oid, status, _ in results if status == 400}
    assert all("garbage collection" in body["summary"] for oid, status, body in results if status == 400)
    await asyncio.sleep(SETTLE)  # any sweep that could wrongly take an accepted object has run
    stored = {s["object_id"] for s in (await api.segments(flow["id"], limit="1000")).body}
    assert stored == accepted
    for object_id in accepted:
        await assert_kept(api, gc_store, object_id, {flow["id"]})
    for object_id in refused | set(late):
        await assert_removed(api, gc_store, object_id)


async def test_uploads_to_collected_objects_are_refused_and_ids_can_be_allocated_again(api: StoreHttp, gc_store: RunningStore) -> None:
    flow = new_flow()
    await api.put_flow(flow, status=201)
    chosen = f"client-chosen/{uuid.uuid4()}"
    (target,) = await api.allocate(flow["id"], limit=None, object_ids=[chosen])
    await asyncio.sleep(SETTLE)
    put_url = target["put_url"]
    await api.call("PUT", put_url["url"], data=b"late", headers={"Content-Type": put_url["content-type"]}, status=404)
    assert not object_file(gc_store, chosen).exists()
    await register(api, flow["id"], chosen, "[0:0_1:0)", status=400)
    # A client-chosen id that was collected may be allocated afresh, and then used.
    (again,) = await api.allocate(flow["id"], limit=None, object_ids=[chosen])
    await upload(api, again, f"bytes of {chosen}".encode())
    await register(api, flow["id"], chosen, "[0:0_1:0)")
    await asyncio.sleep(SETTLE)
    await assert_kept(api, gc_store, chosen, {flow["id"]})


async def test_a_restart_removes_stray_files_but_not_young_ones(store_factory: Callable[..., RunningStore]) -> None:
    store = store_factory(gc_grace=GRACE, gc_interval=INTERVAL)
    async with aiohttp.ClientSession() as session:
        api = StoreHttp(session, store.url, basic_header(store.username, store.password))
        flow, (kept,) = await flow_with_objects(api, 1)
        await register(api, flow["id"], kept, "[0:0_1:0)")
    store.stop()
    stray, young = object_file(store, "left by a crash"), object_file(store, "written just now")
    for path in (stray, young):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"orphan")
    old = time.time() - 3600
    os.utime(stray, (old, old))
    store.restart()
    deadline = time.monotonic() + 10
    while stray.exists():
        assert time.monotonic() < deadline, "the stray file was not removed after the restart"
        await asyncio.sleep(0.1)
    assert young.exists()  # younger than the grace period: perhaps an upload in flight
    assert object_file(store, kept).is_file()

"""Faults and distance on purpose: ``--fault-rate`` answers a seeded fraction of requests 503
(before doing any work), ``--latency-ms`` delays every answer."""

from __future__ import annotations

import time
from collections.abc import Callable

import aiohttp
from store_http import TOKEN_SCHEMA, StoreHttp, basic_header, new_flow

from tests.conftest import RunningStore


async def statuses(http: StoreHttp, n: int, path: str = "/service") -> list[int]:
    result = []
    for _ in range(n):
        reply = await http.call("GET", path, schema="service.json")
        if reply.status == 503:
            assert reply.headers["Retry-After"] == "0"
            assert reply.body["type"] == "ServiceUnavailable"
        result.append(reply.status)
    return result


async def test_fault_rate_answers_a_seeded_fraction_with_503(
    store_factory: Callable[..., RunningStore],
) -> None:
    first = store_factory(fault_rate=0.3, fault_seed=7)
    second = store_factory(fault_rate=0.3, fault_seed=7)
    async with aiohttp.ClientSession() as session:
        a = StoreHttp(session, first.url, basic_header(first.username, first.password))
        b = StoreHttp(session, second.url, basic_header(second.username, second.password))
        pattern_a = await statuses(a, 300)
        pattern_b = await statuses(b, 300)
        assert set(pattern_a) == {200, 503}
        assert 0.2 <= pattern_a.count(503) / 300 <= 0.4
        assert pattern_a == pattern_b  # the same seed picks the same requests
        # The token endpoint and the JWKS are never faulted, so token tests stay deterministic.
        for _ in range(40):
            await a.call(
                "POST",
                "/oauth2/token",
                data={"grant_type": "client_credentials"},
                headers=basic_header("test-admin", "test-admin-secret"),
                status=200,
                schema=TOKEN_SCHEMA,
            )
            await a.call("GET", "/.well-known/jwks.json", status=200, schema={"type": "object"})


async def test_faulted_requests_do_no_work(
    store_factory: Callable[..., RunningStore],
) -> None:
    store = store_factory(fault_rate=0.5, fault_seed=3)
    async with aiohttp.ClientSession() as session:
        api = StoreHttp(session, store.url, basic_header(store.username, store.password))

        async def until_not_503(method: str, path: str, **kwargs: object) -> int:
            while True:
                reply = await api.call(method, path, **kwargs)  # type: ignore[arg-type]
                if reply.status != 503:
                    return reply.status

        outcomes: dict[str, int] = {}
        for _ in range(30):
            flow = new_flow()
            reply = await api.call("PUT", f"/flows/{flow['id']}", json=flow, schema="flow-get.json")
            outcomes[flow["id"]] = reply.status
        assert set(outcomes.values()) == {201, 503}
        for flow_id, status in outcomes.items():
            found = await until_not_503("GET", f"/flows/{flow_id}", schema="flow-get.json")
            assert found == (200 if status == 201 else 404)
        # Media requests are faulted too, and a faulted upload stores nothing.
        flow = new_flow()
        while (await api.call("PUT", f"/flows/{flow['id']}", json=flow, schema="flow-get.json")).status == 503:
            pass
        objects: list[dict[str, object]] = []
        while not objects:
            reply = await api.call(
                "POST",
                f"/flows/{flow['id']}/storage",
                json={"limit": 20},
                schema="flow-storage.json",
            )
            objects = reply.body["media_objects"] if reply.status == 201 else []
        upload_statuses = []
        for obj in objects:
            url = obj["put_url"]["url"]  # type: ignore[index]
            reply = await api.call(
                "PUT",
                url,
                data=b"payload",
                headers={"Content-Type": "video/mp2t", "Authorization": ""},
            )
            upload_statuses.append(reply.status)
        assert set(upload_statuses) == {201, 503}
        stored = sum(1 for _ in (store.data_dir / "objects").rglob("*") if _.is_file())
        assert stored == upload_statuses.count(201)


async def test_latency_delays_every_answer(
    store_factory: Callable[..., RunningStore],
) -> None:
    store = store_factory(latency_ms=150)
    async with aiohttp.ClientSession() as session:
        http = StoreHttp(session, store.url, basic_header(store.username, store.password))
        for path in ("/service", "/nowhere"):
            started = time.monotonic()
            reply = await http.call("GET", path, schema="service.json")
            assert reply.status in (200, 404)
            assert time.monotonic() - started >= 0.15
        started = time.monotonic()
        await http.call(
            "POST",
            "/oauth2/token",
            data={"grant_type": "client_credentials"},
            headers=basic_header("test-admin", "test-admin-secret"),
            status=200,
            schema=TOKEN_SCHEMA,
        )
        assert time.monotonic() - started >= 0.15

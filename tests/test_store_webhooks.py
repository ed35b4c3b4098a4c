"""Webhooks of the local store, delivered for real: a small aiohttp receiver in the test (on a
free port) records every POST the store makes.

Checked: every event type arrives, with a body that matches the spec's ``webhooks`` schema for
it and the registered API key header; events arrive in order per Flow; every filter and
``get_urls`` transformation; a receiver that fails is retried with backoff, and one that keeps
failing gets the webhook marked ``error`` (and a PUT re-enables it); a receiver that takes 2 s
per event does not slow the requests that cause the events; and the webhook routes' CRUD,
listing, visibility and bad input (a URL that is not http(s) is refused, nothing changes).

The store runs with quick retries (``--webhook-backoff 0.05 --webhook-attempts 4``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from store_http import StoreHttp, basic_header, basic_http, new_flow
from test_store_conformance import validate_spec, webhook_event_schema
from webhook_support import Receiver, wait_until

from tests.conftest import DEFAULT_CLIENTS, RunningStore, start_store

ALL_EVENTS = [
    "flows/created",
    "flows/updated",
    "flows/deleted",
    "flows/segments_added",
    "flows/segments_deleted",
    "sources/created",
    "sources/updated",
    "sources/deleted",
]
WRITER = {
    "client_id": "test-writer",
    "client_secret": "test-writer-secret",
    "scopes": ["tams-api/read", "tams-api/write"],
    "groups": [],
}


@pytest.fixture(scope="module")
def hook_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStore]:
    store = start_store(
        tmp_path_factory.mktemp("hook-store") / "data",
        clients=[*DEFAULT_CLIENTS, WRITER],
        extra_args=["--webhook-backoff", "0.05", "--webhook-attempts", "4", "--webhook-timeout", "5"],
    )
    yield store
    store.stop()


@pytest.fixture
async def api(hook_store: RunningStore) -> AsyncIterator[StoreHttp]:
    async with basic_http(hook_store) as api:
        yield api


@pytest.fixture
async def hooks(api: StoreHttp) -> AsyncIterator[Callable[..., Awaitable[dict[str, Any]]]]:
    """``await hooks(url=..., events=..., **options)`` registers a webhook, removed afterwards."""
    made: list[str] = []

    async def register(**body: Any) -> dict[str, Any]:
        body.setdefault("events", ALL_EVENTS)
        reply = await api.call("POST", "/service/webhooks", json=body, status=201, schema="webhook-get.json")
        made.append(reply.body["id"])
        return reply.body

    yield register
    for webhook_id in made:
        await api.call("DELETE", f"/service/webhooks/{webhook_id}", status=(204, 404))


async def add_segments(api: StoreHttp, flow_id: str, *timeranges: str) -> list[str]:
    objects = await api.allocate(flow_id, limit=len(timeranges))
    ids = [o["object_id"] for o in objects]
    for object_id, timerange in zip(ids, timeranges, strict=True):
        await api.post_segments(flow_id, {"object_id": object_id, "timerange": timerange})
    return ids


def check_event_bodies(bodies: list[dict[str, Any]]) -> None:
    for body in bodies:
        validate_spec(body, webhook_event_schema(body["event_type"]))


# --- delivery ----------------------------------------------------------------------------------------


async def test_every_event_type_arrives_with_spec_bodies_and_the_api_key(
    api: StoreHttp, receiver: Receiver, hooks: Callable[..., Awaitable[dict[str, Any]]]
) -> None:
    flow = new_flow()
    path = "/all-events"
    await hooks(
        url=receiver.url(path),
        api_key_name="X-Hook-Key",
        api_key_value="hook-secret-1",
        flow_ids=[flow["id"]],
        source_ids=[flow["source_id"]],
    )
    await api.put_flow(flow, status=201)
    await add_segments(api, flow["id"], "[0:0_1:0)")
    # A bulk POST that partly fails announces only the segments it stored.
    good, clash = (o["object_id"] for o in await api.allocate(flow["id"], limit=2))
    bulk = [{"object_id": good, "timerange": "[1:0_2:0)"}, {"object_id": clash, "timerange": "[0:0_1:0)"}]
    partial = await api.post_segments(flow["id"], bulk, status=200)
    assert [f["object_id"] for f in partial.body["failed_segments"]] == [clash]
    await api.post_segments(flow["id"], {"object_id": clash, "timerange": "[0:500000000_3:0)"}, status=400)
    await api.call("PUT", f"/flows/{flow['id']}/label", json="relabelled", status=204)
    await api.call("PUT", f"/sources/{flow['source_id']}/tags/show", json="evening", status=204)
    await api.call("DELETE", f"/flows/{flow['id']}/segments", params={"timerange": "[0:0_1:0)"}, status=204)
    await api.call("DELETE", f"/flows/{flow['id']}", status=204)

    expected = [
        "sources/created",
        "flows/created",
        "flows/segments_added",
        "flows/segments_added",
        "flows/updated",
        "sources/updated",
        "flows/segments_deleted",
        "flows/deleted",
        "sources/deleted",  # the Source goes with its last Flow
    ]
    await wait_until(lambda: len(receiver.got(path)) >= len(expected))
    await asyncio.sleep(0.2)  # nothing more may arrive
    bodies = receiver.got(path)
    assert [b["event_type"] for b in bodies] == expected
    assert set(ALL_EVENTS) == {b["event_type"] for b in bodies}
    check_event_bodies(bodies)
    deliveries = [d for d in receiver.deliveries if d.path == path]
    assert all(d.headers.get("X-Hook-Key") == "hook-secret-1" for d in deliveries)
    assert all("Authorization" not in d.headers for d in deliveries)
    created, added_1, added_2, updated = (b["event"] for b in bodies[1:5])
    assert created["flow"]["id"] == flow["id"] and created["flow"]["label"] == "test flow"
    assert [s["timerange"] for s in added_1["segments"] + added_2["segments"]] == ["[0:0_1:0)", "[1:0_2:0)"]
    assert added_1["segments"][0]["get_urls"], "segments_added carries get_urls by default"
    assert updated["flow"]["label"] == "relabelled"
    assert bodies[5]["event"]["source"]["tags"] == {"show": "evening"}
    assert bodies[6]["event"] == {"flow_id": flow["id"], "timerange": "[0:0_1:0)"}
    assert bodies[7]["event"] == {"flow_id": flow["id"]}
    assert bodies[8]["event"] == {"source_id": flow["source_id"]}
    await api.call("GET", f"/sources/{flow['source_id']}", status=404)
    webhook = (await api.call("GET", "/service/webhooks", status=200, items="webhook-get.json")).body
    assert {w["status"] for w in webhook if w["url"] == receiver.url(path)} == {"started"}


async def test_events_arrive_in_order_per_flow(api: StoreHttp, receiver: Receiver, hooks: Callable[..., Awaitable[dict[str, Any]]]) -> None:
    flows = [new_flow(), new_flow()]
    for flow in flows:
        await api.put_flow(flow, status=201)
    path = "/ordered"
    await hooks(url=receiver.url(path), events=["flows/segments_added", "flows/updated"], flow_ids=[f["id"] for f in flows])
    count = 12

    async def write(flow: dict[str, Any]) -> None:
        ids = [o["object_id"] for o in await api.allocate(flow["id"], limit=count)]
        for i, object_id in enumerate(ids):
            await api.post_segments(flow["id"], {"object_id": object_id, "timerange": f"[{i}:0_{i + 1}:0)"})
            if i % 4 == 3:
                await api.call("PUT", f"/flows/{flow['id']}/label", json=f"after {i}", status=204)

    await asyncio.gather(*(write(f) for f in flows))  # the two Flows' writes interleave
    per_flow = count + count // 4
    await wait_until(lambda: len(receiver.got(path)) >= 2 * per_flow)
    check_event_bodies(receiver.got(path))
    for flow in flows:
        seen: list[str] = []
        for body in receiver.got(path):
            event = body["event"]
            if body["event_type"] == "flows/segments_added" and event["flow_id"] == flow["id"]:
                seen += [s["timerange"] for s in event["segments"]]
            elif body["event_type"] == "flows/updated" and event["flow"]["id"] == flow["id"]:
                seen.append(event["flow"]["label"])
        wanted: list[str] = []
        for i in range(count):
            wanted.append(f"[{i}:0_{i + 1}:0)")
            if i % 4 == 3:
                wanted.append(f"after {i}")
        assert seen == wanted


async def test_filters_and_get_url_options(api: StoreHttp, receiver: Receiver, hooks: Callable[..., Awaitable[dict[str, Any]]]) -> None:
    member, loose = new_flow(), new_flow()
    for flow in (member, loose):
        await api.put_flow(flow, status=201)
    collector = new_flow(format="urn:x-nmos:format:multi", flow_collection=[{"id": member["id"], "role": "video"}])
    del collector["codec"], collector["essence_parameters"]
    await api.put_flow(collector, status=201)
    ours = [member["id"], loose["id"], collector["id"]]
    segments_only = ["flows/segments_added"]
    await hooks(url=receiver.url("/collected"), events=segments_only, flow_collected_by_ids=[collector["id"]])
    await hooks(url=receiver.url("/uncollected"), events=segments_only, flow_ids=ours, flow_collected_by_ids=[])
    await hooks(url=receiver.url("/source-collected"), events=segments_only, source_collected_by_ids=[collector["source_id"]])
    await hooks(url=receiver.url("/by-source"), events=segments_only, source_ids=[loose["source_id"]])
    await hooks(url=receiver.url("/no-urls"), events=segments_only, flow_ids=[member["id"]], accept_get_urls=[])
    await hooks(
        url=receiver.url("/plain-verbose"),
        events=segments_only,
        flow_ids=[member["id"]],
        presigned=False,
        verbose_storage=True,
        include_object_timerange=True,
    )
    await hooks(url=receiver.url("/created-only"), events=["flows/created"], flow_ids=ours)
    for flow in (member, loose, collector):
        await add_segments(api, flow["id"], "[0:0_1:0)")

    def flows_of(path: str) -> list[str]:
        return [b["event"]["flow_id"] for b in receiver.got(path)]

    await wait_until(lambda: len(flows_of("/uncollected")) >= 2 and len(flows_of("/plain-verbose")) >= 1)
    await wait_until(lambda: all(receiver.got(p) for p in ("/collected", "/source-collected", "/by-source", "/no-urls")))
    await asyncio.sleep(0.2)
    assert flows_of("/collected") == [member["id"]]
    assert flows_of("/uncollected") == [loose["id"], collector["id"]]
    assert flows_of("/source-collected") == [member["id"]]
    assert flows_of("/by-source") == [loose["id"]]
    assert receiver.got("/created-only") == []  # registered after the Flows were made
    (no_urls,) = receiver.got("/no-urls")
    assert "get_urls" not in no_urls["event"]["segments"][0] or no_urls["event"]["segments"][0]["get_urls"] == []
    (verbose,) = receiver.got("/plain-verbose")
    segment = verbose["event"]["segments"][0]
    assert segment["object_timerange"] == "[0:0_1:0)"
    assert segment["get_urls"] and all(u["presigned"] is False and "storage_id" in u for u in segment["get_urls"])
    for path in ("/collected", "/uncollected", "/source-collected", "/by-source", "/no-urls", "/plain-verbose"):
        check_event_bodies(receiver.got(path))


async def test_collection_changes_announce_the_members_new_collected_by(
    api: StoreHttp, receiver: Receiver, hooks: Callable[..., Awaitable[dict[str, Any]]]
) -> None:
    first, second = new_flow(), new_flow()
    collector = new_flow(format="urn:x-nmos:format:multi", flow_collection=[{"id": first["id"]}])
    del collector["codec"], collector["essence_parameters"]
    path = "/collections"
    await hooks(url=receiver.url(path), events=["flows/updated"], flow_ids=[first["id"], second["id"], collector["id"]])
    for flow in (first, second, collector):
        await api.put_flow(flow, status=201)
    await api.call("PUT", f"/flows/{collector['id']}/flow_collection", json=[{"id": second["id"]}], status=204)
    await api.call("DELETE", f"/flows/{second['id']}", status=204)

    def seen() -> list[tuple[str, list[str], list[str]]]:
        return [
            (
                b["event"]["flow"]["id"],
                b["event"]["flow"].get("collected_by", []),
                [m["id"] for m in b["event"]["flow"].get("flow_collection", [])],
            )
            for b in receiver.got(path)
        ]

    await wait_until(lambda: len(seen()) >= 5)
    await asyncio.sleep(0.2)
    check_event_bodies(receiver.got(path))
    assert seen() == [
        (first["id"], [collector["id"]], []),  # collected when the collector was made
        (collector["id"], [], [second["id"]]),  # the collection changed ...
        (first["id"], [], []),  # ... so first left it ...
        (second["id"], [collector["id"]], []),  # ... and second joined
        (collector["id"], [], []),  # second was deleted: it left the collection
    ]


# --- failures ----------------------------------------------------------------------------------------


async def test_a_failing_receiver_is_retried_until_it_answers(
    api: StoreHttp, receiver: Receiver, hooks: Callable[..., Awaitable[dict[str, Any]]]
) -> None:
    path = "/flaky"
    receiver.fail_first[path] = 2
    flow = new_flow()
    webhook = await hooks(url=receiver.url(path), events=["flows/created", "flows/updated"], source_ids=[flow["source_id"]])
    await api.put_flow(flow, status=201)
    await api.call("PUT", f"/flows/{flow['id']}/label", json="second", status=204)
    await wait_until(lambda: len(receiver.got(path)) >= 2)
    assert [b["event_type"] for b in receiver.got(path)] == ["flows/created", "flows/updated"]
    assert receiver.attempts[path] == 4  # two refusals, then each event once
    state = (await api.call("GET", f"/service/webhooks/{webhook['id']}", status=200, schema="webhook-get.json")).body
    assert state["status"] == "started" and "error" not in state


async def test_a_receiver_that_keeps_failing_gets_the_webhook_marked_error(
    api: StoreHttp, receiver: Receiver, hooks: Callable[..., Awaitable[dict[str, Any]]]
) -> None:
    path = "/broken"
    receiver.always_fail.add(path)
    flow = new_flow()
    webhook = await hooks(url=receiver.url(path), events=["flows/created", "flows/updated"], flow_ids=[flow["id"]])
    await api.put_flow(flow, status=201)

    async def status() -> dict[str, Any]:
        return (await api.call("GET", f"/service/webhooks/{webhook['id']}", status=200, schema="webhook-get.json")).body

    deadline = time.monotonic() + 10
    while (state := await status())["status"] != "error":
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.05)
    assert receiver.attempts[path] == 4  # --webhook-attempts
    assert state["error"]["type"] == "WebhookDeliveryFailed" and "500" in state["error"]["summary"]
    # In error it sends nothing; error -> disabled is refused; PUT created re-enables it.
    await api.call("PUT", f"/flows/{flow['id']}/label", json="while broken", status=204)
    put = {k: v for k, v in webhook.items() if k != "status"} | {"status": "disabled"}
    await api.call("PUT", f"/service/webhooks/{webhook['id']}", json=put, status=400)
    assert (await status())["status"] == "error"
    receiver.always_fail.discard(path)
    await asyncio.sleep(0.3)
    assert receiver.got(path) == []
    reply = await api.call(
        "PUT",
        f"/service/webhooks/{webhook['id']}",
        json=put | {"status": "created"},
        status=201,
        schema="webhook-get.json",
    )
    assert reply.body["status"] == "created" and "error" not in reply.body
    await api.call("PUT", f"/flows/{flow['id']}/label", json="fixed", status=204)
    await wait_until(lambda: len(receiver.got(path)) == 1)
    assert receiver.got(path)[0]["event"]["flow"]["label"] == "fixed"
    assert (await status())["status"] == "started"


async def test_a_slow_receiver_does_not_slow_the_requests_that_cause_events(
    api: StoreHttp, receiver: Receiver, hooks: Callable[..., Awaitable[dict[str, Any]]]
) -> None:
    path = "/slow"
    receiver.delay[path] = 2.0
    flow = new_flow()
    await hooks(url=receiver.url(path), flow_ids=[flow["id"]], source_ids=[flow["source_id"]])
    started = time.monotonic()
    await api.put_flow(flow, status=201)
    objects = await api.allocate(flow["id"], limit=3)
    timings = []
    for i, obj in enumerate(objects):
        t0 = time.monotonic()
        await api.post_segments(flow["id"], {"object_id": obj["object_id"], "timerange": f"[{i}:0_{i + 1}:0)"})
        timings.append(time.monotonic() - t0)
    elapsed = time.monotonic() - started
    # Five events are queued (sources/created, flows/created, 3 x segments_added): delivering
    # them takes >= 10 s, yet the writes were answered at once.
    assert max(timings) < 1.0, timings
    assert elapsed < 2.0, elapsed
    await wait_until(lambda: len(receiver.got(path)) >= 1, timeout=5)
    assert receiver.got(path)[0]["event_type"] == "sources/created"


# --- the routes --------------------------------------------------------------------------------------


async def token_headers(store: RunningStore, client: dict[str, Any]) -> dict[str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            store.oauth2_url,
            data={"grant_type": "client_credentials"},
            headers=basic_header(client["client_id"], client["client_secret"]),
        ) as response,
    ):
        assert response.status == 200
        return {"Authorization": "Bearer " + (await response.json())["access_token"]}


async def test_webhook_crud_listing_and_visibility(
    api: StoreHttp, hook_store: RunningStore, hooks: Callable[..., Awaitable[dict[str, Any]]]
) -> None:
    run = uuid.uuid4().hex
    made = [
        await hooks(url=f"https://b.example.com/{run}", events=["flows/created"], tags={"run": run, "n": "2"}),
        await hooks(url=f"https://a.example.com/{run}", events=["flows/deleted"], tags={"run": run, "n": "1"},
                    api_key_name="X-Key", api_key_value="kept-secret"),
        await hooks(url=f"https://c.example.com/{run}", events=["sources/created"], tags={"run": run},
                    status="disabled"),
    ]  # fmt: skip
    assert all("api_key_value" not in m for m in made)
    assert [m["status"] for m in made] == ["created", "created", "disabled"]
    listed = await api.call("GET", "/service/webhooks", params={"tag.run": run}, status=200, items="webhook-get.json")
    assert [w["url"] for w in listed.body] == sorted(m["url"] for m in made)  # sorted by url
    assert listed.headers["X-Paging-Reverse-Order"] == "false"
    backwards = await api.call(
        "GET",
        "/service/webhooks",
        params={"tag.run": run, "reverse_order": "true"},
        status=200,
        items="webhook-get.json",
    )
    assert [w["url"] for w in backwards.body] == sorted((m["url"] for m in made), reverse=True)
    assert backwards.headers["X-Paging-Reverse-Order"] == "true"
    page = await api.call("GET", "/service/webhooks", params={"tag.run": run, "limit": "2"}, items="webhook-get.json")
    assert len(page.body) == 2 and page.headers["X-Paging-Limit"] == "2" and 'rel="next"' in page.headers["Link"]
    rest = await api.call("GET", page.headers["Link"].split(">")[0][1:], status=200, items="webhook-get.json")
    assert [w["id"] for w in page.body + rest.body] == [w["id"] for w in listed.body]
    assert "Link" not in rest.headers
    one = await api.call("GET", "/service/webhooks", params={"tag.n": "1,3"}, items="webhook-get.json")
    assert [w["id"] for w in one.body] == [made[1]["id"]]
    untagged_n = await api.call("GET", "/service/webhooks", params={"tag.run": run, "tag_exists.n": "false"}, items="webhook-get.json")
    assert [w["id"] for w in untagged_n.body] == [made[2]["id"]]
    head = await api.call("HEAD", "/service/webhooks", status=200)
    assert head.raw == b""

    # PUT replaces; the API key value is kept while the key name stays; GET shows the change.
    changed = {**made[1], "url": f"https://a2.example.com/{run}", "events": ["flows/deleted", "flows/created"]}
    reply = await api.call("PUT", f"/service/webhooks/{made[1]['id']}", json=changed, status=201, schema="webhook-get.json")
    assert reply.body["url"] == changed["url"] and reply.body["api_key_name"] == "X-Key"
    got = await api.call("GET", f"/service/webhooks/{made[1]['id']}", status=200, schema="webhook-get.json")
    assert got.body == reply.body

    # Another principal sees only its own webhooks; admins see everyone's.
    writer = api.with_headers(await token_headers(hook_store, WRITER))
    own = await writer.call(
        "POST", "/service/webhooks", json={"url": f"https://w.example.com/{run}", "events": ["flows/created"],
                                           "tags": {"run": run}},
        status=201, schema="webhook-get.json",
    )  # fmt: skip
    mine = await writer.call("GET", "/service/webhooks", params={"tag.run": run}, items="webhook-get.json")
    assert [w["id"] for w in mine.body] == [own.body["id"]]
    await writer.call("GET", f"/service/webhooks/{made[0]['id']}", status=404)
    await writer.call("DELETE", f"/service/webhooks/{made[0]['id']}", status=404)
    everyone = await api.call("GET", "/service/webhooks", params={"tag.run": run}, items="webhook-get.json")
    assert own.body["id"] in {w["id"] for w in everyone.body}
    reader = api.with_headers(await token_headers(hook_store, DEFAULT_CLIENTS[1]))
    await reader.call("POST", "/service/webhooks", json={"url": "https://r.example.com/", "events": []}, status=403)
    await writer.call("DELETE", f"/service/webhooks/{own.body['id']}", status=204)
    await writer.call("GET", f"/service/webhooks/{own.body['id']}", status=404)


async def test_bad_webhook_requests_are_refused_and_change_nothing(api: StoreHttp, hooks: Callable[..., Awaitable[dict[str, Any]]]) -> None:
    run = uuid.uuid4().hex
    webhook = await hooks(url=f"https://hook.example.com/{run}", events=["flows/created"], tags={"run": run})

    async def snapshot() -> list[dict[str, Any]]:
        return (await api.call("GET", "/service/webhooks", params={"limit": "1000"}, items="webhook-get.json")).body

    before = await snapshot()
    good = {"url": "https://hook.example.com/x", "events": ["flows/created"]}
    bad_posts: list[Any] = [
        {**good, "url": "ftp://hook.example.com/x"},
        {**good, "url": "file:///etc/passwd"},
        {**good, "url": "not a url"},
        {**good, "url": "/relative/hook"},
        {**good, "url": "http://"},
        {**good, "url": 42},
        {**good, "events": ["flows/exploded"]},
        {**good, "events": "flows/created"},
        {"url": good["url"]},
        {**good, "flow_ids": ["not-a-uuid"]},
        {**good, "source_collected_by_ids": "x"},
        {**good, "presigned": "yes"},
        {**good, "status": "started"},
        {**good, "api_key_value": "value without a name"},
        {**good, "api_key_name": "Bad Header:", "api_key_value": "v"},
        {**good, "api_key_name": "Content-Type", "api_key_value": "text/plain"},
        {**good, "api_key_name": "X-Key", "api_key_value": "two\r\nlines"},
        {**good, "tags": {"a": 1}},
        [good],
        "webhook",
    ]
    for body in bad_posts:
        reply = await api.call("POST", "/service/webhooks", json=body)
        assert reply.status == 400, (body, reply.status, reply.raw)
    for raw in (b"{", b"", b"\xff"):
        reply = await api.call("POST", "/service/webhooks", data=raw, headers={"Content-Type": "application/json"})
        assert reply.status == 400
    path = f"/service/webhooks/{webhook['id']}"
    put = {**webhook, "status": "created"}
    for body in (
        {**put, "id": str(uuid.uuid4())},  # differs from the path
        {k: v for k, v in put.items() if k != "status"},  # PUT needs status
        {**put, "status": "error"},
        {**put, "url": "gopher://hook.example.com/"},
    ):
        reply = await api.call("PUT", path, json=body)
        assert reply.status == 400, (body, reply.status, reply.raw)
    unknown = str(uuid.uuid4())
    await api.call("PUT", f"/service/webhooks/{unknown}", json={**put, "id": unknown}, status=404)
    await api.call("GET", f"/service/webhooks/{unknown}", status=404)
    await api.call("DELETE", f"/service/webhooks/{unknown}", status=404)
    await api.call("GET", "/service/webhooks/not-a-uuid", status=404)
    for params in (
        {"page": "garbage"},
        {"reverse_order": "maybe"},
        {"tag_exists.a": "2"},
    ):
        await api.call("GET", "/service/webhooks", params=params, status=400)
    await api.call("PATCH", path, json=put, status=405)
    await api.call("POST", path, json=put, status=405)
    await api.call("DELETE", "/service/webhooks", status=405)
    assert await snapshot() == before

"""Defects a review found in the local store, each pinned by a test against a real store subprocess:

* times, counts and page keys beyond SQLite's int64 are refused with 400 (never 500), and a
  bulk POST lists such segments in ``failed_segments`` while storing the rest;
* a JSON integer too long for Python to convert is a malformed body (400);
* listings page by key, not offset: items inserted or deleted between pages neither repeat nor
  skip the items that existed throughout;
* a repeated segment POST is accepted only when it says the same as the stored segment;
* a header line too long for the store gets the spec's error body, and its bytes stay out of
  the store's log;
* uncontrolled ``get_urls`` in a segment POST are checked like ``POST /objects/{id}/instances``.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from store_http import ELSEWHERE, StoreHttp, basic_http, new_flow, unsigned

from tests.conftest import RunningStore

BIG_INT = 99999999999999999999  # 20 digits: past int64
BIG_TIME = "99999999999:0"  # about 3170 years of nanoseconds: past int64


@pytest.fixture
async def api(shared_store: RunningStore) -> AsyncIterator[StoreHttp]:
    async with basic_http(shared_store) as api:
        yield api


async def stored_segments(api: StoreHttp, flow_id: str) -> list[dict[str, Any]]:
    return unsigned((await api.segments(flow_id, include_object_timerange="true", limit="1000")).body)


async def new_flow_id(api: StoreHttp, **fields: Any) -> str:
    flow = new_flow(**fields)
    await api.put_flow(flow, status=201)
    return flow["id"]


# --- 1. out-of-range numbers ----------------------------------------------------------------------


async def test_out_of_range_times_and_counts_in_a_segment_post_are_400(api: StoreHttp) -> None:
    fid = await new_flow_id(api)
    good = {**ELSEWHERE, "object_id": "kept", "timerange": "[0:0_1:0)"}
    await api.post_segments(fid, good)
    before = await stored_segments(api, fid)
    bad_timestamps = [
        {**ELSEWHERE, "object_id": "a", "timerange": f"[10:0_{BIG_TIME})"},
        {**ELSEWHERE, "object_id": "a", "timerange": f"[-{BIG_TIME}_10:0)"},
        {**ELSEWHERE, "object_id": "a", "timerange": "[10:0_11:0)", "ts_offset": BIG_TIME},
        {**ELSEWHERE, "object_id": "a", "timerange": "[10:0_11:0)", "ts_offset": f"-{BIG_TIME}"},
        {**ELSEWHERE, "object_id": "a", "timerange": "[10:0_11:0)", "object_timerange": f"[0:0_{BIG_TIME})"},
        # mediatimestamp would clamp this one to 281474976710655:999999999 and store that.
        {**ELSEWHERE, "object_id": "a", "timerange": "[10:0_11:0)", "last_duration": "99999999999999999999:0"},
        # Each in range, but timerange - ts_offset (the object's timeline) is not.
        {**ELSEWHERE, "object_id": "a", "timerange": "[9000000000:0_9000000001:0)", "ts_offset": "-9000000000:0"},
    ]
    for segment in bad_timestamps:
        reply = await api.call("POST", f"/flows/{fid}/segments", json=segment, status=400)
        assert reply.body["type"] == "InvalidTimerange", (segment, reply.body)
    for name in ("sample_offset", "sample_count", "key_frame_count"):
        for value in (BIG_INT, -BIG_INT):
            segment = {**ELSEWHERE, "object_id": "a", "timerange": "[10:0_11:0)", name: value}
            reply = await api.call("POST", f"/flows/{fid}/segments", json=segment, status=400)
            assert name in reply.body["summary"]
    assert await stored_segments(api, fid) == before
    # The range is 2**62 - 1 ns (about +-146 years: overlap tests use half-nanosecond points),
    # right up to its last nanosecond, and not a nanosecond more.
    edge = {**ELSEWHERE, "object_id": "edge", "timerange": "[4611686018:0_4611686018:427387903)", "ts_offset": "0:0"}
    await api.post_segments(fid, edge)
    (listed,) = (await api.segments(fid, timerange="[4611686018:0_4611686018:427387903]")).body
    assert listed["timerange"] == edge["timerange"]
    beyond = {**ELSEWHERE, "object_id": "beyond", "timerange": "[4611686018:0_4611686018:427387904)"}
    await api.call("POST", f"/flows/{fid}/segments", json=beyond, status=400)


async def test_out_of_range_timeranges_and_page_keys_in_queries_are_400(api: StoreHttp) -> None:
    fid = await new_flow_id(api)
    await api.post_segments(fid, {**ELSEWHERE, "object_id": "kept", "timerange": "[0:0_1:0)"})
    huge = f"[0:0_{BIG_TIME})"
    for method, path, params in [
        ("GET", f"/flows/{fid}/segments", {"timerange": huge}),
        ("GET", f"/flows/{fid}/segments", {"timerange": f"({BIG_TIME}_"}),
        ("GET", "/flows", {"timerange": huge}),
        ("GET", f"/flows/{fid}", {"timerange": huge, "include_timerange": "true"}),
        ("DELETE", f"/flows/{fid}/segments", {"timerange": huge}),
    ]:
        reply = await api.call(method, path, params=params, status=400)
        assert reply.body["type"] == "InvalidTimerange", (method, path, reply.body)
    for page in ("s99999999999999999999", "s9999999999999999999", "s-9999999999999999999"):
        await api.call("GET", f"/flows/{fid}/segments", params={"page": page}, status=400)
    # The largest int64 is still a page key (past every segment: an empty page).
    reply = await api.segments(fid, page="s9223372036854775807")
    assert reply.body == []
    assert [s["object_id"] for s in await stored_segments(api, fid)] == ["kept"]


async def test_bulk_post_lists_out_of_range_segments_and_stores_the_rest(api: StoreHttp) -> None:
    fid = await new_flow_id(api)
    segments = [
        {**ELSEWHERE, "object_id": "ok-1", "timerange": "[0:0_1:0)"},
        {**ELSEWHERE, "object_id": "bad-timerange", "timerange": f"[1:0_{BIG_TIME})"},
        {**ELSEWHERE, "object_id": "ok-2", "timerange": "[1:0_2:0)"},
        {**ELSEWHERE, "object_id": "bad-offset", "timerange": "[2:0_3:0)", "ts_offset": BIG_TIME},
        {**ELSEWHERE, "object_id": "bad-count", "timerange": "[3:0_4:0)", "sample_count": BIG_INT},
        {**ELSEWHERE, "object_id": "bad-duration", "timerange": "[4:0_5:0)", "last_duration": "99999999999999999999:0"},
        {**ELSEWHERE, "object_id": "ok-3", "timerange": "[5:0_6:0)", "key_frame_count": 1},
    ]
    reply = await api.post_segments(fid, segments, status=200)
    failed = {f["object_id"]: f for f in reply.body["failed_segments"]}
    assert sorted(failed) == ["bad-count", "bad-duration", "bad-offset", "bad-timerange"]
    assert failed["bad-timerange"]["timerange"] == f"[1:0_{BIG_TIME})"
    assert failed["bad-offset"]["error"]["type"] == "InvalidTimerange"
    assert [s["object_id"] for s in await stored_segments(api, fid)] == ["ok-1", "ok-2", "ok-3"]


async def test_flow_with_out_of_range_frame_size_is_400(api: StoreHttp) -> None:
    flow = new_flow()
    flow["essence_parameters"]["frame_width"] = BIG_INT
    await api.call("PUT", f"/flows/{flow['id']}", json=flow, status=400)
    await api.call("GET", f"/flows/{flow['id']}", status=404)


# --- 2. integers too long to convert -----------------------------------------------------------------


async def test_json_integer_of_too_many_digits_is_a_malformed_body(api: StoreHttp) -> None:
    fid = await new_flow_id(api)
    digits = "9" * 5000
    bodies = [
        ("PUT", f"/flows/{fid}", json.dumps(new_flow(id=fid))[:-1] + f', "max_bit_rate": {digits}}}'),
        ("POST", f"/flows/{fid}/segments", f'{{"object_id": "a", "timerange": "[0:0_1:0)", "sample_count": {digits}}}'),
        ("POST", f"/flows/{fid}/storage", f'{{"limit": {digits}}}'),
        ("POST", "/service", f'{{"name": {digits}}}'),
        ("POST", "/service/webhooks", f'{{"url": "http://127.0.0.1:9/", "events": [], "x": {digits}}}'),
        ("PUT", f"/flows/{fid}/max_bit_rate", digits),
    ]
    for method, path, body in bodies:
        reply = await api.call(method, path, data=body, headers={"Content-Type": "application/json"}, status=400)
        assert reply.body["type"] == "BadRequest" and "digits" in reply.body["summary"], (path, reply.body)
    assert await stored_segments(api, fid) == []


# --- 3. keyset paging -------------------------------------------------------------------------------

Churn = Callable[[list[str]], Awaitable[None]]  # given the ids listed so far


async def page_through(
    api: StoreHttp,
    path: str,
    params: dict[str, str],
    item_ids: Callable[[Any], list[str]],
    between_pages: list[Churn],
    *,
    items: str | None = None,
    schema: str | None = None,
) -> list[str]:
    """Every id the listing gives, following Link; ``between_pages[i]`` runs after page i + 1."""
    seen: list[str] = []
    reply = await api.call("GET", path, params=params, status=200, items=items, schema=schema)
    page = 0
    while True:
        seen += item_ids(reply.body)
        if "Link" not in reply.headers:
            return seen
        if page < len(between_pages):
            await between_pages[page](seen)
        page += 1
        reply = await api.call("GET", reply.headers["Link"].split(">")[0][1:], status=200, items=items, schema=schema)


def assert_each_once(seen: list[str], throughout: set[str], existed: set[str]) -> None:
    """Every item that existed throughout the paging was listed exactly once, and nothing was
    listed that never existed."""
    counts = {i: seen.count(i) for i in set(seen)}
    assert {i: counts.get(i, 0) for i in throughout if counts.get(i) != 1} == {}, "repeated or skipped"
    assert set(seen) <= existed


def ids_of(body: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in body]


@pytest.fixture
async def own_store_api(store_factory: Callable[..., RunningStore]) -> AsyncIterator[StoreHttp]:
    """A store of its own: listings without filters see only this test's items."""
    store = store_factory()
    async with basic_http(store) as api:
        yield api


@pytest.mark.parametrize(
    "params",
    [{}, {"reverse_order": "true"}, {"sort_by": "label"}, {"sort_by": "label", "reverse_order": "true"}],
    ids=["newest-first", "oldest-first", "label", "label-reversed"],
)
async def test_flow_and_source_listings_neither_repeat_nor_skip_under_writes(own_store_api: StoreHttp, params: dict[str, str]) -> None:
    api = own_store_api
    source_of: dict[str, str] = {}  # every Flow made -> its Source (one Flow per Source)
    deleted: set[str] = set()

    async def create(label: str | None) -> None:
        flow = new_flow(label=label)
        if label is None:  # no label: sorts after the labelled ones (before, reversed)
            del flow["label"]
        await api.put_flow(flow, status=201)
        source_of[flow["id"]] = flow["source_id"]

    async def delete(flow_id: str) -> None:
        deleted.add(flow_id)
        await api.call("DELETE", f"/flows/{flow_id}", status=(202, 204))  # its Source goes too

    async def insert_at_both_ends(_: list[str]) -> None:
        # Whatever the order, new items sort before the first page and among the later ones.
        await create(f"a-{len(source_of)}")
        await create(f"z-{len(source_of)}")

    async def delete_a_listed_flow(seen: list[str]) -> None:
        await delete(seen[0])

    async def delete_a_listed_source(seen: list[str]) -> None:
        await delete(next(f for f, s in source_of.items() if s == seen[0]))

    for i in range(7):
        await create(f"m-{i}" if i % 2 else None)  # four without a label: a page break falls among them
    before = set(source_of) - deleted
    churn = [insert_at_both_ends, delete_a_listed_flow, insert_at_both_ends]
    seen = await page_through(api, "/flows", {"limit": "2", **params}, ids_of, churn, items="flow-get.json")
    assert_each_once(seen, before - deleted, set(source_of))

    before = {source_of[f] for f in set(source_of) - deleted}
    churn = [insert_at_both_ends, delete_a_listed_source, insert_at_both_ends]
    seen = await page_through(api, "/sources", {"limit": "2", **params}, ids_of, churn, items="source.json")
    assert_each_once(seen, before - {source_of[f] for f in deleted}, set(source_of.values()))


async def test_webhook_delete_request_and_object_listings_neither_repeat_nor_skip(own_store_api: StoreHttp) -> None:
    api = own_store_api
    # Webhooks, sorted by url.
    hooks: set[str] = set()
    gone: set[str] = set()

    async def hook(url: str) -> None:
        body = {"url": url, "events": ["flows/created"], "status": "disabled"}
        reply = await api.call("POST", "/service/webhooks", json=body, status=201, schema="webhook-get.json")
        hooks.add(reply.body["id"])

    async def hook_sorting_first(_: list[str]) -> None:
        await hook("http://127.0.0.1:9/a")

    async def delete_a_listed_hook(seen: list[str]) -> None:
        gone.add(seen[0])
        await api.call("DELETE", f"/service/webhooks/{seen[0]}", status=204)

    for i in range(6):
        await hook(f"http://127.0.0.1:9/m{i}")
    for params in ({}, {"reverse_order": "true"}):
        before = hooks - gone
        churn = [hook_sorting_first, delete_a_listed_hook]
        seen = await page_through(api, "/service/webhooks", {"limit": "2", **params}, ids_of, churn, items="webhook-get.json")
        assert_each_once(seen, before - gone, hooks)

    # Deletion requests, newest first: each segment DELETE records one.
    fid = await new_flow_id(api)
    for _ in range(5):
        await api.call("DELETE", f"/flows/{fid}/segments", status=204)
    listed = await api.call("GET", "/flow-delete-requests", params={"limit": "1000"}, items="deletion-request.json")
    before = set(ids_of(listed.body))

    async def more_requests(_: list[str]) -> None:
        for _ in range(2):
            await api.call("DELETE", f"/flows/{fid}/segments", status=204)

    churn = [more_requests, more_requests]
    seen = await page_through(api, "/flow-delete-requests", {"limit": "2"}, ids_of, churn, items="deletion-request.json")
    everything = set(ids_of((await api.call("GET", "/flow-delete-requests", params={"limit": "1000"}, items="deletion-request.json")).body))
    assert_each_once(seen, before, everything)

    # An object's referenced_by_flows, in Flow id order.
    owner = await new_flow_id(api)
    (obj,) = await api.allocate(owner)
    oid = obj["object_id"]
    users = {owner}

    async def use_object(flow_id: str) -> None:
        await new_flow_id(api, id=flow_id)
        await api.post_segments(flow_id, {"object_id": oid, "timerange": "[0:0_1:0)"})
        users.add(flow_id)

    async def user_sorting_first(_: list[str]) -> None:
        await use_object(f"00000000-0000-4000-8000-{len(users):012x}")

    async def delete_a_listed_user(seen: list[str]) -> None:
        gone.add(seen[0])
        await api.call("DELETE", f"/flows/{seen[0]}", status=(202, 204))

    await api.post_segments(owner, {"object_id": oid, "timerange": "[0:0_1:0)"})
    for i in range(5):
        await use_object(f"{i + 5:08x}-0000-4000-8000-000000000000")
    before = set(users)

    def flows_of(body: dict[str, Any]) -> list[str]:
        return list(body["referenced_by_flows"])

    churn = [user_sorting_first, delete_a_listed_user]
    seen = await page_through(api, f"/objects/{oid}", {"limit": "2"}, flows_of, churn, schema="object.json")
    assert_each_once(seen, before - gone, users)


async def test_page_keys_are_checked(own_store_api: StoreHttp) -> None:
    api = own_store_api
    for _ in range(3):
        await new_flow_id(api)
    first = await api.call("GET", "/flows", params={"limit": "1"}, items="flow-get.json")
    key = first.headers["X-Paging-NextKey"]
    # A key made for one listing or order is not read in another; garbage is a 400, not a 500.
    await api.call("GET", "/flows", params={"limit": "1", "page": key, "sort_by": "label"}, status=400)
    await api.call("GET", "/flows", params={"limit": "1", "page": key, "reverse_order": "true"}, status=400)
    await api.call("GET", "/sources", params={"limit": "1", "page": key}, status=400)
    for bad in ("o2", "k", "k!!", "kbm90IGpzb24", "k" + "A" * 5000, "kWzEsMiwzXQ"):
        await api.call("GET", "/flows", params={"page": bad}, status=400)
    second = await api.call("GET", "/flows", params={"limit": "1", "page": key}, items="flow-get.json")
    assert ids_of(second.body) != ids_of(first.body)


# --- 4. repeated segment POSTs ------------------------------------------------------------------------


async def test_repeated_segment_post_must_say_the_same(api: StoreHttp) -> None:
    fid = await new_flow_id(api)
    original = {
        "object_id": "obj",
        "timerange": "[10:0_12:0)",
        "ts_offset": "5:0",
        "last_duration": "0:40000000",
        "object_timerange": "[5:0_7:0)",
        "sample_offset": 0,
        "sample_count": 50,
        "key_frame_count": 1,
        "get_urls": [{"url": "http://media.example.com/obj.ts", "label": "mirror"}],
    }
    await api.post_segments(fid, original)
    before = await stored_segments(api, fid)
    await api.post_segments(fid, original)  # an exact repeat (a retry) is done already: 201
    await api.post_segments(fid, [original])
    changes: list[dict[str, Any]] = [
        {"key_frame_count": 2},
        {"init_object_id": "init-1"},
        {"last_duration": "0:20000000"},
        {"object_timerange": "[5:0_8:0)"},
        {"sample_offset": 1},
        {"sample_count": 49},
        {"get_urls": [{"url": "http://other.example.com/obj.ts", "label": "mirror"}]},
    ]
    for change in changes:
        changed = {**original, **change}
        reply = await api.call("POST", f"/flows/{fid}/segments", json=changed, status=400)
        assert reply.body["type"] == "SegmentOverlap" and next(iter(change)) in reply.body["summary"], reply.body
        bulk = await api.post_segments(fid, [{**ELSEWHERE, "object_id": "new", "timerange": "[20:0_21:0)"}, changed], status=200)
        assert [f["object_id"] for f in bulk.body["failed_segments"]] == ["obj"]
        await api.call("DELETE", f"/flows/{fid}/segments", params={"timerange": "[20:0_21:0)"}, status=204)
    # Left out: a field of the segment itself is "not set" (so it differs), while the object's
    # own properties may be left out, as when any registered object is reused.
    without_duration = {k: v for k, v in original.items() if k != "last_duration"}
    await api.call("POST", f"/flows/{fid}/segments", json=without_duration, status=400)
    object_fields = ("key_frame_count", "object_timerange", "get_urls")
    await api.post_segments(fid, {k: v for k, v in original.items() if k not in object_fields})
    assert await stored_segments(api, fid) == before


# --- 5. header lines too long ---------------------------------------------------------------------------


async def test_too_long_header_gets_the_error_body_and_stays_out_of_the_log(shared_store: RunningStore, api: StoreHttp) -> None:
    secret = secrets.token_urlsafe(30_000)  # 40 KB of token
    reply = await api.call("GET", "/flows", headers={"Authorization": f"Bearer {secret}"})
    assert 400 <= reply.status < 500 and reply.body["type"] == "BadRequest", reply.raw[:300]
    # A token with many groups may well pass 8 KB: that is not "too long" (just not valid here).
    big_token = secrets.token_urlsafe(15_000)  # 20 KB
    reply = await api.call("GET", "/flows", headers={"Authorization": f"Bearer {big_token}"}, status=401)
    await api.call("GET", "/service", status=200, schema="service.json")  # still serving
    log = shared_store.log_text()
    assert "LineTooLong" in log  # the refusal is logged...
    assert secret[:24] not in log and big_token[:24] not in log  # ...without the token's bytes


# --- 6. get_urls in segment POSTs --------------------------------------------------------------------------


async def test_segment_get_urls_are_checked_like_instances(api: StoreHttp) -> None:
    fid = await new_flow_id(api)
    backends = (await api.call("GET", "/service/storage-backends", schema="storage-backends-list.json")).body
    backend_label = backends[0]["label"]
    bad_urls = [
        [{"url": "ftp://x", "label": "x"}],
        [{"url": "javascript:alert(1)", "label": "x"}],
        [{"url": "/relative/path", "label": "x"}],
        [{"url": "http://", "label": "x"}],
        [{"url": "http://media.example.com/a", "label": backend_label}],
        [{"url": "http://media.example.com/a", "label": ""}],
        [{"url": "http://media.example.com/a", "label": "x"}, {"url": "http://media.example.com/b", "label": "x"}],
    ]
    for get_urls in bad_urls:
        segment = {"object_id": "a", "timerange": "[0:0_1:0)", "get_urls": get_urls}
        await api.call("POST", f"/flows/{fid}/segments", json=segment, status=400)
        bulk = await api.post_segments(fid, [segment], status=200)
        assert [f["object_id"] for f in bulk.body["failed_segments"]] == ["a"]
    assert await stored_segments(api, fid) == []
    good = [{"url": "https://media.example.com/a.ts", "label": "mirror"}]
    await api.post_segments(fid, {"object_id": "a", "timerange": "[0:0_1:0)", "get_urls": good})
    (segment,) = await stored_segments(api, fid)
    assert [{"url": u["url"], "label": u["label"]} for u in segment["get_urls"]] == good


async def test_unknown_flow_bulk_post_is_still_404(api: StoreHttp) -> None:
    """Items failing on their own values do not hide that the Flow is not there."""
    bad = {"object_id": "a", "timerange": f"[0:0_{BIG_TIME})"}
    await api.call("POST", f"/flows/{uuid.uuid4()}/segments", json=[bad], status=404)

"""Bad input to the local store: each gets the right 4xx with a spec error body, the store
keeps running, and nothing already stored changes."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from store_http import StoreHttp, basic_http, new_flow

from tests.conftest import RunningStore


@pytest.fixture
async def api(shared_store: RunningStore) -> AsyncIterator[StoreHttp]:
    async with basic_http(shared_store) as api:
        yield api


@pytest.fixture
async def stored(api: StoreHttp) -> dict[str, Any]:
    """A Flow with one segment, and a snapshot of what the store says about it."""
    flow = new_flow(tags={"keep": "me"})
    await api.put_flow(flow, status=201)
    (obj,) = await api.allocate(flow["id"])
    await api.post_segments(flow["id"], {"object_id": obj["object_id"], "timerange": "[0:0_2:0)"})
    return {"flow": flow, "snapshot": await snapshot(api, flow["id"])}


async def snapshot(api: StoreHttp, flow_id: str) -> tuple[Any, Any]:
    flow = await api.get_flow_with_timerange(flow_id)
    segments = await api.segments(flow_id, include_object_timerange="true")
    urls_dropped = [{k: v for k, v in s.items() if k != "get_urls"} for s in segments.body]
    return flow, urls_dropped


async def test_malformed_and_wrongly_typed_flow_bodies(api: StoreHttp, stored: dict[str, Any]) -> None:
    flow = stored["flow"]
    path = f"/flows/{flow['id']}"
    bad_bodies: list[tuple[str, bytes | str]] = [
        ("truncated JSON", b'{"id": "'),
        ("not UTF-8", b"\xff\xfe{}"),
        ("a JSON list", json.dumps([flow])),
        ("a JSON string", json.dumps("flow")),
        ("empty", b""),
        (
            "frame_width as text",
            json.dumps(
                {
                    **flow,
                    "essence_parameters": {
                        **flow["essence_parameters"],
                        "frame_width": "320",
                    },
                }
            ),
        ),
        ("unknown format", json.dumps({**flow, "format": "urn:x-nmos:format:smell"})),
        ("source_id not a UUID", json.dumps({**flow, "source_id": "not-a-uuid"})),
        ("id differs from the path", json.dumps({**flow, "id": str(uuid.uuid4())})),
        ("tags not strings", json.dumps({**flow, "tags": {"a": 1}})),
        ("negative generation", json.dumps({**flow, "generation": -1})),
        ("codec without a slash", json.dumps({**flow, "codec": "h264"})),
    ]
    for what, body in bad_bodies:
        reply = await api.call("PUT", path, data=body, headers={"Content-Type": "application/json"})
        assert reply.status == 400, (what, reply.status, reply.raw)
    assert await snapshot(api, flow["id"]) == stored["snapshot"]


async def test_invalid_ids_in_paths(api: StoreHttp) -> None:
    for path in (
        "/flows/not-a-uuid",
        "/flows/not-a-uuid/segments",
        "/sources/123",
        f"/flows/{uuid.uuid4()}X",
    ):
        # No resource can have such an id: 404, the answer the spec lists for these paths.
        reply = await api.call("GET", path, status=404)
        assert "UUID" in reply.body["summary"]
    # Creating a Flow under a bad id is bad input.
    await api.call("PUT", "/flows/NOT-A-UUID", json=new_flow(), status=400)


async def test_bad_query_values(api: StoreHttp, stored: dict[str, Any]) -> None:
    fid = stored["flow"]["id"]
    cases = [
        ("/flows", {"timerange": "[0:0_1:0:0)"}),
        ("/flows", {"timerange": "yesterday"}),
        ("/flows", {"limit": "-1"}),
        ("/flows", {"limit": "0"}),
        ("/flows", {"limit": "ten"}),
        ("/flows", {"limit": "9" * 40}),
        ("/flows", {"frame_width": "wide"}),
        ("/flows", {"reverse_order": "maybe"}),
        ("/flows", {"sort_by": "colour"}),
        ("/flows", {"page": "not-a-page"}),
        ("/sources", {"tag_exists.x": "yes"}),
        (f"/flows/{fid}", {"include_timerange": "1"}),
        (
            f"/flows/{fid}",
            {"timerange": "[1:00_2:0)"},
        ),  # leading zero in seconds' nanos
        (
            f"/flows/{fid}/segments",
            {"timerange": "[0:1000000000_1:0)"},
        ),  # nanos out of range
        (f"/flows/{fid}/segments", {"limit": "-5"}),
        (f"/flows/{fid}/segments", {"page": "s12x"}),
        (f"/flows/{fid}/segments", {"presigned": "yes"}),
        (f"/flows/{fid}/segments", {"accept_storage_ids": "nope"}),
    ]
    for path, params in cases:
        reply = await api.call("GET", path, params=params)
        assert reply.status == 400, (path, params, reply.status)


async def test_huge_limit_is_capped(api: StoreHttp, stored: dict[str, Any]) -> None:
    listings = [
        ("/flows", "flow-get.json"),
        ("/sources", "source.json"),
        (f"/flows/{stored['flow']['id']}/segments", "flow-segment.json"),
    ]
    for path, items in listings:
        for limit in ("1001", "1000000000", "9" * 18):
            reply = await api.call("GET", path, params={"limit": limit}, status=200, items=items)
            assert reply.headers["X-Paging-Limit"] == "1000", (path, limit)  # the store's cap
        reply = await api.call("GET", path, params={"limit": "7"}, status=200, items=items)
        assert reply.headers["X-Paging-Limit"] == "7"  # below the cap: as asked


async def test_bad_segment_posts(api: StoreHttp, stored: dict[str, Any]) -> None:
    fid = stored["flow"]["id"]
    path = f"/flows/{fid}/segments"
    bad: list[Any] = [
        {"timerange": "[2:0_3:0)"},  # no object_id
        {"object_id": "x"},  # no timerange
        {"object_id": 5, "timerange": "[2:0_3:0)"},
        {"object_id": "x", "timerange": "[2:0_3:0)", "ts_offset": "1.5"},
        {"object_id": "x", "timerange": "_"},  # unbounded
        {"object_id": "x", "timerange": "[3:0_2:0)"},  # empty
        {"object_id": "x", "timerange": "()"},
        {"object_id": "x", "timerange": "[2:0_3:0)", "last_duration": "-1:0"},
        {"object_id": "x", "timerange": "[2:0_3:0)", "key_frame_count": "2"},
        {"object_id": "", "timerange": "[2:0_3:0)"},
        [{"object_id": "ok", "timerange": "[10:0_11:0)"}, "not an object"],
        "segment",
    ]
    for body in bad:
        reply = await api.call("POST", path, json=body)
        assert reply.status == 400, (body, reply.status, reply.raw)
    await api.call(
        "POST",
        f"/flows/{uuid.uuid4()}/segments",
        json={"object_id": "x", "timerange": "[0:0_1:0)"},
        status=404,
    )
    assert await snapshot(api, fid) == stored["snapshot"]


async def test_oversized_bodies_are_413(api: StoreHttp, stored: dict[str, Any]) -> None:
    flow = stored["flow"]
    big = {**flow, "description": "x" * (17 * 1024 * 1024)}
    reply = await api.call("PUT", f"/flows/{flow['id']}", json=big)
    assert reply.status == 413
    assert reply.body["type"] == "PayloadTooLarge"
    assert await snapshot(api, flow["id"]) == stored["snapshot"]


async def test_unknown_routes_and_methods(api: StoreHttp) -> None:
    reply = await api.call("GET", "/no/such/thing", status=404)
    assert reply.body["type"] == "NotFound"
    reply = await api.call("POST", "/flows", json={}, status=405)
    assert reply.body["type"] == "MethodNotAllowed"
    assert "GET" in reply.headers["Allow"]
    await api.call("PUT", f"/sources/{uuid.uuid4()}", json={}, status=405)
    await api.call("PATCH", f"/flows/{uuid.uuid4()}", json={}, status=405)
    await api.call("GET", "/service", status=200, schema="service.json")  # still serving


async def test_bad_service_and_storage_bodies(api: StoreHttp, stored: dict[str, Any]) -> None:
    await api.call("POST", "/service", json={"name": 5}, status=400)
    await api.call(
        "POST",
        "/service",
        data=b"{nope",
        headers={"Content-Type": "application/json"},
        status=400,
    )
    fid = stored["flow"]["id"]
    body: Any
    for body in (
        {"limit": -1},
        {"object_ids": "a"},
        {"object_ids": []},
        {"object_ids": ["a", "a"]},
        {"content_type": "nonsense"},
        [1],
    ):
        reply = await api.call("POST", f"/flows/{fid}/storage", json=body)
        assert reply.status == 400, (body, reply.status)


async def test_deeply_nested_json_is_refused(api: StoreHttp, stored: dict[str, Any]) -> None:
    flow = stored["flow"]
    deep = "[" * 100_000 + "]" * 100_000
    for body in (
        deep,
        json.dumps({**flow, "tags": {"x": "y"}, "label": "x"})[:-1] + ', "extra": ' + "[" * 5000 + "]" * 5000 + "}",
    ):
        reply = await api.call(
            "PUT",
            f"/flows/{flow['id']}",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        assert reply.status == 400
    assert await snapshot(api, flow["id"]) == stored["snapshot"]

"""The local store agrees with the wider TAMS ecosystem (the spec, and the acceptance tests a
cloud store passes) where the two used to differ: unknown object ids, malformed path ids,
authentication before route matching, one Content-Type, ``limit`` where no 400 is documented,
and reusing an object that already has its init object."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from store_http import ELSEWHERE, StoreHttp, basic_http, new_flow, unsigned

from tests.conftest import RunningStore


@pytest.fixture
async def api(shared_store: RunningStore) -> AsyncIterator[StoreHttp]:
    async with basic_http(shared_store) as api:
        yield api


async def new_flow_id(api: StoreHttp, **fields: Any) -> str:
    flow = new_flow(**fields)
    await api.put_flow(flow, status=201)
    return flow["id"]


async def listed_segments(api: StoreHttp, flow_id: str) -> list[dict[str, Any]]:
    return unsigned((await api.segments(flow_id, limit="1000")).body)


async def test_segments_may_name_only_objects_the_store_knows_or_can_reach(api: StoreHttp) -> None:
    fid = await new_flow_id(api)
    never = f"never-allocated-{uuid.uuid4()}"
    reply = await api.call("POST", f"/flows/{fid}/segments", json={"object_id": never, "timerange": "[0:0_1:0)"}, status=400)
    assert never in reply.body["summary"]
    await api.call("GET", f"/objects/{never}", status=404)
    assert await listed_segments(api, fid) == []

    # In a list, the unknown one fails and the rest are stored.
    (obj,) = await api.allocate(fid)
    bulk = [{"object_id": never, "timerange": "[0:0_1:0)"}, {"object_id": obj["object_id"], "timerange": "[1:0_2:0)"}]
    reply = await api.post_segments(fid, bulk, status=200)
    assert [f["object_id"] for f in reply.body["failed_segments"]] == [never]
    assert [s["object_id"] for s in await listed_segments(api, fid)] == [obj["object_id"]]
    await api.call("GET", f"/objects/{never}", status=404)

    # Media kept elsewhere is registered with the URLs it is read from.
    await api.post_segments(fid, {"object_id": never, "timerange": "[2:0_3:0)", **ELSEWHERE})
    stored = (await api.call("GET", f"/objects/{never}", schema="object.json")).body
    assert [u["url"] for u in stored["get_urls"]] == [ELSEWHERE["get_urls"][0]["url"]]


async def test_an_unknown_init_object_is_refused_and_changes_nothing(api: StoreHttp) -> None:
    flow = new_flow(container="video/mp4")
    flow["essence_parameters"]["init_segments"] = True
    fid = await new_flow_id(api, **{k: v for k, v in flow.items() if k not in ("id", "source_id")})
    (media,) = await api.allocate(fid, content_type="video/mp4")
    never = f"never-allocated-init-{uuid.uuid4()}"
    segment = {"object_id": media["object_id"], "timerange": "[0:0_1:0)", "init_object_id": never}
    reply = await api.call("POST", f"/flows/{fid}/segments", json=segment, status=400)
    assert never in reply.body["summary"]
    assert await listed_segments(api, fid) == []
    await api.call("GET", f"/objects/{never}", status=404)
    # The media object was not registered either: it can still be used with a real init object.
    (init,) = await api.allocate(fid, content_type="video/mp4")
    await api.post_segments(fid, {**segment, "init_object_id": init["object_id"]})


async def test_reusing_an_object_keeps_its_init_object_without_naming_it(api: StoreHttp) -> None:
    flow = new_flow(container="video/mp4")
    flow["essence_parameters"]["init_segments"] = True
    await api.put_flow(flow, status=201)
    fid = flow["id"]
    (init,) = await api.allocate(fid, content_type="video/mp4")
    (media,) = await api.allocate(fid, content_type="video/mp4")
    first = {"object_id": media["object_id"], "timerange": "[0:0_2:0)", "init_object_id": init["object_id"]}
    await api.post_segments(fid, first)

    # The same object again, here and in another CMAF Flow, as the spec asks: init_object_id left out.
    reuse = {"object_id": media["object_id"], "timerange": "[10:0_12:0)", "ts_offset": "10:0"}
    await api.post_segments(fid, reuse)
    other = new_flow(container="video/mp4")
    other["essence_parameters"]["init_segments"] = True
    await api.put_flow(other, status=201)
    await api.post_segments(other["id"], {**reuse, "timerange": "[5:0_7:0)", "ts_offset": "5:0"})

    for flow_id, count in ((fid, 2), (other["id"], 1)):
        segments = await listed_segments(api, flow_id)
        assert len(segments) == count
        assert {s["init_object"]["object_id"] for s in segments} == {init["object_id"]}
        assert all(s["init_object"]["get_urls"] for s in segments)

    # Naming another init object for it is still refused, and a new object still needs one.
    (other_init,) = await api.allocate(fid, content_type="video/mp4")
    await api.call("POST", f"/flows/{fid}/segments", json={**reuse, "timerange": "[20:0_22:0)", "ts_offset": "20:0",
                                                          "init_object_id": other_init["object_id"]}, status=400)
    (fresh,) = await api.allocate(fid, content_type="video/mp4")
    await api.call("POST", f"/flows/{fid}/segments", json={"object_id": fresh["object_id"], "timerange": "[30:0_31:0)"},
                   status=400)
    assert len(await listed_segments(api, fid)) == 2


async def test_malformed_ids_in_paths_are_404_and_change_nothing(api: StoreHttp) -> None:
    fid = await new_flow_id(api)
    (obj,) = await api.allocate(fid)
    await api.post_segments(fid, {"object_id": obj["object_id"], "timerange": "[0:0_1:0)"})
    before = await listed_segments(api, fid)
    segment = {"object_id": obj["object_id"], "timerange": "[5:0_6:0)"}
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/flows/invalid-id", {}),
        ("HEAD", "/flows/invalid-id", {}),
        ("GET", "/flows/%C2%84", {}),
        ("DELETE", "/flows/invalid-id", {}),
        ("GET", "/flows/invalid-id/segments", {}),
        ("POST", "/flows/invalid-id/segments", {"json": segment}),
        ("DELETE", "/flows/invalid-id/segments", {}),
        ("POST", "/flows/invalid-id/storage", {"json": {"limit": 1}}),
        ("PUT", "/flows/invalid-id/tags/genre", {"json": "news"}),
        ("GET", "/flows/invalid-id/label", {}),
        ("PUT", "/flows/invalid-id/label", {"json": "x"}),
        ("GET", "/sources/invalid-id", {}),
        ("PUT", "/sources/invalid-id/label", {"json": "x"}),
        ("GET", "/service/webhooks/invalid-id", {}),
        ("DELETE", "/service/webhooks/invalid-id", {}),
        ("GET", "/service/profiles/invalid-id", {}),
    ]
    for method, path, kwargs in cases:
        reply = await api.call(method, path, status=404, **kwargs)
        if method != "HEAD":
            assert reply.body["type"] == "NotFound", (method, path, reply.body)
    assert await listed_segments(api, fid) == before


async def test_credentials_are_checked_before_any_route_lookup(shared_store: RunningStore, api: StoreHttp) -> None:
    async with aiohttp.ClientSession() as session:
        anonymous = StoreHttp(session, shared_store.url)
        for method, path in (
            ("GET", "/flows/%7BflowId%7D"),
            ("GET", "/no/such/path"),
            ("GET", "/flows/invalid-id"),
            ("DELETE", "/"),  # a path that exists, with a method it does not have
            ("PATCH", "/flows"),
        ):
            reply = await anonymous.call(method, path, status=401)
            assert any(v.startswith("Bearer") for v in reply.headers.getall("WWW-Authenticate")), (method, path)
        # With credentials, the same requests learn what is there.
        await api.call("GET", "/no/such/path", status=404)
        await api.call("GET", "/flows/%7BflowId%7D", status=404)
        await api.call("DELETE", "/", status=405)
        # The token endpoint and the key set answer without API credentials, as before.
        await anonymous.call("GET", "/.well-known/jwks.json", status=200, schema={"type": "object"})
        await anonymous.call("GET", "/oauth2/token", status=405)


async def test_every_json_answer_has_the_one_content_type(shared_store: RunningStore, api: StoreHttp) -> None:
    fid = await new_flow_id(api)
    replies = [
        await api.call("GET", "/flows", status=200, items="flow-get.json"),
        await api.call("GET", f"/flows/{fid}", status=200, schema="flow-get.json"),
        await api.call("GET", "/flows", params={"limit": "0"}, status=400),
        await api.call("GET", f"/flows/{uuid.uuid4()}", status=404),
        await api.call("PATCH", "/flows", status=405),
        await api.call("PUT", f"/flows/{fid}", data=b"{", headers={"Content-Type": "application/json"}, status=400),
    ]
    async with aiohttp.ClientSession() as session:
        anonymous = StoreHttp(session, shared_store.url)
        replies.append(await anonymous.call("GET", "/flows", status=401))
        replies.append(await anonymous.call("GET", "/.well-known/jwks.json", status=200, schema={"type": "object"}))
        replies.append(await anonymous.call("POST", "/oauth2/token", data={"grant_type": "client_credentials"}, status=401))
    for reply in replies:
        assert reply.headers["Content-Type"] == "application/json", (reply.status, reply.headers["Content-Type"])


@pytest.mark.parametrize("path", ["/service/webhooks", "/service/storage-backends", "/flow-delete-requests"])
async def test_limit_out_of_range_is_brought_into_range_where_no_400_is_documented(api: StoreHttp, path: str) -> None:
    for limit, page_size in (("0", "1"), ("-5", "1"), ("x", "100"), ("100000", "1000")):
        reply = await api.call("GET", path, params={"limit": limit}, status=200, schema={"type": "array"})
        assert reply.headers["X-Paging-Limit"] == page_size, (path, limit)
        assert len(reply.body) <= int(page_size)
    # Where the spec documents a 400, a bad limit still gets one.
    await api.call("GET", "/flows", params={"limit": "0"}, status=400)

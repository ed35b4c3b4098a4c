"""Bad input to the routes and filters added for the complete 8.2 API (issue 8): wrong methods,
unknown ids, bad bodies and bad filters get the spec's 4xx with an error body (``StoreHttp``
checks it against ``error.json``), never a 500, and nothing stored changes. Webhook bad input is
in ``test_store_webhooks.py``.
"""

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


async def snapshot(api: StoreHttp) -> dict[str, Any]:
    """Everything the store lists, to compare before and after the refused requests."""
    big = {"limit": "1000"}
    return {
        "flows": (await api.call("GET", "/flows", params=big, items="flow-get.json")).body,
        "sources": (await api.call("GET", "/sources", params=big, items="source.json")).body,
        "profiles": (await api.call("GET", "/service/profiles", params=big, items="profile.json")).body,
        "webhooks": (await api.call("GET", "/service/webhooks", params=big, items="webhook-get.json")).body,
        "deletes": (await api.call("GET", "/flow-delete-requests", params=big, items="deletion-request.json")).body,
        "service": (await api.call("GET", "/service", schema="service.json")).body,
    }


@pytest.fixture
async def world(api: StoreHttp) -> dict[str, str]:
    flow = new_flow(tags={"a": "b"})
    await api.put_flow(flow, status=201)
    (target,) = await api.allocate(flow["id"])
    await api.post_segments(flow["id"], {"object_id": target["object_id"], "timerange": "[0:0_1:0)"})
    profile_id = str(uuid.uuid4())
    await api.call(
        "POST",
        f"/service/profiles/{profile_id}",
        status=201,
        schema="profile.json",
        json={
            "id": profile_id,
            "flow_metadata": {"format": "urn:x-nmos:format:data", "codec": "text/plain", "essence_parameters": {}},
        },
    )
    return {"flow": flow["id"], "source": flow["source_id"], "object": target["object_id"], "profile": profile_id}


async def expect(api: StoreHttp, status: int, method: str, path: str, **kwargs: Any) -> None:
    reply = await api.call(method, path, **kwargs)
    assert reply.status == status, (method, path, kwargs, reply.status, reply.raw[:300])


async def test_bad_filters_on_every_list_are_400(api: StoreHttp, world: dict[str, str]) -> None:
    before = await snapshot(api)
    cases: list[tuple[str, dict[str, str]]] = [
        ("/flows", {"collected_by_ids": "nope"}),
        ("/flows", {"profile_id": "nope"}),
        ("/flows", {"format": "urn:x-nmos:format:smell"}),
        ("/flows", {"codec": "h264"}),
        ("/flows", {"status": "finished"}),
        ("/flows", {"frame_width": "wide"}),
        ("/flows", {"timerange": "[0:0_1:x)"}),
        ("/flows", {"sort_by": "size"}),
        ("/sources", {"format": "video"}),
        ("/sources", {"collected_by_ids": ","}),
        ("/sources", {"reverse_order": "backwards"}),
        ("/service/profiles", {"format": "urn:x-nmos:format:multi"}),
        ("/service/profiles", {"codec": "plain"}),
        ("/service/profiles", {"limit": "0"}),
        ("/service/storage-backends", {"reverse_order": "1"}),
        ("/service/storage-backends", {"page": "x"}),
        ("/flow-delete-requests", {"sort_by": "flow_id"}),
        ("/flow-delete-requests", {"reverse_order": "yes please"}),
        ("/flow-delete-requests", {"page": "o-1"}),
        (f"/objects/{world['object']}", {"flow_tag_exists.a": "2"}),
        (f"/objects/{world['object']}", {"accept_storage_ids": "nope"}),
        (f"/objects/{world['object']}", {"presigned": "sometimes"}),
        (f"/flows/{world['flow']}/segments", {"verbose_storage": "very"}),
    ]
    for path, params in cases:
        await expect(api, 400, "GET", path, params=params)
        await expect(api, 400, "HEAD", path, params=params)
    await expect(api, 400, "DELETE", f"/flows/{world['flow']}/segments", params={"object_id": ""})
    await expect(api, 400, "DELETE", f"/flows/{world['flow']}/segments", params={"timerange": "yesterday"})
    assert await snapshot(api) == before


async def test_bad_profiles_are_refused(api: StoreHttp, world: dict[str, str]) -> None:
    before = await snapshot(api)
    pid = str(uuid.uuid4())
    good = {
        "id": pid,
        "flow_metadata": {"format": "urn:x-nmos:format:data", "codec": "text/plain", "essence_parameters": {}},
    }
    bodies: list[Any] = [
        {**good, "id": str(uuid.uuid4())},  # differs from the path
        {"id": pid},  # no flow_metadata
        {**good, "flow_metadata": {**good["flow_metadata"], "format": "urn:x-nmos:format:multi"}},
        {**good, "flow_metadata": {"format": "urn:x-nmos:format:video", "codec": "video/h264"}},  # no essence
        {**good, "tags": {"a": 2}},
        {**good, "label": 7},
        [good],
        "profile",
        {**good, "id": world["profile"]},  # differs from the path, and exists
    ]
    for body in bodies:
        await expect(api, 400, "POST", f"/service/profiles/{pid}", json=body)
    await expect(api, 400, "POST", f"/service/profiles/{pid}", data=b"{", headers={"Content-Type": "application/json"})
    existing = {**good, "id": world["profile"]}
    await expect(api, 400, "POST", f"/service/profiles/{world['profile']}", json=existing)  # immutable
    await expect(api, 400, "POST", "/service/profiles/not-a-uuid", json={**good, "id": "not-a-uuid"})
    await expect(api, 404, "GET", "/service/profiles/not-a-uuid")  # names nothing that exists
    await expect(api, 404, "GET", f"/service/profiles/{pid}")
    await expect(api, 405, "PUT", f"/service/profiles/{pid}", json=good)
    await expect(api, 405, "DELETE", f"/service/profiles/{world['profile']}")
    await expect(api, 405, "POST", "/service/profiles", json=good)
    assert await snapshot(api) == before


async def test_bad_flow_puts_with_profiles_and_fields_are_refused(api: StoreHttp, world: dict[str, str]) -> None:
    before = await snapshot(api)
    fid = str(uuid.uuid4())
    base = {"id": fid, "source_id": str(uuid.uuid4())}
    for body in (
        {**base, "profile_id": world["profile"], "codec": "text/html"},  # Profile plus technical metadata
        {**base, "profile_id": world["profile"], "container": "text/plain"},
        {**base, "profile_id": str(uuid.uuid4())},  # unknown Profile
        {**base, "profile_id": "not-a-uuid"},
        {**new_flow(), "id": fid, "description": 5},  # a property named "description" is checked too
        {**new_flow(), "id": fid, "flow_collection": [{"id": str(uuid.uuid4())}]},  # no such member
        {**new_flow(), "id": fid, "flow_collection": [{"id": fid}]},  # itself
        {**new_flow(), "id": fid, "status": "done"},
    ):
        await expect(api, 400, "PUT", f"/flows/{fid}", json=body)
    collection = f"/flows/{world['flow']}/flow_collection"
    for value in ([{"id": "nope"}], [{"role": "x"}], {"id": world["flow"]}, [{"id": str(uuid.uuid4())}]):
        await expect(api, 400, "PUT", collection, json=value)
    await expect(api, 404, "GET", collection)  # not a collection
    await expect(api, 404, "DELETE", collection)
    assert await snapshot(api) == before


async def test_bad_instance_and_delete_request_requests(api: StoreHttp, world: dict[str, str]) -> None:
    before = await snapshot(api)
    instances = f"/objects/{world['object']}/instances"
    for body in ([], "x", {}, {"url": "https://m.example.com/x"}, {"label": "m"}, {"storage_id": "not-a-uuid"}):
        await expect(api, 400, "POST", instances, json=body)
    await expect(api, 400, "POST", instances, data=b"\xff", headers={"Content-Type": "application/json"})
    await expect(api, 405, "GET", instances)
    await expect(api, 405, "PUT", instances, json={"label": "m", "url": "https://m.example.com/x"})
    await expect(api, 404, "DELETE", f"/objects/{uuid.uuid4()}/instances", params={"label": "m"})
    await expect(api, 404, "GET", f"/flow-delete-requests/{uuid.uuid4()}")
    await expect(api, 404, "GET", "/flow-delete-requests/not-even-a-uuid")
    await expect(api, 405, "DELETE", "/flow-delete-requests")
    await expect(api, 405, "POST", "/flow-delete-requests", json={})
    await expect(api, 405, "DELETE", f"/flow-delete-requests/{uuid.uuid4()}")
    after = await snapshot(api)
    assert after == before
    obj = await api.call("GET", f"/objects/{world['object']}", status=200, schema="object.json")
    assert [u["label"] for u in obj.body["get_urls"]] == ["local", "local"]  # no instance was added


async def test_malformed_json_never_gives_a_500(api: StoreHttp, world: dict[str, str]) -> None:
    paths = [
        ("POST", "/service"),
        ("POST", f"/service/profiles/{uuid.uuid4()}"),
        ("POST", "/service/webhooks"),
        ("POST", f"/objects/{world['object']}/instances"),
        ("PUT", f"/flows/{world['flow']}/flow_collection"),
        ("PUT", f"/sources/{world['source']}/tags/x"),
    ]
    for method, path in paths:
        for raw in (b'{"a": ', b"[" * 10000 + b"]" * 10000, json.dumps({"x": "\ud800"}).encode(), b"\x00"):
            reply = await api.call(method, path, data=raw, headers={"Content-Type": "application/json"})
            assert reply.status == 400, (method, path, raw[:20], reply.status)

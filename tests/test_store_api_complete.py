"""The rest of the TAMS 8.2 API on the local store (issue 8): service details, deletion request
records, object instances, Flow Profiles, Flow and Source collections in both directions, the
``collected_by_ids``/``flow_tag`` filters, and the listing conventions (limit, ``Link``,
``X-Paging-*``, HEAD, tag filters, reverse order) on every list endpoint. Every JSON body is
validated against the spec's schemas by ``StoreHttp``.
"""

from __future__ import annotations

import hashlib
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from store_http import StoreHttp, basic_header, basic_http, new_flow, unsigned

from local_store.config import StoreConfig
from tests import loopback
from tests.conftest import DEFAULT_CLIENTS, RunningStore

# Listings whose spec operation documents no 400 response.
LIMIT_WITHOUT_400 = frozenset({"/service/webhooks", "/service/storage-backends", "/flow-delete-requests"})
DEFAULT_LIMIT = StoreConfig.default_limit


@pytest.fixture
async def api(shared_store: RunningStore) -> AsyncIterator[StoreHttp]:
    async with basic_http(shared_store) as api:
        yield api


async def reader_headers(store: RunningStore) -> dict[str, str]:
    client = DEFAULT_CLIENTS[1]
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            store.oauth2_url,
            data={"grant_type": "client_credentials"},
            headers=basic_header(client["client_id"], client["client_secret"]),
        ) as response,
    ):
        return {"Authorization": "Bearer " + (await response.json())["access_token"]}


async def flow_with_segment(api: StoreHttp, data: bytes = b"", **fields: Any) -> tuple[dict[str, Any], str]:
    flow = new_flow(**fields)
    await api.put_flow(flow, status=201)
    (target,) = await api.allocate(flow["id"])
    if data:
        put_url = target["put_url"]
        await api.call("PUT", put_url["url"], data=data, headers={"Content-Type": put_url["content-type"]}, status=201)
    await api.post_segments(flow["id"], {"object_id": target["object_id"], "timerange": "[0:0_1:0)"})
    return flow, target["object_id"]


def multi_flow(**fields: Any) -> dict[str, Any]:
    flow = new_flow(format="urn:x-nmos:format:multi", **fields)
    del flow["codec"], flow["essence_parameters"]
    return flow


async def all_pages(api: StoreHttp, path: str, items: str, **params: str) -> tuple[list[Any], int]:
    """Every item, following ``Link`` with limit=1; also the number of pages."""
    reply = await api.call("GET", path, params={**params, "limit": "1"}, status=200, items=items)
    found, pages = list(reply.body), 1
    while "Link" in reply.headers:
        assert reply.headers["X-Paging-Limit"] == "1" and reply.headers["X-Paging-NextKey"]
        assert reply.headers["Link"].endswith('>; rel="next"')
        reply = await api.call("GET", reply.headers["Link"][1:].split(">")[0], status=200, items=items)
        found += reply.body
        pages += 1
    return found, pages


# --- service -----------------------------------------------------------------------------------------


async def test_service_reports_version_backends_and_event_streams(api: StoreHttp) -> None:
    service = (await api.call("GET", "/service", status=200, schema="service.json")).body
    assert service["api_version"] == "8.2"
    assert {"name": "webhooks"}.items() <= service["event_stream_mechanisms"][0].items()
    backends = await api.call("GET", "/service/storage-backends", status=200, schema="storage-backends-list.json")
    assert service["storage_backends"] == backends.body
    root = await api.call("GET", "/", status=200, schema={"type": "array", "items": {"type": "string"}})
    assert root.body == ["service", "flows", "sources", "flow-delete-requests"]
    updated = await api.call("POST", "/service", json={"description": "described"}, status=200, schema="service.json")
    assert updated.body["description"] == "described"
    for bad in ({"name": 5}, ["name"], {"description": None}):
        await api.call("POST", "/service", json=bad, status=400)
    assert (await api.call("GET", "/service", schema="service.json")).body["description"] == "described"


async def test_a_source_goes_with_its_last_flow(api: StoreHttp) -> None:
    first = new_flow()
    second = new_flow(source_id=first["source_id"])
    for flow in (first, second):
        await api.put_flow(flow, status=201)
    await api.call("DELETE", f"/flows/{first['id']}", status=204)
    await api.call("GET", f"/sources/{first['source_id']}", status=200, schema="source.json")  # second uses it
    moved = {**second, "source_id": str(uuid.uuid4())}
    await api.put_flow(moved, status=204)  # the Flow moves to a new Source: the old one is unused
    await api.call("GET", f"/sources/{first['source_id']}", status=404)
    await api.call("GET", f"/sources/{moved['source_id']}", status=200, schema="source.json")
    await api.call("DELETE", f"/flows/{second['id']}", status=204)
    await api.call("GET", f"/sources/{moved['source_id']}", status=404)


# --- deletion requests -------------------------------------------------------------------------------


async def test_deletes_answer_204_and_leave_request_records(api: StoreHttp, shared_store: RunningStore) -> None:
    flow, _ = await flow_with_segment(api)
    await api.call("DELETE", f"/flows/{flow['id']}/segments", params={"timerange": "[0:0_5:0)"}, status=204)
    await api.call("DELETE", f"/flows/{flow['id']}", status=204)
    listed = await api.call("GET", "/flow-delete-requests", status=200, items="deletion-request.json")
    ours = [r for r in listed.body if r["flow_id"] == flow["id"]]
    assert [(r["delete_flow"], r["timerange_to_delete"]) for r in ours] == [(True, "_"), (False, "[0:0_5:0)")]
    assert all(r["status"] == "done" and r["timerange_remaining"] == "()" for r in ours)
    assert all(r["created_by"] == shared_store.username and r["expiry"] > r["created"] for r in ours)
    one = await api.call("GET", f"/flow-delete-requests/{ours[0]['id']}", status=200, schema="deletion-request.json")
    assert one.body == ours[0]
    oldest = await api.call("GET", "/flow-delete-requests", params={"reverse_order": "true"}, items="deletion-request.json")
    assert oldest.headers["X-Paging-Reverse-Order"] == "true"
    assert [r["id"] for r in oldest.body] == [r["id"] for r in reversed(listed.body)]
    by_expiry = await api.call("GET", "/flow-delete-requests", params={"sort_by": "expiry"}, items="deletion-request.json")
    assert [r["expiry"] for r in by_expiry.body] == sorted((r["expiry"] for r in by_expiry.body), reverse=True)
    await api.call("GET", f"/flow-delete-requests/{uuid.uuid4()}", status=404)
    await api.call("GET", "/flow-delete-requests", params={"sort_by": "size"}, status=400)
    reader = api.with_headers(await reader_headers(shared_store))
    await reader.call("GET", "/flow-delete-requests", status=403)  # listing them is for admins
    await reader.call("GET", f"/flow-delete-requests/{ours[0]['id']}", status=403)
    await reader.call("DELETE", f"/flows/{uuid.uuid4()}", status=403)


# --- object instances --------------------------------------------------------------------------------


@pytest.fixture
async def mirror() -> AsyncIterator[tuple[str, dict[str, bytes]]]:
    """An HTTP server holding copies of objects: (base URL, {path: bytes})."""
    files: dict[str, bytes] = {}

    async def serve(request: web.Request) -> web.Response:
        if request.path not in files:
            return web.Response(status=404)
        return web.Response(body=files[request.path], content_type="video/mp2t")

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    runner, url = await loopback.serve(app)
    yield url, files
    await runner.cleanup()


async def test_object_instances_add_remove_and_copy(
    api: StoreHttp, shared_store: RunningStore, mirror: tuple[str, dict[str, bytes]]
) -> None:
    data = b"the object's bytes"
    flow, object_id = await flow_with_segment(api, data)
    base, files = mirror
    files["/copy-1"] = data
    instances = f"/objects/{object_id}/instances"
    backend = (await api.call("GET", "/service/storage-backends", schema="storage-backends-list.json")).body[0]

    async def urls(**params: str) -> list[dict[str, Any]]:
        segment = (await api.segments(flow["id"], **params)).body[0]
        obj = await api.call("GET", f"/objects/{object_id}", params=params, status=200, schema="object.json")

        assert unsigned(obj.body.get("get_urls", [])) == unsigned(segment.get("get_urls", []))
        return segment.get("get_urls", [])

    await api.call("POST", instances, json={"url": base + "/copy-1", "label": "mirror"}, status=201)
    assert [(u["label"], u["presigned"]) for u in await urls()] == [
        ("local", True),
        ("local", False),
        ("mirror", False),
    ]
    assert [u["url"] for u in await urls(accept_get_urls="mirror")] == [base + "/copy-1"]
    verbose = await urls(verbose_storage="true")
    assert [u.get("storage_id") for u in verbose] == [backend["id"], backend["id"], None]
    assert [u["controlled"] for u in verbose] == [True, True, False]
    for bad in (
        {"url": base + "/other", "label": "mirror"},  # the label is taken
        {"url": base + "/other", "label": "local"},  # a storage backend's label
        {"url": "ftp://mirror.example.com/x", "label": "ftp"},
        {"url": base + "/x"},
        {"storage_id": backend["id"]},  # already held by that backend
        {"storage_id": str(uuid.uuid4())},  # no such backend
        {"storage_id": backend["id"], "url": base + "/x", "label": "both"},
    ):
        await api.call("POST", instances, json=bad, status=400)

    # Remove the controlled copy: only the mirror is left, and the store's file is gone.
    await api.call("DELETE", instances, params={"storage_id": backend["id"]}, status=204)
    assert [u["label"] for u in await urls()] == ["mirror"]
    digest = hashlib.sha256(object_id.encode()).hexdigest()
    assert not (shared_store.data_dir / "objects" / digest[:2] / digest).exists()
    await api.call("DELETE", instances, params={"label": "mirror"}, status=400)  # never the last one
    await api.call("DELETE", instances, params={"storage_id": backend["id"]}, status=404)  # none there now

    # Ask for a controlled copy again: the store fetches it from the mirror.
    await api.call("POST", instances, json={"storage_id": backend["id"]}, status=201)
    copied = next(u for u in await urls(presigned="true"))
    assert (await api.call("GET", copied["url"], headers={"Authorization": ""}, status=200)).raw == data
    await api.call("DELETE", instances, params={"label": "mirror"}, status=204)
    assert [u["label"] for u in await urls()] == ["local", "local"]
    await api.call("DELETE", instances, params={"label": "local"}, status=400)  # the last instance
    for params in ({}, {"storage_id": "not-a-uuid"}, {"label": ""}):
        await api.call("DELETE", instances, params=params, status=400)
    await api.call("DELETE", instances, params={"label": "nothing-by-that-name"}, status=404)
    await api.call("POST", f"/objects/{uuid.uuid4()}/instances", json={"url": base + "/x", "label": "m"}, status=404)
    (allocated,) = await api.allocate(flow["id"])  # allocated, not registered: 404 as well
    await api.call("POST", f"/objects/{allocated['object_id']}/instances", json={"url": base + "/x", "label": "m"}, status=404)


async def test_object_flow_tag_filters_and_paging(api: StoreHttp) -> None:
    red, object_id = await flow_with_segment(api, tags={"team": "red"})
    blue = new_flow(tags={"team": ["blue", "green"]})
    await api.put_flow(blue, status=201)
    await api.post_segments(blue["id"], {"object_id": object_id, "timerange": "[5:0_6:0)", "ts_offset": "5:0"})
    path = "/objects/" + urllib.parse.quote(object_id, safe="")

    async def flows(**params: str) -> list[str]:
        reply = await api.call("GET", path, params=params, status=200, schema="object.json")
        return list(reply.body["referenced_by_flows"])

    assert set(await flows()) == {red["id"], blue["id"]}
    assert await flows(**{"flow_tag.team": "red"}) == [red["id"]]
    assert await flows(**{"flow_tag.team": "green,purple"}) == [blue["id"]]
    assert await flows(**{"flow_tag_exists.team": "false"}) == []
    first = await api.call("GET", path, params={"limit": "1"}, status=200, schema="object.json")
    assert len(first.body["referenced_by_flows"]) == 1 and 'rel="next"' in first.headers["Link"]
    second = await api.call("GET", first.headers["Link"][1:].split(">")[0], status=200, schema="object.json")
    assert set(first.body["referenced_by_flows"] + second.body["referenced_by_flows"]) == {red["id"], blue["id"]}
    await api.call("GET", path, params={"flow_tag_exists.team": "perhaps"}, status=400)


# --- Flow Profiles -----------------------------------------------------------------------------------


async def test_flow_profiles(api: StoreHttp) -> None:
    run = uuid.uuid4().hex
    profile_id = str(uuid.uuid4())
    profile = {
        "id": profile_id,
        "label": f"profile {run}",
        "tags": {"run": run},
        "flow_metadata": {
            "format": "urn:x-nmos:format:video",
            "codec": "video/h264",
            "container": "video/mp2t",
            "essence_parameters": {"frame_width": 640, "frame_height": 360, "frame_rate": {"numerator": 25}},
        },
    }
    created = await api.call("POST", f"/service/profiles/{profile_id}", json=profile, status=201, schema="profile.json")
    assert created.body["flow_metadata"] == profile["flow_metadata"] and "created" in created.body
    await api.call("POST", f"/service/profiles/{profile_id}", json={**profile, "label": "changed"}, status=400)
    got = await api.call("GET", f"/service/profiles/{profile_id}", status=200, schema="profile.json")
    assert got.body == created.body
    listed = await api.call("GET", "/service/profiles", params={"label": profile["label"]}, items="profile.json")
    assert [p["id"] for p in listed.body] == [profile_id]
    for params, found in (
        ({"format": "urn:x-nmos:format:video"}, True),
        ({"format": "urn:x-nmos:format:audio"}, False),
        ({"codec": "video/h264"}, True),
        ({"codec": "audio/aac"}, False),
    ):
        reply = await api.call("GET", "/service/profiles", params={**params, "limit": "1000"}, items="profile.json")
        assert (profile_id in {p["id"] for p in reply.body}) is found, params

    # A Flow made from the Profile carries its technical metadata and can be found by it.
    flow = {"id": str(uuid.uuid4()), "source_id": str(uuid.uuid4()), "profile_id": profile_id, "label": "from profile"}
    made = await api.call("PUT", f"/flows/{flow['id']}", json=flow, status=201, schema="flow-get.json")
    assert made.body["codec"] == "video/h264" and made.body["essence_parameters"]["frame_width"] == 640
    assert made.body["profile_id"] == profile_id
    by_profile = await api.call("GET", "/flows", params={"profile_id": profile_id}, items="flow-get.json")
    assert [f["id"] for f in by_profile.body] == [flow["id"]]
    await api.call("PUT", f"/flows/{flow['id']}", json={**flow, "label": "renamed"}, status=204)
    await api.call("PUT", f"/flows/{flow['id']}", json={**flow, "codec": "video/h265"}, status=400)
    await api.call("PUT", f"/flows/{flow['id']}", json={**flow, "profile_id": str(uuid.uuid4())}, status=400)
    # profile_id "" unlinks the Flow, which then states its own technical metadata.
    unlinked = {**made.body, "profile_id": "", "codec": "video/h265"}
    await api.call("PUT", f"/flows/{flow['id']}", json=unlinked, status=204)
    body = (await api.call("GET", f"/flows/{flow['id']}", status=200, schema="flow-get.json")).body
    assert "profile_id" not in body and body["codec"] == "video/h265"
    by_profile = await api.call("GET", "/flows", params={"profile_id": profile_id}, items="flow-get.json")
    assert by_profile.body == []


# --- collections -------------------------------------------------------------------------------------


async def test_flow_and_source_collections_in_both_directions(api: StoreHttp) -> None:
    run = uuid.uuid4().hex
    video, audio = new_flow(tags={"run": run}), new_flow(tags={"run": run})
    audio |= {"format": "urn:x-nmos:format:audio", "codec": "audio/aac", "essence_parameters": {"sample_rate": 48000, "channels": 2}}
    for flow in (video, audio):
        await api.put_flow(flow, status=201)
    collector = multi_flow(
        tags={"run": run},
        flow_collection=[{"id": video["id"], "role": "picture"}, {"id": audio["id"], "role": "sound"}],
    )
    await api.put_flow(collector, status=201)

    async def flow(flow_id: str) -> dict[str, Any]:
        return (await api.call("GET", f"/flows/{flow_id}", status=200, schema="flow-get.json")).body

    async def source(source_id: str) -> dict[str, Any]:
        return (await api.call("GET", f"/sources/{source_id}", status=200, schema="source.json")).body

    async def flow_ids(**params: str) -> set[str]:
        reply = await api.call("GET", "/flows", params={"tag.run": run, **params}, items="flow-get.json")
        return {f["id"] for f in reply.body}

    async def source_ids(**params: str) -> set[str]:
        reply = await api.call("GET", "/sources", params={"limit": "1000", **params}, items="source.json")
        return {s["id"] for s in reply.body}

    assert (await flow(video["id"]))["collected_by"] == [collector["id"]]
    assert (await flow(collector["id"])).get("collected_by") is None
    assert (await source(collector["source_id"]))["source_collection"] == [
        {"id": video["source_id"], "role": "picture"},
        {"id": audio["source_id"], "role": "sound"},
    ]
    assert (await source(video["source_id"]))["collected_by"] == [collector["source_id"]]
    assert await flow_ids(collected_by_ids=collector["id"]) == {video["id"], audio["id"]}
    assert await flow_ids(collected_by_ids="") == {collector["id"]}
    assert await flow_ids(collected_by_ids=f"{uuid.uuid4()},{collector['id']}") == {video["id"], audio["id"]}
    assert await source_ids(collected_by_ids=collector["source_id"]) == {video["source_id"], audio["source_id"]}
    top_level = await source_ids(collected_by_ids="")
    assert collector["source_id"] in top_level and video["source_id"] not in top_level

    # Deleting a member takes it out of the collection; emptying the collection frees the rest.
    await api.call("DELETE", f"/flows/{audio['id']}", status=204)
    assert (await flow(collector["id"]))["flow_collection"] == [{"id": video["id"], "role": "picture"}]
    assert (await source(collector["source_id"]))["source_collection"] == [{"id": video["source_id"], "role": "picture"}]
    await api.call("PUT", f"/flows/{collector['id']}/flow_collection", json=[], status=204)
    assert (await flow(video["id"])).get("collected_by") is None
    assert (await source(video["source_id"])).get("collected_by") is None
    assert await flow_ids(collected_by_ids="") == {collector["id"], video["id"]}
    for bad in ("not-a-uuid", f"{uuid.uuid4()},", ","):
        await api.call("GET", "/flows", params={"collected_by_ids": bad}, status=400)
        await api.call("GET", "/sources", params={"collected_by_ids": bad}, status=400)


# --- listing conventions -----------------------------------------------------------------------------


async def test_every_list_endpoint_pages_heads_and_filters_the_same_way(api: StoreHttp) -> None:
    run = uuid.uuid4().hex
    flows = [new_flow(tags={"run": run, "n": str(i)}, label=f"{run}-{i}") for i in range(3)]
    for flow in flows:
        await api.put_flow(flow, status=201)
    for i, flow in enumerate(flows):
        await api.call("PUT", f"/sources/{flow['source_id']}/tags/run", json=run, status=204)
        await api.call("PUT", f"/sources/{flow['source_id']}/tags/n", json=str(i), status=204)
    objects = await api.allocate(flows[0]["id"], limit=3)
    for i, obj in enumerate(objects):
        await api.post_segments(flows[0]["id"], {"object_id": obj["object_id"], "timerange": f"[{i}:0_{i + 1}:0)"})
    for i in range(3):
        await api.call(
            "POST", "/service/webhooks", status=201, schema="webhook-get.json",
            json={"url": f"https://h{i}.example.com/{run}", "events": ["flows/created"], "status": "disabled",
                  "tags": {"run": run, "n": str(i)}},
        )  # fmt: skip
        profile_id = str(uuid.uuid4())
        await api.call(
            "POST", f"/service/profiles/{profile_id}", status=201, schema="profile.json",
            json={"id": profile_id, "label": f"{run}-{i}", "flow_metadata": {
                "format": "urn:x-nmos:format:data", "codec": "text/plain", "container": "text/plain", "essence_parameters": {}}},
        )  # fmt: skip
        await api.call("DELETE", f"/flows/{flows[1]['id']}/segments", params={"timerange": f"[{i}:0]"}, status=204)

    listings: list[tuple[str, str, dict[str, str], int]] = [
        ("/flows", "flow-get.json", {"tag.run": run}, 3),
        ("/sources", "source.json", {"tag.run": run}, 3),
        ("/service/webhooks", "webhook-get.json", {"tag.run": run}, 3),
        ("/service/profiles", "profile.json", {"codec": "text/plain"}, 3),
        (f"/flows/{flows[0]['id']}/segments", "flow-segment.json", {}, 3),
        ("/flow-delete-requests", "deletion-request.json", {}, 3),
        ("/service/storage-backends", "storage-backend.json", {}, 1),
    ]
    for path, items, params, at_least in listings:
        everything = await api.call("GET", path, params={**params, "limit": "1000"}, status=200, items=items)
        assert len(everything.body) >= at_least, path
        assert everything.headers["X-Paging-Count"] == str(len(everything.body)), path
        assert "Link" not in everything.headers, path
        paged, pages = await all_pages(api, path, items, **params)
        assert unsigned(paged) == unsigned(everything.body), path  # segments' URLs are signed per answer
        assert pages == len(everything.body), path
        head = await api.call("HEAD", path, params={**params, "limit": "1"}, status=200)
        assert head.raw == b"" and head.headers["X-Paging-Limit"] == "1", path
        assert ("Link" in head.headers) == (len(everything.body) > 1), path
        if path != "/service/profiles":  # the spec gives Profiles no reverse_order
            backwards = await api.call("GET", path, params={**params, "limit": "1000", "reverse_order": "true"}, status=200, items=items)
            assert unsigned(backwards.body) == unsigned(list(reversed(everything.body))), path
            assert backwards.headers["X-Paging-Reverse-Order"].lower() == "true", path
            assert everything.headers["X-Paging-Reverse-Order"].lower() == "false", path
        await api.call("GET", path, params={**params, "page": "not-a-key"}, status=400)
        if path in LIMIT_WITHOUT_400:
            # The spec documents no 400 here: limit is brought into range instead.
            for bad, page_size in (("0", "1"), ("-2", "1"), ("many", str(DEFAULT_LIMIT))):
                reply = await api.call("GET", path, params={**params, "limit": bad}, status=200, items=items)
                assert reply.headers["X-Paging-Limit"] == page_size, (path, bad)
                assert len(reply.body) == min(int(page_size), len(everything.body)), (path, bad)
        else:
            for bad in ("0", "-2", "many"):
                await api.call("GET", path, params={**params, "limit": bad}, status=400)

    # Tag filters behave alike wherever the spec offers them.
    for path, items in (
        ("/flows", "flow-get.json"),
        ("/sources", "source.json"),
        ("/service/webhooks", "webhook-get.json"),
    ):
        picked = await api.call("GET", path, params={"tag.run": run, "tag.n": "0,2"}, items=items)
        assert sorted(x["tags"]["n"] for x in picked.body) == ["0", "2"], path
        none = await api.call("GET", path, params={"tag.run": run, "tag_exists.n": "false"}, items=items)
        assert none.body == [], path
        await api.call("GET", path, params={"tag_exists.n": "sometimes"}, status=400)
    backends = await api.call("GET", "/service/storage-backends", params={"tag_exists.x": "true"}, items="storage-backend.json")
    assert backends.body == []  # the local backend has no tags

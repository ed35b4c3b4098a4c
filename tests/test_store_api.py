"""The local store's API against the TAMS 8.2 spec: service, Flows, Sources, storage, segments,
objects and paging (the acceptance checks of TAMS_NOTES.md section 6 that belong to the core
store). Every JSON body received is validated against the spec's schemas by ``StoreHttp``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from store_http import StoreHttp, basic_http, new_flow, timerange_re

from tests.conftest import RunningStore


@pytest.fixture
async def api(shared_store: RunningStore) -> AsyncIterator[StoreHttp]:
    async with basic_http(shared_store) as api:
        yield api


async def flow_with_segments(api: StoreHttp, *ranges: str, **fields: Any) -> tuple[dict[str, Any], list[str]]:
    flow = new_flow(**fields)
    await api.put_flow(flow, status=201)
    objects = await api.allocate(flow["id"], limit=len(ranges)) if ranges else []
    ids = [o["object_id"] for o in objects]
    for object_id, timerange in zip(ids, ranges, strict=True):
        await api.post_segments(flow["id"], {"object_id": object_id, "timerange": timerange})
    return flow, ids


# --- service ---------------------------------------------------------------------------------------


async def test_service_describes_a_tams_82_store(api: StoreHttp) -> None:
    body = (await api.call("GET", "/service", status=200, schema="service.json")).body
    assert body["type"].startswith("urn:x-tams:service")
    assert body["api_version"] == "8.2"
    secs = int(body["min_object_timeout"].split(":")[0])
    assert secs >= 300
    presigned = int(body["min_presigned_url_timeout"].split(":")[0])
    assert 30 <= presigned <= secs
    root = await api.call("GET", "/", status=200, schema={"type": "array", "items": {"type": "string"}})
    assert {"service", "flows", "sources"} <= set(root.body)
    head = await api.call("HEAD", "/service", status=200)
    assert head.raw == b""


async def test_storage_backend_is_stable_and_default(api: StoreHttp, shared_store: RunningStore) -> None:
    first = await api.call(
        "GET",
        "/service/storage-backends",
        status=200,
        schema="storage-backends-list.json",
    )
    again = await api.call(
        "GET",
        "/service/storage-backends",
        status=200,
        schema="storage-backends-list.json",
    )
    assert len(first.body) == 1
    backend = first.body[0]
    assert backend["default_storage"] is True
    assert backend["store_type"] == "http_object_store"
    assert backend["label"] == "local"
    assert again.body[0]["id"] == backend["id"]


async def test_service_post_updates_name_and_description(api: StoreHttp) -> None:
    await api.call(
        "POST",
        "/service",
        json={"name": "renamed", "description": "for a test"},
        status=200,
        schema="service.json",
    )
    body = (await api.call("GET", "/service", status=200, schema="service.json")).body
    assert (body["name"], body["description"]) == ("renamed", "for a test")


# --- flows and sources -----------------------------------------------------------------------------


async def test_flow_put_creates_then_updates(api: StoreHttp) -> None:
    flow = new_flow(tags={"genre": "news"})
    created = await api.put_flow(flow, status=201)
    assert created.body["id"] == flow["id"]
    assert created.body["tags"] == {"genre": "news"}
    assert created.body["created_by"] == "test-user"
    for field in ("created", "metadata_updated", "metadata_version"):
        assert field in created.body
    again = await api.put_flow(flow, status=204)
    assert again.raw == b""
    fetched = await api.call("GET", f"/flows/{flow['id']}", status=200, schema="flow-get.json")
    assert fetched.body["metadata_version"] == created.body["metadata_version"]  # nothing changed
    changed = await api.put_flow({**flow, "label": "renamed"}, status=204)
    assert changed.status == 204
    fetched = await api.call("GET", f"/flows/{flow['id']}", status=200, schema="flow-get.json")
    assert fetched.body["label"] == "renamed"
    assert fetched.body["metadata_version"] != created.body["metadata_version"]


async def test_flow_put_ignores_timerange_and_put_without_tags_clears_them(
    api: StoreHttp,
) -> None:
    flow = new_flow(tags={"a": "1"})
    await api.put_flow(
        {**flow, "timerange": "[0:0_99:0)", "created": "2001-01-01T00:00:00Z"},
        status=201,
    )
    body = await api.get_flow_with_timerange(flow["id"])
    assert body["timerange"] == "()"  # no segments: the PUT's timerange was ignored
    assert body["created"] != "2001-01-01T00:00:00Z"
    without_tags = {k: v for k, v in flow.items() if k != "tags"}
    await api.put_flow(without_tags, status=204)
    body = (await api.call("GET", f"/flows/{flow['id']}", schema="flow-get.json")).body
    assert body.get("tags", {}) == {}


async def test_flow_put_with_profile_id_and_codec_is_refused(api: StoreHttp) -> None:
    flow = new_flow(profile_id=str(uuid.uuid4()))
    reply = await api.call("PUT", f"/flows/{flow['id']}", json=flow, status=400)
    assert reply.body["type"] == "BadRequest"
    await api.call("GET", f"/flows/{flow['id']}", status=404)


async def test_flow_put_creates_its_source(api: StoreHttp) -> None:
    flow = new_flow()
    await api.put_flow(flow, status=201)
    source = (await api.call("GET", f"/sources/{flow['source_id']}", status=200, schema="source.json")).body
    assert source["format"] == flow["format"]
    listed = await api.call(
        "GET",
        "/sources",
        params={"format": flow["format"], "limit": "1000"},
        items="source.json",
    )
    assert flow["source_id"] in {s["id"] for s in listed.body}
    # A second Flow of another format cannot join that Source.
    audio = {
        "id": str(uuid.uuid4()),
        "source_id": flow["source_id"],
        "format": "urn:x-nmos:format:audio",
        "codec": "audio/aac",
        "container": "video/mp2t",
        "essence_parameters": {"sample_rate": 48000, "channels": 2},
    }
    await api.call("PUT", f"/flows/{audio['id']}", json=audio, status=400)


async def test_unknown_flow_is_404_but_its_segments_are_an_empty_list(
    api: StoreHttp,
) -> None:
    unknown = str(uuid.uuid4())
    reply = await api.call("GET", f"/flows/{unknown}", status=404)
    assert reply.body["type"] == "FlowNotFound"
    segments = await api.segments(unknown)
    assert segments.body == []
    await api.call("GET", f"/sources/{unknown}", status=404)


async def test_flow_filters(api: StoreHttp) -> None:
    tag = uuid.uuid4().hex
    wide, _ = await flow_with_segments(
        api,
        "[0:0_10:0)",
        tags={"run": tag, "kind": ["a", "b"]},
        essence_parameters={
            "frame_width": 640,
            "frame_height": 360,
            "frame_rate": {"numerator": 25},
        },
        label=f"wide-{tag}",
    )
    narrow, _ = await flow_with_segments(api, tags={"run": tag}, label=f"narrow-{tag}", codec="video/mp4v-es")

    async def ids(**params: str) -> set[str]:
        reply = await api.call("GET", "/flows", params={"tag.run": tag, **params}, items="flow-get.json")
        return {f["id"] for f in reply.body}

    both = {wide["id"], narrow["id"]}
    assert await ids() == both
    assert await ids(frame_width="640") == {wide["id"]}
    assert await ids(frame_height="180") == {narrow["id"]}
    assert await ids(codec="video/mp4v-es") == {narrow["id"]}
    assert await ids(label=f"wide-{tag}") == {wide["id"]}
    assert await ids(source_id=narrow["source_id"]) == {narrow["id"]}
    assert await ids(format="urn:x-nmos:format:audio") == set()
    assert await ids(**{"tag.kind": "b,z"}) == {wide["id"]}  # list value shares an entry
    assert await ids(**{"tag.kind": "ab"}) == set()  # no partial matches
    assert await ids(**{"tag_exists.kind": "true"}) == {wide["id"]}
    assert await ids(**{"tag_exists.kind": "false"}) == {narrow["id"]}
    assert await ids(timerange="[5:0_6:0)") == {wide["id"]}
    assert await ids(timerange="[10:0_20:0)") == set()  # [0:0_10:0) ends before 10:0
    assert await ids(timerange="()") == {narrow["id"]}  # Flows with no content
    labels = await api.call(
        "GET",
        "/flows",
        params={"tag.run": tag, "sort_by": "label"},
        items="flow-get.json",
    )
    assert [f["id"] for f in labels.body] == [narrow["id"], wide["id"]]
    newest = await api.call("GET", "/flows", params={"tag.run": tag}, items="flow-get.json")
    assert [f["id"] for f in newest.body] == [
        narrow["id"],
        wide["id"],
    ]  # created, newest first
    oldest = await api.call(
        "GET",
        "/flows",
        params={"tag.run": tag, "reverse_order": "true"},
        items="flow-get.json",
    )
    assert [f["id"] for f in oldest.body] == [wide["id"], narrow["id"]]


async def test_flow_delete_keeps_objects_shared_with_other_flows(
    api: StoreHttp,
) -> None:
    flow_a, (shared,) = await flow_with_segments(api, "[0:0_10:0)")
    flow_b = new_flow()
    await api.put_flow(flow_b, status=201)
    await api.post_segments(
        flow_b["id"],
        {"object_id": shared, "timerange": "[100:0_110:0)", "ts_offset": "100:0"},
    )
    obj = (await api.call("GET", f"/objects/{shared}", status=200, schema="object.json")).body
    assert set(obj["referenced_by_flows"]) == {flow_a["id"], flow_b["id"]}
    assert obj["first_referenced_by_flow"] == flow_a["id"]
    await api.call("DELETE", f"/flows/{flow_a['id']}", status=204)
    await api.call("GET", f"/flows/{flow_a['id']}", status=404)
    obj = (await api.call("GET", f"/objects/{shared}", status=200, schema="object.json")).body
    assert obj["referenced_by_flows"] == [flow_b["id"]]
    data = await api.call("GET", obj["get_urls"][0]["url"], headers={"Authorization": ""})
    assert data.status in (
        200,
        404,
    )  # the bytes were never uploaded in this test; no crash
    await api.call("DELETE", f"/flows/{flow_a['id']}", status=404)


async def test_read_only_flow_refuses_writes(api: StoreHttp) -> None:
    flow, (object_id,) = await flow_with_segments(api, "[0:0_1:0)")
    await api.put_flow({**flow, "read_only": True}, status=204)
    await api.call(
        "PUT",
        f"/flows/{flow['id']}",
        json={**flow, "read_only": True, "label": "x"},
        status=403,
    )
    await api.call("POST", f"/flows/{flow['id']}/storage", json={"limit": 1}, status=403)
    reply = await api.call(
        "POST",
        f"/flows/{flow['id']}/segments",
        json={"object_id": object_id, "timerange": "[1:0_2:0)"},
        status=403,
    )
    assert reply.body["type"] == "Forbidden"
    await api.call("DELETE", f"/flows/{flow['id']}/segments", status=403)
    await api.call("DELETE", f"/flows/{flow['id']}", status=403)
    await api.put_flow({**flow, "read_only": False}, status=204)  # only read_only may change
    await api.post_segments(
        flow["id"],
        {"object_id": object_id, "timerange": "[1:0_2:0)", "ts_offset": "1:0"},
    )


# --- storage ---------------------------------------------------------------------------------------


async def test_storage_allocates_presigned_put_urls(api: StoreHttp) -> None:
    flow = new_flow()
    await api.put_flow(flow, status=201)
    objects = await api.allocate(flow["id"], limit=3)
    assert len(objects) == 3
    assert len({o["object_id"] for o in objects}) == 3
    for o in objects:
        assert o["put_url"]["url"].startswith(api.url)
        assert o["put_url"]["content-type"] == "video/mp2t"
        assert o["presigned"] is True
    chosen = await api.allocate(flow["id"], limit=None, object_ids=["my/object 1", "other"])
    assert [o["object_id"] for o in chosen] == ["my/object 1", "other"]


async def test_storage_refuses_bad_requests(api: StoreHttp) -> None:
    flow = new_flow()
    await api.put_flow(flow, status=201)
    fid = flow["id"]
    await api.call(
        "POST",
        f"/flows/{fid}/storage",
        json={"limit": 2, "object_ids": ["a"]},
        status=400,
    )
    taken = await api.allocate(fid, limit=1)
    await api.call(
        "POST",
        f"/flows/{fid}/storage",
        json={"object_ids": [taken[0]["object_id"]]},
        status=400,
    )
    await api.call(
        "POST",
        f"/flows/{fid}/storage",
        json={"limit": 1, "storage_id": str(uuid.uuid4())},
        status=400,
    )
    await api.call("POST", f"/flows/{fid}/storage", json={"limit": 0}, status=400)
    await api.call("POST", f"/flows/{fid}/storage", json={"limit": "3"}, status=400)
    await api.call("POST", f"/flows/{uuid.uuid4()}/storage", json={"limit": 1}, status=404)
    bare = new_flow(container=None)
    await api.put_flow(bare, status=201)
    await api.call("POST", f"/flows/{bare['id']}/storage", json={"limit": 1}, status=400)
    reply = await api.call(
        "POST",
        f"/flows/{bare['id']}/segments",
        json={"object_id": "x", "timerange": "[0:0_1:0)"},
        status=400,
    )
    assert "container" in reply.body["summary"]


async def test_unregistered_object_is_404_until_a_segment_uses_it(
    api: StoreHttp,
) -> None:
    flow = new_flow()
    await api.put_flow(flow, status=201)
    (obj,) = await api.allocate(flow["id"], limit=1)
    await api.call("GET", f"/objects/{obj['object_id']}", status=404)
    await api.post_segments(
        flow["id"],
        {"object_id": obj["object_id"], "timerange": "[0:0_2:0)", "key_frame_count": 1},
    )
    body = (await api.call("GET", f"/objects/{obj['object_id']}", status=200, schema="object.json")).body
    assert body["referenced_by_flows"] == [flow["id"]]
    assert body["timerange"] == "[0:0_2:0)"
    assert body["key_frame_count"] == 1
    assert any(u["presigned"] for u in body["get_urls"])


async def test_object_allocated_for_another_flow_is_refused_until_registered(
    api: StoreHttp,
) -> None:
    flow_a, flow_b = new_flow(), new_flow()
    await api.put_flow(flow_a, status=201)
    await api.put_flow(flow_b, status=201)
    (obj,) = await api.allocate(flow_a["id"], limit=1)
    segment = {"object_id": obj["object_id"], "timerange": "[0:0_1:0)"}
    await api.post_segments(flow_b["id"], segment, status=400)
    await api.post_segments(flow_a["id"], segment)
    await api.post_segments(flow_b["id"], segment)  # registered now: reuse is fine


# --- segments --------------------------------------------------------------------------------------


async def test_overlapping_segment_is_refused(api: StoreHttp) -> None:
    flow, _ = await flow_with_segments(api, "[0:0_10:0)", "[10:0_20:0)")
    (c,) = await api.allocate(flow["id"], limit=1)
    reply = await api.post_segments(flow["id"], {"object_id": c["object_id"], "timerange": "[5:0_15:0)"}, status=400)
    assert reply.body["type"] == "SegmentOverlap"
    # Edge cases: [1:0_2:0) then the instant [2:0] do not overlap; (19:0_20:0] overlaps [10:0_20:0).
    await api.post_segments(flow["id"], {"object_id": c["object_id"], "timerange": "[20:0]"})
    await api.post_segments(
        flow["id"],
        {"object_id": c["object_id"], "timerange": "(19:0_20:0]"},
        status=400,
    )
    listed = await api.segments(flow["id"])
    assert [s["timerange"] for s in listed.body] == [
        "[0:0_10:0)",
        "[10:0_20:0)",
        "[20:0]",
    ]


async def test_repeating_an_identical_segment_is_accepted_once(api: StoreHttp) -> None:
    flow, (a,) = await flow_with_segments(api, "[0:0_10:0)")
    await api.post_segments(flow["id"], {"object_id": a, "timerange": "[0:0_10:0)", "ts_offset": "0:0"})
    await api.post_segments(flow["id"], [{"object_id": a, "timerange": "[0:0_10:0)"}])
    listed = await api.segments(flow["id"])
    assert len(listed.body) == 1
    # Same range with another ts_offset is not a repeat: it overlaps.
    await api.post_segments(
        flow["id"],
        {"object_id": a, "timerange": "[0:0_10:0)", "ts_offset": "1:0"},
        status=400,
    )


async def test_bulk_post_reports_only_the_failed_segments(api: StoreHttp) -> None:
    flow, (first,) = await flow_with_segments(api, "[0:0_10:0)")
    objs = [o["object_id"] for o in await api.allocate(flow["id"], limit=3)]
    reply = await api.post_segments(
        flow["id"],
        [
            {"object_id": objs[0], "timerange": "[10:0_20:0)"},
            {"object_id": objs[1], "timerange": "[5:0_15:0)"},
            {"object_id": objs[2], "timerange": "[20:0_30:0)"},
        ],
        status=200,
    )
    failed = reply.body["failed_segments"]
    assert [(f["object_id"], f["timerange"]) for f in failed] == [(objs[1], "[5:0_15:0)")]
    assert failed[0]["error"]["type"] == "SegmentOverlap"
    listed = await api.segments(flow["id"])
    assert [s["object_id"] for s in listed.body] == [first, objs[0], objs[2]]


async def test_segment_queries_by_timerange_and_order(api: StoreHttp) -> None:
    flow, (a, b) = await flow_with_segments(api, "[0:0_10:0)", "[10:0_20:0)")
    fid = flow["id"]
    both = await api.segments(fid, timerange="[5:0_12:0)")
    assert [s["timerange"] for s in both.body] == ["[0:0_10:0)", "[10:0_20:0)"]
    reverse = await api.segments(fid, timerange="[5:0_12:0)", reverse_order="true")
    assert [s["timerange"] for s in reverse.body] == ["[10:0_20:0)", "[0:0_10:0)"]
    assert reverse.headers["X-Paging-Reverse-Order"] == "true"
    after = await api.segments(fid, timerange="(10:0_")
    assert [s["object_id"] for s in after.body] == [b]
    at_ten = await api.segments(fid, timerange="[10:0]")
    assert [s["object_id"] for s in at_ten.body] == [b]
    before = await api.segments(fid, timerange="_10:0)")
    assert [s["object_id"] for s in before.body] == [a]
    by_object = await api.segments(fid, object_id=b)
    assert [s["object_id"] for s in by_object.body] == [b]
    nothing = await api.segments(fid, timerange="()")
    assert nothing.body == []
    assert (await api.get_flow_with_timerange(fid))["timerange"] == "[0:0_20:0)"
    clipped = await api.get_flow_with_timerange(fid, timerange="[5:0_30:0)")
    assert clipped["timerange"] == "[5:0_20:0)"
    plain = await api.call("GET", f"/flows/{fid}", schema="flow-get.json")
    assert "timerange" not in plain.body


async def test_segment_fields_are_stored_and_echoed(api: StoreHttp) -> None:
    flow = new_flow()
    await api.put_flow(flow, status=201)
    (o,) = await api.allocate(flow["id"], limit=1)
    await api.post_segments(
        flow["id"],
        {
            "object_id": o["object_id"],
            "timerange": "[10:0_12:0)",
            "ts_offset": "-1:500000000",
            "last_duration": "0:33333333",
            "sample_offset": 3,
            "sample_count": 60,
            "key_frame_count": 2,
        },
    )
    (segment,) = (await api.segments(flow["id"], include_object_timerange="true")).body
    assert segment["ts_offset"] == "-1:500000000"
    assert segment["last_duration"] == "0:33333333"
    assert (
        segment["sample_offset"],
        segment["sample_count"],
        segment["key_frame_count"],
    ) == (3, 60, 2)
    # Registered without object_timerange: it defaults to timerange - ts_offset.
    assert segment["object_timerange"] == "[11:500000000_13:500000000)"
    (plain,) = (await api.segments(flow["id"])).body
    assert "object_timerange" not in plain


async def test_reused_object_must_fit_and_keep_its_properties(api: StoreHttp) -> None:
    _, (obj,) = await flow_with_segments(api, "[0:0_10:0)")
    other = new_flow()
    await api.put_flow(other, status=201)
    fid = other["id"]
    # The middle of the object, shifted by 100 s: inside its timerange.
    await api.post_segments(fid, {"object_id": obj, "timerange": "[102:0_105:0)", "ts_offset": "100:0"})
    await api.post_segments(
        fid,
        {"object_id": obj, "timerange": "[205:0_215:0)", "ts_offset": "200:0"},
        status=400,
    )
    await api.post_segments(
        fid,
        {
            "object_id": obj,
            "timerange": "[300:0_301:0)",
            "ts_offset": "300:0",
            "key_frame_count": 9,
        },
        status=400,
    )
    await api.post_segments(
        fid,
        {
            "object_id": obj,
            "timerange": "[400:0_401:0)",
            "ts_offset": "400:0",
            "object_timerange": "[0:0_1:0)",
        },
        status=400,
    )


async def test_init_and_media_objects_cannot_swap_roles(api: StoreHttp) -> None:
    flow = new_flow(container="video/mp4")
    flow["essence_parameters"]["init_segments"] = True
    await api.put_flow(flow, status=201)
    fid = flow["id"]
    (init,) = await api.allocate(fid, limit=1, content_type="video/mp4")
    media = [o["object_id"] for o in await api.allocate(fid, limit=3)]
    await api.post_segments(fid, {"object_id": media[0], "timerange": "[0:0_1:0)"}, status=400)  # needs init
    await api.post_segments(
        fid,
        {
            "object_id": media[0],
            "timerange": "[0:0_1:0)",
            "init_object_id": init["object_id"],
        },
    )
    await api.post_segments(
        fid,
        {
            "object_id": init["object_id"],
            "timerange": "[1:0_2:0)",
            "init_object_id": media[1],
        },
        status=400,
    )
    await api.post_segments(
        fid,
        {"object_id": media[1], "timerange": "[1:0_2:0)", "init_object_id": media[0]},
        status=400,
    )
    (segment,) = (await api.segments(fid)).body
    assert segment["init_object"]["object_id"] == init["object_id"]
    assert segment["init_object"]["get_urls"]
    obj = (await api.call("GET", f"/objects/{media[0]}", schema="object.json")).body
    assert obj["init_object"]["id"] == init["object_id"]
    init_obj = (await api.call("GET", f"/objects/{init['object_id']}", schema="object.json")).body
    assert init_obj["referenced_by_flows"] == [fid]
    assert "timerange" not in init_obj


async def test_delete_segments_removes_only_covered_ones(api: StoreHttp) -> None:
    flow, (_, b) = await flow_with_segments(api, "[0:0_10:0)", "[10:0_20:0)")
    fid = flow["id"]
    await api.call(
        "DELETE",
        f"/flows/{fid}/segments",
        params={"timerange": "[0:0_15:0)"},
        status=204,
    )
    assert [s["object_id"] for s in (await api.segments(fid)).body] == [b]
    await api.call(
        "DELETE",
        f"/flows/{fid}/segments",
        params={"object_id": "not-there"},
        status=204,
    )
    assert len((await api.segments(fid)).body) == 1
    await api.call("DELETE", f"/flows/{fid}/segments", params={"object_id": b}, status=204)
    assert (await api.segments(fid)).body == []
    body = await api.get_flow_with_timerange(fid)
    assert body["timerange"] == "()"
    await api.call("DELETE", f"/flows/{uuid.uuid4()}/segments", status=404)
    await api.call("DELETE", f"/flows/{fid}/segments", params={"timerange": "[0:0_x)"}, status=400)


async def test_get_url_filters(api: StoreHttp) -> None:
    flow, (controlled,) = await flow_with_segments(api, "[0:0_1:0)")
    fid = flow["id"]
    await api.post_segments(
        fid,
        {
            "object_id": "external-1",
            "timerange": "[1:0_2:0)",
            "get_urls": [{"url": "http://example.invalid/x", "label": "cdn"}],
        },
    )
    backend_id = (await api.call("GET", "/service/storage-backends", schema="storage-backends-list.json")).body[0]["id"]

    async def urls(**params: str) -> list[list[dict[str, Any]]]:
        return [s.get("get_urls", []) for s in (await api.segments(fid, **params)).body]

    local, external = await urls()
    assert [u["presigned"] for u in local] == [True, False]
    assert all(u["label"] == "local" for u in local)
    assert external == [{"url": "http://example.invalid/x", "presigned": False, "label": "cdn"}]
    assert await urls(accept_get_urls="") == [[], []]
    assert [[u["presigned"] for u in x] for x in await urls(presigned="true")] == [
        [True],
        [],
    ]
    assert [[u["presigned"] for u in x] for x in await urls(presigned="false")] == [
        [False],
        [False],
    ]
    assert [[u["label"] for u in x] for x in await urls(accept_get_urls="cdn")] == [
        [],
        ["cdn"],
    ]
    assert [len(x) for x in await urls(accept_storage_ids=backend_id)] == [2, 0]
    verbose, _ = await urls(verbose_storage="true")
    assert all(u["storage_id"] == backend_id and u["controlled"] is True for u in verbose)
    assert verbose[0]["store_type"] == "http_object_store"
    assert [len(x) for x in await urls(**{"storage_backend_tag.tier": "gold"})] == [
        0,
        1,
    ]
    assert controlled


async def test_paging_follows_link_headers_to_the_end(api: StoreHttp) -> None:
    ranges = [f"[{i}:0_{i + 1}:0)" for i in range(7)]
    flow, ids = await flow_with_segments(api, *ranges)
    for params in ({}, {"reverse_order": "true"}, {"timerange": "[2:500000000_6:0)"}):
        seen: list[str] = []
        reply = await api.segments(flow["id"], limit="3", **params)
        pages = 1
        while "Link" in reply.headers:
            assert reply.headers["X-Paging-Limit"] == "3"
            assert reply.headers["X-Paging-Count"] == "3"
            assert reply.headers["X-Paging-NextKey"]
            assert reply.headers["Link"].endswith('>; rel="next"')
            seen += [s["object_id"] for s in reply.body]
            next_url = reply.headers["Link"].split(">")[0].lstrip("<")
            reply = await api.call("GET", next_url, status=200, items="flow-segment.json")
            pages += 1
        seen += [s["object_id"] for s in reply.body]
        assert "X-Paging-NextKey" not in reply.headers
        expected = {"": ids, "reverse_order": ids[::-1], "timerange": ids[2:6]}[next(iter(params), "")]
        assert seen == expected
        assert pages == -(-len(expected) // 3)
    first_page = await api.segments(flow["id"], limit="3")
    assert first_page.headers["X-Paging-Timerange"] == "[0:0_3:0)"
    assert timerange_re.match(first_page.headers["X-Paging-Timerange"])


async def test_flow_and_source_listings_page(api: StoreHttp) -> None:
    tag = uuid.uuid4().hex
    made = []
    for _ in range(5):
        flow = new_flow(tags={"page": tag})
        await api.put_flow(flow, status=201)
        made.append(flow["id"])
    seen: list[str] = []
    reply = await api.call("GET", "/flows", params={"tag.page": tag, "limit": "2"}, items="flow-get.json")
    while True:
        seen += [f["id"] for f in reply.body]
        if "Link" not in reply.headers:
            break
        next_url = reply.headers["Link"].split(">")[0].lstrip("<")
        reply = await api.call("GET", next_url, items="flow-get.json")
    assert sorted(seen) == sorted(made)
    assert len(seen) == len(set(seen))
    sources = await api.call("GET", "/sources", params={"limit": "2"}, items="source.json")
    assert sources.headers["X-Paging-Limit"] == "2" and "Link" in sources.headers


async def test_flow_and_source_properties_as_resources(api: StoreHttp) -> None:
    flow = new_flow(tags={"genre": "news"})
    created = (await api.put_flow(flow, status=201)).body
    fid, sid = flow["id"], flow["source_id"]
    string = {"type": "string"}
    assert (await api.call("GET", f"/flows/{fid}/label", status=200, schema=string)).body == "test flow"
    await api.call("PUT", f"/flows/{fid}/description", json="moving pictures", status=204)
    assert (await api.call("GET", f"/flows/{fid}/description", schema=string)).body == "moving pictures"
    await api.call("DELETE", f"/flows/{fid}/description", status=204)
    await api.call("GET", f"/flows/{fid}/description", status=404)
    await api.call("DELETE", f"/flows/{fid}/description", status=404)
    await api.call("PUT", f"/flows/{fid}/max_bit_rate", json=5000, status=204)
    assert (await api.call("GET", f"/flows/{fid}/max_bit_rate", schema={"type": "integer"})).body == 5000
    await api.call("PUT", f"/flows/{fid}/max_bit_rate", json=-1, status=400)
    await api.call("PUT", f"/flows/{fid}/label", json=7, status=400)
    await api.call("PUT", f"/flows/{fid}/tags/take", json=["1", "2"], status=204)
    tags = await api.call("GET", f"/flows/{fid}/tags", schema="tags.json")
    assert tags.body == {"genre": "news", "take": ["1", "2"]}
    await api.call("PUT", f"/flows/{fid}/tags/take", json={"no": "objects"}, status=400)
    await api.call("DELETE", f"/flows/{fid}/tags/genre", status=204)
    await api.call("GET", f"/flows/{fid}/tags/genre", status=404)
    body = (await api.call("GET", f"/flows/{fid}", schema="flow-get.json")).body
    assert body["tags"] == {"take": ["1", "2"]}
    assert body["max_bit_rate"] == 5000
    assert body["metadata_version"] != created["metadata_version"]
    assert body["metadata_updated"] > created["metadata_updated"]
    # read_only protects everything but read_only itself.
    await api.call("PUT", f"/flows/{fid}/read_only", json=True, status=204)
    assert (await api.call("GET", f"/flows/{fid}/read_only", schema={"type": "boolean"})).body is True
    await api.call("PUT", f"/flows/{fid}/tags/take", json="3", status=403)
    await api.call("PUT", f"/flows/{fid}/label", json="no", status=403)
    await api.call("PUT", f"/flows/{fid}/read_only", json=False, status=204)
    await api.call("PUT", f"/flows/{fid}/tags/take", json="3", status=204)
    await api.call("DELETE", f"/flows/{fid}/read_only", status=405)
    await api.call("GET", f"/flows/{uuid.uuid4()}/label", status=404)
    await api.call("PUT", f"/flows/{uuid.uuid4()}/tags/x", json="y", status=404)
    # Collections: members must exist.
    member = new_flow()
    await api.put_flow(member, status=201)
    await api.call(
        "PUT",
        f"/flows/{fid}/flow_collection",
        json=[{"id": member["id"], "role": "video"}],
        status=204,
    )
    await api.call(
        "PUT",
        f"/flows/{fid}/flow_collection",
        json=[{"id": str(uuid.uuid4()), "role": "x"}],
        status=400,
    )
    member_body = (await api.call("GET", f"/flows/{member['id']}", schema="flow-get.json")).body
    assert member_body["collected_by"] == [fid]
    collection = await api.call("GET", f"/flows/{fid}/flow_collection", schema="flow-collection.json")
    assert collection.body == [{"id": member["id"], "role": "video"}]
    # Sources.
    await api.call("PUT", f"/sources/{sid}/label", json="a source", status=204)
    assert (await api.call("GET", f"/sources/{sid}/label", schema=string)).body == "a source"
    await api.call("PUT", f"/sources/{sid}/tags/owner", json="news", status=204)
    assert (await api.call("GET", f"/sources/{sid}/tags", schema="tags.json")).body == {"owner": "news"}
    listed = await api.call(
        "GET",
        "/sources",
        params={"tag.owner": "news", "label": "a source"},
        items="source.json",
    )
    assert [s["id"] for s in listed.body] == [sid]
    await api.call("DELETE", f"/sources/{sid}/tags/owner", status=204)
    await api.call("GET", f"/sources/{sid}/tags/owner", status=404)
    await api.call("DELETE", f"/sources/{sid}/label", status=204)
    await api.call("GET", f"/sources/{sid}/label", status=404)

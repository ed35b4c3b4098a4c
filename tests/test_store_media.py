"""Media objects in the local store: presigned PUT/GET URLs, signature tampering and expiry,
atomic never-overwrite writes, and object ids that cannot reach outside the data dir."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import pytest
from store_http import StoreHttp, basic_header, basic_http, new_flow

from local_store.objects import EXPIRES_PARAM, UrlSigner
from tests.conftest import RunningStore

TS = {"Content-Type": "video/mp2t"}


@pytest.fixture
async def api(shared_store: RunningStore) -> AsyncIterator[StoreHttp]:
    async with basic_http(shared_store) as api:
        yield api


def no_auth(api: StoreHttp) -> StoreHttp:
    return api.with_headers({})


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | changes
    return urlunsplit(parts._replace(query=urlencode(query)))


async def registered(
    api: StoreHttp, data: bytes, timerange: str = "[0:0_2:0)"
) -> tuple[str, str, list[dict[str, object]]]:
    """A Flow with one uploaded, registered object: (flow id, object id, get_urls)."""
    flow = new_flow()
    await api.put_flow(flow, status=201)
    (obj,) = await api.allocate(flow["id"])
    await no_auth(api).call("PUT", obj["put_url"]["url"], data=data, headers=TS, status=201)
    await api.post_segments(flow["id"], {"object_id": obj["object_id"], "timerange": timerange})
    (segment,) = (await api.segments(flow["id"])).body
    return flow["id"], obj["object_id"], segment["get_urls"]


async def test_presigned_upload_and_download(api: StoreHttp) -> None:
    data = os.urandom(300_000)
    _, _, urls = await registered(api, data)
    presigned = [u for u in urls if u["presigned"]]
    plain = [u for u in urls if not u["presigned"]]
    assert len(presigned) == 1 and len(plain) == 1
    got = await no_auth(api).call("GET", str(presigned[0]["url"]), status=200)
    assert got.raw == data
    assert got.headers["Content-Type"] == "video/mp2t"
    part = await no_auth(api).call("GET", str(presigned[0]["url"]), headers={"Range": "bytes=10-19"}, status=206)
    assert part.raw == data[10:20]
    await no_auth(api).call("GET", str(plain[0]["url"]), status=401)  # not presigned: needs credentials
    assert (await api.call("GET", str(plain[0]["url"]), status=200)).raw == data


async def test_tampered_signatures_are_refused_and_write_nothing(api: StoreHttp, shared_store: RunningStore) -> None:
    flow = new_flow()
    await api.put_flow(flow, status=201)
    first, second = await api.allocate(flow["id"], limit=2)
    url = first["put_url"]["url"]
    signature = dict(parse_qsl(urlsplit(url).query))["X-Tams-Signature"]
    anon = no_auth(api)
    tampered = [
        with_query(
            url,
            **{"X-Tams-Signature": ("0" if signature[0] != "0" else "1") + signature[1:]},
        ),
        with_query(
            url,
            **{"X-Tams-Expires": str(int(dict(parse_qsl(urlsplit(url).query))["X-Tams-Expires"]) + 3600)},
        ),
        url.replace(
            first["put_url"]["url"].split("?")[0],
            second["put_url"]["url"].split("?")[0],
        ),  # another path
        url.split("?")[0] + "?X-Tams-Expires=1",  # no signature
    ]
    for bad in tampered:
        reply = await anon.call("PUT", bad, data=b"evil", headers=TS, status=403)
        assert reply.body["type"] == "Forbidden"
    await anon.call("PUT", url, data=b"evil", headers={"Content-Type": "video/mp4"}, status=403)  # signed type differs
    await anon.call("GET", url, status=403)  # a PUT signature does not allow GET
    for obj in (first, second):
        files = list((shared_store.data_dir / "objects").rglob("*"))
        digest = hashlib.sha256(obj["object_id"].encode()).hexdigest()
        assert not any(p.name == digest for p in files)
    # The genuine URL still works, once.
    await anon.call("PUT", url, data=b"genuine", headers=TS, status=201)


async def test_expired_urls_are_refused(
    store_factory: Callable[..., RunningStore],
) -> None:
    store = store_factory(extra_args=["--presigned-url-ttl", "1"])
    async with aiohttp.ClientSession() as session:
        api = StoreHttp(session, store.url, basic_header(store.username, store.password))
        flow = new_flow()
        await api.put_flow(flow, status=201)
        early, late = await api.allocate(flow["id"], limit=2)
        await no_auth(api).call("PUT", early["put_url"]["url"], data=b"in time", headers=TS, status=201)
        await api.post_segments(flow["id"], {"object_id": early["object_id"], "timerange": "[0:0_1:0)"})
        (segment,) = (await api.segments(flow["id"], presigned="true")).body
        await asyncio.sleep(2.1)
        reply = await no_auth(api).call("PUT", late["put_url"]["url"], data=b"too late", headers=TS, status=403)
        assert "expired" in reply.body["summary"]
        await no_auth(api).call("GET", segment["get_urls"][0]["url"], status=403)
        (fresh,) = (await api.segments(flow["id"], presigned="true")).body
        assert (await no_auth(api).call("GET", fresh["get_urls"][0]["url"], status=200)).raw == b"in time"
        assert not list((store.data_dir / "objects").rglob(hashlib.sha256(late["object_id"].encode()).hexdigest()))


@pytest.mark.parametrize("now", [1000.0, 1000.01, 1000.99])
def test_a_presigned_url_lasts_at_least_its_ttl(now: float) -> None:
    """The expiry is a whole second: signed late in a second, a URL with a TTL of 1 s must not
    expire a moment later (the store rounded down once, and such a URL could be refused at once)."""
    query = dict(parse_qsl(UrlSigner(b"k" * 32, ttl_seconds=1).sign("GET", "object", "video/mp2t", now=now)))
    assert now + 1 <= int(query[EXPIRES_PARAM]) < now + 2


async def test_objects_are_never_overwritten(api: StoreHttp) -> None:
    flow = new_flow()
    await api.put_flow(flow, status=201)
    (obj,) = await api.allocate(flow["id"])
    url = obj["put_url"]["url"]
    anon = no_auth(api)
    await anon.call("PUT", url, data=b"first", headers=TS, status=201)
    await anon.call("PUT", url, data=b"first", headers=TS, status=200)  # a retried upload of the same bytes
    reply = await anon.call("PUT", url, data=b"second", headers=TS, status=409)
    assert reply.body["type"] == "Conflict"
    await api.post_segments(flow["id"], {"object_id": obj["object_id"], "timerange": "[0:0_1:0)"})
    (segment,) = (await api.segments(flow["id"], presigned="true")).body
    assert (await anon.call("GET", segment["get_urls"][0]["url"], status=200)).raw == b"first"


async def test_object_ids_cannot_escape_the_data_dir(api: StoreHttp, shared_store: RunningStore) -> None:
    flow = new_flow()
    await api.put_flow(flow, status=201)
    outside = shared_store.data_dir.parent
    before = sorted(p.name for p in outside.iterdir())
    ids = [
        "../../escaped",
        "/etc/passwd-copy",
        "a/../../../b",
        "..",
        "%2e%2e%2fx",
        "with space/and/slashes",
    ]
    objects = await api.allocate(flow["id"], limit=None, object_ids=ids)
    for index, obj in enumerate(objects):
        await no_auth(api).call(
            "PUT",
            obj["put_url"]["url"],
            data=obj["object_id"].encode(),
            headers=TS,
            status=201,
        )
        await api.post_segments(
            flow["id"],
            {"object_id": obj["object_id"], "timerange": f"[{index}:0_{index + 1}:0)"},
        )
    assert sorted(p.name for p in outside.iterdir()) == before
    root = (shared_store.data_dir / "objects").resolve()
    for path in root.rglob("*"):
        assert path.resolve().is_relative_to(root)
    for segment in (await api.segments(flow["id"], presigned="true")).body:
        got = await no_auth(api).call("GET", segment["get_urls"][0]["url"], status=200)
        assert got.raw == segment["object_id"].encode()
        if segment["object_id"] != "..":  # clients normalise a ".." path segment away
            object_path = f"/objects/{_quote(segment['object_id'])}"
            assert (await api.call("GET", object_path, schema="object.json")).body["id"] == segment["object_id"]
    assert not Path("/etc/passwd-copy").exists()


def _quote(object_id: str) -> str:
    from urllib.parse import quote

    return quote(object_id, safe="")


async def test_unsigned_urls_need_credentials_and_a_write_scope(api: StoreHttp) -> None:
    flow = new_flow()
    await api.put_flow(flow, status=201)
    (obj,) = await api.allocate(flow["id"], presigned=False)
    assert obj["presigned"] is False
    url = obj["put_url"]["url"]
    assert "?" not in url
    await no_auth(api).call("PUT", url, data=b"x", headers=TS, status=401)
    reader_token = (
        await no_auth(api).call(
            "POST",
            "/oauth2/token",
            data={"grant_type": "client_credentials"},
            headers=basic_header("test-reader", "test-reader-secret"),
            status=200,
            schema={"type": "object"},
        )
    ).body["access_token"]
    await no_auth(api).call(
        "PUT",
        url,
        data=b"x",
        headers={**TS, "Authorization": f"Bearer {reader_token}"},
        status=403,
    )
    await api.call("PUT", url, data=b"x", headers=TS, status=201)
    await api.call(
        "PUT",
        url.rsplit("/", 1)[0] + "/never-allocated",
        data=b"x",
        headers=TS,
        status=404,
    )
    await api.call("PUT", url, data=b"x", headers={"Content-Type": "video/mp4"}, status=400)  # not the allocated type

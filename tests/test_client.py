"""client.py: the retry schedule and URL handling as pure functions, then every method,
paging, token expiry, faults and a vanishing store against the real local store."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import uuid4

import aiohttp
import pytest
from aiohttp import web
from mediatimestamp.immutable import TimeRange
from pytest_aiohttp import AiohttpServer
from spec import validate

from client import (
    NotFound,
    RetryPolicy,
    TAMSClient,
    TAMSConnectionError,
    TAMSError,
    TAMSResponseError,
    UploadTarget,
    backoff_ceiling,
    next_link,
    parse_retry_after,
    redact_text,
    redact_url,
    retry_delay,
)
from credentials import BasicCredentials, BearerToken, OAuth2ClientCredentials
from tests.conftest import REPO_ROOT, RunningStore, start_store

StoreFactory = Callable[..., RunningStore]

# --- pure helpers ------------------------------------------------------------------------


def test_backoff_ceiling_doubles_from_base_up_to_cap() -> None:
    policy = RetryPolicy(attempts=9, base=0.2, cap=10.0)
    assert [backoff_ceiling(policy, n) for n in range(8)] == pytest.approx(
        [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    )


def test_retry_delay_is_full_jitter_under_the_ceiling() -> None:
    policy = RetryPolicy(base=0.5, cap=4.0)
    rng = random.Random(1)
    for retry in range(6):
        ceiling = backoff_ceiling(policy, retry)
        delays = [retry_delay(policy, retry, None, rng) for _ in range(500)]
        assert all(0.0 <= d <= ceiling for d in delays)
        # full jitter: spread over the whole interval, not bunched near the ceiling
        assert min(delays) < 0.05 * ceiling and max(delays) > 0.95 * ceiling
    # the same seed gives the same schedule
    assert [retry_delay(policy, n, None, random.Random(7)) for n in range(5)] == [
        retry_delay(policy, n, None, random.Random(7)) for n in range(5)
    ]


def test_retry_after_replaces_jitter_and_is_bounded() -> None:
    policy = RetryPolicy(base=0.2, cap=1.0, max_retry_after=30.0)
    rng = random.Random(0)
    assert retry_delay(policy, 0, 0.0, rng) == 0.0
    assert retry_delay(policy, 0, 7.0, rng) == 7.0  # more than the backoff cap: the server knows best
    assert retry_delay(policy, 3, 500.0, rng) == 30.0


def test_parse_retry_after_seconds_and_http_dates() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_retry_after(None) is None
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after("Fri, 02 Jan 2026 03:04:15 GMT", now) == 10.0
    assert parse_retry_after(format_datetime(now - timedelta(hours=1), usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after("", now) is None


def test_redact_url_drops_signatures_and_user_info() -> None:
    presigned = ("http://127.0.0.1:8000/objects-data/abc?X-Tams-Expires=1700000000"
                 "&X-Tams-Signature=deadbeef00")
    assert redact_url(presigned, keep_query=False) == "http://127.0.0.1:8000/objects-data/abc"
    shown = redact_url(presigned)
    assert "deadbeef00" not in shown and "X-Tams-Signature=REDACTED" in shown
    s3 = "https://bucket.s3.amazonaws.com/k?X-Amz-Credential=AKIA123&X-Amz-Signature=f00d&x-id=PutObject"
    assert "AKIA123" not in redact_url(s3) and "f00d" not in redact_url(s3)
    assert redact_url("http://user:pw@h:1/flows?access_token=eyJabc&limit=10") == (
        "http://h:1/flows?access_token=REDACTED&limit=10"
    )
    api = "http://h:1/flows/x/segments?timerange=%5B0%3A0_10%3A0%29&page=abc&tag.genre=news"
    assert redact_url(api) == "http://h:1/flows/x/segments?timerange=[0:0_10:0)&page=abc&tag.genre=news"


def test_redact_text_removes_urls_and_secret_values_from_free_text() -> None:
    media = "http://127.0.0.1:9/objects-data/abc?X-Tams-Expires=1700000000&X-Tams-Signature=SIGSECRET"
    text = f"Connection timeout to host {media} (URL('{media}'), query X-Tams-Signature=SIGSECRET)"
    shown = redact_text(text, media, keep_query=False)
    assert "SIGSECRET" not in shown
    assert shown == ("Connection timeout to host http://127.0.0.1:9/objects-data/abc "
                     "(URL('http://127.0.0.1:9/objects-data/abc'), query X-Tams-Signature=REDACTED)")
    api = "http://u:hunter22@h:1/flows?limit=5&access_token=eyJtoken"
    shown = redact_text(f"400, message='Bad', url='{api}' (token eyJtoken, password hunter22)", api)
    assert shown == ("400, message='Bad', url='http://h:1/flows?limit=5&access_token=REDACTED' "
                     "(token REDACTED, password REDACTED)")
    # short values are not hunted through the text (they would mangle it), and no secret is that short
    assert redact_text("after 1 attempt(s) to 127.0.0.1", "http://h/x?X-Tams-Expires=1") == (
        "after 1 attempt(s) to 127.0.0.1")


def test_next_link_finds_rel_next_among_links() -> None:
    base = "http://h:1/flows?limit=2"
    assert next_link(None, base) is None
    assert next_link('<http://h:1/flows?limit=2&page=b>; rel="next"', base) == "http://h:1/flows?limit=2&page=b"
    assert next_link("</flows?page=c>; rel=next", base) == "http://h:1/flows?page=c"
    assert next_link('<http://h:1/x?page=1>; rel="prev", <http://h:1/x?page=3>; rel="next"', base) == (
        "http://h:1/x?page=3"
    )
    assert next_link('<http://h:1/x?page=1>; rel="prev"', base) is None


def test_errors_are_one_line_and_share_a_root() -> None:
    error = TAMSResponseError("GET http://h/flows: 400 Bad Request: bad\ntimerange\n", method="GET",
                              url="http://h/flows", status=400, body={"summary": "bad"})
    assert str(error) == "GET http://h/flows: 400 Bad Request: bad timerange"
    assert isinstance(error, TAMSError) and issubclass(TAMSConnectionError, TAMSError)
    assert (error.method, error.url, error.status, error.body) == ("GET", "http://h/flows", 400, {"summary": "bad"})


# --- behaviour against small scripted servers on loopback -----------------------------------
# These servers stand in for failures the local store cannot be asked to produce on demand
# (a given status sequence, a slow answer, a token server whose tokens are always refused).

FAST = RetryPolicy(attempts=7, base=0.001, cap=0.01)
# For tests of the store that expect no failures: a bug gives up in well under a second.
BRIEF = RetryPolicy(attempts=4, base=0.05, cap=0.2)


@dataclass
class Recorder:
    """What a loopback server received."""

    requests: list[web.Request] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)


async def scripted_server(aiohttp_server: AiohttpServer, script: list[web.Response | float]) -> tuple[str, Recorder]:
    """A server answering each request with the next scripted response (a float means:
    sleep that long, then answer 200), and 200 ``{"ok": true}`` once the script runs out."""
    seen = Recorder()
    remaining = list(script)

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.requests.append(request)
        seen.headers.append(dict(request.headers))
        seen.bodies.append(await request.read())
        step = remaining.pop(0) if remaining else None
        if isinstance(step, float):
            await asyncio.sleep(step)
            step = None
        return step if step is not None else web.json_response({"ok": True, "path": request.path_qs})

    app = web.Application(client_max_size=1 << 24)
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), seen


def unavailable(status: int, retry_after: str | None = "0") -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return web.json_response({"type": "Unavailable", "summary": "try later", "time": "0:0"}, status=status,
                             headers=headers)


async def test_each_transient_status_is_retried_and_counted(aiohttp_server: AiohttpServer) -> None:
    url, seen = await scripted_server(aiohttp_server, [
        unavailable(408), unavailable(429), unavailable(500, None), unavailable(502), unavailable(503),
        unavailable(504, None),
    ])
    async with TAMSClient(url, BasicCredentials("u", "p"), retry=FAST) as client:
        assert (await client.get_service())["ok"] is True
    assert len(seen.requests) == 7
    assert client.stats.retries == 6 and client.stats.requests == 7


async def test_retry_budget_runs_out_with_the_last_answer(aiohttp_server: AiohttpServer) -> None:
    url, seen = await scripted_server(aiohttp_server, [unavailable(503) for _ in range(10)])
    async with TAMSClient(url, retry=RetryPolicy(attempts=3, base=0.001, cap=0.001)) as client:
        with pytest.raises(TAMSResponseError) as caught:
            await client.get_flow("f")
    assert len(seen.requests) == 3 and client.stats.retries == 2
    assert caught.value.status == 503 and caught.value.body["summary"] == "try later"
    assert str(caught.value) == f"GET {url}/flows/f: 503 Service Unavailable: try later"


async def test_refusals_are_not_retried_and_carry_the_error_body(aiohttp_server: AiohttpServer) -> None:
    bad = web.json_response({"type": "BadRequest", "summary": "bad timerange", "time": "1:0"}, status=400)
    missing = web.json_response({"type": "NotFound", "summary": "no such flow", "time": "1:0"}, status=404)
    url, seen = await scripted_server(aiohttp_server, [bad, missing])
    async with TAMSClient(url, retry=FAST) as client:
        with pytest.raises(TAMSResponseError) as caught:
            await client.get_flow("f", timerange="nonsense")
        with pytest.raises(NotFound):
            await client.get_flow("f")
    assert len(seen.requests) == 2 and client.stats.retries == 0
    assert caught.value.status == 400 and caught.value.method == "GET"
    assert caught.value.body == {"type": "BadRequest", "summary": "bad timerange", "time": "1:0"}
    assert "bad timerange" in str(caught.value) and "\n" not in str(caught.value)


async def test_a_post_that_is_not_safe_to_repeat_is_not_retried(aiohttp_server: AiohttpServer) -> None:
    url, seen = await scripted_server(aiohttp_server, [unavailable(503)])
    async with TAMSClient(url, retry=FAST) as client:
        with pytest.raises(TAMSResponseError):
            await client.request("POST", "/service/webhooks", json_body={"url": "http://h/hook", "events": []})
    assert len(seen.requests) == 1 and client.stats.retries == 0


async def test_retry_after_is_honoured(aiohttp_server: AiohttpServer) -> None:
    url, seen = await scripted_server(aiohttp_server, [unavailable(503, "1")])
    async with TAMSClient(url, retry=FAST) as client:
        started = time.monotonic()
        await client.get_service()
        elapsed = time.monotonic() - started
    assert len(seen.requests) == 2
    assert 0.95 <= elapsed < 3  # FAST alone would wait at most 0.01 s


async def test_a_slow_answer_times_out_and_is_retried(aiohttp_server: AiohttpServer) -> None:
    url, seen = await scripted_server(aiohttp_server, [1.0])
    timeout = aiohttp.ClientTimeout(sock_read=0.2)
    async with TAMSClient(url, retry=FAST, timeout=timeout) as client:
        assert (await client.get_service())["ok"] is True
    assert client.stats.retries == 1 and len(seen.requests) == 2


async def test_an_answer_that_is_not_json_is_a_clean_error(aiohttp_server: AiohttpServer) -> None:
    url, _ = await scripted_server(aiohttp_server, [web.Response(text="<html>hello</html>",
                                                                 content_type="text/html")])
    async with TAMSClient(url, retry=FAST) as client:
        with pytest.raises(TAMSResponseError, match="is not JSON"):
            await client.get_service()


async def test_nothing_listening_is_a_connection_error_after_the_budget() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and now refuses connections
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with TAMSClient(f"http://127.0.0.1:{port}", retry=RetryPolicy(attempts=3, base=0.001)) as client:
        with pytest.raises(TAMSConnectionError) as caught:
            await client.get_service()
    assert client.stats.retries == 2
    assert str(caught.value).startswith(f"could not reach GET http://127.0.0.1:{port}/service after 3 attempt(s)")


async def test_a_host_that_does_not_resolve_is_given_up_on_after_two_retries() -> None:
    """A mistyped host must not burn the whole retry budget (about 20 s by default)."""
    async with TAMSClient("http://no-such-host.invalid", BasicCredentials("u", "p")) as client:  # default policy
        started = time.monotonic()
        with pytest.raises(TAMSConnectionError) as caught:
            await client.get_service()
        assert time.monotonic() - started < 5
        assert client.stats.requests == 3 and client.stats.retries == 2
        assert str(caught.value).startswith("cannot resolve host no-such-host.invalid: ")
        assert str(caught.value).endswith("(GET http://no-such-host.invalid/service, 3 attempt(s))")
        assert caught.value.url == "http://no-such-host.invalid/service" and caught.value.status is None
        # nothing reached any server, so even a POST that is never repeated gets the same tries
        with pytest.raises(TAMSConnectionError, match="^cannot resolve host no-such-host.invalid"):
            await client.request("POST", "/service/webhooks", json_body={"url": "http://h/hook", "events": []})
        assert client.stats.requests == 6


def test_a_script_given_a_host_that_does_not_resolve_prints_one_error_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TAMS_URL", "OAUTH2_URL", "CLIENT_ID", "CLIENT_SECRET", "USERNAME", "PASSWORD")}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "outgest_file.py"), "--tams-url", "http://no-such-host.invalid",
         "--username", "a", "--password", "b", "--flow-id", str(uuid4()), "--output", str(tmp_path / "x.ts")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert time.monotonic() - started < 15
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: cannot resolve host no-such-host.invalid"), result.stderr
    assert not (tmp_path / "x.ts").exists()


def test_a_url_that_is_not_http_is_refused_at_once() -> None:
    with pytest.raises(TAMSError, match="not an http"):
        TAMSClient("localhost:8000")


async def test_renewable_credentials_are_renewed_once_then_a_second_401_raises(aiohttp_server: AiohttpServer) -> None:
    issued: list[str] = []

    async def token(request: web.Request) -> web.Response:
        issued.append(f"junk-{len(issued)}")
        return web.json_response({"access_token": issued[-1], "expires_in": 3600, "token_type": "Bearer"})

    token_app = web.Application()
    token_app.router.add_post("/token", token)
    token_url = str((await aiohttp_server(token_app)).make_url("/token"))
    refusal = web.json_response({"type": "Unauthorized", "summary": "bad token", "time": "0:0"}, status=401)
    url, seen = await scripted_server(aiohttp_server, [refusal, web.json_response(
        {"type": "Unauthorized", "summary": "bad token", "time": "0:0"}, status=401)])
    creds = OAuth2ClientCredentials(token_url, "client", "secret")
    async with TAMSClient(url, creds, retry=FAST) as client:
        with pytest.raises(TAMSResponseError) as caught:
            await client.get_flow("f")
    assert caught.value.status == 401
    assert issued == ["junk-0", "junk-1"]
    assert [h["Authorization"] for h in seen.headers] == ["Bearer junk-0", "Bearer junk-1"]
    assert client.stats.renewals == 1


async def test_a_fixed_token_refused_is_not_renewed(aiohttp_server: AiohttpServer) -> None:
    refusal = web.json_response({"type": "Unauthorized", "summary": "bad token", "time": "0:0"}, status=401)
    url, seen = await scripted_server(aiohttp_server, [refusal])
    async with TAMSClient(url, BearerToken("t"), retry=FAST) as client:
        with pytest.raises(TAMSResponseError) as caught:
            await client.get_service()
    assert caught.value.status == 401 and len(seen.requests) == 1


async def test_low_level_requests_for_the_proxy(aiohttp_server: AiohttpServer) -> None:
    missing = web.json_response({"type": "NotFound", "summary": "no", "time": "0:0"}, status=404)
    url, seen = await scripted_server(aiohttp_server, [unavailable(503), 0.0, missing, unavailable(404)])
    async with TAMSClient(url, BasicCredentials("u", "p"), retry=FAST) as client:
        async with client.request_stream("GET", "/flows?limit=1") as (reply, response):
            assert reply.status == 200 and response is not None
            assert json.loads(await response.read()) == {"ok": True, "path": "/flows?limit=1"}
        assert reply.attempts == 2  # the 503 before it was retried
        async with client.request_stream("GET", "/flows/x") as (reply, response):
            assert reply.status == 404 and response is None and reply.json()["summary"] == "no"
        answer = await client.request("GET", "/flows/y", params={"limit": 5}, check=False)
        assert answer.status == 404
        posted = await client.request("POST", "/service", json_body={"name": "n"}, headers={"X-Test": "1"})
        assert posted.json()["path"] == "/service"
    assert seen.requests[3].path_qs == "/flows/y?limit=5"
    assert json.loads(seen.bodies[4]) == {"name": "n"} and seen.headers[4]["X-Test"] == "1"
    assert seen.headers[4]["Content-Type"] == "application/json" and seen.headers[4]["Authorization"] == "Basic dTpw"


async def test_uploads_send_api_credentials_only_where_they_belong(aiohttp_server: AiohttpServer, tmp_path: Path) -> None:
    url, seen = await scripted_server(aiohttp_server, [])
    other, seen_other = await scripted_server(aiohttp_server, [])
    big = tmp_path / "object.ts"
    big.write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    async with TAMSClient(url, BasicCredentials("u", "p"), retry=FAST) as client:
        await client.upload_object(UploadTarget("a", url + "/media/a?sig=s3cr3t", "video/mp2t", presigned=True), big)
        await client.upload_object(UploadTarget("b", url + "/media/b", "video/mp2t", {"x-extra": "1"}), b"bytes")
        await client.upload_object(UploadTarget("c", other + "/media/c", "video/mp2t"), b"bytes")
    presigned, same_origin = seen.headers
    assert "Authorization" not in presigned and "Authorization" not in seen_other.headers[0]
    assert same_origin["Authorization"] == "Basic dTpw" and same_origin["x-extra"] == "1"
    # the file went as one sized body, not chunked, and arrived intact
    assert presigned["Content-Length"] == str(big.stat().st_size) and "Transfer-Encoding" not in presigned
    assert presigned["Content-Type"] == "video/mp2t"
    assert seen.bodies[0] == big.read_bytes() and seen.bodies[1] == b"bytes"


async def test_upload_of_a_file_is_retried_from_the_start(aiohttp_server: AiohttpServer, tmp_path: Path) -> None:
    url, seen = await scripted_server(aiohttp_server, [unavailable(503), unavailable(500)])
    path = tmp_path / "o.ts"
    path.write_bytes(b"0123456789" * 1000)
    async with TAMSClient(url, retry=FAST) as client:
        await client.upload_object(UploadTarget("a", url + "/media/a?sig=x", "video/mp2t", presigned=True), path)
    assert seen.bodies == [path.read_bytes()] * 3


# --- against the real local store -----------------------------------------------------------


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStore]:
    """One store for the tests here that neither stop it nor need special options (each
    works on flows of its own); starting a store per test would cost a second or two each."""
    store = start_store(tmp_path_factory.mktemp("client-store") / "data")
    yield store
    store.stop()


def basic(store: RunningStore) -> BasicCredentials:
    return BasicCredentials(store.username, store.password)


def video_flow(flow_id: str, source_id: str, label: str = "client test") -> dict[str, Any]:
    return {
        "id": flow_id,
        "source_id": source_id,
        "format": "urn:x-nmos:format:video",
        "codec": "video/h264",
        "container": "video/mp2t",
        "label": label,
        "essence_parameters": {"frame_width": 320, "frame_height": 180,
                               "frame_rate": {"numerator": 30, "denominator": 1}},
    }


def second(n: int, to: int | None = None) -> TimeRange:
    """``[n:0_(n+1):0)``, or ``[n:0_to:0)``."""
    return TimeRange.from_str(f"[{n}:0_{n + 1 if to is None else to}:0)")


@dataclass
class TokenProxy:
    """A token endpoint on loopback that forwards to the store's and counts what passes."""

    url: str = ""
    requests: int = 0
    tokens: list[str] = field(default_factory=list)


async def token_proxy(aiohttp_server: AiohttpServer, store: RunningStore) -> TokenProxy:
    proxy = TokenProxy()

    async def forward(request: web.Request) -> web.Response:
        proxy.requests += 1
        headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")}
        async with aiohttp.ClientSession() as session, session.post(
            store.oauth2_url, data=await request.read(), headers=headers
        ) as answer:
            body = await answer.read()
            if answer.status == 200:
                proxy.tokens.append(json.loads(body)["access_token"])
            return web.Response(body=body, status=answer.status, content_type="application/json")

    app = web.Application()
    app.router.add_post("/token", forward)
    proxy.url = str((await aiohttp_server(app, access_log=None)).make_url("/token"))
    return proxy


def oauth2(store: RunningStore, token_url: str | None = None, **options: Any) -> OAuth2ClientCredentials:
    return OAuth2ClientCredentials(token_url or store.oauth2_url, store.env["CLIENT_ID"], store.env["CLIENT_SECRET"],
                                   **options)


async def test_service_sources_and_flows(shared_store: RunningStore) -> None:
    flow_id, source_id = str(uuid4()), str(uuid4())
    async with TAMSClient(shared_store.url, basic(shared_store), retry=BRIEF) as client:
        service = await client.get_service()
        validate(service, "service.json")
        backends = [b async for b in client.storage_backends()]
        assert len(backends) == 1 and backends[0]["store_type"] == "http_object_store"

        created = await client.put_flow(flow_id, video_flow(flow_id, source_id))
        assert created is not None and created["id"] == flow_id
        validate(created, "flow-get.json")
        label = f"renamed {flow_id}"
        assert await client.put_flow(flow_id, video_flow(flow_id, source_id, label=label)) is None
        flow = await client.get_flow(flow_id, include_timerange=True)
        assert flow["label"] == label and flow["timerange"] == "()"
        with pytest.raises(NotFound) as caught:
            await client.get_flow(str(uuid4()))
        assert caught.value.status == 404 and caught.value.body["type"]

        assert flow_id in [f["id"] async for f in client.flows()]
        assert [f["id"] async for f in client.flows(label=label)] == [flow_id]
        assert [f["id"] async for f in client.flows(label="nothing like it")] == []

        assert (await client.get_source(source_id))["format"] == "urn:x-nmos:format:video"
        assert source_id in [s["id"] async for s in client.sources()]
        await client.put_source_label(source_id, "a source")
        assert await client.get_source_label(source_id) == "a source"
        await client.put_source_description(source_id, "described")
        assert await client.get_source_description(source_id) == "described"
        await client.delete_source_description(source_id)
        assert "description" not in await client.get_source(source_id)
        await client.delete_source_label(source_id)
        assert "label" not in await client.get_source(source_id)
        await client.put_source_tag(source_id, "genre", ["news", source_id])
        assert await client.get_source_tag(source_id, "genre") == ["news", source_id]
        assert await client.get_source_tags(source_id) == {"genre": ["news", source_id]}
        assert [s["id"] async for s in client.sources(**{"tag.genre": source_id})] == [source_id]
        await client.delete_source_tag(source_id, "genre")
        with pytest.raises(NotFound):
            await client.get_source_tag(source_id, "genre")

        await client.put_flow_property(flow_id, "description", "moving pictures")
        assert await client.get_flow_property(flow_id, "description") == "moving pictures"
        await client.put_flow_property(flow_id, "max_bit_rate", 5000)
        assert (await client.get_flow(flow_id))["max_bit_rate"] == 5000
        await client.delete_flow_property(flow_id, "description")
        assert "description" not in await client.get_flow(flow_id)
        await client.put_flow_tag(flow_id, "take", flow_id)
        assert await client.get_flow_tag(flow_id, "take") == flow_id
        assert await client.get_flow_tags(flow_id) == {"take": flow_id}
        assert [f["id"] async for f in client.flows(**{"tag.take": flow_id})] == [flow_id]
        await client.delete_flow_tag(flow_id, "take")
        assert await client.get_flow_tags(flow_id) == {}

        assert await client.delete_flow(flow_id) is None
        with pytest.raises(NotFound):
            await client.get_flow(flow_id)
    assert client.stats.retries == 0


async def test_storage_uploads_segments_and_objects(shared_store: RunningStore, tmp_path: Path) -> None:
    flow_id = str(uuid4())
    media = tmp_path / "second.ts"
    media.write_bytes(b"\x47" + bytes(187) * 3)
    async with TAMSClient(shared_store.url, basic(shared_store), retry=BRIEF) as client:
        await client.put_flow(flow_id, video_flow(flow_id, str(uuid4())))
        targets = client.allocate_storage(flow_id, batch=2, presigned=True)
        sent = client.stats.requests
        first, second_target = await anext(targets), await anext(targets)
        assert client.stats.requests == sent + 1  # one allocation for the batch of two
        third = await anext(targets)
        assert client.stats.requests == sent + 2  # the next batch only once those were used up
        await targets.aclose()
        assert first.presigned and first.content_type == "video/mp2t"
        assert len({first.object_id, second_target.object_id, third.object_id}) == 3

        await client.upload_object(first, b"first object bytes")
        await client.upload_object(second_target, media)
        assert await client.post_segments(flow_id, {"object_id": first.object_id, "timerange": second(0)}) == []
        failed = await client.post_segments(flow_id, [
            {"object_id": second_target.object_id, "timerange": str(second(1)), "ts_offset": "0:0"},
            {"object_id": third.object_id, "timerange": "[0:500000000_1:500000000)"},  # overlaps both
        ])
        assert [f["object_id"] for f in failed] == [third.object_id]
        with pytest.raises(TAMSResponseError) as caught:
            await client.post_segments(flow_id, {"object_id": third.object_id, "timerange": second(1, 3)})
        assert caught.value.status == 400 and caught.value.method == "POST"

        segments = [s async for s in client.segments(flow_id)]
        assert [(s["object_id"], s["timerange"]) for s in segments] == [
            (first.object_id, "[0:0_1:0)"), (second_target.object_id, "[1:0_2:0)")]
        assert segments[0]["object_timerange"] == "[0:0_1:0)"
        backwards = [s["object_id"] async for s in client.segments(flow_id, reverse_order=True)]
        assert backwards == [second_target.object_id, first.object_id]
        assert [s["object_id"] async for s in client.segments(flow_id, timerange="[1:0_")] == [second_target.object_id]
        assert [s["object_id"] async for s in client.segments(flow_id, object_id=first.object_id)] == [first.object_id]

        obj = await client.get_object(first.object_id)
        assert obj["referenced_by_flows"] == [flow_id]
        with pytest.raises(NotFound):
            await client.get_object("no/such object")

        urls = segments[1]["get_urls"]
        presigned = next(u for u in urls if u.get("presigned"))
        plain = next(u for u in urls if not u.get("presigned"))
        assert await client.download_object(presigned) == media.read_bytes()
        assert await client.download_object(plain["url"]) == media.read_bytes()  # with API credentials
        async with client.stream_object(presigned, chunk_size=100) as chunks:
            pieces = [chunk async for chunk in chunks]
        assert b"".join(pieces) == media.read_bytes() and len(pieces) > 1

        assert await client.delete_segments(flow_id, timerange="[0:0_1:500000000)") is None
        assert [s["object_id"] async for s in client.segments(flow_id)] == [second_target.object_id]
        await client.delete_segments(flow_id)
        assert [s async for s in client.segments(flow_id)] == []
    assert client.stats.retries == 0


ADMIN_SCOPE = "tams-api/read tams-api/write tams-api/delete tams-api/admin"


async def test_post_service_changes_the_name_and_description(tams_store: RunningStore) -> None:
    async with TAMSClient(tams_store.url, oauth2(tams_store, scope=ADMIN_SCOPE), retry=BRIEF) as admin:
        before = await admin.get_service()
        name, description = f"store {uuid4()}", f"described {uuid4()}"
        assert await admin.post_service({"name": name, "description": description}) is None
        service = await admin.get_service()
        validate(service, "service.json")
        assert (service["name"], service["description"]) == (name, description)
        assert {k: v for k, v in service.items() if k not in ("name", "description")} == {
            k: v for k, v in before.items() if k not in ("name", "description")}
        await admin.post_service({"name": "renamed only"})
        renamed = await admin.get_service()
        assert (renamed["name"], renamed["description"]) == ("renamed only", description)
        with pytest.raises(TAMSResponseError) as caught:
            await admin.post_service({"name": 5})
        assert caught.value.status == 400 and caught.value.method == "POST"
    reader = OAuth2ClientCredentials(tams_store.oauth2_url, "test-reader", "test-reader-secret", scope="tams-api/read")
    async with TAMSClient(tams_store.url, reader, retry=BRIEF) as client:
        with pytest.raises(TAMSResponseError) as caught:
            await client.post_service({"name": "not allowed"})
        assert caught.value.status == 403
        assert (await client.get_service())["name"] == "renamed only"


async def test_flow_delete_requests_record_each_deletion(tams_store: RunningStore) -> None:
    flow_id = str(uuid4())
    async with TAMSClient(tams_store.url, oauth2(tams_store, scope=ADMIN_SCOPE), retry=BRIEF) as client:
        await client.put_flow(flow_id, video_flow(flow_id, str(uuid4())))
        targets = client.allocate_storage(flow_id, batch=2)
        for n in range(2):
            target = await anext(targets)
            await client.upload_object(target, f"object {n}".encode())
            assert await client.post_segments(flow_id, {"object_id": target.object_id, "timerange": second(n)}) == []
        await targets.aclose()
        assert [r async for r in client.flow_delete_requests()] == []

        assert await client.delete_segments(flow_id, timerange=second(0)) is None
        assert await client.delete_flow(flow_id) is None
        records = [r async for r in client.flow_delete_requests(limit=1)]  # one per page: follows the links
        assert len(records) == 2 and client.stats.retries == 0
        for record in records:
            validate(record, "deletion-request.json")
        segments_gone, flow_gone = sorted(records, key=lambda r: r["delete_flow"])
        assert (segments_gone["flow_id"], segments_gone["delete_flow"]) == (flow_id, False)
        assert TimeRange.from_str(segments_gone["timerange_to_delete"]) == second(0)
        assert (flow_gone["flow_id"], flow_gone["delete_flow"], flow_gone["timerange_to_delete"]) == (
            flow_id, True, "_")
        assert {r["status"] for r in records} == {"done"} and {r["timerange_remaining"] for r in records} == {"()"}
        assert {r["created_by"] for r in records} == {"test-admin"}

        for record in records:
            assert await client.get_flow_delete_request(record["id"]) == record
        backwards = [r["id"] async for r in client.flow_delete_requests(reverse_order=True, limit=1)]
        assert backwards == [r["id"] for r in reversed(records)]
        with pytest.raises(NotFound):
            await client.get_flow_delete_request(str(uuid4()))


async def test_object_instances_are_added_copied_and_removed(
    aiohttp_server: AiohttpServer, shared_store: RunningStore
) -> None:
    content = b"\x47" + bytes(range(187)) * 3
    mirror_gets: list[str] = []

    async def mirror(request: web.Request) -> web.Response:
        mirror_gets.append(request.path)
        return web.Response(body=content, content_type="video/mp2t")

    app = web.Application()
    app.router.add_get("/copies/{name}", mirror)
    mirror_url = str((await aiohttp_server(app, access_log=None)).make_url("/copies/one.ts"))
    flow_id = str(uuid4())
    async with TAMSClient(shared_store.url, basic(shared_store), retry=BRIEF) as client:
        backend = [b async for b in client.storage_backends()][0]
        await client.put_flow(flow_id, video_flow(flow_id, str(uuid4())))
        targets = client.allocate_storage(flow_id, batch=1)
        target = await anext(targets)
        await targets.aclose()
        await client.upload_object(target, content)
        await client.post_segments(flow_id, {"object_id": target.object_id, "timerange": second(0)})
        object_id = target.object_id

        async def labels() -> list[tuple[str | None, bool]]:
            found = await client.get_object(object_id)
            return [(u.get("label"), u["presigned"]) for u in found["get_urls"]]

        assert await labels() == [(backend["label"], True), (backend["label"], False)]
        assert await client.post_object_instance(object_id, {"url": mirror_url, "label": "mirror"}) is None
        assert await labels() == [(backend["label"], True), (backend["label"], False), ("mirror", False)]
        with pytest.raises(TAMSResponseError) as caught:  # labels name one instance each
            await client.post_object_instance(object_id, {"url": mirror_url, "label": "mirror"})
        assert caught.value.status == 400

        # drop the store's own copy, then have it copied back from the mirror
        assert await client.delete_object_instance(object_id, storage_id=backend["id"]) is None
        assert await labels() == [("mirror", False)]
        await client.post_object_instance(object_id, {"storage_id": backend["id"]})
        assert mirror_gets == ["/copies/one.ts"]
        found = await client.get_object(object_id)
        stored = next(u for u in found["get_urls"] if u.get("label") == backend["label"] and u["presigned"])
        assert await client.download_object(stored) == content

        assert await client.delete_object_instance(object_id, label="mirror") is None
        assert await labels() == [(backend["label"], True), (backend["label"], False)]
        with pytest.raises(NotFound):
            await client.delete_object_instance(object_id, label="mirror")
        with pytest.raises(TAMSResponseError) as caught:  # the last instance stays
            await client.delete_object_instance(object_id, storage_id=backend["id"])
        assert caught.value.status == 400
    assert client.stats.retries == 0


async def test_segments_are_listed_across_many_pages(shared_store: RunningStore) -> None:
    flow_id = str(uuid4())
    async with TAMSClient(shared_store.url, basic(shared_store), retry=BRIEF) as client:
        await client.put_flow(flow_id, video_flow(flow_id, str(uuid4())))
        targets = client.allocate_storage(flow_id, batch=50)
        segments = [{"object_id": (await anext(targets)).object_id, "timerange": second(n)} for n in range(250)]
        await targets.aclose()
        for start in range(0, 250, 50):
            assert await client.post_segments(flow_id, segments[start:start + 50]) == []

        sent = client.stats.requests
        listed = [s async for s in client.segments(flow_id, limit=10)]
        assert client.stats.requests - sent >= 25  # followed Link: rel="next" page by page
        assert [s["object_id"] for s in listed] == [s["object_id"] for s in segments]
        assert [s["timerange"] for s in listed] == [str(second(n)) for n in range(250)]
        backwards = [s["object_id"] async for s in client.segments(flow_id, limit=7, reverse_order=True)]
        assert backwards == [s["object_id"] for s in reversed(segments)]
        middle = [s["timerange"] async for s in client.segments(flow_id, limit=10, timerange="[100:0_130:0)")]
        assert middle == [str(second(n)) for n in range(100, 130)]


async def test_fifty_concurrent_calls_make_one_token_request(aiohttp_server: AiohttpServer, shared_store: RunningStore) -> None:
    proxy = await token_proxy(aiohttp_server, shared_store)
    async with TAMSClient(shared_store.url, oauth2(shared_store, proxy.url), concurrency=16, retry=BRIEF) as client:
        results = await asyncio.gather(*(client.get_service() for _ in range(50)))
        assert len(results) == 50 and all(r["type"] for r in results)
        assert [f async for f in client.flows(label=str(uuid4()))] == []
    assert proxy.requests == 1 and len(proxy.tokens) == 1
    assert client.stats.renewals == 0


async def test_token_expiry_in_the_middle_of_a_run(aiohttp_server: AiohttpServer, store_factory: StoreFactory) -> None:
    store = store_factory(token_ttl=2)
    early = await token_proxy(aiohttp_server, store)
    late = await token_proxy(aiohttp_server, store)
    # ``early`` renews before expiry; ``late`` has a clock that never moves, so it only
    # learns of the expiry from the store's 401 and must renew and retry then.
    frozen = oauth2(store, late.url, clock=lambda: 0.0)
    flow_id = str(uuid4())

    async def keep_calling(client: TAMSClient, tag: str, seconds: float) -> int:
        calls = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await client.put_flow_tag(flow_id, tag, str(calls))
            assert await client.get_flow_tag(flow_id, tag) == str(calls)
            calls += 1
            await asyncio.sleep(0.05)
        return calls

    async with TAMSClient(store.url, oauth2(store, early.url), retry=BRIEF) as a, \
            TAMSClient(store.url, frozen, retry=BRIEF) as b:
        await a.put_flow(flow_id, video_flow(flow_id, str(uuid4())))
        counts = await asyncio.gather(keep_calling(a, "a", 3.2), keep_calling(b, "b", 3.2))
    assert min(counts) > 10
    assert early.requests >= 3 and a.stats.renewals == 0  # renewed ahead of time, never refused
    assert late.requests >= 2 and b.stats.renewals == late.requests - 1  # one renewal per 401
    assert len(set(late.tokens)) == late.requests


async def test_two_hundred_mixed_calls_succeed_under_faults_without_duplicates(store_factory: StoreFactory) -> None:
    seed, rate = 7, 0.3
    store = store_factory(fault_rate=rate, fault_seed=seed)
    flows = [str(uuid4()) for _ in range(10)]
    payload = {f: [f"{f}-{n}".encode() * 50 for n in range(4)] for f in flows}
    policy = RetryPolicy(attempts=15, base=0.001, cap=0.01)
    calls = 0

    async def work(client: TAMSClient, flow_id: str) -> None:
        nonlocal calls
        await client.put_flow(flow_id, video_flow(flow_id, str(uuid4())))
        await client.put_flow_tag(flow_id, "run", "faults")
        targets = client.allocate_storage(flow_id, batch=4)
        objects = [await anext(targets) for _ in range(4)]
        await targets.aclose()
        for n, target in enumerate(objects):
            await client.upload_object(target, payload[flow_id][n])
            assert await client.post_segments(flow_id, {"object_id": target.object_id, "timerange": second(n)}) == []
        assert (await client.get_flow(flow_id))["tags"] == {"run": "faults"}
        listed = [s async for s in client.segments(flow_id)]
        assert [s["object_id"] for s in listed] == [t.object_id for t in objects]
        for n in (0, 3):
            assert (await client.get_object(objects[n].object_id))["referenced_by_flows"] == [flow_id]
            get_url = next(u for u in listed[n]["get_urls"] if u["presigned"])
            assert await client.download_object(get_url) == payload[flow_id][n]
        await client.delete_flow_tag(flow_id, "run")
        calls += 18  # HTTP calls above, each one request when nothing fails

    async with TAMSClient(store.url, basic(store), retry=policy) as client:
        await asyncio.gather(*(work(client, f) for f in flows))
        for _ in range(20):
            await client.get_service()
            calls += 1
        assert calls == 200
        assert client.stats.requests - client.stats.retries == 200
        # the store draws one number per request from random.Random(seed); every fault is one retry
        draws = random.Random(seed)
        faults = successes = 0
        while successes < 200:
            if draws.random() < rate:
                faults += 1
            else:
                successes += 1
        assert client.stats.retries == faults > 0

        # nothing done twice: exactly the flows and segments asked for
        mine = [f["id"] async for f in client.flows() if f["id"] in flows]
        assert sorted(mine) == sorted(flows)
        for flow_id in flows:
            assert len([s async for s in client.segments(flow_id)]) == 4


async def test_a_store_that_stops_gives_a_clean_connection_error(tams_store: RunningStore) -> None:
    policy = RetryPolicy(attempts=3, base=0.01, cap=0.02)
    async with TAMSClient(tams_store.url, basic(tams_store), retry=policy) as client:
        await client.get_service()
        tams_store.stop()
        started = time.monotonic()
        with pytest.raises(TAMSConnectionError) as caught:
            await client.get_service()
        assert time.monotonic() - started < 5
        assert client.stats.retries == 2
        assert str(caught.value).startswith(f"could not reach GET {tams_store.url}/service after 3 attempt(s): ")
        assert caught.value.status is None and "\n" not in str(caught.value)
        tams_store.restart()
        assert (await client.get_service())["type"]  # the same client carries on once it is back


async def test_a_lost_answer_is_not_work_done_twice(aiohttp_server: AiohttpServer, shared_store: RunningStore) -> None:
    """A proxy passes each POST and PUT to the store but drops the connection instead of the
    first answer, as a flaky network would: the client retries, and the store ends up with
    everything exactly once."""
    dropped: list[str] = []

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with aiohttp.ClientSession() as session, session.request(
            request.method, shared_store.url + request.path_qs, data=body, headers=headers
        ) as answer:
            content = await answer.read()
            if request.method in ("POST", "PUT") and request.path not in dropped:
                dropped.append(request.path)
                assert request.transport is not None
                request.transport.close()  # the store did the work; the client never hears
                raise ConnectionResetError
            return web.Response(body=content, status=answer.status, headers={
                k: v for k, v in answer.headers.items() if k in ("Content-Type", "Link")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    proxy_url = str((await aiohttp_server(app, access_log=None)).make_url("")).rstrip("/")
    flow_id = str(uuid4())
    async with TAMSClient(shared_store.url, basic(shared_store)) as direct:
        flows_before = {f["id"] async for f in direct.flows()}
    async with TAMSClient(proxy_url, basic(shared_store), retry=FAST) as client:
        await client.put_flow(flow_id, video_flow(flow_id, str(uuid4())))
        targets = client.allocate_storage(flow_id, batch=3)  # lost once: three objects wasted, no harm
        objects = [await anext(targets) for _ in range(3)]
        await targets.aclose()
        assert await client.post_segments(flow_id, {"object_id": objects[0].object_id, "timerange": second(0)}) == []
        assert await client.post_segments(flow_id, [
            {"object_id": objects[1].object_id, "timerange": second(1)},
            {"object_id": objects[2].object_id, "timerange": second(2)},
        ]) == []
        listed = [s["object_id"] async for s in client.segments(flow_id)]
    assert listed == [o.object_id for o in objects]
    # (aiohttp itself resends a PUT once when a reused connection drops, so count only the POSTs)
    assert f"/flows/{flow_id}/segments" in dropped and client.stats.retries >= 2
    async with TAMSClient(shared_store.url, basic(shared_store)) as direct:
        assert {f["id"] async for f in direct.flows()} == flows_before | {flow_id}


async def test_a_repeat_refused_as_an_overlap_is_recognised_as_done(aiohttp_server: AiohttpServer) -> None:
    """A store may answer a repeated segment POST with 400 (the spec allows it): the client
    checks that exactly its segment is there and counts the POST as done."""
    stored: list[dict[str, Any]] = []
    posts = 0

    async def post(request: web.Request) -> web.StreamResponse:
        nonlocal posts
        posts += 1
        segment = await request.json()
        if any(s["timerange"] == segment["timerange"] for s in stored):
            return web.json_response({"type": "BadRequest", "summary": "overlap", "time": "0:0"}, status=400)
        stored.append(segment)
        if posts == 1:
            assert request.transport is not None
            request.transport.close()  # stored, but the answer is lost
            raise ConnectionResetError
        return web.Response(status=201)

    async def get(request: web.Request) -> web.Response:
        wanted = request.query.get("object_id")
        return web.json_response([s for s in stored if s["object_id"] == wanted])

    app = web.Application()
    app.router.add_post("/flows/{flow_id}/segments", post)
    app.router.add_get("/flows/{flow_id}/segments", get)
    url = str((await aiohttp_server(app, access_log=None)).make_url("")).rstrip("/")
    async with TAMSClient(url, retry=FAST) as client:
        assert await client.post_segments("f", {"object_id": "o1", "timerange": "[0:0_1:0)"}) == []
        assert client.stats.repeats_recognised == 1
        # a genuine overlap with someone else's segment is still an error
        with pytest.raises(TAMSResponseError) as caught:
            await client.post_segments("f", {"object_id": "o2", "timerange": "[0:0_1:0)"})
    assert caught.value.status == 400 and len(stored) == 1


async def test_broken_connections_leave_no_signature_in_errors_or_logs(
    aiohttp_server: AiohttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp quotes the whole request URL in some of its messages (a connect timeout, for
    one): the client's errors and logs must still show no signature or token."""
    caplog.set_level(logging.DEBUG)

    async def cut_short(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/silent"):  # closed before any answer
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        response = web.StreamResponse(headers={"Content-Type": "video/mp2t", "Content-Length": "100000"})
        await response.prepare(request)
        await response.write(b"\x47" * 1000)
        assert request.transport is not None
        request.transport.close()  # the rest of the promised body never comes
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", cut_short)
    url = str((await aiohttp_server(app, access_log=None)).make_url("")).rstrip("/")
    secret = "SIGSECRET" + uuid4().hex
    query = f"?X-Tams-Expires=1700000000&X-Tams-Signature={secret}"
    policy = RetryPolicy(attempts=2, base=0.001, cap=0.001)
    caught: list[TAMSConnectionError] = []

    async def expect_failure(client: TAMSClient, call: Any) -> None:
        with pytest.raises(TAMSConnectionError) as failure:
            await call
        caught.append(failure.value)

    async def stream_all(client: TAMSClient, target: str) -> None:
        async with client.stream_object(target) as chunks:
            async for _ in chunks:
                pass

    # the connection is never made: aiohttp's ConnectionTimeoutError names the full URL
    never = aiohttp.ClientTimeout(sock_connect=1e-7)
    async with TAMSClient(url, BasicCredentials("u", "p"), retry=policy, timeout=never) as client:
        await expect_failure(client, client.download_object(f"{url}/objects-data/a{query}"))
        await expect_failure(client, stream_all(client, f"{url}/objects-data/b{query}"))
        await expect_failure(client, client.request("GET", f"/flows?limit=1&access_token={secret}"))
    assert "Connection timeout" in str(caught[0]) and str(caught[0]).endswith(f"{url}/objects-data/a")
    # the server drops the connection before answering, and part-way through the body
    async with TAMSClient(url, BasicCredentials("u", "p"), retry=policy) as client:
        await expect_failure(client, client.download_object(f"{url}/objects-data/silent{query}"))
        await expect_failure(client, client.download_object(f"{url}/objects-data/c{query}"))
        await expect_failure(client, stream_all(client, f"{url}/objects-data/d{query}"))
    assert "the download broke off" in str(caught[-1])

    assert len(caught) == 6 and "retry 1 of 1" in caplog.text
    for error in caught:
        assert error.url is not None and error.status is None
        for shown in (str(error), repr(error), error.url):
            assert secret not in shown and "X-Tams-Signature" not in shown
    assert secret not in caplog.text and "X-Tams-Signature=" not in caplog.text.replace("=REDACTED", "")


async def test_logs_and_errors_hold_no_secrets(
    aiohttp_server: AiohttpServer, store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = store_factory(fault_rate=0.3, fault_seed=3, token_ttl=2)
    proxy = await token_proxy(aiohttp_server, store)
    creds = oauth2(store, proxy.url, clock=lambda: 0.0)  # so the store's 401 forces a renewal too
    flow_id = str(uuid4())
    signatures: list[str] = []
    errors: list[str] = []
    policy = RetryPolicy(attempts=15, base=0.001, cap=0.01)
    async with TAMSClient(store.url, creds, retry=policy) as client:
        await client.put_flow(flow_id, video_flow(flow_id, str(uuid4())))
        targets = client.allocate_storage(flow_id, batch=3, presigned=True)
        for n in range(3):
            target = await anext(targets)
            signatures.append(parse_qs(urlsplit(target.put_url).query)["X-Tams-Signature"][0])
            await client.upload_object(target, f"object {n}".encode())
            await client.post_segments(flow_id, {"object_id": target.object_id, "timerange": second(n)})
            if n == 1:
                await asyncio.sleep(2.2)  # the token expires here
        await targets.aclose()
        async for segment in client.segments(flow_id, presigned=True):
            url = segment["get_urls"][0]["url"]
            signatures.append(parse_qs(urlsplit(url).query)["X-Tams-Signature"][0])
            await client.download_object(url)
            try:
                await client.download_object(url.replace("X-Tams-Signature=", "X-Tams-Signature=0"))
            except TAMSResponseError as exc:
                errors.append(str(exc))
        try:
            await client.get_flow(str(uuid4()))
        except NotFound as exc:
            errors.append(str(exc))
    async with TAMSClient(store.url, BasicCredentials(store.username, store.password), retry=policy) as other:
        await other.get_service()
    assert client.stats.retries > 0 and client.stats.renewals > 0 and proxy.requests >= 2 and len(errors) == 4

    secrets = [store.env["CLIENT_SECRET"], store.password, *proxy.tokens, *signatures,
               aiohttp.encode_basic_auth(store.env["CLIENT_ID"], store.env["CLIENT_SECRET"]).split()[1],
               aiohttp.encode_basic_auth(store.username, store.password).split()[1]]
    secrets += [token.rsplit(".", 1)[1] for token in proxy.tokens]  # JWT signatures alone
    text = caplog.text + "\n".join(errors)
    assert "retry" in caplog.text and "renewing credentials" in caplog.text and "X-Tams-Signature" not in text
    for secret in secrets:
        assert secret not in text

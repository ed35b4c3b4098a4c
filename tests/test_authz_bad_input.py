"""Bad input at the proxy: clean 4xx answers in the spec's error shape, nothing reaching the
store that the rules did not allow, and the proxy still serving afterwards.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from authz_support import PROXY_CLIENT, ProxyEnv, client, new_id, start_env, video_flow
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz_proxy.errors import ProxyError
from authz_proxy.rules import match_route
from tests.conftest import RunningStore, start_store

MAX_BODY = 256 * 1024


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStore]:
    running = start_store(tmp_path_factory.mktemp("authz-bad") / "data",
                          clients=[PROXY_CLIENT, client("editor", ["news_read", "news_write"]), client("admin", ["admin"])])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def env(store: RunningStore) -> Iterator[ProxyEnv]:
    running = start_env(store, max_body_size=MAX_BODY)
    yield running
    running.close()


@pytest.fixture(scope="module")
def flow_id(env: ProxyEnv) -> str:
    fid = new_id()
    assert env.store_call("PUT", f"/flows/{fid}", video_flow(fid, new_id(), ["news"])).status == 201
    return fid


def assert_spec_error(answer: Any, status: int | tuple[int, ...]) -> None:
    statuses = (status,) if isinstance(status, int) else status
    assert answer.status in statuses, (answer.status, answer.body[:300])
    body = json.loads(answer.body)
    assert set(body) == {"type", "summary", "time"}, body
    assert answer.headers["Content-Type"].startswith("application/json")


async def raw_exchange(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client-side path cleaning) and read one answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        length = int(headers.get("Content-Length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
        return status, headers, body
    finally:
        writer.close()


class Raw:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


def raw(env: ProxyEnv, request: bytes) -> Raw:
    return Raw(*env.loop.run(raw_exchange(env.url, request)))


def request_bytes(env: ProxyEnv, method: str, target: str, extra: str = "", caller: str | None = "editor") -> bytes:
    auth = f"Authorization: Bearer {env.token(caller)}\r\n" if caller else ""
    return f"{method} {target} HTTP/1.1\r\nHost: proxy\r\n{auth}{extra}Connection: close\r\n\r\n".encode("latin-1")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nope", 404), ("GET", "/flows/", 404), ("GET", "/flows//segments", 404), ("GET", "/objects-data/x", 404),
     ("GET", "/oauth2/token", 404), ("GET", "/.well-known/jwks.json", 404), ("POST", "/flows", 405),
     ("PATCH", "/flows/x", 405), ("OPTIONS", "/", 405), ("PUT", "/sources/x", 405), ("DELETE", "/service", 405),
     ("GET", "/flows/x/storage", 405), ("TRACE", "/", 405)],
)
def test_unknown_routes_and_methods_are_refused_here(env: ProxyEnv, method: str, path: str, status: int) -> None:
    env.recorder.clear()
    answer = env.call("admin", method, path, json_body={} if method in ("POST", "PUT", "PATCH") else None)
    assert_spec_error(answer, status)
    if status == 405:
        assert method not in answer.headers["Allow"]
    assert not env.recorder.seen, "an unknown route reached the store"


@pytest.mark.parametrize(
    "target",
    ["/flows/../service/webhooks", "/flows/%2e%2e/%2e%2e/service", "/objects/..", "/flows/x/../../objects-data/y",
     "//service", "/flows/%ZZ", "/flows/x%00y", "/service?x=%ZZ"],
)
def test_odd_raw_paths_are_refused_or_judged_as_forwarded(env: ProxyEnv, target: str) -> None:
    env.recorder.clear()
    answer = raw(env, request_bytes(env, "GET", target))
    assert answer.status < 500
    if answer.status >= 400:
        assert set(json.loads(answer.body)) == {"type", "summary", "time"}
    for seen in env.recorder.seen:
        match_route(seen.method, seen.raw_path)  # anything forwarded is a route of the API


@pytest.mark.parametrize(
    "body",
    [b"not json", b"", b"   ", b"\xff\xfe\x00", b'{"a": 1, "a": 2}', b"NaN", b'{"x": Infinity}', b"[" * 100000,
     b'"unterminated'],
)
def test_bodies_that_are_not_json_get_400(env: ProxyEnv, flow_id: str, body: bytes) -> None:
    env.recorder.clear()
    answer = env.call("editor", "PUT", f"/flows/{flow_id}/label", data=body,
                      headers={"Content-Type": "application/json"})
    assert_spec_error(answer, 400)
    assert not env.recorder.writes()


@pytest.mark.parametrize("value", [{"a": "b"}, 7, None, True, ["ok", 2], [["nested"]]])
def test_tag_values_that_are_not_strings_or_lists_get_400(env: ProxyEnv, flow_id: str, value: object) -> None:
    env.recorder.clear()
    for name in ("genre", "auth_classes"):
        answer = env.call("admin", "PUT", f"/flows/{flow_id}/tags/{name}", data=json.dumps(value).encode(),
                          headers={"Content-Type": "application/json"})
        assert_spec_error(answer, 400)
    assert not env.recorder.seen


def test_oversized_bodies_get_413(env: ProxyEnv, flow_id: str) -> None:
    env.recorder.clear()
    body = json.dumps({"object_id": "x" * (MAX_BODY + 10), "timerange": "[0:0_1:0)"}).encode()
    answer = env.call("admin", "POST", f"/flows/{flow_id}/segments", data=body,
                      headers={"Content-Type": "application/json"})
    assert_spec_error(answer, 413)
    assert not env.recorder.seen


@pytest.mark.parametrize(
    "extra",
    [f"X-Big: {'a' * 40000}\r\n", "".join(f"X-H{i}: v\r\n" for i in range(300)), f"{'X' * 40000}: v\r\n"],
    ids=["huge header value", "too many headers", "huge header name"],
)
def test_huge_headers_get_a_spec_error_and_the_proxy_keeps_serving(env: ProxyEnv, extra: str) -> None:
    env.recorder.clear()
    answer = raw(env, request_bytes(env, "GET", "/service", extra))
    assert 400 <= answer.status < 500
    assert set(json.loads(answer.body)) == {"type", "summary", "time"}
    assert not env.recorder.seen
    assert env.call("editor", "GET", "/service").status == 200


def test_huge_request_lines_and_garbage_get_spec_errors(env: ProxyEnv) -> None:
    env.recorder.clear()
    long_line = raw(env, request_bytes(env, "GET", "/flows?label=" + "a" * 20000))
    assert 400 <= long_line.status < 500
    assert set(json.loads(long_line.body)) == {"type", "summary", "time"}
    garbage = raw(env, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64 + b"\r\n\r\n")
    assert 400 <= garbage.status < 500
    assert set(json.loads(garbage.body)) == {"type", "summary", "time"}
    assert not env.recorder.seen
    assert env.call("editor", "GET", "/service").status == 200


def test_two_authorization_headers_are_a_bad_request(env: ProxyEnv) -> None:
    env.recorder.clear()
    token = env.token("editor")
    answer = raw(env, request_bytes(env, "GET", "/service", f"Authorization: Bearer {token}\r\n"))
    assert answer.status == 400
    assert not env.recorder.seen


def test_unreachable_store_gives_502(store: RunningStore) -> None:
    env = start_env(store, api_url="http://127.0.0.1:9")
    try:
        answer = env.call("editor", "GET", "/service")
        assert_spec_error(answer, 502)
        assert_spec_error(env.call("editor", "GET", f"/flows/{new_id()}"), 502)
    finally:
        env.close()


SEGMENT = st.sampled_from(["flows", "sources", "objects", "service", "webhooks", "segments", "tags", "auth_classes",
                           "label", "..", ".", "", "%2F", "%2e%2e", "instances", "storage", "x", new_id()])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH"]),
       segments=st.lists(SEGMENT, min_size=0, max_size=5),
       body=st.one_of(st.none(), st.binary(max_size=64), st.just(b'{"tags": {"auth_classes": ["x"]}}')))
def test_no_request_reaches_the_store_unless_a_rule_allowed_it(env: ProxyEnv, method: str, segments: list[str],
                                                                body: bytes | None) -> None:
    env.recorder.clear()
    path = "/" + "/".join(segments)
    target = path.replace("/webhooks", "/service/webhooks", 1) if path.startswith("/webhooks") else path
    answer = env.call("editor", method, target, data=body)
    assert answer.status < 500, (method, target, answer.status, answer.body[:200])
    for seen in env.recorder.seen:
        try:
            rule = match_route(seen.method, seen.raw_path).rule
        except ProxyError:
            pytest.fail(f"the store saw {seen.method} {seen.raw_path}, which is not an API route")
        assert rule.template.count("/") == seen.raw_path.count("/")
        assert seen.subject == PROXY_CLIENT["client_id"]


def test_header_lines_up_to_32_kib_pass_as_the_store_takes_them(env: ProxyEnv) -> None:
    answer = raw(env, request_bytes(env, "GET", "/service", f"X-Big: {'a' * 20000}\r\n"))
    assert answer.status == 200, answer.body

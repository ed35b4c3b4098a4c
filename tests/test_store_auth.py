"""Authentication and scopes of the local store: basic auth, the OAuth2 client-credentials token
endpoint, RS256 JWTs checked against the published JWKS, scope enforcement, and logs that never
show a secret."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from store_http import TOKEN_SCHEMA, StoreHttp, basic_header, new_flow

from tests.conftest import RunningStore

JWKS_SCHEMA = {
    "type": "object",
    "required": ["keys"],
    "properties": {
        "keys": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["kty", "kid", "n", "e"],
                "properties": {"kty": {"const": "RSA"}},
            },
        }
    },
}
OAUTH_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "type", "summary", "time"],
}


@pytest.fixture
async def http(shared_store: RunningStore) -> AsyncIterator[StoreHttp]:
    async with aiohttp.ClientSession() as session:
        yield StoreHttp(session, shared_store.url)


async def token(
    http: StoreHttp,
    client_id: str,
    secret: str,
    scope: str | None = None,
    *,
    form_auth: bool = False,
) -> str:
    data = {"grant_type": "client_credentials"}
    if scope is not None:
        data["scope"] = scope
    headers: dict[str, str] = {}
    if form_auth:
        data |= {"client_id": client_id, "client_secret": secret}
    else:
        headers = basic_header(client_id, secret)
    reply = await http.call(
        "POST",
        "/oauth2/token",
        data=data,
        headers=headers,
        status=200,
        schema=TOKEN_SCHEMA,
    )
    assert reply.headers["Cache-Control"] == "no-store"
    return reply.body["access_token"]


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


async def test_api_needs_credentials(http: StoreHttp, shared_store: RunningStore) -> None:
    for method, path in (
        ("GET", "/flows"),
        ("GET", "/service"),
        ("PUT", f"/flows/{new_flow()['id']}"),
    ):
        reply = await http.call(method, path, status=401)
        challenges = reply.headers.getall("WWW-Authenticate")
        assert any(c.startswith("Bearer") for c in challenges)
        assert any(c.startswith("Basic") for c in challenges)
    await http.call(
        "GET",
        "/flows",
        headers=basic_header(shared_store.username, "wrong"),
        status=401,
    )
    await http.call("GET", "/flows", headers={"Authorization": "Basic !!!"}, status=401)
    await http.call("GET", "/flows", headers={"Authorization": "Digest abc"}, status=401)
    reply = await http.call("GET", "/flows", headers=bearer("not.a.jwt"), status=401)
    assert 'error="invalid_token"' in reply.headers.getall("WWW-Authenticate")[0]
    await http.call(
        "GET",
        "/flows",
        headers=basic_header(shared_store.username, shared_store.password),
        status=200,
        items="flow-get.json",
    )


async def test_tokens_are_rs256_jwts_verifiable_with_the_jwks(http: StoreHttp, shared_store: RunningStore) -> None:
    before = int(time.time())
    access_token = await token(http, "test-admin", "test-admin-secret", "tams-api/read tams-api/write")
    jwks = (await http.call("GET", "/.well-known/jwks.json", status=200, schema=JWKS_SCHEMA)).body
    header = jwt.get_unverified_header(access_token)
    assert header["alg"] == "RS256"
    (key,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    public_key = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(key))
    assert isinstance(public_key, RSAPublicKey)
    claims = jwt.decode(access_token, public_key, algorithms=["RS256"], options={"verify_aud": False})
    assert claims["iss"] == shared_store.url
    assert claims["sub"] == "test-admin"
    assert claims["scope"] == "tams-api/read tams-api/write"
    assert claims["groups"] == ["admin"]
    assert before <= claims["iat"] <= claims["exp"] - 3000
    # Forms of client authentication and of presenting the token.
    via_form = await token(http, "test-admin", "test-admin-secret", form_auth=True)
    assert set(jwt.decode(via_form, options={"verify_signature": False})["scope"].split()) == {
        "tams-api/read", "tams-api/write", "tams-api/delete", "tams-api/admin"
    }  # fmt: skip
    await http.call("GET", "/flows", headers=bearer(access_token), status=200, items="flow-get.json")
    await http.call(
        "GET",
        "/flows",
        params={"access_token": access_token},
        status=200,
        items="flow-get.json",
    )
    forged = access_token[:-4] + ("AAAA" if not access_token.endswith("AAAA") else "BBBB")
    await http.call("GET", "/flows", headers=bearer(forged), status=401)


async def test_token_endpoint_refusals(http: StoreHttp) -> None:
    cases: list[tuple[dict[str, str], dict[str, str], int, str]] = [
        ({"grant_type": "client_credentials"}, basic_header("test-admin", "wrong"), 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, basic_header("nobody", "x"), 401, "invalid_client"),
        ({"grant_type": "password"}, basic_header("test-admin", "test-admin-secret"), 400, "unsupported_grant_type"),
        (
            {"grant_type": "client_credentials", "scope": "tams-api/write"},
            basic_header("test-reader", "test-reader-secret"),
            400,
            "invalid_scope",
        ),
        ({"grant_type": "client_credentials", "client_id": "test-admin"}, {}, 401, "invalid_client"),
    ]  # fmt: skip
    for data, headers, status, error in cases:
        reply = await http.call("POST", "/oauth2/token", data=data, headers=headers, status=status)
        assert reply.body["error"] == error
    await http.call("GET", "/oauth2/token", status=405)


async def test_scopes_are_enforced(http: StoreHttp, shared_store: RunningStore) -> None:
    admin = http.with_headers(basic_header(shared_store.username, shared_store.password))
    flow = new_flow()
    await admin.put_flow(flow, status=201)
    (obj,) = await admin.allocate(flow["id"])
    reader = http.with_headers(bearer(await token(http, "test-reader", "test-reader-secret")))
    await reader.call("GET", f"/flows/{flow['id']}", status=200, schema="flow-get.json")
    await reader.segments(flow["id"])
    await reader.call("GET", "/service", status=200, schema="service.json")
    segment = {"object_id": obj["object_id"], "timerange": "[0:0_1:0)"}
    for method, path, body in (
        ("PUT", f"/flows/{flow['id']}", flow),
        ("POST", f"/flows/{flow['id']}/segments", segment),
        ("POST", f"/flows/{flow['id']}/storage", {"limit": 1}),
        ("DELETE", f"/flows/{flow['id']}/segments", None),
        ("DELETE", f"/flows/{flow['id']}", None),
        ("POST", "/service", {"name": "x"}),
    ):
        reply = await reader.call(method, path, json=body, status=403)
        assert "scope" in reply.body["summary"]
    writer_token = await token(http, "test-admin", "test-admin-secret", "tams-api/read tams-api/write")
    writer = http.with_headers(bearer(writer_token))
    await writer.post_segments(flow["id"], segment)
    await writer.call("DELETE", f"/flows/{flow['id']}/segments", status=403)  # needs tams-api/delete
    await writer.call("POST", "/service", json={"name": "x"}, status=403)  # needs tams-api/admin
    deleter = http.with_headers(bearer(await token(http, "test-admin", "test-admin-secret", "tams-api/delete")))
    await deleter.call("DELETE", f"/flows/{flow['id']}/segments", status=204)
    assert (await reader.segments(flow["id"])).body == []


async def test_expired_token_is_refused(
    store_factory: Callable[..., RunningStore],
) -> None:
    store = store_factory(token_ttl=1)
    async with aiohttp.ClientSession() as session:
        http = StoreHttp(session, store.url)
        access_token = await token(http, "test-admin", "test-admin-secret")
        await http.call(
            "GET",
            "/flows",
            headers=bearer(access_token),
            status=200,
            items="flow-get.json",
        )
        await asyncio.sleep(2.1)
        reply = await http.call("GET", "/flows", headers=bearer(access_token), status=401)
        assert 'error="invalid_token"' in reply.headers.getall("WWW-Authenticate")[0]
        assert "expired" in reply.body["summary"]


async def test_secrets_and_signatures_never_reach_the_log(
    store_factory: Callable[..., RunningStore],
) -> None:
    store = store_factory(extra_args=["--access-log", "--log-level", "DEBUG"])
    secrets_seen: list[str] = [
        store.password,
        "test-admin-secret",
        "test-reader-secret",
    ]
    async with aiohttp.ClientSession() as session:
        http = StoreHttp(session, store.url)
        access_token = await token(http, "test-admin", "test-admin-secret")
        secrets_seen.append(access_token)
        await token(http, "test-reader", "test-reader-secret", form_auth=True)
        await http.call(
            "POST",
            "/oauth2/token",
            data={"grant_type": "client_credentials"},
            headers=basic_header("test-admin", "guess-secret"),
            status=401,
        )
        secrets_seen.append("guess-secret")
        api = http.with_headers(bearer(access_token))
        flow = new_flow()
        await api.put_flow(flow, status=201)
        (obj,) = await api.allocate(flow["id"])
        put_url = obj["put_url"]["url"]
        secrets_seen.append(put_url.split("?", 1)[1])
        await http.call(
            "PUT",
            put_url,
            data=b"media",
            headers={"Content-Type": "video/mp2t"},
            status=201,
        )
        await http.call(
            "PUT",
            put_url + "0",
            data=b"media",
            headers={"Content-Type": "video/mp2t"},
            status=403,
        )
        await api.post_segments(flow["id"], {"object_id": obj["object_id"], "timerange": "[0:0_1:0)"})
        (segment,) = (await api.segments(flow["id"], presigned="true")).body
        get_url = segment["get_urls"][0]["url"]
        secrets_seen.append(get_url.split("?", 1)[1])
        await http.call("GET", get_url, status=200)
        await http.call(
            "GET",
            "/flows",
            params={"access_token": access_token},
            status=200,
            items="flow-get.json",
        )
        await http.call(
            "GET",
            "/flows",
            headers=basic_header("test-user", "wrong-password"),
            status=401,
        )
        secrets_seen.append("wrong-password")
    store.stop()
    log = store.log_text()
    assert '"PUT /objects-data/' in log  # the access log is on and records paths
    for secret in secrets_seen:
        assert secret not in log
    assert "X-Tams-Signature" not in log
    assert base64.b64encode(f"{store.username}:{store.password}".encode()).decode() not in log

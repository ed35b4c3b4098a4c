"""The store trusts an outside identity provider: a second, real token issuer runs on loopback
(``tests/token_issuer.py``: its own RSA and EC keys, its own JWKS endpoint, PyJWT signing) and
the store is started with ``--jwks-url``, ``--issuer``, ``--audience`` and claim names like
Cognito's. Its tokens work alongside the store's own (or, with ``--no-own-tokens``, instead of
them); every forged, foreign or stale token is a 401; keys are cached and fetched again only for
an unknown ``kid``, never more than once per ``--jwks-cooldown``."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from store_http import basic_header, basic_http, new_flow

from tests.conftest import DEFAULT_CLIENTS, REPO_ROOT, RunningStore
from tests.token_issuer import TokenIssuer, b64, public_jwk

ISSUER = "https://idp.example.test/realms/media"
AUDIENCE = "tams"
COOLDOWN = 2.0


@pytest.fixture
async def issuer() -> AsyncIterator[TokenIssuer]:
    idp = TokenIssuer()
    await idp.start()
    yield idp
    await idp.stop()


def idp_args(idp: TokenIssuer, *more: str) -> list[str]:
    return ["--jwks-url", idp.url, "--issuer", ISSUER, "--audience", AUDIENCE, "--scope-claim", "scp",
            "--groups-claim", "cognito:groups", "--jwks-cooldown", str(COOLDOWN), *more]  # fmt: skip


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    out = {"sub": "editor-1", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300,
           "scp": "tams-api/read", "cognito:groups": ["news"]}  # fmt: skip
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(store: RunningStore, method: str, path: str, token: str | None, **kwargs: Any) -> tuple[int, Any, Any]:
    headers = bearer(token) if token is not None else {}
    async with aiohttp.ClientSession() as session, session.request(method, store.url + path, headers=headers, **kwargs) as reply:
        body = await reply.json(content_type=None) if reply.content_length != 0 else None
        return reply.status, reply.headers, body


async def own_token(store: RunningStore) -> str:
    admin = DEFAULT_CLIENTS[0]
    async with (
        aiohttp.ClientSession() as session,
        session.post(store.oauth2_url, data={"grant_type": "client_credentials"},
                     headers=basic_header(admin["client_id"], admin["client_secret"])) as reply,
    ):  # fmt: skip
        assert reply.status == 200
        return (await reply.json())["access_token"]


async def test_outside_tokens_are_accepted_with_their_scopes_alongside_the_stores_own(
    store_factory: Callable[..., RunningStore], issuer: TokenIssuer
) -> None:
    store = store_factory(extra_args=idp_args(issuer))
    reader = issuer.sign(claims())  # RS256, scopes as a space-separated string
    writer = issuer.sign(claims(scp=["tams-api/read", "tams-api/write"]), alg="ES256", kid="e1")  # a list
    status, _, _ = await call(store, "GET", "/flows", reader)
    assert status == 200
    flow = new_flow()
    status, _, body = await call(store, "PUT", f"/flows/{flow['id']}", reader, json=flow)
    assert status == 403 and "tams-api/write" in body["summary"]
    status, _, _ = await call(store, "PUT", f"/flows/{flow['id']}", writer, json=flow)
    assert status == 201
    status, _, _ = await call(store, "DELETE", f"/flows/{flow['id']}", writer)
    assert status == 403, "delete needs tams-api/delete"
    # The store's own tokens and Basic go on working.
    status, _, _ = await call(store, "DELETE", f"/flows/{flow['id']}", await own_token(store))
    assert status in (200, 202, 204)
    async with basic_http(store) as api:
        await api.call("GET", "/flows", status=200, items="flow-get.json")
    assert issuer.fetches == 1, "the key set is fetched once and cached"


def pem_of(idp: TokenIssuer) -> bytes:
    return idp.rsa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def hs256(payload: dict[str, Any], secret: bytes, header: dict[str, Any]) -> str:
    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT", **header}).encode()) + "." + b64(json.dumps(payload).encode())
    return signing_input + "." + b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def unsigned(payload: dict[str, Any]) -> str:
    return b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "k1"}).encode()) + "." + b64(json.dumps(payload).encode()) + "."


FORGERIES: dict[str, Callable[[TokenIssuer], str]] = {
    "alg none": lambda i: unsigned(claims()),
    "HS256 with the public key PEM as secret": lambda i: hs256(claims(), pem_of(i), {"kid": "k1"}),
    "HS256 with the JWKS oct key": lambda i: hs256(claims(), b"shared-secret-shared-secret-1234", {"kid": "hs"}),
    "expired": lambda i: i.sign(claims(exp=int(time.time()) - 120, iat=int(time.time()) - 600)),
    "not yet valid": lambda i: i.sign(claims(nbf=int(time.time()) + 600)),
    "no exp": lambda i: i.sign(claims(exp=None)),
    "wrong key, right kid": lambda i: i.sign(claims(), key=i.other),
    "unknown kid": lambda i: i.sign(claims(), kid="nobody"),
    "RSA alg naming the EC key": lambda i: i.sign(claims(), alg="RS256", kid="e1"),
    "another issuer": lambda i: i.sign(claims(iss="https://evil.example.test")),
    "no issuer": lambda i: i.sign(claims(iss=None)),
    "another audience": lambda i: i.sign(claims(aud="someone-else")),
    "no audience": lambda i: i.sign(claims(aud=None)),
    "not a JWT": lambda i: "not-a-jwt",
}


async def test_forged_foreign_and_stale_outside_tokens_are_401(store_factory: Callable[..., RunningStore], issuer: TokenIssuer) -> None:
    store = store_factory(extra_args=idp_args(issuer))
    for name, forge in FORGERIES.items():
        status, headers, body = await call(store, "GET", "/flows", forge(issuer))
        assert status == 401, (name, status, body)
        assert set(body) == {"type", "summary", "time"}, name
        assert 'Bearer realm="tams", error="invalid_token"' in headers.getall("WWW-Authenticate"), name
    # A good one still passes afterwards.
    status, _, _ = await call(store, "GET", "/flows", issuer.sign(claims()))
    assert status == 200


async def test_a_rotated_key_is_fetched_once_and_made_up_kids_do_not_hammer_the_provider(
    store_factory: Callable[..., RunningStore], issuer: TokenIssuer
) -> None:
    store = store_factory(extra_args=idp_args(issuer))
    assert (await call(store, "GET", "/flows", issuer.sign(claims())))[0] == 200
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rotated = issuer.sign(claims(), kid="k2", key=new_key)
    issuer.keys.append(public_jwk(new_key, "k2"))
    await asyncio.sleep(COOLDOWN + 0.2)
    before = issuer.fetches
    assert (await call(store, "GET", "/flows", rotated))[0] == 200
    assert issuer.fetches == before + 1
    assert (await call(store, "GET", "/flows", issuer.sign(claims(sub="other"), kid="k2", key=new_key)))[0] == 200
    assert issuer.fetches == before + 1, "a known kid causes no fetch"
    for n in range(20):
        assert (await call(store, "GET", "/flows", issuer.sign(claims(), kid=f"made-up-{n}")))[0] == 401
    assert issuer.fetches <= before + 2, "at most one fetch per cooldown"


async def test_no_own_tokens_leaves_only_the_providers(store_factory: Callable[..., RunningStore], issuer: TokenIssuer) -> None:
    store = store_factory(extra_args=idp_args(issuer, "--no-own-tokens"))
    status, _, _ = await call(store, "POST", "/oauth2/token", None, data={"grant_type": "client_credentials"})
    assert status == 404
    # A token claiming the store as its issuer has nobody to vouch for it.
    forged = issuer.sign(claims(iss=store.url))
    assert (await call(store, "GET", "/flows", forged))[0] == 401
    assert (await call(store, "GET", "/flows", issuer.sign(claims())))[0] == 200
    assert "OAUTH2_URL" not in store.env or not store.env["OAUTH2_URL"]


async def test_an_unreachable_key_set_is_503_not_a_refusal(store_factory: Callable[..., RunningStore], issuer: TokenIssuer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/jwks.json"
    store = store_factory(extra_args=["--jwks-url", dead, "--issuer", ISSUER, "--audience", AUDIENCE])
    status, _, body = await call(store, "GET", "/flows", issuer.sign(claims(scope="tams-api/read")))
    assert status == 503 and set(body) == {"type", "summary", "time"}
    async with basic_http(store) as api:
        await api.call("GET", "/flows", status=200, items="flow-get.json")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--jwks-url", "http://127.0.0.1:9/jwks.json"], "--issuer"),
        (["--issuer", ISSUER], "--jwks-url"),
        (["--no-own-tokens"], "--jwks-url"),
        (["--jwks-url", "file:///etc/passwd", "--issuer", ISSUER], "http"),
    ],
)
def test_incomplete_identity_provider_options_are_one_line_errors(args: list[str], says: str, tmp_path: Any) -> None:
    result = subprocess.run([sys.executable, "-m", "local_store", "--port", "0", "--data-dir", str(tmp_path / "d"), *args],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], result.stderr
    assert not (tmp_path / "d").exists(), "nothing is created for a refused start"


def test_the_store_lists_its_identity_provider_options() -> None:
    result = subprocess.run([sys.executable, "-m", "local_store", "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    for option in ("--jwks-url", "--issuer", "--audience", "--scope-claim", "--groups-claim", "--jwks-cooldown", "--no-own-tokens"):
        assert option in result.stdout


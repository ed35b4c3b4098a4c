"""Bearer token checks at the proxy: only well-signed, current, asymmetric tokens get through.

One proxy trusts a JWKS served by the test itself (so the test can sign anything: expired
tokens, other keys, other issuers); another trusts the local store's own JWKS. Every refused
token must get 401 with a ``WWW-Authenticate: Bearer`` challenge and the spec error body, and
the store must see nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from authz_support import PROXY_CLIENT, LoopThread, ProxyEnv, client, start_env
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import RunningStore
from tests.token_issuer import TokenIssuer, b64, public_jwk

ISSUER = "https://issuer.test"
AUDIENCE = "tams-proxy"


class KeySet(TokenIssuer):
    """The test's token issuer, run on the proxy tests' loop thread."""

    def __init__(self, loop: LoopThread) -> None:
        super().__init__()
        self.loop = loop
        loop.run(self.start())

    def close(self) -> None:
        self.loop.run(self.stop())


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    out = {"sub": "alice", "iss": ISSUER, "iat": now, "exp": now + 300, "groups": ["news_read"]}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def hs256(payload: dict[str, Any], secret: bytes, header: dict[str, Any]) -> str:
    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT", **header}).encode()) + "." + b64(
        json.dumps(payload).encode())
    return signing_input + "." + b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def unsigned(payload: dict[str, Any], header: dict[str, Any]) -> str:
    return b64(json.dumps({"alg": "none", "typ": "JWT", **header}).encode()) + "." + b64(
        json.dumps(payload).encode()) + "."


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStore]:
    from tests.conftest import start_store

    running = start_store(tmp_path_factory.mktemp("authz-tokens") / "data",
                          clients=[PROXY_CLIENT, client("news", ["news_read"])])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def own(store: RunningStore) -> Iterator[tuple[ProxyEnv, KeySet]]:
    """A proxy trusting the test's own JWKS, with an issuer and an audience to check."""
    loop = LoopThread()
    keys = KeySet(loop)
    env = start_env(store, loop=loop, jwks_url=keys.url, issuer=ISSUER, audience=AUDIENCE, leeway=10,
                    jwks_min_refresh=0)
    yield env, keys
    keys.close()
    env.close()


@pytest.fixture(scope="module")
def store_jwks(store: RunningStore) -> Iterator[ProxyEnv]:
    """A proxy trusting the store's JWKS (the deployment the README describes)."""
    env = start_env(store)
    yield env
    env.close()


def call_with(env: ProxyEnv, token: str | None, path: str = "/service", **headers: str) -> Any:
    all_headers = dict(headers)
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    return env.call(None, "GET", path, headers=all_headers)


def assert_refused(env: ProxyEnv, answer: Any, error: str | None = "invalid_token") -> None:
    assert answer.status == 401, answer.body
    challenge = answer.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="tams"')
    if error:
        assert f'error="{error}"' in challenge
    else:
        assert "error=" not in challenge
    body = answer.json()
    assert set(body) == {"type", "summary", "time"}
    assert not env.recorder.seen, "a request with a refused token reached the store"


def aud(**changes: Any) -> dict[str, Any]:
    return claims(aud=AUDIENCE, **changes)


def sign(keys: KeySet, payload: dict[str, Any], alg: str = "RS256", kid: str = "k1", key: Any = None) -> str:
    return keys.sign(payload, alg=alg, kid=kid, key=key)


@pytest.mark.parametrize(("alg", "kid"), [("RS256", "k1"), ("RS512", "k1"), ("PS256", "k1"), ("ES256", "e1")])
def test_well_signed_tokens_pass(own: tuple[ProxyEnv, KeySet], alg: str, kid: str) -> None:
    env, keys = own
    env.recorder.clear()
    answer = call_with(env, sign(keys, aud(), alg=alg, kid=kid))
    assert answer.status == 200, answer.body
    assert answer.json()["type"].startswith("urn:x-tams:service")
    assert env.recorder.seen[-1].subject == PROXY_CLIENT["client_id"], "the store must see the proxy, not alice"


def pem_of(keys: KeySet) -> bytes:
    return keys.rsa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


ATTACKS: dict[str, Callable[[KeySet], str]] = {
    "malformed": lambda k: "not-a-jwt",
    "three junk parts": lambda k: "aaa.bbb.ccc",
    "alg none": lambda k: unsigned(aud(), {"kid": "k1"}),
    "alg none, no kid": lambda k: unsigned(aud(), {}),
    "HS256 with the public key PEM as secret": lambda k: hs256(aud(), pem_of(k), {"kid": "k1"}),
    "HS256 with a JWKS oct key": lambda k: hs256(aud(), b"shared-secret-shared-secret-1234", {"kid": "hs"}),
    "expired": lambda k: sign(k, aud(exp=int(time.time()) - 120, iat=int(time.time()) - 600)),
    "not yet valid (nbf)": lambda k: sign(k, aud(nbf=int(time.time()) + 300)),
    "issued in the future": lambda k: sign(k, aud(iat=int(time.time()) + 300)),
    "no exp": lambda k: sign(k, aud(exp=None)),
    "wrong key, right kid": lambda k: sign(k, aud(), key=k.other),
    "unknown kid": lambda k: sign(k, aud(), kid="nobody"),
    "RSA alg naming the EC key": lambda k: sign(k, aud(), alg="RS256", kid="e1"),
    "wrong issuer": lambda k: sign(k, aud(iss="https://evil.test")),
    "no issuer": lambda k: sign(k, aud(iss=None)),
    "wrong audience": lambda k: sign(k, claims(aud="someone-else")),
    "no audience": lambda k: sign(k, claims()),
    "signature of another token": lambda k: sign(k, aud()).rsplit(".", 1)[0] + "." + sign(
        k, aud(sub="mallory")).rsplit(".", 1)[1],
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_bad_tokens_get_401_and_never_reach_the_store(own: tuple[ProxyEnv, KeySet], attack: str) -> None:
    env, keys = own
    token = ATTACKS[attack](keys)
    env.recorder.clear()
    assert_refused(env, call_with(env, token))


def test_missing_or_non_bearer_credentials_get_a_bare_challenge(own: tuple[ProxyEnv, KeySet]) -> None:
    env, _ = own
    env.recorder.clear()
    assert_refused(env, call_with(env, None), error=None)
    assert_refused(env, env.call(None, "GET", "/service", headers={"Authorization": "Basic dXNlcjpwYXNz"}), error=None)
    assert_refused(env, env.call(None, "GET", "/service", headers={"Authorization": "Bearer "}), error="invalid_token")


def test_token_within_leeway_passes(own: tuple[ProxyEnv, KeySet]) -> None:
    env, keys = own
    now = int(time.time())
    assert call_with(env, sign(keys, aud(exp=now - 3, iat=now - 60))).status == 200
    assert call_with(env, sign(keys, aud(nbf=now + 3))).status == 200


def test_two_tokens_at_once_are_a_bad_request(own: tuple[ProxyEnv, KeySet]) -> None:
    env, keys = own
    token = sign(keys, aud())
    env.recorder.clear()
    answer = env.call(None, "GET", f"/service?access_token={token}", headers={"Authorization": f"Bearer {token}"})
    assert answer.status == 400
    assert not env.recorder.seen


def test_query_token_works_and_is_not_forwarded(own: tuple[ProxyEnv, KeySet]) -> None:
    env, keys = own
    env.recorder.clear()
    answer = env.call(None, "GET", f"/service?access_token={sign(keys, aud())}")
    assert answer.status == 200
    assert env.recorder.seen and all("access_token" not in s.query for s in env.recorder.seen)


def test_rotated_key_is_fetched_when_its_kid_first_appears(own: tuple[ProxyEnv, KeySet]) -> None:
    env, keys = own
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = sign(keys, aud(), kid="k2", key=new_key)
    assert call_with(env, token).status == 401
    keys.keys.append(public_jwk(new_key, "k2"))
    before = keys.fetches
    assert call_with(env, token).status == 200
    assert keys.fetches == before + 1
    assert call_with(env, token).status == 200
    assert keys.fetches == before + 1, "a known kid must not cause a fetch"


def test_unknown_kids_cannot_hammer_the_jwks(store: RunningStore) -> None:
    loop = LoopThread()
    keys = KeySet(loop)
    env = start_env(store, loop=loop, jwks_url=keys.url, issuer=ISSUER, jwks_min_refresh=60)
    try:
        valid = sign(keys, claims())
        assert call_with(env, valid).status == 200
        fetched = keys.fetches
        for n in range(20):
            assert call_with(env, sign(keys, claims(), kid=f"made-up-{n}")).status == 401
        assert keys.fetches <= fetched + 1
    finally:
        keys.close()
        env.close()


def test_tokens_naming_an_audience_are_refused_when_none_is_configured(store: RunningStore) -> None:
    """A token minted for some audience was meant for that service; with no AUDIENCE set the
    proxy is no such service (as ``--help`` says)."""
    loop = LoopThread()
    keys = KeySet(loop)
    env = start_env(store, loop=loop, jwks_url=keys.url, issuer=ISSUER)
    try:
        assert call_with(env, sign(keys, claims())).status == 200, "no aud: accepted"
        for audience in (AUDIENCE, "someone-else", [AUDIENCE, "someone-else"]):
            env.recorder.clear()
            assert_refused(env, call_with(env, sign(keys, claims(aud=audience))))
    finally:
        keys.close()
        env.close()


def test_tokens_and_secrets_never_reach_the_log(own: tuple[ProxyEnv, KeySet], caplog: pytest.LogCaptureFixture) -> None:
    env, keys = own
    caplog.set_level(logging.DEBUG)
    good = sign(keys, aud())
    bad = hs256(aud(), pem_of(keys), {"kid": "k1"})
    call_with(env, good)
    call_with(env, bad)
    env.call(None, "GET", f"/flows?access_token={good}")
    call_with(env, good, "/flows/x/label")
    text = caplog.text
    for secret in (good, bad, good.split(".")[2], PROXY_CLIENT["client_secret"]):
        assert secret not in text
    assert "GET /service 200 alice" in text, "the access log should name the caller"


# --- against the store's own JWKS ----------------------------------------------------------------------


def store_key_parts(env: ProxyEnv) -> tuple[str, bytes]:
    jwks = env.loop.run(_get_json(env.store.url + "/.well-known/jwks.json"))
    jwk = jwks["keys"][0]
    public = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(jwk))
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return jwk["kid"], pem


async def _get_json(url: str) -> Any:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.json()


def test_store_tokens_pass_and_forgeries_against_its_key_fail(store_jwks: ProxyEnv) -> None:
    env = store_jwks
    assert env.call("news", "GET", "/service").status == 200
    kid, pem = store_key_parts(env)
    real = jwt.decode(env.token("news"), options={"verify_signature": False})
    forged = {**real, "groups": ["admin"]}
    attacker_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    env.recorder.clear()
    for token in (
        hs256(forged, pem, {"kid": kid}),
        unsigned(forged, {"kid": kid}),
        jwt.encode(forged, attacker_key, algorithm="RS256", headers={"kid": kid}),
        env.token("news").rsplit(".", 1)[0].split(".")[0] + "." + b64(json.dumps(forged).encode()) + "."
        + env.token("news").rsplit(".", 1)[1],
    ):
        assert_refused(env, call_with(env, token, "/flows"))

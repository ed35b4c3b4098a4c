"""A small real token issuer for tests: its own RSA and EC keys, a JWKS served on a loopback
port it counts fetches of, and ``sign`` to mint any token (good, expired, foreign, forged) with
PyJWT. Used as an outside identity provider by the store's tests and as the proxy's key set."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.loopback import serve

__all__ = ["TokenIssuer", "b64", "public_jwk"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def public_jwk(key: Any, kid: str, **extra: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk_text = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())
    else:
        jwk_text = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())
    return {**json.loads(jwk_text), "kid": kid, "use": "sig", **extra}


class TokenIssuer:
    """Keys ``rsa`` (kid k1) and ``ec`` (kid e1) published, ``other`` not; an HMAC ``oct`` entry
    (kid hs) too, which no verifier may use. ``keys`` is the served JWKS: append to rotate."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys = [
            public_jwk(self.rsa, "k1"),
            public_jwk(self.ec, "e1"),
            {"kty": "oct", "kid": "hs", "k": b64(b"shared-secret-shared-secret-1234")},
        ]
        self.fetches = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self._serve)
        self._runner, base = await serve(app, access_log=None)
        self.url = base + "/jwks.json"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.Response:
        self.fetches += 1
        return web.json_response({"keys": self.keys})

    def sign(self, payload: dict[str, Any], alg: str = "RS256", kid: str | None = "k1", key: Any = None) -> str:
        if key is None:
            key = self.ec if alg.startswith("ES") else self.rsa
        headers = {"kid": kid} if kid is not None else {}
        return jwt.encode(payload, key, algorithm=alg, headers=headers)

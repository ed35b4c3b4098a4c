"""Verifying callers' bearer tokens (JWT) against a JWKS, and turning them into a ``Caller``.

Only asymmetric signatures are accepted (RSA, RSA-PSS, ECDSA, EdDSA): a token signed with
HMAC, or not signed at all (``alg: none``), is refused before any key is looked at, and a JWKS
entry that is a symmetric key (``kty: oct``) is never loaded. The algorithm in the token header
must also fit the key it names, so an RSA public key can never be used as an HMAC secret.

Keys are cached. A token naming an unknown ``kid`` triggers one re-fetch of the JWKS (key
rotation), but at most once every ``min_refresh`` seconds, so a flood of made-up kids cannot
turn the proxy into a JWKS hammer.

``exp`` is required; ``exp``, ``nbf`` and ``iat`` are checked with ``leeway`` seconds of clock
slack; ``iss`` is checked when configured. ``aud`` is always checked: with an audience
configured a token must name it, and without one a token naming any audience is refused (it
was meant for some other service). Every failure is an ``Unauthorized``
carrying a fixed message; token contents are never logged or echoed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from .errors import BadGateway, BadRequest, Unauthorized
from .rules import Caller, ClassModel

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "JWKSCache",
    "TokenSettings",
    "TokenVerifier",
    "bearer_token",
]

logger = logging.getLogger(__name__)

# alg -> the JWK key type it needs
ASYMMETRIC_ALGORITHMS: dict[str, str] = {
    "RS256": "RSA", "RS384": "RSA", "RS512": "RSA",
    "PS256": "RSA", "PS384": "RSA", "PS512": "RSA",
    "ES256": "EC", "ES384": "EC", "ES512": "EC",
    "EdDSA": "OKP",
}


@dataclass(frozen=True, slots=True)
class SigningKey:
    kty: str
    declared_alg: str | None  # the JWK's own "alg", when it names one
    jwk: jwt.PyJWK


@dataclass(frozen=True, slots=True)
class TokenSettings:
    jwks_url: str
    issuer: str | None = None
    audience: str | None = None
    group_claim: str = "groups"
    leeway: float = 30.0
    ignore_scopes: bool = False
    class_model: ClassModel = ClassModel.AUTO


def bearer_token(authorization: list[str], query_token: list[str]) -> str:
    """The caller's token from ``Authorization: Bearer`` (or the ``access_token`` query
    parameter, ADR 0028). ``authorization`` and ``query_token`` are every value sent."""
    if authorization and query_token:
        raise BadRequest("Send the access token in one place only")
    if len(authorization) > 1 or len(query_token) > 1:
        raise BadRequest("Send one access token only")
    if query_token:
        token = query_token[0].strip()
    elif authorization:
        scheme, _, value = authorization[0].strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthorized("A bearer token is required", bearer_error=None)
        token = value.strip()
    else:
        raise Unauthorized("A bearer token is required", bearer_error=None)
    if not token:
        raise Unauthorized("The access token is empty")
    return token


class JWKSCache:
    """The signing keys published at ``url``, fetched lazily and re-fetched on rotation."""

    def __init__(self, url: str, session: aiohttp.ClientSession, *, min_refresh: float = 10.0,
                 max_age: float = 3600.0) -> None:
        self.url = url
        self._session = session
        self._min_refresh = min_refresh
        self._max_age = max_age
        self._keys: dict[str | None, SigningKey] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key_for(self, kid: str | None) -> SigningKey:
        now = time.monotonic()
        if self._fetched_at is None or now - self._fetched_at > self._max_age:
            await self._refresh(force=True)
        key = self._lookup(kid)
        if key is None and self._fetched_at is not None and time.monotonic() - self._fetched_at >= self._min_refresh:
            await self._refresh(force=False)
            key = self._lookup(kid)
        if key is None:
            raise Unauthorized("The token was not signed by a known key")
        return key

    def _lookup(self, kid: str | None) -> SigningKey | None:
        if kid is None:
            # Without a kid the only safe choice is a JWKS of exactly one key.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh(self, *, force: bool) -> None:
        started = time.monotonic()
        async with self._lock:
            if self._fetched_at is not None and self._fetched_at >= started:
                return  # another task refreshed while this one waited
            if not force and self._fetched_at is not None and started - self._fetched_at < self._min_refresh:
                return
            await self._fetch()

    async def _fetch(self) -> None:
        self.fetches += 1
        document: object = None
        problem: str | None = None
        try:
            async with self._session.get(self.url, timeout=aiohttp.ClientTimeout(total=10)) as response:
                if response.status == 200:
                    document = await response.json(content_type=None)
                else:
                    problem = f"status {response.status}"
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            problem = type(exc).__name__
        # Even a failed fetch counts, so an unreachable JWKS is not hammered.
        self._fetched_at = time.monotonic()
        if problem is not None:
            logger.warning("could not fetch the JWKS from %s: %s", self.url, problem)
            if not self._keys:
                raise BadGateway("The token key set cannot be fetched, so tokens cannot be checked")
            return  # keep the keys we have
        keys: dict[str | None, SigningKey] = {}
        entries = document.get("keys") if isinstance(document, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            if entry.get("kty") not in ("RSA", "EC", "OKP") or entry.get("use", "sig") != "sig":
                continue
            if "alg" in entry and entry["alg"] not in ASYMMETRIC_ALGORITHMS:
                continue
            try:
                key = SigningKey(entry["kty"], entry.get("alg"), jwt.PyJWK(entry))
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
                logger.warning("skipping a JWKS key that does not load (kid %r)", entry.get("kid"))
                continue
            kid = entry.get("kid")
            keys[kid if isinstance(kid, str) else None] = key
        if not keys:
            logger.warning("the JWKS at %s holds no usable signing key", self.url)
        self._keys = keys
        logger.info("loaded %d signing key(s) from %s", len(keys), self.url)


class TokenVerifier:
    """Verifies a token and returns the ``Caller`` it speaks for."""

    def __init__(self, settings: TokenSettings, jwks: JWKSCache) -> None:
        self.settings = settings
        self.jwks = jwks

    async def verify(self, token: str) -> Caller:
        s = self.settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("The access token is malformed") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
            raise Unauthorized("The token's signing algorithm is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("The access token is malformed")
        key = await self.jwks.key_for(kid)
        if key.kty != ASYMMETRIC_ALGORITHMS[alg]:
            raise Unauthorized("The token's signing algorithm does not fit its key")
        if key.declared_alg is not None and key.declared_alg != alg:
            raise Unauthorized("The token's signing algorithm does not fit its key")
        required = ["exp"] + (["iss"] if s.issuer else []) + (["aud"] if s.audience else [])
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.jwk.key,
                algorithms=[alg],
                issuer=s.issuer,
                audience=s.audience,
                leeway=s.leeway,
                options={"require": required},  # verify_aud stays on: PyJWT then refuses an unexpected aud
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("The access token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthorized("The access token is not valid yet") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthorized("The access token has the wrong issuer") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthorized("The access token is for another audience") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized("The access token lacks a required claim") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthorized("The access token's signature does not verify") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("The access token is not valid") from exc
        return self._caller(claims)

    def _caller(self, claims: Mapping[str, Any]) -> Caller:
        subject = claims.get("sub") or claims.get("client_id") or ""
        raw_groups = claims.get(self.settings.group_claim)
        if isinstance(raw_groups, str):
            groups = frozenset(raw_groups.replace(",", " ").split())
        elif isinstance(raw_groups, list):
            groups = frozenset(g for g in raw_groups if isinstance(g, str) and g)
        else:
            groups = frozenset()
        scopes: frozenset[str] | None = None
        if not self.settings.ignore_scopes:
            raw_scope = claims.get("scope", claims.get("scp"))
            if isinstance(raw_scope, str):
                scopes = frozenset(raw_scope.split())
            elif isinstance(raw_scope, list):
                scopes = frozenset(s for s in raw_scope if isinstance(s, str))
        return Caller(subject=str(subject), groups=groups, scopes=scopes, model=self.settings.class_model)

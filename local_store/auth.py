"""Who is calling and what they may do: HTTP Basic, OAuth2 client credentials, JWTs of the
store's own or of an outside identity provider (``idp.py``).

* ``POST /oauth2/token`` (client credentials grant) authenticates a client from the clients file
  by HTTP Basic or by ``client_id``/``client_secret`` form fields, and issues an RS256 JWT with a
  ``kid`` header and the claims ``iss``, ``sub``, ``iat``, ``exp``, ``scope``, ``groups``.
* ``GET /.well-known/jwks.json`` publishes the public key.
* API requests carry ``Authorization: Basic`` (the store's username/password: every scope),
  ``Authorization: Bearer <jwt>``, or ``?access_token=<jwt>``. A token whose ``iss`` is the
  store's own is checked against the store's key; one whose ``iss`` is ``--issuer`` against the
  outside provider's key set (``--jwks-url``); any other is refused.
* Coarse scopes (AppNote 0016): ``tams-api/read`` for GET/HEAD, ``tams-api/write`` for PUT/POST,
  ``tams-api/delete`` for DELETE of Flows and segments, ``tams-api/admin`` for everything.
  Only admins may POST ``/service``, create Flow Profiles and list ``/flow-delete-requests``;
  one deletion request is readable with ``tams-api/delete``. Webhook PUT/DELETE need
  ``tams-api/write`` (AppNote 0016's table says read, which looks like a slip: read access must
  not let a caller redirect or remove someone's event stream).

Secrets never reach the log: failures are logged with the client id or the reason only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .errors import Forbidden, Unauthorized, error_body, json_response
from .idp import ExternalTokens, claim_strings

__all__ = [
    "ADMIN",
    "ALL_SCOPES",
    "DELETE",
    "READ",
    "WRITE",
    "Authenticator",
    "ClientRecord",
    "Principal",
    "SigningKey",
    "generate_private_key_pem",
]

logger = logging.getLogger(__name__)

READ = "tams-api/read"
WRITE = "tams-api/write"
DELETE = "tams-api/delete"
ADMIN = "tams-api/admin"
ALL_SCOPES = (READ, WRITE, DELETE, ADMIN)


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client_id: str
    client_secret: str
    scopes: tuple[str, ...]
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    name: str
    scopes: frozenset[str]
    groups: tuple[str, ...] = ()

    def has(self, scope: str) -> bool:
        return ADMIN in self.scopes or scope in self.scopes


def generate_private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The RSA key tokens are signed with, its ``kid`` and the JWKS that publishes it."""

    private_key: rsa.RSAPrivateKey
    public_key: rsa.RSAPublicKey
    kid: str
    jwks: dict[str, Any]

    @classmethod
    def from_pem(cls, pem: str) -> SigningKey:
        private_key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise TypeError("the stored token signing key is not an RSA key")
        public_key = private_key.public_key()
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public_key))
        thumb_input = json.dumps(
            {"e": jwk["e"], "kty": "RSA", "n": jwk["n"]},
            separators=(",", ":"),
            sort_keys=True,
        )
        # RFC 7638 thumbprint: stable for a data dir's key, changes if the key does.
        kid = base64.urlsafe_b64encode(hashlib.sha256(thumb_input.encode()).digest()).decode().rstrip("=")
        jwks = {"keys": [{**jwk, "kid": kid, "alg": "RS256", "use": "sig"}]}
        return cls(private_key, public_key, kid, jwks)


@dataclass
class Authenticator:
    """Checks credentials and issues tokens for one store.

    ``signing_key`` resolves to the PEM of the token key. A new data dir generates its key on a
    worker thread while the store starts serving (RSA generation takes up to a second), so only
    the first token request or bearer check waits for it; basic auth never does.
    """

    username: str
    password: str
    clients: dict[str, ClientRecord]
    signing_key: asyncio.Future[str]
    issuer: str
    token_ttl: int
    external: ExternalTokens | None = None  # an outside identity provider's tokens (idp.py)
    own_tokens: bool = True  # False: the token endpoint is off and only ``external`` tokens count
    _key: SigningKey | None = None
    _token_cache: dict[str, tuple[Principal, float]] = field(default_factory=dict)

    async def key(self) -> SigningKey:
        if self._key is None:
            pem = await asyncio.shield(self.signing_key)
            if self._key is None:
                self._key = SigningKey.from_pem(pem)
        return self._key

    async def jwks(self) -> dict[str, Any]:
        return (await self.key()).jwks

    # --- tokens -------------------------------------------------------------------------
    async def issue_token(self, client: ClientRecord, scopes: Iterable[str]) -> dict[str, Any]:
        key = await self.key()
        now = time.time()
        scope_text = " ".join(scopes)
        # Whole-second claims: the token expires at most token_ttl after issue, and expires_in
        # is rounded down to match, so a client that trusts expires_in is never caught out.
        expires = int(now) + self.token_ttl
        claims = {
            "iss": self.issuer,
            "sub": client.client_id,
            "client_id": client.client_id,
            "iat": int(now),
            "exp": expires,
            "scope": scope_text,
            "groups": list(client.groups),
        }
        token = jwt.encode(claims, key.private_key, algorithm="RS256", headers={"kid": key.kid})
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": max(expires - math.ceil(now), 0),
            "scope": scope_text,
        }

    async def verify_token(self, token: str) -> Principal:
        cached = self._token_cache.get(token)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        try:
            header = jwt.get_unverified_header(token)
            # Only to choose the verifier: nothing in the token counts before its signature does.
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("The access token is malformed", bearer_error="invalid_token") from exc
        issuer = unverified.get("iss")
        if self.own_tokens and issuer == self.issuer:
            claims = await self._verify_own(token, header)
            scope_claim, groups_claim = "scope", "groups"
        elif self.external is not None and issuer == self.external.settings.issuer:
            claims = await self.external.verify(token, header)
            scope_claim, groups_claim = self.external.settings.scope_claim, self.external.settings.groups_claim
        else:
            raise Unauthorized("The access token is from an issuer this store does not trust", bearer_error="invalid_token")
        principal = Principal(
            name=str(claims.get("sub") or claims.get("client_id") or ""),
            scopes=frozenset(claim_strings(claims.get(scope_claim))),
            groups=claim_strings(claims.get(groups_claim)),
        )
        if len(self._token_cache) > 4096:
            self._token_cache.clear()
        self._token_cache[token] = (principal, float(claims["exp"]))
        return principal

    async def _verify_own(self, token: str, header: dict[str, Any]) -> dict[str, Any]:
        key = await self.key()
        try:
            if header.get("kid") not in (None, key.kid):
                raise jwt.InvalidTokenError("unknown kid")
            return jwt.decode(
                token,
                key.public_key,
                algorithms=["RS256"],
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "iss"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("The access token has expired", bearer_error="invalid_token") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("The access token is not valid", bearer_error="invalid_token") from exc

    # --- requests -----------------------------------------------------------------------
    async def authenticate(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization")
        if header is None:
            token = request.query.get("access_token")
            if token:
                return await self.verify_token(token)
            raise Unauthorized("Credentials are required")
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer" and value:
            return await self.verify_token(value)
        if scheme == "basic":
            user, password = _decode_basic(value)
            if self.username and _same(user, self.username) and _same(password, self.password):
                return Principal(name=user, scopes=frozenset(ALL_SCOPES), groups=("admin",))
            raise Unauthorized("Bad username or password")
        raise Unauthorized("Unsupported authorization scheme")

    def client_for(self, request: web.Request, form: dict[str, str]) -> ClientRecord:
        """The OAuth2 client authenticated by the token request (Basic or form fields)."""
        header = request.headers.get("Authorization")
        if header is not None and header.lower().startswith("basic "):
            client_id, secret = _decode_basic(header[6:].strip())
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        client = self.clients.get(client_id)
        if client is None or not _same(secret, client.client_secret):
            logger.info("token request refused for client %r", client_id[:64])
            raise Unauthorized("Unknown client or bad client secret")
        return client


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _decode_basic(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise Unauthorized("Malformed basic credentials") from exc
    user, sep, password = decoded.partition(":")
    if not sep:
        raise Unauthorized("Malformed basic credentials")
    return user, password


# Readable with any scope: what the service is and offers.
OPEN_READS = frozenset({"/", "/service", "/service/storage-backends", "/service/profiles", "/service/profiles/{profile_id}"})


def required_scope(method: str, path_template: str) -> str | None:
    """The coarse scope a request needs (AppNote 0016); ``None``: any authenticated caller."""
    if method in ("GET", "HEAD"):
        if path_template in OPEN_READS:
            return None
        if path_template == "/flow-delete-requests":
            return ADMIN
        if path_template == "/flow-delete-requests/{request_id}":
            return DELETE  # whoever may delete may watch a deletion
        return READ
    if path_template in ("/service", "/service/profiles/{profile_id}"):
        return ADMIN
    if method == "DELETE" and path_template in (
        "/flows/{flow_id}",
        "/flows/{flow_id}/segments",
    ):
        return DELETE
    return WRITE


def check_scope(principal: Principal, method: str, path_template: str) -> None:
    scope = required_scope(method, path_template)
    if scope is not None and not principal.has(scope):
        raise Forbidden(f"This request needs the {scope} scope")


# --- OAuth2 endpoints --------------------------------------------------------------------


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    body = {
        "error": error,
        "error_description": description,
        **error_body(error, description),
    }
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="tams-oauth2"'
    return json_response(body, status=status, headers=headers)


async def token_endpoint(request: web.Request, authenticator: Authenticator) -> web.Response:
    if request.content_type not in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "",
    ):
        return _oauth_error(400, "invalid_request", "Send the token request as a form")
    try:
        form = {k: str(v) for k, v in (await request.post()).items()}
    except (ValueError, UnicodeDecodeError):
        return _oauth_error(400, "invalid_request", "Malformed form body")
    if form.get("grant_type") != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "Only client_credentials is supported")
    try:
        client = authenticator.client_for(request, form)
    except Unauthorized as exc:
        return _oauth_error(401, "invalid_client", exc.summary)
    requested = form.get("scope", "").split()
    if not requested:
        granted = list(client.scopes)
    else:
        unknown = [s for s in requested if s not in client.scopes]
        if unknown:
            return _oauth_error(
                400,
                "invalid_scope",
                f"Scope not allowed for this client: {' '.join(unknown)}",
            )
        granted = list(dict.fromkeys(requested))
    logger.info("issued token to client %s (scope %s)", client.client_id, " ".join(granted))
    return json_response(
        await authenticator.issue_token(client, granted),
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def www_authenticate_headers(exc: Unauthorized) -> list[tuple[str, str]]:
    """The challenges sent with a 401: Bearer (with the token error, if any) and Basic."""
    bearer = 'Bearer realm="tams"'
    if exc.bearer_error:
        bearer += f', error="{exc.bearer_error}"'
    return [("WWW-Authenticate", bearer), ("WWW-Authenticate", 'Basic realm="tams"')]

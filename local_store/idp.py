"""Bearer tokens from an outside identity provider: any OIDC provider (Keycloak, Cognito, Entra
ID, ...) that publishes its signing keys as a JWKS.

``--jwks-url`` names the key set and ``--issuer`` the ``iss`` its tokens carry; the store then
accepts those tokens alongside (or, with ``--no-own-tokens``, instead of) the ones it issues
itself. Which verifier a token goes to is decided by its ``iss``; nothing else in the token is
trusted before its signature is checked.

* Only asymmetric signatures (RS*, PS*, ES*, EdDSA): ``alg: none`` and HMAC are refused before
  any key is looked at, and the key named by ``kid`` must be of the type the algorithm needs
  (so a public RSA key can never be used as an HMAC secret).
* Keys come from PyJWT's ``PyJWKClient``: the key set is cached for ``lifespan`` seconds, a
  token naming an unknown ``kid`` makes it fetch the set again (key rotation), at most once per
  ``--jwks-cooldown`` seconds so made-up kids cannot hammer the provider. A token without a
  ``kid`` is accepted only when the set holds exactly one key.
* ``exp`` and ``iss`` are required, ``nbf``/``iat`` checked, with ``leeway`` seconds of clock
  slack. With ``--audience`` the token's ``aud`` must name it; without, a token naming any
  audience is refused (it was meant for another service).
* Scopes come from ``--scope-claim`` (default ``scope``: a space-separated string, or a list as
  some providers send in ``scp``), groups from ``--groups-claim`` (default ``groups``; Cognito
  sends ``cognito:groups``). The store decides by scope (AppNote 0016's coarse model); groups
  are kept on the caller, as for the store's own tokens.

A key set that cannot be fetched is a 503 (the token may well be good); every other failure is
a 401 with a fixed message. Token contents are never logged.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import jwt

from .errors import ServiceUnavailable, Unauthorized

__all__ = ["ASYMMETRIC_ALGORITHMS", "ExternalIssuer", "ExternalTokens", "claim_strings"]

# alg -> the JWK key type it needs
ASYMMETRIC_ALGORITHMS: dict[str, str] = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "EdDSA": "OKP",
}


@dataclass(frozen=True, slots=True)
class ExternalIssuer:
    """Where an outside provider's keys are and what its tokens must say."""

    jwks_url: str
    issuer: str
    audience: str | None = None
    scope_claim: str = "scope"
    groups_claim: str = "groups"
    jwks_cooldown: float = 30.0
    jwks_lifespan: float = 300.0
    leeway: float = 30.0


def claim_strings(value: object) -> tuple[str, ...]:
    """A claim holding names: a space- (or comma-) separated string, or a list of strings."""
    if isinstance(value, str):
        return tuple(value.replace(",", " ").split())
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str) and v)
    return ()


class ExternalTokens:
    """Verifies tokens of one outside issuer; ``verify`` gives the claims it vouches for."""

    def __init__(self, settings: ExternalIssuer) -> None:
        self.settings = settings
        self._keys = jwt.PyJWKClient(
            settings.jwks_url,
            cache_jwk_set=True,
            lifespan=settings.jwks_lifespan,
            timeout=10,
            cooldown_duration=settings.jwks_cooldown,
            headers={"User-Agent": "tams-toolkit-local-store"},
        )

    def _signing_key(self, kid: str | None) -> jwt.PyJWK:
        if kid is None:
            keys = self._keys.get_signing_keys()
            if len(keys) != 1:
                raise jwt.PyJWKClientError("a token without kid needs a key set of exactly one key")
            return keys[0]
        return self._keys.get_signing_key(kid)

    async def verify(self, token: str, header: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
            raise Unauthorized("The token's signing algorithm is not accepted", bearer_error="invalid_token")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("The access token is malformed", bearer_error="invalid_token")
        try:
            key = await asyncio.to_thread(self._signing_key, kid)
        except jwt.PyJWKClientConnectionError as exc:
            raise ServiceUnavailable("The identity provider's signing keys cannot be fetched; try again later") from exc
        except (jwt.PyJWKClientError, jwt.PyJWKSetError, jwt.PyJWKError) as exc:
            raise Unauthorized("The token was not signed by a known key", bearer_error="invalid_token") from exc
        declared = getattr(key, "_jwk_data", {}).get("alg")
        if key.key_type != ASYMMETRIC_ALGORITHMS[alg] or (declared is not None and declared != alg):
            raise Unauthorized("The token's signing algorithm does not fit its key", bearer_error="invalid_token")
        required = ["exp", "iss"] + (["aud"] if s.audience else [])
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                issuer=s.issuer,
                audience=s.audience,
                leeway=s.leeway,
                options={"require": required},  # verify_aud stays on: an unexpected aud is refused
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("The access token has expired", bearer_error="invalid_token") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthorized("The access token is for another audience", bearer_error="invalid_token") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("The access token is not valid", bearer_error="invalid_token") from exc

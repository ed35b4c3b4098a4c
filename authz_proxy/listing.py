"""Filtered listings that still page properly.

The store pages its listings over everything; the caller may only see some items. The proxy
reads upstream pages and keeps the permitted items until it has ``limit`` of them, then looks
further for one more: if there is one, the page gets a ``next`` link starting exactly there, and
if there is none the page is the last. So every page is full except the last, no page before
the end is empty, and each permitted item appears once.

The proxy's page token (``Cursor``) names the upstream page to read (its URL, as the store's
own ``Link`` gave it), how many of its items to skip, and the id of the first item to return,
which survives inserts before it. Tokens are encrypted and authenticated (AES-GCM, padded to a
fixed size step), so a caller can neither point the proxy at an upstream URL of its own choosing
nor read the upstream offsets, which would tell how many hidden items precede each one. The key
is derived from the proxy's cursor secret, so replicas sharing the secret accept each other's
tokens.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import BadGateway, BadRequest

__all__ = ["Cursor", "CursorCodec", "UpPage", "fill_page"]

# Upstream pages one request may read before giving up on filling its page (a loop guard).
MAX_UPSTREAM_PAGES = 1000


@dataclass(frozen=True, slots=True)
class Cursor:
    up: str  # upstream path and query of the page to read
    skip: int  # items of that page already returned
    next_id: str | None  # the first item to return, if it can still be found


# Plaintexts are padded (with JSON whitespace) to a multiple of this, so a token's length says
# little about the offsets inside it.
PAD_TO = 64
_NONCE = 12
_KEY_INFO = b"tams authz proxy page tokens v1"


class CursorCodec:
    """Encrypts and checks page tokens: AES-256-GCM under a key derived (HKDF-SHA256) from
    ``secret``, a random nonce per token, base64url without padding."""

    def __init__(self, secret: bytes) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO).derive(secret)
        self._aead = AESGCM(key)

    def encode(self, cursor: Cursor) -> str:
        payload = json.dumps([cursor.up, cursor.skip, cursor.next_id], separators=(",", ":")).encode()
        payload += b" " * (-len(payload) % PAD_TO)
        nonce = os.urandom(_NONCE)
        return base64.urlsafe_b64encode(nonce + self._aead.encrypt(nonce, payload, None)).decode().rstrip("=")

    def decode(self, token: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError) as exc:
            raise BadRequest("The page token is not valid") from exc
        try:
            payload = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], None)
        except (InvalidTag, ValueError) as exc:
            raise BadRequest("The page token is not valid") from exc
        try:
            up, skip, next_id = json.loads(payload)
        except (ValueError, TypeError) as exc:
            raise BadRequest("The page token is not valid") from exc
        if not isinstance(up, str) or not isinstance(skip, int) or not (next_id is None or isinstance(next_id, str)):
            raise BadRequest("The page token is not valid")
        return Cursor(up, max(skip, 0), next_id)


@dataclass
class UpPage:
    items: list[Any]
    next_up: str | None  # upstream path and query of the next page
    body: Any  # the whole answer (for /objects, whose list sits inside an object)
    headers: dict[str, str]


async def fill_page(
    fetch: Callable[[str], Awaitable[UpPage]],
    permitted: Callable[[Sequence[Any]], Awaitable[list[bool]]],
    id_of: Callable[[Any], str | None],
    *,
    first: str,
    limit: int,
    cursor: Cursor | None,
) -> tuple[list[Any], Cursor | None, UpPage | None]:
    """Up to ``limit`` permitted items from ``cursor`` on (or from the upstream page ``first``),
    the cursor of the page after (None at the end), and the first upstream page read."""
    out: list[Any] = []
    up = cursor.up if cursor else first
    skip = cursor.skip if cursor else 0
    wanted_id = cursor.next_id if cursor else None
    first_page: UpPage | None = None
    seen: set[str] = set()
    for _ in range(MAX_UPSTREAM_PAGES):
        if up in seen:
            raise BadGateway("The store's listing links go round in a circle")
        seen.add(up)
        page = await fetch(up)
        if first_page is None:
            first_page = page
        start = min(skip, len(page.items))
        if wanted_id is not None:
            for index, item in enumerate(page.items):
                if id_of(item) == wanted_id:
                    start = index
                    break
            wanted_id = None
        rest = page.items[start:]
        verdicts = await permitted(rest)
        for offset, (item, ok) in enumerate(zip(rest, verdicts, strict=True)):
            if not ok:
                continue
            if len(out) < limit:
                out.append(item)
            else:
                # One more permitted item exists: the next page starts with it.
                return out, Cursor(up, start + offset, id_of(item)), first_page
        if page.next_up is None:
            return out, None, first_page
        up, skip = page.next_up, 0
    # A store with an enormous run of hidden items: hand back what there is and carry on later.
    return out, Cursor(up, 0, None), first_page

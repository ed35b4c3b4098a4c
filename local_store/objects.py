"""Media object bytes on disk and the signed URLs that read and write them.

Files live under ``<data dir>/objects/``, named by the SHA-256 of the object id, so no object id
(they are client-chosen strings and may contain ``/`` or ``..``) can name a path outside that
directory. Writes go to a temporary file that is fsynced and then hard-linked into place:
``os.link`` fails if the name exists, so an object, once written, is never overwritten, and a
reader never sees a partial file. The directory is fsynced before the write is acknowledged.

Presigned URLs carry an expiry and an HMAC-SHA256 over (method, object id, content type,
expiry). For a PUT the content type is the request's ``Content-Type``; for a GET it is the type
recorded for the object, so a URL cannot be replayed for another object, method or type.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import math
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Backend",
    "EXPIRES_PARAM",
    "SIGNATURE_PARAM",
    "ObjectFiles",
    "UrlSigner",
    "WriteOutcome",
    "object_id_from_path",
    "object_url_path",
]

logger = logging.getLogger(__name__)

EXPIRES_PARAM = "X-Tams-Expires"
SIGNATURE_PARAM = "X-Tams-Signature"


class UrlSigner:
    """Makes and checks the query parameters of presigned media URLs."""

    def __init__(self, key: bytes, ttl_seconds: int) -> None:
        self._key = key
        self.ttl_seconds = ttl_seconds

    def _mac(self, method: str, object_id: str, content_type: str, expires: int) -> str:
        message = "\n".join((method.upper(), object_id, content_type, str(expires))).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(self, method: str, object_id: str, content_type: str, now: float | None = None) -> str:
        """The query string (without ``?``) that presigns ``method`` on ``object_id``, for at
        least ``ttl_seconds`` (the expiry is a whole second: the next one up, plus the TTL)."""
        expires = math.ceil(now if now is not None else time.time()) + self.ttl_seconds
        mac = self._mac(method, object_id, content_type, expires)
        return f"{EXPIRES_PARAM}={expires}&{SIGNATURE_PARAM}={mac}"

    def verify(
        self,
        method: str,
        object_id: str,
        content_type: str,
        expires: str | None,
        signature: str | None,
    ) -> str | None:
        """``None`` if the signature is good and current, else the reason it is refused."""
        if not expires or not signature:
            return "missing signature"
        try:
            expires_at = int(expires)
        except ValueError:
            return "malformed expiry"
        expected = self._mac(method, object_id, content_type, expires_at)
        if not hmac.compare_digest(expected, signature):
            return "bad signature"
        if expires_at < time.time():
            return "expired signature"
        return None


def object_url_path(object_id: str) -> str:
    """The path (under the API root) at which the store serves an object's bytes.

    Object ids are arbitrary strings (``..`` included, which clients would normalise out of a
    URL path), so the path carries the id base64url-encoded.
    """
    return "/objects-data/" + base64.urlsafe_b64encode(object_id.encode("utf-8")).decode("ascii").rstrip("=")


def object_id_from_path(segment: str) -> str | None:
    """The object id in an ``object_url_path``, or None if the segment is not one."""
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        object_id = raw.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return object_id if object_id and object_url_path(object_id) == "/objects-data/" + segment else None


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    size: int
    created: bool  # False: identical bytes were already stored (a repeated upload)


class ObjectFiles:
    """The media files of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "objects"
        self.tmp = data_dir / "tmp"
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp.iterdir():  # left by a crash mid-upload; never acknowledged
            stale.unlink(missing_ok=True)

    def path_for(self, object_id: str) -> Path:
        digest = hashlib.sha256(object_id.encode("utf-8")).hexdigest()
        return self.root / digest[:2] / digest

    def exists(self, object_id: str) -> bool:
        return self.path_for(object_id).is_file()

    def size(self, object_id: str) -> int | None:
        try:
            return self.path_for(object_id).stat().st_size
        except FileNotFoundError:
            return None

    async def write(self, object_id: str, chunks: AsyncIterator[bytes], max_size: int) -> WriteOutcome:
        """Store the bytes from ``chunks`` as ``object_id``; raises ``FileExistsError`` when
        different bytes are already stored and ``OverflowError`` past ``max_size``.

        Chunks are written as they arrive (page-cache writes are quick); the fsyncs, which can
        take a while for a big object, run on a worker thread so the event loop keeps serving.
        """
        final = self.path_for(object_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = self.tmp / f"{final.name}.{secrets.token_hex(8)}"
        digest = hashlib.sha256()
        size = 0
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_size:
                        raise OverflowError(f"object larger than {max_size} bytes")
                    digest.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                await asyncio.to_thread(os.fsync, fd)
            finally:
                os.close(fd)
            created = await asyncio.to_thread(_publish, tmp_path, final, digest.digest())
            return WriteOutcome(size=size, created=created)
        finally:
            tmp_path.unlink(missing_ok=True)


def _publish(tmp_path: Path, final: Path, digest: bytes) -> bool:
    """Hard-link the finished file into place; False if identical bytes were already there."""
    try:
        os.link(tmp_path, final)
    except FileExistsError:
        if _file_digest(final) != digest:
            raise
        return False
    _fsync_dir(final.parent)
    return True


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Backend:
    """The one storage backend: this store's own data directory."""

    id: str
    label: str
    store_type: str = "http_object_store"
    provider: str = "local"
    store_product: str = "tams-toolkit local_store"

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "label": self.label,
            "store_type": self.store_type,
            "provider": self.provider,
            "store_product": self.store_product,
            "default_storage": True,
        }

    def verbose(self) -> dict[str, object]:
        return {
            "store_type": self.store_type,
            "provider": self.provider,
            "store_product": self.store_product,
        }

"""Async client for a TAMS API and its media URLs; the only module that speaks HTTP to one.

``TAMSClient`` owns one aiohttp session (connection limit, timeouts) and offers a
method per endpoint the scripts and the proxy use, returning parsed JSON. List
endpoints are async iterators that follow ``Link: rel="next"`` across all pages.

Requests that are safe to repeat (GET, HEAD, PUT, DELETE, the storage POST,
uploads and segment POSTs) are retried with exponential backoff and full jitter
on connection errors, timeouts and 408/429/500/502/503/504, honouring
``Retry-After``. A host name that does not resolve is tried only ``DNS_RETRIES``
more times (it is nearly always a mistyped URL). A segment POST that was retried
and then refused because the segment is already there is checked against the
store and counted as done. On a 401, renewable credentials are renewed once and
the request is sent again.

Exceptions (each carries ``method``, ``url`` without secrets, ``status``, ``body``)::

    TAMSError                  root: the client could not do what was asked
    +-- TAMSConnectionError    could not reach the server (after retries)
    +-- TAMSResponseError      the server said no (status and its error body)
        +-- NotFound           404

Logs never hold an Authorization header, a client secret or a presigned URL's
query: API URLs are logged with unknown query parameters redacted, media URLs
without their query, and aiohttp's own messages (which may quote the full URL)
pass through ``redact_text`` before they reach a log line or an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode, urljoin, urlsplit, urlunsplit
from uuid import UUID

import aiohttp
from mediatimestamp.immutable import TimeRange, Timestamp
from yarl import URL

from credentials import Credentials, CredentialsError

__all__ = [
    "RETRY_STATUSES",
    "ClientStats",
    "NotFound",
    "Reply",
    "RetryPolicy",
    "TAMSClient",
    "TAMSConnectionError",
    "TAMSError",
    "TAMSResponseError",
    "UploadTarget",
    "backoff_ceiling",
    "next_link",
    "parse_retry_after",
    "redact_text",
    "redact_url",
    "retry_delay",
]

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
REPEATABLE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# Failures after which the request may simply be sent again.
TRANSIENT_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)
# A host name that does not resolve is nearly always a mistyped URL, not a passing fault:
# allow a resolver hiccup this many retries, not the whole budget.
DNS_RETRIES = 2


# ---------------------------------------------------------------------------
# Errors


class TAMSError(Exception):
    """Root of the client's errors. ``str()`` is one readable line."""

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        url: str | None = None,
        status: int | None = None,
        body: object = None,
    ) -> None:
        super().__init__(" ".join(message.split()))
        self.method = method
        self.url = url
        self.status = status
        self.body = body


class TAMSConnectionError(TAMSError):
    """The server could not be reached, or the connection broke (after retries)."""


class TAMSResponseError(TAMSError):
    """The server answered, and said no (or said something we cannot read)."""


class NotFound(TAMSResponseError):
    """404: the thing asked for does not exist (or the caller may not know it does)."""


def _summary(body: object) -> str:
    if isinstance(body, dict) and body.get("summary"):
        return str(body["summary"])
    text = body if isinstance(body, str) else json.dumps(body)
    return text[:200]


# ---------------------------------------------------------------------------
# Pure helpers: retry schedule, Retry-After, URL redaction, Link headers


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; before retry n (0-based) sleep uniformly in
    ``[0, min(cap, base * 2**n)]``, or what ``Retry-After`` asks (at most
    ``max_retry_after`` seconds).

    Ten attempts: at a 30% fault rate one call in 170,000 still fails, where six
    would fail one in 1,400; a server that is down is given up on after about
    20 s on average."""

    attempts: int = 10
    base: float = 0.2
    cap: float = 10.0
    max_retry_after: float = 60.0


def backoff_ceiling(policy: RetryPolicy, retry: int) -> float:
    """The longest sleep before retry number ``retry`` (0-based)."""
    return min(policy.cap, policy.base * 2**retry)


def retry_delay(policy: RetryPolicy, retry: int, retry_after: float | None, rng: random.Random) -> float:
    """Seconds to sleep before retry number ``retry``: the server's Retry-After
    when it gave one, else full jitter under the backoff ceiling."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), policy.max_retry_after)
    return rng.uniform(0.0, backoff_ceiling(policy, retry))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or an HTTP
    date), or None when absent or unreadable. Dates in the past give 0."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


# Query parameters of the TAMS API, which are safe to show in logs and errors.
_SAFE_PARAMS = frozenset({
    "page", "limit", "timerange", "reverse_order", "sort_by", "include_timerange", "include_object_timerange",
    "object_id", "presigned", "verbose_storage", "accept_get_urls", "accept_storage_ids", "source_id", "format",
    "codec", "label", "profile_id", "status", "frame_width", "frame_height", "init_segments", "collected_by_ids",
    "storage_id", "flow_id", "delete_flow",
})
_SAFE_PREFIXES = ("tag.", "tag_exists.", "flow_tag.", "flow_tag_exists.", "storage_backend_tag.",
                  "storage_backend_tag_exists.")


def _safe_param(name: str) -> bool:
    return name in _SAFE_PARAMS or name.startswith(_SAFE_PREFIXES)


def redact_url(url: str, *, keep_query: bool = True) -> str:
    """``url`` fit for logs and errors: no user info; with ``keep_query`` the
    TAMS API's own query parameters kept and any other value replaced by
    ``REDACTED`` (signatures, tokens); without it no query at all."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = ""
    if keep_query and parts.query:
        pairs = [
            (k, v if _safe_param(k) else "REDACTED")
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ]
        query = urlencode(pairs, safe="[]():_,.", quote_via=quote)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


# A URL inside an exception's message: up to white space, a quote or an angle bracket.
_URL_IN_TEXT = re.compile(r"https?://[^\s'\"<>]+", re.IGNORECASE)
# Shorter query values are left alone in the free text: they cannot be told apart from
# the words and numbers around them, and no signature or token is that short.
_MIN_SECRET = 6


def redact_text(text: str, url: str, *, keep_query: bool = True) -> str:
    """``text`` (an exception's message about a request to ``url``) fit for logs and
    errors: every URL in it redacted as ``redact_url`` does, and the values of
    ``url``'s secret query parameters (and its password) removed wherever else
    they appear. aiohttp puts the full request URL, signature and all, into some
    of its messages (a connect timeout, a refused redirect...)."""
    text = _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0), keep_query=keep_query), text)
    parts = urlsplit(url)
    secrets = {parts.password or ""}
    for pair in parts.query.split("&"):
        name, _, raw = pair.partition("=")
        if not _safe_param(unquote_plus(name)):
            secrets.update((raw, unquote_plus(raw)))
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= _MIN_SECRET:
            text = text.replace(secret, "REDACTED")
    return text


def _describe(exc: BaseException, url: str, *, keep_query: bool = True) -> str:
    """An exception as one short, redacted phrase for messages and logs."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    return redact_text(text, url, keep_query=keep_query)


_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]+)*)")


def next_link(header: str | None, base: str) -> str | None:
    """The ``rel="next"`` target of a Link header, resolved against ``base``."""
    if not header:
        return None
    for match in _LINK.finditer(header):
        rels = re.search(r';\s*rel\s*=\s*"?([^";]+)"?', match.group(2))
        if rels and "next" in rels.group(1).lower().split():
            return urljoin(base, match.group(1))
    return None


def _param(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(_param(v) for v in value)
    return str(value)


def _json_default(value: object) -> str:
    if isinstance(value, (Timestamp, TimeRange, UUID)):
        return str(value)
    raise TypeError(f"cannot send {type(value).__name__} as JSON")


# ---------------------------------------------------------------------------
# Data


@dataclass
class ClientStats:
    """What the client did, for tests and progress reports."""

    requests: int = 0  # HTTP requests sent, retries included (token requests not)
    retries: int = 0  # requests sent again after a transient failure
    renewals: int = 0  # credentials renewed after a 401
    repeats_recognised: int = 0  # retried segment POSTs found already done


@dataclass
class UploadTarget:
    """Where to PUT one object's bytes (from a storage allocation)."""

    object_id: str
    put_url: str
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    presigned: bool = False


@dataclass
class Reply:
    """One HTTP answer, body read (``url`` is redacted)."""

    method: str
    url: str
    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes
    next_url: str | None = None
    attempts: int = 1

    def json(self) -> Any:
        """The body as JSON (None when empty); TAMSResponseError if it is not JSON."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise TAMSResponseError(
                f"{self.method} {self.url}: the answer ({self.status}) is not JSON: {self.body[:80]!r}",
                method=self.method, url=self.url, status=self.status, body=self.body[:500].decode(errors="replace"),
            ) from exc

    def error_body(self) -> object:
        try:
            return json.loads(self.body)
        except ValueError:
            return self.body[:1000].decode(errors="replace")


_Payload = bytes | Path | None


# ---------------------------------------------------------------------------
# The client


class TAMSClient:
    """``async with TAMSClient(url, credentials) as client: ...``"""

    def __init__(
        self,
        url: str,
        credentials: Credentials | None = None,
        concurrency: int = 8,
        retry: RetryPolicy | None = None,
        *,
        timeout: aiohttp.ClientTimeout | None = None,
        rng: random.Random | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TAMSError(f"not an http(s) URL for a TAMS API: {url!r}", url=redact_url(url))
        self.url = url.rstrip("/")
        self.credentials = credentials or Credentials()
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy()
        self.timeout = timeout or aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
        self.stats = ClientStats()
        self._rng = rng or random.Random()
        self._origin = _origin(url)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use TAMSClient as 'async with TAMSClient(...) as client'")
        return self._session

    # -- low level ----------------------------------------------------------

    def api_url(self, *segments: str, params: Mapping[str, object] | None = None) -> str:
        """The encoded URL of an API path given as unencoded segments."""
        path = "".join("/" + quote(str(s), safe="") for s in segments)
        query = [(k, _param(v)) for k, v in (params or {}).items() if v is not None]
        return self.url + path + ("?" + urlencode(query, quote_via=quote) if query else "")

    def _same_origin(self, url: str) -> bool:
        return _origin(url) == self._origin

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, object] | None = None,
        json_body: object = None,
        data: _Payload = None,
        headers: Mapping[str, str] | None = None,
        retry: bool | None = None,
        check: bool = True,
        auth: bool = True,
    ) -> Reply:
        """Send one request (retried as policy allows) and read the answer.

        ``path`` is an encoded API path (query allowed) or an absolute URL.
        ``retry`` None retries only methods safe to repeat. With ``check`` a 4xx
        or 5xx answer raises TAMSResponseError (NotFound for 404).
        """
        url = path if path.startswith(("http://", "https://")) else self.url + path
        if params:
            query = urlencode([(k, _param(v)) for k, v in params.items() if v is not None], quote_via=quote)
            url += ("&" if "?" in url else "?") + query
        payload: _Payload = data
        all_headers = dict(headers or {})
        if json_body is not None:
            payload = json.dumps(json_body, default=_json_default).encode()
            all_headers.setdefault("Content-Type", "application/json")
        reply, _ = await self._exchange(
            method.upper(), url, payload=payload, headers=all_headers, retry=retry, check=check, auth=auth
        )
        return reply

    @contextlib.asynccontextmanager
    async def request_stream(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        retry: bool | None = None,
        auth: bool = True,
    ) -> AsyncIterator[tuple[Reply, aiohttp.ClientResponse | None]]:
        """Like ``request(..., check=False)`` for a body-less request, but a 2xx
        answer's body is left unread: yields ``(reply, response)`` with the open
        aiohttp response to read from (None for other answers, which come read).
        The response is released on leaving the block."""
        url = path if path.startswith(("http://", "https://")) else self.url + path
        reply, response = await self._exchange(
            method.upper(), url, headers=headers, retry=retry, check=False, auth=auth, stream=True
        )
        try:
            yield reply, response
        finally:
            if response is not None:
                response.release()

    async def _exchange(
        self,
        method: str,
        url: str,
        *,
        payload: _Payload = None,
        headers: Mapping[str, str] | None = None,
        retry: bool | None = None,
        check: bool = True,
        auth: bool = True,
        media: bool = False,
        stream: bool = False,
    ) -> tuple[Reply, aiohttp.ClientResponse | None]:
        """The retry loop. With ``stream`` a successful answer's body is left
        unread and its response returned open (the caller releases it)."""
        shown = redact_url(url, keep_query=not media)
        repeatable = method in REPEATABLE_METHODS if retry is None else retry
        retries = 0
        dns_failures = 0
        renewed = False
        while True:
            sent = dict(headers or {})
            failure: BaseException | None = None
            reply: Reply | None = None
            response: aiohttp.ClientResponse | None = None
            try:
                if auth and self._same_origin(url):
                    sent.update(await self.credentials.auth_headers(self.session))
                self.stats.requests += 1
                reply, response = await self._attempt(method, url, shown, sent, payload, stream)
            except CredentialsError as exc:
                error = self._credentials_error(method, shown, exc)
                # nothing was sent to the API yet, so trying again is safe for any method
                if isinstance(error, TAMSResponseError) and exc.status not in RETRY_STATUSES:
                    raise error from exc
                if retries + 1 >= self.retry.attempts:
                    raise error from exc
                failure = exc
            except aiohttp.ClientConnectorDNSError as exc:
                # nothing was sent, so trying again is safe for any method; but only a few times
                dns_failures += 1
                if dns_failures > DNS_RETRIES or retries + 1 >= self.retry.attempts:
                    reason = exc.os_error.strerror or _describe(exc.os_error, url, keep_query=not media)
                    raise TAMSConnectionError(
                        f"cannot resolve host {exc.host or urlsplit(url).hostname}: {reason} "
                        f"({method} {shown}, {retries + 1} attempt(s))",
                        method=method, url=shown,
                    ) from exc
                failure = exc
            except TRANSIENT_ERRORS as exc:
                if not repeatable or retries + 1 >= self.retry.attempts:
                    raise TAMSConnectionError(
                        f"could not reach {method} {shown} after {retries + 1} attempt(s): "
                        f"{_describe(exc, url, keep_query=not media)}",
                        method=method, url=shown,
                    ) from exc
                failure = exc
            except aiohttp.ClientError as exc:
                raise TAMSConnectionError(
                    f"{method} {shown} failed: {_describe(exc, url, keep_query=not media)}", method=method, url=shown
                ) from exc

            if reply is not None:
                reply.attempts = retries + 1
                if reply.status == 401 and self.credentials.renewable and not renewed:
                    renewed = True
                    self.stats.renewals += 1
                    logger.info("%s %s: 401, renewing credentials and trying again", method, shown)
                    try:
                        await self.credentials.renew(self.session, sent)
                    except CredentialsError as exc:
                        raise self._credentials_error(method, shown, exc) from exc
                    continue
                if not (reply.status in RETRY_STATUSES and repeatable and retries + 1 < self.retry.attempts):
                    if check and reply.status >= 400:
                        raise self._response_error(reply)
                    return reply, response

            retry_after = parse_retry_after(reply.headers.get("Retry-After")) if reply is not None else None
            delay = retry_delay(self.retry, retries, retry_after, self._rng)
            if reply is not None:
                what = f"{reply.status} {reply.reason}"
            elif failure is None or isinstance(failure, CredentialsError):
                what = type(failure).__name__
            else:
                what = f"{type(failure).__name__}: {_describe(failure, url, keep_query=not media)}"
            logger.info("%s %s: %s; retry %d of %d in %.2fs", method, shown, what, retries + 1,
                        self.retry.attempts - 1, delay)
            retries += 1
            self.stats.retries += 1
            await asyncio.sleep(delay)

    async def _attempt(
        self, method: str, url: str, shown: str, headers: dict[str, str], payload: _Payload, stream: bool
    ) -> tuple[Reply, aiohttp.ClientResponse | None]:
        with contextlib.ExitStack() as files:
            # a file is opened afresh for every attempt and streamed, never read whole
            data = files.enter_context(payload.open("rb")) if isinstance(payload, Path) else payload
            response = await self.session.request(method, URL(url, encoded=True), headers=headers, data=data)
        keep_open = stream and response.status < 300
        try:
            body = b"" if keep_open else await response.read()
        finally:
            if not keep_open:
                response.release()
        logger.debug("%s %s -> %d", method, shown, response.status)
        reply = Reply(
            method=method, url=shown, status=response.status, reason=response.reason or "",
            headers=response.headers, body=body, next_url=next_link(response.headers.get("Link"), url),
        )
        return reply, response if keep_open else None

    def _response_error(self, reply: Reply) -> TAMSResponseError:
        body = reply.error_body()
        cls = NotFound if reply.status == 404 else TAMSResponseError
        return cls(
            f"{reply.method} {reply.url}: {reply.status} {reply.reason}: {_summary(body)}",
            method=reply.method, url=reply.url, status=reply.status, body=body,
        )

    @staticmethod
    def _credentials_error(method: str, shown: str, exc: CredentialsError) -> TAMSError:
        token_url = redact_url(exc.url)
        message = redact_text(exc.message, exc.url)
        if exc.status is None:
            return TAMSConnectionError(
                f"{method} {shown}: {message} ({token_url})", method="POST", url=token_url
            )
        return TAMSResponseError(
            f"{method} {shown}: {message} by {token_url}: {_summary(exc.body)}",
            method="POST", url=token_url, status=exc.status, body=exc.body,
        )

    async def _get_json(self, *segments: str, params: Mapping[str, object] | None = None) -> Any:
        reply, _ = await self._exchange("GET", self.api_url(*segments, params=params))
        return reply.json()

    async def _put_json(self, value: object, *segments: str) -> Reply:
        body = json.dumps(value, default=_json_default).encode()
        reply, _ = await self._exchange(
            "PUT", self.api_url(*segments), payload=body, headers={"Content-Type": "application/json"}
        )
        return reply

    async def _delete(self, *segments: str, params: Mapping[str, object] | None = None) -> Reply:
        reply, _ = await self._exchange("DELETE", self.api_url(*segments, params=params))
        return reply

    async def _paged(self, *segments: str, params: Mapping[str, object] | None = None) -> AsyncIterator[dict]:
        url: str | None = self.api_url(*segments, params=params)
        while url is not None:
            reply, _ = await self._exchange("GET", url)
            items = reply.json()
            if not isinstance(items, list):
                raise TAMSResponseError(f"GET {reply.url}: expected a JSON list", method="GET", url=reply.url,
                                        status=reply.status, body=_summary(items))
            for item in items:
                yield item
            if reply.next_url == url:
                raise TAMSResponseError(f"GET {reply.url}: the next page link points at the same page",
                                        method="GET", url=reply.url, status=reply.status)
            url = reply.next_url

    # -- service --------------------------------------------------------------

    async def get_service(self) -> dict:
        return await self._get_json("service")

    async def post_service(self, fields: dict) -> None:
        """Change the service's ``name``/``description`` (admin)."""
        await self.request("POST", "/service", json_body=fields, retry=True)

    def storage_backends(self, **params: object) -> AsyncIterator[dict]:
        return self._paged("service", "storage-backends", params=params)

    # -- sources ----------------------------------------------------------------

    def sources(self, **params: object) -> AsyncIterator[dict]:
        """All sources matching the filters (``label``, ``format``, ``**{"tag.x": "y"}``, ...)."""
        return self._paged("sources", params=params)

    async def get_source(self, source_id: str) -> dict:
        return await self._get_json("sources", source_id)

    async def get_source_label(self, source_id: str) -> str | None:
        return await self._get_json("sources", source_id, "label")

    async def put_source_label(self, source_id: str, label: str) -> None:
        await self._put_json(label, "sources", source_id, "label")

    async def delete_source_label(self, source_id: str) -> None:
        await self._delete("sources", source_id, "label")

    async def get_source_description(self, source_id: str) -> str | None:
        return await self._get_json("sources", source_id, "description")

    async def put_source_description(self, source_id: str, description: str) -> None:
        await self._put_json(description, "sources", source_id, "description")

    async def delete_source_description(self, source_id: str) -> None:
        await self._delete("sources", source_id, "description")

    async def get_source_tags(self, source_id: str) -> dict:
        return await self._get_json("sources", source_id, "tags")

    async def get_source_tag(self, source_id: str, name: str) -> str | list[str]:
        return await self._get_json("sources", source_id, "tags", name)

    async def put_source_tag(self, source_id: str, name: str, value: str | list[str]) -> None:
        await self._put_json(value, "sources", source_id, "tags", name)

    async def delete_source_tag(self, source_id: str, name: str) -> None:
        await self._delete("sources", source_id, "tags", name)

    # -- flows ------------------------------------------------------------------

    def flows(self, **params: object) -> AsyncIterator[dict]:
        """All flows matching the filters (``source_id``, ``timerange``, ``format``, tags, ...)."""
        return self._paged("flows", params=params)

    async def get_flow(self, flow_id: str, *, include_timerange: bool = False,
                       timerange: TimeRange | str | None = None) -> dict:
        params: dict[str, object] = {"timerange": timerange}
        if include_timerange:
            params["include_timerange"] = True
        return await self._get_json("flows", flow_id, params=params)

    async def put_flow(self, flow_id: str, flow: dict) -> dict | None:
        """Create (returns the new flow) or replace (returns None) a flow."""
        reply = await self._put_json(flow, "flows", flow_id)
        return reply.json() if reply.status == 201 else None

    async def delete_flow(self, flow_id: str) -> dict | None:
        """Delete a flow; returns the deletion request when the store works on it later (202)."""
        reply = await self._delete("flows", flow_id)
        return reply.json() if reply.status == 202 else None

    async def get_flow_property(self, flow_id: str, name: str) -> Any:
        """One of ``label``, ``description``, ``read_only``, ``flow_collection``, ``max_bit_rate``, ``avg_bit_rate``."""
        return await self._get_json("flows", flow_id, name)

    async def put_flow_property(self, flow_id: str, name: str, value: object) -> None:
        await self._put_json(value, "flows", flow_id, name)

    async def delete_flow_property(self, flow_id: str, name: str) -> None:
        await self._delete("flows", flow_id, name)

    async def get_flow_tags(self, flow_id: str) -> dict:
        return await self._get_json("flows", flow_id, "tags")

    async def get_flow_tag(self, flow_id: str, name: str) -> str | list[str]:
        return await self._get_json("flows", flow_id, "tags", name)

    async def put_flow_tag(self, flow_id: str, name: str, value: str | list[str]) -> None:
        await self._put_json(value, "flows", flow_id, "tags", name)

    async def delete_flow_tag(self, flow_id: str, name: str) -> None:
        await self._delete("flows", flow_id, "tags", name)

    def flow_delete_requests(self, **params: object) -> AsyncIterator[dict]:
        return self._paged("flow-delete-requests", params=params)

    async def get_flow_delete_request(self, request_id: str) -> dict:
        return await self._get_json("flow-delete-requests", request_id)

    # -- segments -----------------------------------------------------------------

    def segments(
        self,
        flow_id: str,
        *,
        timerange: TimeRange | str | None = None,
        include_object_timerange: bool = True,
        presigned: bool | None = None,
        reverse_order: bool = False,
        object_id: str | None = None,
        limit: int | None = None,
        **params: object,
    ) -> AsyncIterator[dict]:
        """All segments of a flow (in timerange order), following every page.
        ``limit`` is the page size; other filters (``accept_get_urls``,
        ``verbose_storage``, ...) pass through."""
        query: dict[str, object] = {
            "timerange": timerange,
            "include_object_timerange": include_object_timerange,
            "presigned": presigned,
            "reverse_order": True if reverse_order else None,
            "object_id": object_id,
            "limit": limit,
            **params,
        }
        return self._paged("flows", flow_id, "segments", params=query)

    async def post_segments(self, flow_id: str, segments: dict | list[dict]) -> list[dict]:
        """Register one segment or a list; returns ``failed_segments`` ([] when
        all were registered). Raises TAMSResponseError when the store refuses
        the request as a whole. A POST that had to be sent again and then finds
        its segments already there (an earlier try got through) counts as done."""
        batch = [segments] if isinstance(segments, dict) else list(segments)
        if not batch:
            return []
        body = json.dumps(segments if isinstance(segments, dict) else batch, default=_json_default).encode()
        reply, _ = await self._exchange(
            "POST", self.api_url("flows", flow_id, "segments"), payload=body,
            headers={"Content-Type": "application/json"}, retry=True, check=False,
        )
        if reply.status in (201, 204):
            return []
        if reply.status == 200:
            answer = reply.json()
            failed = list(answer.get("failed_segments", [])) if isinstance(answer, dict) else []
            if failed and reply.attempts > 1:
                failed = await self._still_failed(flow_id, batch, failed)
            return failed
        if reply.status == 400 and reply.attempts > 1:
            everything = [{"object_id": s.get("object_id")} for s in batch]
            if not await self._still_failed(flow_id, batch, everything):
                return []
        raise self._response_error(reply)

    async def _still_failed(self, flow_id: str, batch: list[dict], failed: list[dict]) -> list[dict]:
        """The entries of ``failed`` whose segments are not in the store exactly as sent."""
        remaining = []
        for entry in failed:
            sent = [
                s for s in batch
                if s.get("object_id") == entry.get("object_id")
                and ("timerange" not in entry or _same_timerange(s.get("timerange"), entry["timerange"]))
            ]
            if sent and all([await self._segment_present(flow_id, s) for s in sent]):
                self.stats.repeats_recognised += 1
                logger.info("segment %s in flow %s was registered by an earlier try", entry.get("object_id"), flow_id)
            else:
                remaining.append(entry)
        return remaining

    async def _segment_present(self, flow_id: str, segment: dict) -> bool:
        try:
            wanted = _segment_identity(segment)
        except ValueError:
            return False  # not a segment the store could have taken
        async for found in self.segments(flow_id, timerange=str(segment["timerange"]),
                                         object_id=str(segment["object_id"]), include_object_timerange=False):
            if _segment_identity(found) == wanted:
                return True
        return False

    async def delete_segments(self, flow_id: str, *, timerange: TimeRange | str | None = None,
                              object_id: str | None = None) -> dict | None:
        """Delete the segments wholly inside ``timerange`` (default all); returns the
        deletion request when the store works on it later (202)."""
        reply = await self._delete("flows", flow_id, "segments",
                                   params={"timerange": timerange, "object_id": object_id})
        return reply.json() if reply.status == 202 else None

    # -- storage and objects ---------------------------------------------------------

    async def allocate_storage(
        self,
        flow_id: str,
        *,
        batch: int = 8,
        presigned: bool | None = None,
        storage_id: str | None = None,
        content_type: str | None = None,
    ) -> AsyncIterator[UploadTarget]:
        """Upload targets for new objects, without end: ``batch`` are asked for at
        a time, and the next batch only once these are used up, so none sits
        waiting long enough for its URL to expire."""
        request: dict[str, object] = {"limit": batch}
        for name, value in (("presigned", presigned), ("storage_id", storage_id), ("content_type", content_type)):
            if value is not None:
                request[name] = value
        body = json.dumps(request).encode()
        while True:
            reply, _ = await self._exchange(
                "POST", self.api_url("flows", flow_id, "storage"), payload=body,
                headers={"Content-Type": "application/json"}, retry=True,
            )
            answer = reply.json()
            objects = answer.get("media_objects") if isinstance(answer, dict) else None
            if not objects:
                raise TAMSResponseError(f"POST {reply.url}: the store allocated no media_objects",
                                        method="POST", url=reply.url, status=reply.status, body=answer)
            for item in objects:
                put_url = item["put_url"]
                yield UploadTarget(
                    object_id=item["object_id"],
                    put_url=put_url["url"],
                    content_type=put_url.get("content-type") or put_url.get("content_type") or content_type
                    or "application/octet-stream",
                    headers=dict(put_url.get("headers") or {}),
                    presigned=bool(item.get("presigned", False)),
                )

    async def upload_object(self, target: UploadTarget, data: bytes | Path) -> None:
        """PUT an object's bytes; a file is streamed, never read whole. API
        credentials go only to a URL that is not presigned and on the API's origin."""
        headers = {"Content-Type": target.content_type, **target.headers}
        await self._exchange("PUT", target.put_url, payload=data, headers=headers,
                             auth=not target.presigned, media=True)

    async def get_object(self, object_id: str, **params: object) -> dict:
        return await self._get_json("objects", object_id, params=params)

    async def post_object_instance(self, object_id: str, instance: dict) -> None:
        """Copy an object to another storage (``{"storage_id"}``) or register an
        uncontrolled copy (``{"url", "label"}``)."""
        await self.request("POST", self.api_url("objects", object_id, "instances"), json_body=instance)

    async def delete_object_instance(self, object_id: str, *, storage_id: str | None = None,
                                     label: str | None = None) -> None:
        await self._delete("objects", object_id, "instances", params={"storage_id": storage_id, "label": label})

    def _media_request(self, get_url: str | Mapping[str, Any], presigned: bool | None) -> tuple[str, bool]:
        if not isinstance(get_url, str):
            presigned = get_url.get("presigned") if presigned is None else presigned
            get_url = str(get_url["url"])
        if presigned is None:
            presigned = bool(urlsplit(get_url).query)  # a signed URL carries its signature in the query
        return get_url, not presigned

    async def download_object(self, url: str | Mapping[str, Any], *, presigned: bool | None = None) -> bytes:
        """An object's bytes from a URL (or a ``get_urls`` item). API credentials
        go only to a URL that is not presigned and on the API's origin; with
        ``presigned`` None a URL with a query is taken to be presigned."""
        target, auth = self._media_request(url, presigned)
        reply, _ = await self._exchange("GET", target, auth=auth, media=True)
        return reply.body

    @contextlib.asynccontextmanager
    async def stream_object(self, url: str | Mapping[str, Any], *, presigned: bool | None = None,
                            chunk_size: int = 1 << 16) -> AsyncIterator[AsyncIterator[bytes]]:
        """``async with client.stream_object(url) as chunks: async for chunk in chunks: ...``
        Opening is retried; a connection that breaks mid-stream raises TAMSConnectionError."""
        target, auth = self._media_request(url, presigned)
        shown = redact_url(target, keep_query=False)
        _, response = await self._exchange("GET", target, auth=auth, media=True, stream=True)
        assert response is not None

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.content.iter_chunked(chunk_size):
                    yield chunk
            except TRANSIENT_ERRORS as exc:
                raise TAMSConnectionError(
                    f"GET {shown}: the download broke off: {_describe(exc, target, keep_query=False)}",
                    method="GET", url=shown,
                ) from exc

        try:
            yield chunks()
        finally:
            response.release()


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def _same_timerange(a: object, b: object) -> bool:
    try:
        return TimeRange.from_str(str(a)) == TimeRange.from_str(str(b))
    except ValueError:
        return False


def _segment_identity(segment: Mapping[str, Any]) -> tuple[str, TimeRange, Timestamp]:
    return (
        str(segment.get("object_id")),
        TimeRange.from_str(str(segment.get("timerange"))),
        Timestamp.from_str(str(segment.get("ts_offset") or "0:0")),
    )


"""Change events and their delivery to webhooks.

How an event travels:

1. A write transaction in ``database.py`` records a ``ChangeEvent`` (only for event types some
   active webhook wants, so the hot paths pay nothing when nobody listens). Events of a
   transaction that rolls back are dropped with it.
2. After the COMMIT, on the event loop and in commit order, the database hands the batch's
   events to ``WebhookHub.publish``, which appends each one to the queue of every webhook whose
   filters match it. Publishing only appends to in-memory queues, so the request that caused the
   event is never slowed by a receiver, however slow or broken.
3. One worker task per webhook delivers its queue strictly in order (so in order per Flow, and
   in fact in commit order), each event an HTTP POST of ``{event_timestamp, event_type, event}``
   with the webhook's ``api_key_name: api_key_value`` header. The body is rendered at delivery
   with the same code as the GET endpoints (``bodies.py``), honouring the webhook's ``get_urls``
   options. When a receiver falls behind, consecutive ``flows/segments_added`` events of one
   Flow waiting in its queue are delivered as one (``_coalesce``).

Retry and marking policy: any answer but 2xx, a connection error or a timeout is retried after
``webhook_backoff`` seconds, doubling up to ``webhook_backoff_cap`` (a ``Retry-After`` on
429/503 is honoured within the cap). After ``webhook_attempts`` failed attempts of one event the
webhook is marked ``status: "error"`` with an ``error`` body saying why, its undelivered events
are dropped and it sends nothing more until a client PUTs it back to ``created`` (the spec's
re-enable transition). The same happens if more than ``webhook_queue_limit`` events pile up.
A webhook moves from ``created`` to ``started`` when its first event is delivered.

Events live in memory: those not yet delivered when the store stops are lost (a restart does
not replay them). Webhook registrations and their status are kept in the database.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from .bodies import UrlFilter, flow_body, segment_body, source_body
from .errors import error_body

if TYPE_CHECKING:
    from .config import StoreConfig
    from .database import Database
    from .state import Store

__all__ = ["EVENT_TYPES", "ChangeEvent", "WebhookConfig", "WebhookHub", "loggable_url"]

logger = logging.getLogger(__name__)

EVENT_TYPES = (
    "flows/created",
    "flows/updated",
    "flows/deleted",
    "flows/segments_added",
    "flows/segments_deleted",
    "sources/created",
    "sources/updated",
    "sources/deleted",
)
ACTIVE = ("created", "started")
MAX_COALESCED_SEGMENTS = 1000  # segments in one merged flows/segments_added delivery


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One change, as recorded inside the transaction that made it.

    ``flow_id``/``source_id`` and the two ``*_collected_by`` tuples are what the webhook filters
    look at; ``payload`` holds the raw records the body is rendered from.
    """

    event_type: str
    timestamp: str
    flow_id: str | None
    source_id: str | None
    flow_collected_by: tuple[str, ...] = ()
    source_collected_by: tuple[str, ...] = ()
    payload: dict[str, Any] = field(default_factory=dict)


def _id_set(doc: dict[str, Any], name: str) -> frozenset[str] | None:
    values = doc.get(name)
    return None if values is None else frozenset(values)


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """A registered webhook as the hub uses it (parsed once from its stored record)."""

    id: str
    url: str
    status: str
    events: frozenset[str]
    api_key_name: str | None
    api_key_value: str | None = field(repr=False)  # a secret: never in a log line
    flow_ids: frozenset[str] | None
    source_ids: frozenset[str] | None
    flow_collected_by_ids: frozenset[str] | None
    source_collected_by_ids: frozenset[str] | None
    url_filter: UrlFilter
    include_object_timerange: bool

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> WebhookConfig:
        doc = record["doc"]
        labels = doc.get("accept_get_urls")
        storage_ids = doc.get("accept_storage_ids")
        return cls(
            id=record["id"],
            url=doc["url"],
            status=record["status"],
            events=frozenset(doc.get("events", [])),
            api_key_name=doc.get("api_key_name"),
            api_key_value=doc.get("api_key_value"),
            flow_ids=_id_set(doc, "flow_ids"),
            source_ids=_id_set(doc, "source_ids"),
            flow_collected_by_ids=_id_set(doc, "flow_collected_by_ids"),
            source_collected_by_ids=_id_set(doc, "source_collected_by_ids"),
            url_filter=UrlFilter(
                labels=None if labels is None else frozenset(labels),
                storage_ids=frozenset(storage_ids) if storage_ids else None,
                presigned=doc.get("presigned"),
                verbose=bool(doc.get("verbose_storage", False)),
            ),
            include_object_timerange=bool(doc.get("include_object_timerange", False)),
        )

    def matches(self, event: ChangeEvent) -> bool:
        if event.event_type not in self.events:
            return False
        if event.event_type.startswith("flows/"):
            if self.flow_ids is not None and event.flow_id not in self.flow_ids:
                return False
            if not _collection_match(self.flow_collected_by_ids, event.flow_collected_by):
                return False
        if self.source_ids is not None and event.source_id not in self.source_ids:
            return False
        return _collection_match(self.source_collected_by_ids, event.source_collected_by)


def _collection_match(wanted: frozenset[str] | None, collected_by: tuple[str, ...]) -> bool:
    """The spec's ``*_collected_by_ids``: any shared id, or (empty list) not collected at all."""
    if wanted is None:
        return True
    if not wanted:
        return not collected_by
    return not wanted.isdisjoint(collected_by)


def loggable_url(url: str) -> str:
    """A receiver URL without credentials, query or fragment (they may hold secrets)."""
    try:
        parsed = URL(url)
        return str(parsed.with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<unparseable url>"


def render(store: Store, config: WebhookConfig, event: ChangeEvent) -> dict[str, Any]:
    """The POST body of ``event`` for the webhook ``config`` (the spec's ``webhooks`` schemas)."""
    payload = event.payload
    body: dict[str, Any]
    match event.event_type:
        case "flows/created" | "flows/updated":
            body = {"flow": flow_body(payload["flow"])}
        case "flows/deleted":
            body = {"flow_id": event.flow_id}
        case "flows/segments_added":
            body = {
                "flow_id": event.flow_id,
                "segments": [segment_body(store, row, config.url_filter, config.include_object_timerange) for row in payload["rows"]],
            }
        case "flows/segments_deleted":
            body = {"flow_id": event.flow_id, "timerange": payload["timerange"]}
        case "sources/created" | "sources/updated":
            body = {"source": source_body(payload["source"])}
        case "sources/deleted":
            body = {"source_id": event.source_id}
        case _:  # pragma: no cover - EVENT_TYPES is closed
            raise ValueError(f"unknown event type {event.event_type}")
    return {"event_timestamp": event.timestamp, "event_type": event.event_type, "event": body}


@dataclass
class _Subscriber:
    config: WebhookConfig
    queue: collections.deque[ChangeEvent] = field(default_factory=collections.deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class WebhookHub:
    """Every registered webhook, its queue of undelivered events and its delivery worker."""

    def __init__(self, db: Database, config: StoreConfig) -> None:
        self._db = db
        self._config = config
        self._store: Store | None = None
        self._subscribers: dict[str, _Subscriber] = {}
        self._session: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self, store: Store) -> None:
        self._store = store
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=32),
            headers={"User-Agent": "tams-toolkit-local-store-webhooks"},
        )
        for record in await self._db.list_all_webhooks():
            self.upsert(record)
        self._db.event_sink = self.publish

    async def close(self) -> None:
        self._db.event_sink = None
        self._db.event_types_wanted = frozenset()
        tasks = [s.task for s in self._subscribers.values() if s.task is not None] + list(self._background)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._subscribers.clear()
        if self._session is not None:
            await self._session.close()

    # --- registrations --------------------------------------------------------------------
    def upsert(self, record: dict[str, Any]) -> None:
        """Take a created or replaced webhook into account (its record as stored)."""
        config = WebhookConfig.from_record(record)
        subscriber = self._subscribers.get(config.id)
        if subscriber is None:
            subscriber = _Subscriber(config)
            self._subscribers[config.id] = subscriber
        subscriber.config = config
        if config.status in ACTIVE:
            if subscriber.task is None or subscriber.task.done():
                subscriber.task = asyncio.create_task(self._deliver_loop(subscriber), name=f"webhook-{config.id}")
        else:
            self._stop(subscriber)
        self._update_wanted()

    def remove(self, webhook_id: str) -> None:
        subscriber = self._subscribers.pop(webhook_id, None)
        if subscriber is not None:
            self._stop(subscriber)
        self._update_wanted()

    def _stop(self, subscriber: _Subscriber) -> None:
        subscriber.queue.clear()
        if subscriber.task is not None and not subscriber.task.done():
            subscriber.task.cancel()
        subscriber.task = None

    def _update_wanted(self) -> None:
        wanted: set[str] = set()
        for subscriber in self._subscribers.values():
            if subscriber.config.status in ACTIVE:
                wanted |= subscriber.config.events
        self._db.event_types_wanted = frozenset(wanted)

    # --- publishing -----------------------------------------------------------------------
    def publish(self, events: list[ChangeEvent]) -> None:
        """Queue committed events for the webhooks they match; never waits."""
        for subscriber in self._subscribers.values():
            config = subscriber.config
            if config.status not in ACTIVE:
                continue
            added = False
            for event in events:
                if config.matches(event):
                    subscriber.queue.append(event)
                    added = True
            if not added:
                continue
            if len(subscriber.queue) > self._config.webhook_queue_limit:
                reason = f"More than {self._config.webhook_queue_limit} events were waiting for delivery"
                self._mark_error_soon(subscriber, reason)
            else:
                subscriber.wake.set()

    def _mark_error_soon(self, subscriber: _Subscriber, reason: str) -> None:
        self._stop(subscriber)
        # Queue nothing more while the database write is pending.
        subscriber.config = dataclasses.replace(subscriber.config, status="error")
        task = asyncio.create_task(self._mark_error(subscriber.config, reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- delivery -------------------------------------------------------------------------
    async def _deliver_loop(self, subscriber: _Subscriber) -> None:
        while True:
            if not subscriber.queue:
                subscriber.wake.clear()
                await subscriber.wake.wait()
                continue
            head = subscriber.queue[0]
            event, taken = _coalesce(subscriber.queue)
            failure = await self._deliver(subscriber, event)
            if failure is None:
                if subscriber.queue and subscriber.queue[0] is head:
                    for _ in range(min(taken, len(subscriber.queue))):
                        subscriber.queue.popleft()
                if subscriber.config.status == "created":
                    await self._set_status(subscriber, "started", None)
                continue
            await self._mark_error(subscriber.config, failure)
            subscriber.queue.clear()
            return

    async def _deliver(self, subscriber: _Subscriber, event: ChangeEvent) -> str | None:
        """POST one event, retrying; None once delivered, else why it could not be."""
        assert self._session is not None and self._store is not None
        cfg = self._config
        last = "not attempted"
        for attempt in range(cfg.webhook_attempts):
            config = subscriber.config  # a PUT may have changed the URL or key meanwhile
            body = json.dumps(render(self._store, config, event), separators=(",", ":")).encode()
            headers = {"Content-Type": "application/json"}
            if config.api_key_name and config.api_key_value is not None:
                headers[config.api_key_name] = config.api_key_value
            retry_after = 0.0
            try:
                async with self._session.post(
                    config.url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=cfg.webhook_timeout),
                ) as response:
                    await response.read()
                    if 200 <= response.status < 300:
                        return None
                    last = f"the receiver answered HTTP {response.status}"
                    if response.status in (429, 503):
                        retry_after = _retry_after(response.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                last = f"the POST failed ({type(exc).__name__})"
            logger.info(
                "webhook %s: delivery of %s to %s failed (attempt %d of %d): %s",
                config.id,
                event.event_type,
                loggable_url(config.url),
                attempt + 1,
                cfg.webhook_attempts,
                last,
            )
            if attempt + 1 < cfg.webhook_attempts:
                delay = min(cfg.webhook_backoff_cap, max(cfg.webhook_backoff * 2**attempt, retry_after))
                await asyncio.sleep(delay)
        return f"{cfg.webhook_attempts} attempts to deliver a {event.event_type} event failed; last: {last}"

    async def _set_status(self, subscriber: _Subscriber, status: str, error: dict[str, Any] | None) -> None:
        record = await self._db.set_webhook_status(subscriber.config.id, status, error, only_if=ACTIVE)
        if record is not None and self._subscribers.get(subscriber.config.id) is subscriber:
            subscriber.config = WebhookConfig.from_record(record)

    async def _mark_error(self, config: WebhookConfig, reason: str) -> None:
        logger.warning("webhook %s (%s) marked error: %s", config.id, loggable_url(config.url), reason)
        record = await self._db.set_webhook_status(config.id, "error", error_body("WebhookDeliveryFailed", reason), only_if=ACTIVE)
        subscriber = self._subscribers.get(config.id)
        if record is not None and subscriber is not None:
            subscriber.config = WebhookConfig.from_record(record)
            subscriber.queue.clear()
        self._update_wanted()


def _coalesce(queue: collections.deque[ChangeEvent]) -> tuple[ChangeEvent, int]:
    """The event to deliver next, and how many queued events it stands for.

    A backlog of ``flows/segments_added`` events of one Flow, one after the other in the queue,
    goes as one event listing all their segments (in order; ``event_timestamp`` of the last),
    which is what the event means ("new Segments have been added") and spares a receiver that
    fell behind one POST per segment. Nothing is reordered: merging stops at the first other
    event.
    """
    head = queue[0]
    if head.event_type != "flows/segments_added" or len(queue) == 1:
        return head, 1
    rows = list(head.payload["rows"])
    last = head
    taken = 1
    for event in itertools.islice(queue, 1, None):
        if event.event_type != head.event_type or event.flow_id != head.flow_id:
            break
        if len(rows) + len(event.payload["rows"]) > MAX_COALESCED_SEGMENTS:
            break
        rows += event.payload["rows"]
        last = event
        taken += 1
    if taken == 1:
        return head, 1
    return dataclasses.replace(last, payload={"rows": rows}), taken


def _retry_after(value: str | None) -> float:
    if value is None:
        return 0.0
    try:
        return max(float(value), 0.0)
    except ValueError:
        return 0.0

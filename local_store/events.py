"""Change events and their delivery to webhooks.

How an event travels:

1. A write transaction in ``database/`` records a ``ChangeEvent`` (only for event types some
   active webhook wants, so the hot paths pay nothing when nobody listens) and writes it into the
   ``outbox`` table in the same transaction, just before the COMMIT: the event is stored if and
   only if its change is. Events of a transaction that rolls back are dropped with it.
2. After the COMMIT, on the event loop and in commit order, the database hands the batch's
   events to ``WebhookHub.publish``, which appends each one to the queue of every webhook whose
   filters match it. Publishing only appends to in-memory queues, so the request that caused the
   event is never slowed by a receiver, however slow or broken.
3. One worker task per webhook delivers its queue strictly in order (so in order per Flow, and
   in fact in commit order), each event an HTTP POST of ``{event_timestamp, event_type, event}``
   with the webhook's ``api_key_name: api_key_value`` header and ``X-TAMS-Event-Sequence``, the
   event's outbox number (a receiver can drop a repeat by it). The body is rendered at delivery
   with the same code as the GET endpoints (``bodies.py``), honouring the webhook's ``get_urls``
   options. When a receiver falls behind, consecutive ``flows/segments_added`` events of one
   Flow waiting in its queue are delivered as one (``_coalesce``).
4. After each delivery the webhook's ``delivered_seq`` is stored. When a worker starts (at
   store start-up, or when a webhook is created or re-enabled) it first reads the outbox after
   its ``delivered_seq``, so whatever was committed but not delivered before a stop, a crash or
   a ``kill -9`` is delivered after the restart, in order. Outbox rows every active webhook has
   passed are pruned.

The promise: every event of an acknowledged change reaches every matching active webhook at
least once, in commit order. The one repeat there can be is the delivery in flight when the
store died (the receiver may have had it, its ``delivered_seq`` was not yet stored): it comes
again first after the restart, with the same ``X-TAMS-Event-Sequence``.

Retry and marking policy: any answer but 2xx, a connection error or a timeout is retried after
``webhook_backoff`` seconds, doubling up to ``webhook_backoff_cap`` (a ``Retry-After`` on
429/503 is honoured within the cap). After ``webhook_attempts`` failed attempts of one event the
webhook is marked ``status: "error"`` with an ``error`` body saying why, its undelivered events
are dropped and it sends nothing more until a client PUTs it back to ``created`` (the spec's
re-enable transition; it then hears of changes from that moment). The same happens if more than
``webhook_queue_limit`` events pile up. A webhook moves from ``created`` to ``started`` when its
first event is delivered.
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

from .bodies import MediaUrls, UrlFilter, flow_body, segment_body, source_body
from .database import ACTIVE_WEBHOOK_STATUSES, ChangeEvent, Database
from .errors import error_body

if TYPE_CHECKING:
    from .config import StoreConfig

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
ACTIVE = ACTIVE_WEBHOOK_STATUSES
BACKLOG_PAGE = 1000  # outbox rows read at a time when a worker starts
ADVANCE_DELAY = 1.0  # seconds before idle webhooks' passed-over events are counted as done
MAX_COALESCED_SEGMENTS = 1000  # segments in one merged flows/segments_added delivery


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
    delivered_seq: int = 0  # the last outbox event this webhook is done with

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
            delivered_seq=int(record.get("delivered_seq") or 0),
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


def render(store: MediaUrls, config: WebhookConfig, event: ChangeEvent) -> dict[str, Any]:
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
    ready: bool = False  # the outbox backlog is loaded
    seen_seq: int = 0  # the last event published while it was active, matching or not

    @property
    def idle_ahead(self) -> bool:
        """Nothing left to deliver, and events it passed over not yet counted as done."""
        return self.ready and not self.queue and self.seen_seq > self.config.delivered_seq


class WebhookHub:
    """Every registered webhook, its queue of undelivered events and its delivery worker."""

    def __init__(self, db: Database, config: StoreConfig) -> None:
        self._db = db
        self._config = config
        self._store: MediaUrls | None = None
        self._subscribers: dict[str, _Subscriber] = {}
        self._session: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._advance_task: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self, store: MediaUrls) -> None:
        self._store = store
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=32),
            headers={"User-Agent": "tams-toolkit-local-store-webhooks"},
        )
        # The sink first: each worker reads the outbox backlog when it starts, and an event
        # committed meanwhile is then both in the backlog and published (kept once, by seq).
        self._db.event_sink = self.publish
        for record in await self._db.list_all_webhooks():
            self.upsert(record)

    async def close(self) -> None:
        self._db.event_sink = None
        self._db.event_types_wanted = frozenset()
        tasks = [s.task for s in self._subscribers.values() if s.task is not None] + list(self._background)
        if self._advance_task is not None:
            tasks.append(self._advance_task)
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
        subscriber.ready = False
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
            subscriber.seen_seq = max(subscriber.seen_seq, events[-1].seq)
            if not added:
                self._advance_soon()
                continue
            if len(subscriber.queue) > self._config.webhook_queue_limit:
                reason = f"More than {self._config.webhook_queue_limit} events were waiting for delivery"
                self._mark_error_soon(subscriber, reason)
            else:
                subscriber.wake.set()

    def _advance_soon(self) -> None:
        """Store, a moment from now, that idle webhooks are done with the events they passed
        over (so the outbox can be pruned behind them)."""
        if self._advance_task is None or self._advance_task.done():
            self._advance_task = asyncio.create_task(self._advance_idle())

    async def _advance_idle(self) -> None:
        await asyncio.sleep(ADVANCE_DELAY)
        positions = {s.config.id: s.seen_seq for s in self._subscribers.values() if s.idle_ahead}
        if not positions:
            return
        await self._db.mark_delivered(positions)
        for webhook_id, seq in positions.items():
            subscriber = self._subscribers.get(webhook_id)
            if subscriber is not None and seq > subscriber.config.delivered_seq:
                subscriber.config = dataclasses.replace(subscriber.config, delivered_seq=seq)

    def _mark_error_soon(self, subscriber: _Subscriber, reason: str) -> None:
        self._stop(subscriber)
        # Queue nothing more while the database write is pending.
        subscriber.config = dataclasses.replace(subscriber.config, status="error")
        task = asyncio.create_task(self._mark_error(subscriber.config, reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- delivery -------------------------------------------------------------------------
    async def _load_backlog(self, subscriber: _Subscriber) -> bool:
        """Put the stored events after the webhook's ``delivered_seq`` that it wants ahead of
        what was published meanwhile; False if that is more than the queue may hold."""
        config = subscriber.config
        after = config.delivered_seq
        backlog: dict[int, ChangeEvent] = {}
        while True:
            page = await self._db.events_after(after, BACKLOG_PAGE)
            backlog |= {e.seq: e for e in page if config.matches(e)}
            if len(backlog) > self._config.webhook_queue_limit:
                await self._mark_error(config, f"More than {self._config.webhook_queue_limit} stored events were waiting for delivery")
                return False
            if len(page) < BACKLOG_PAGE:
                break
            after = page[-1].seq
        if backlog:
            for event in subscriber.queue:
                backlog.setdefault(event.seq, event)
            subscriber.queue = collections.deque(backlog[seq] for seq in sorted(backlog))
            logger.info("webhook %s: %d stored events to deliver", config.id, len(backlog))
        return True

    async def _deliver_loop(self, subscriber: _Subscriber) -> None:
        subscriber.ready = False
        if not await self._load_backlog(subscriber):
            return
        subscriber.ready = True
        while True:
            if not subscriber.queue:
                if subscriber.idle_ahead:
                    self._advance_soon()
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
                await self._db.mark_delivered({subscriber.config.id: event.seq})
                subscriber.config = dataclasses.replace(subscriber.config, delivered_seq=event.seq)
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
            headers = {"Content-Type": "application/json", "X-TAMS-Event-Sequence": str(event.seq)}
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

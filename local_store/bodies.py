"""The JSON bodies the store sends: Flows, Sources, segments and their ``get_urls``.

Shared by the API handlers and by webhook delivery (``events.py``), so an event carries exactly
what a GET of the same resource would return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .objects import Backend, UrlSigner, object_url_path

__all__ = ["MediaUrls", "UrlFilter", "add_get_urls", "flow_body", "get_urls", "segment_body", "source_body"]


class MediaUrls(Protocol):
    """What a body needs of the store to write ``get_urls`` (``state.Store`` is one)."""

    @property
    def backend(self) -> Backend: ...

    @property
    def base_url(self) -> str: ...

    @property
    def signer(self) -> UrlSigner: ...


@dataclass(frozen=True, slots=True)
class UrlFilter:
    """The get_urls filters (all must match), from a query string or a webhook's options."""

    labels: frozenset[str] | None = None  # accept_get_urls; empty set: no URLs at all
    storage_ids: frozenset[str] | None = None  # accept_storage_ids
    presigned: bool | None = None
    verbose: bool = False
    backend_ok: bool = True  # storage_backend_tag filters against our (tagless) backend


def get_urls(
    store: MediaUrls,
    object_id: str,
    controlled: bool,
    content_type: str | None,
    uncontrolled: list[tuple[str, str | None]],
    filters: UrlFilter,
) -> list[dict[str, Any]]:
    """The URLs an object's bytes can be read from, best first, after ``filters``."""
    if filters.labels is not None and not filters.labels:
        return []  # accept_get_urls= (empty) asks for no URLs at all
    urls: list[dict[str, Any]] = []
    backend = store.backend
    if controlled and filters.backend_ok:
        label_ok = filters.labels is None or backend.label in filters.labels
        storage_ok = filters.storage_ids is None or backend.id in filters.storage_ids
        if label_ok and storage_ok:
            plain = store.base_url + object_url_path(object_id)
            for presigned in (True, False):
                if filters.presigned is not None and filters.presigned != presigned:
                    continue
                url = plain
                if presigned:
                    url += "?" + store.signer.sign("GET", object_id, content_type or "")
                item: dict[str, Any] = {
                    "url": url,
                    "presigned": presigned,
                    "label": backend.label,
                }
                if filters.verbose:
                    item |= {
                        "storage_id": backend.id,
                        "controlled": True,
                        **backend.verbose(),
                    }
                urls.append(item)
    if filters.storage_ids is None and filters.presigned is not True:
        for url, label in uncontrolled:
            if filters.labels is not None and (label is None or label not in filters.labels):
                continue
            item = {"url": url, "presigned": False}
            if label is not None:
                item["label"] = label
            if filters.verbose:
                item["controlled"] = False
            urls.append(item)
    return urls


def add_get_urls(
    body: dict[str, Any],
    store: MediaUrls,
    object_id: str,
    controlled: bool,
    content_type: str | None,
    uncontrolled: list[tuple[str, str | None]],
    filters: UrlFilter,
) -> None:
    """Set the object's ``get_urls`` in ``body``; left out when a label filter leaves none."""
    urls = get_urls(store, object_id, controlled, content_type, uncontrolled, filters)
    if urls or filters.labels is None:
        body["get_urls"] = urls


def flow_body(record: dict[str, Any], timerange: str | None = None) -> dict[str, Any]:
    """A Flow as ``flow-get.json`` describes it, from ``Database.get_flow``'s record."""
    body: dict[str, Any] = dict(record["doc"])
    body["id"] = record["id"]
    body["source_id"] = record["source_id"]
    body.setdefault("tags", {})
    for key in (
        "created",
        "metadata_updated",
        "segments_updated",
        "created_by",
        "updated_by",
        "metadata_version",
    ):
        if record.get(key) is not None:
            body[key] = record[key]
    if record.get("collected_by"):
        body["collected_by"] = record["collected_by"]
    if timerange is not None:
        body["timerange"] = timerange
    return body


def source_body(record: dict[str, Any]) -> dict[str, Any]:
    """A Source as ``source.json`` describes it, from ``Database.get_source``'s record."""
    body: dict[str, Any] = {"id": record["id"], "format": record["format"]}
    for key in ("label", "description"):
        if record[key] is not None:
            body[key] = record[key]
    body["tags"] = record["tags"]
    for key in ("created", "updated", "created_by", "updated_by"):
        if record[key] is not None:
            body[key] = record[key]
    if record.get("source_collection"):
        body["source_collection"] = record["source_collection"]
    if record.get("collected_by"):
        body["collected_by"] = record["collected_by"]
    return body


def segment_body(
    store: MediaUrls,
    row: dict[str, Any],
    filters: UrlFilter,
    include_object_timerange: bool,
) -> dict[str, Any]:
    """A segment as ``flow-segment.json`` describes it, from a ``Database.list_segments`` row."""
    body: dict[str, Any] = {
        "object_id": row["object_id"],
        "timerange": row["timerange"],
        "ts_offset": row["ts_offset"],
    }
    if row["last_duration"] is not None:
        body["last_duration"] = row["last_duration"]
    if row["sample_offset"] is not None:
        body["sample_offset"] = row["sample_offset"]
    if row["sample_count"] is not None:
        body["sample_count"] = row["sample_count"]
    if row["key_frame_count"] is not None:
        body["key_frame_count"] = row["key_frame_count"]
    if include_object_timerange and row["object_timerange"] is not None:
        body["object_timerange"] = row["object_timerange"]
    add_get_urls(body, store, row["object_id"], bool(row["controlled"]), row["content_type"], row["urls"], filters)
    if row["init_object_id"]:
        init: dict[str, Any] = {"object_id": row["init_object_id"]}
        add_get_urls(init, store, row["init_object_id"], bool(row["init_controlled"]), row["init_content_type"], row["init_urls"], filters)
        body["init_object"] = init
    return body

"""Ingest an HLS playlist of MPEG-TS or fMP4 segments into a TAMS store: exact, concurrent, resumable.

For each segment of the playlist (a local file or an http(s) URL; a master playlist picks its
highest-bandwidth variant unless ``--variant`` says otherwise) this script:

1. reads the segment and demuxes it, without decoding, to find the exact presentation timing of
   each essence (``media.read_timing``): the segment ``timerange`` runs from the first sample's
   timestamp to the next segment's first timestamp when the two are contiguous, else to the last
   sample plus its duration (end exclusive, AppNote 0012); ``object_timerange``, ``ts_offset``
   (which carries MPEG-TS 33-bit wraps), ``last_duration`` and ``key_frame_count`` come with it;
2. uploads the media object to storage allocated in batches as needed (at most one batch is
   held ahead of use, so no upload URL waits long enough to expire), and registers the segment
   only after its upload succeeded (segments whose uploads finish together share one POST).

Up to ``--concurrency`` segments are uploaded at once while the next ones are read ahead, so at
most about twice that many segments are held in memory. Segments whose start the Flow already
has are skipped, so re-running with the same ``--flow-id`` completes an interrupted ingest.
Segments are picked by media sequence number; a run that resumes a Flow carries on its timeline
(33-bit pts wraps and new timestamp bases included, ``hls_live.Timeline``). With ``--follow`` a
live playlist is reloaded until ``EXT-X-ENDLIST`` or SIGINT/SIGTERM (``hls_live.follow``).

fMP4 (CMAF) playlists give their segments an ``EXT-X-MAP`` init section. It is uploaded once as
the Flow's init object (the Flow's container is ``video/mp4`` and its ``init_segments`` true), every
segment names it as ``init_object_id``, and each fragment's timing is read with it (``tfdt``/``trun``).
A fragment carrying both video and audio is refused: CMAF gives each track its own rendition.

Flow properties come from the media (``media.probe``): codec, container, exact frame rate,
picture size, interlace, chroma subsampling, bit depth, and at the end of the run the segment bit
rates (AppNote 0013). When the segments also carry audio (and ``--video-only`` is not given),
each segment is split by remuxing into a video object and an audio object for a video Flow and
an audio Flow, and a multi-essence Flow (with its own Source) collects both. Audio and multi
Flow and Source ids default to ids derived from ``--flow-id``, so a re-run finds them again.
Audio-only media is one audio Flow. A master playlist whose variant plays with an
``EXT-X-MEDIA TYPE=AUDIO`` rendition gives the same three Flows, the video and the audio each
ingested from its own media playlist at the same time. ``EXT-X-BYTERANGE`` entries are read as
just their bytes (``hls_forms``).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import concurrent.futures
import contextlib
import datetime
import json
import logging
import statistics
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit
from urllib.request import url2pathname

import aiohttp
import m3u8  # type: ignore[import-untyped]
from mediatimestamp.immutable import TimeRange, Timestamp

import hls_forms
import hls_live
import media
from client import (
    NotFound,
    RetryPolicy,
    TAMSClient,
    TAMSError,
    TAMSResponseError,
    UploadTarget,
)
from credentials import HelpFormatter, add_credential_args, connection_from_args, interruption, print_result, run_async

__all__ = ["IngestError", "IngestOptions", "IngestResult", "ingest", "load_playlist", "main", "run"]

logger = logging.getLogger("ingest_hls")  # the command's name, in its log lines

DEFAULT_PLAYLIST = "sample_content/hls_output.m3u8"
_FETCH_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=10, sock_read=60)


class IngestError(Exception):
    """The ingest cannot go on; ``str()`` is the one line to show."""


@dataclass
class IngestOptions:
    hls: str = DEFAULT_PLAYLIST
    start_segment: int = 0
    segment_count: int | None = None  # None: to the end of the playlist
    flow_id: str | None = None
    source_id: str | None = None
    audio_flow_id: str | None = None
    audio_source_id: str | None = None
    multi_flow_id: str | None = None
    multi_source_id: str | None = None
    flow_params: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    description: str | None = None
    normalise: bool = False
    concurrency: int = 8
    storage_batch: int | None = None  # upload targets per storage request (None: from concurrency)
    variant: str | None = None
    video_only: bool = False
    audio_only: bool = False  # one audio Flow even if the segments carry video (an audio rendition's)
    progress: bool = False
    follow: bool = False  # reload a live playlist until EXT-X-ENDLIST or a stop signal
    reload_attempts: int = 6  # failed reloads in a row before giving up
    stop: asyncio.Event | None = None  # set to stop following (finish what was read)
    created_flows: frozenset[str] = frozenset()  # made by the caller just now (a rendition's): nothing to ask


@dataclass
class IngestResult:
    flow_ids: dict[str, str]  # "video", and with audio also "audio" and "multi"
    source_ids: dict[str, str]
    registered: int = 0  # segments (of the playlist) registered by this run
    skipped: int = 0  # segments the Flow(s) already had
    bytes: int = 0  # bytes uploaded
    seconds: float = 0.0
    gaps: int = 0  # segments that left a followed playlist before they could be read
    left: int = 0  # segments of the playlist after the last one this run took (a part asked for)
    next_sequence: int = 0  # the media sequence of the first one left
    timeranges: dict[str, list[TimeRange]] = field(default_factory=dict)  # per essence, window order
    by_rendition: dict[str, int] = field(default_factory=dict)  # registered per playlist, with renditions

    def summary(self) -> str:
        megabytes = self.bytes / 1e6
        rate = megabytes / self.seconds if self.seconds > 0 else 0.0
        flows = ", ".join(f"{kind} {fid}" for kind, fid in self.flow_ids.items())
        gaps = f", {self.gaps} missed (gone from the playlist)" if self.gaps else ""
        left = (f"; {self.left} segments of the playlist left (--hls-start-segment {self.next_sequence} goes on)"
                if self.left else "")
        counted = " + ".join(f"{n} {kind}" for kind, n in self.by_rendition.items()) if self.by_rendition else ""
        return (
            f"ingested {self.registered} segments{f' ({counted})' if counted else ''} "
            f"({self.skipped} already present{gaps}) into {flows}: "
            f"{megabytes:.2f} MB in {self.seconds:.2f} s, {rate:.2f} MB/s{left}"
        )


# --------------------------------------------------------------------------------------------
# Playlists and segment bytes


@dataclass(frozen=True)
class InitSection:
    """An ``EXT-X-MAP``: the fMP4 initialization segment that media segments after it need."""

    uri: str  # absolute URL or local path
    byterange: tuple[int, int] | None = None  # (offset, length) within the resource; None: all of it

    @property
    def shown(self) -> str:
        """The URI for messages and logs: no query (a packager's signed URL keeps its signature)."""
        return hls_forms.shown(self.uri)


@dataclass(frozen=True)
class SegmentRef:
    index: int  # position in the media playlist
    uri: str  # absolute URL or local path
    duration: Fraction  # EXTINF, as written
    sequence: int = 0  # media sequence number (EXT-X-MEDIA-SEQUENCE + position)
    discontinuity: bool = False  # EXT-X-DISCONTINUITY before it
    program_date_time: datetime.datetime | None = None  # EXT-X-PROGRAM-DATE-TIME, carried forward
    init: InitSection | None = None  # EXT-X-MAP in force: the segment is an fMP4 fragment
    byterange: tuple[int, int] | None = None  # EXT-X-BYTERANGE as (offset, length): only these bytes of uri

    @property
    def shown(self) -> str:
        """The URI for messages and logs: no query (a packager's signed URL keeps its signature)."""
        return hls_forms.shown(self.uri)


@dataclass(frozen=True)
class Playlist:
    location: str
    name: str
    segments: list[SegmentRef]
    target_duration: Fraction | None  # EXT-X-TARGETDURATION (an upper bound)
    segment_duration: Fraction | None  # the median EXTINF: what the segmenter aimed at
    media_sequence: int = 0  # EXT-X-MEDIA-SEQUENCE: the first segment's
    ended: bool = True  # EXT-X-ENDLIST (or a VOD playlist type): no more segments will come


def _is_url(location: str) -> bool:
    return urlsplit(location).scheme in ("http", "https")


def _resolve(base: str, uri: str) -> str:
    if _is_url(uri):
        return uri
    if urlsplit(uri).scheme == "file":
        return url2pathname(urlsplit(uri).path)
    if _is_url(base):
        return urljoin(base, uri)
    return str(Path(base).parent / uri)


async def _read_text(location: str, session: aiohttp.ClientSession | None) -> str:
    if _is_url(location):
        assert session is not None
        data = await _fetch_url(location, session)
        return data.decode("utf-8", errors="replace")
    path = Path(location)
    if not path.is_file():
        raise IngestError(f"no such playlist: {location}")
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise IngestError(f"cannot read {location}: {exc.strerror}") from exc


async def _fetch_url(url: str, session: aiohttp.ClientSession, byterange: tuple[int, int] | None = None) -> bytes:
    shown = url.split("?", 1)[0]
    headers = {}
    if byterange is not None:
        headers["Range"] = f"bytes={byterange[0]}-{byterange[0] + byterange[1] - 1}"
    try:
        async with session.get(url, headers=headers) as response:
            if byterange is not None and response.status == 416:
                return b""  # the range starts past the end: reported by read_range
            if response.status == 200 and byterange is not None:  # a server that ignores Range
                return (await response.read())[byterange[0]:byterange[0] + byterange[1]]
            if response.status not in (200, 206):
                raise IngestError(f"GET {shown}: HTTP {response.status}")
            return await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise IngestError(f"cannot fetch {shown}: {exc or type(exc).__name__}") from exc


def _choose_variant(master: m3u8.M3U8, variant: str | None, location: str) -> Any:
    """The m3u8 variant to ingest: ``variant`` (an index or part of its URI), else the video
    variant with the highest bandwidth."""
    variants = list(master.playlists)
    if variant is None:
        chosen = max(hls_forms.video_variants(master), key=lambda p: p.stream_info.bandwidth or 0)
    elif variant.isdigit() and int(variant) < len(variants):
        chosen = variants[int(variant)]
    else:
        matches = [p for p in variants if variant in (p.uri or "")]
        if not matches:
            raise IngestError(f"no variant of {location} matches {variant!r}")
        chosen = matches[0]
    logger.info("variant %s (bandwidth %s)", chosen.uri, chosen.stream_info.bandwidth)
    return chosen


async def load_playlist(location: str, *, variant: str | None = None,
                        session: aiohttp.ClientSession | None = None) -> Playlist:
    """The media playlist at ``location`` (following a master playlist to one variant)."""
    for _ in range(2):
        text = await _read_text(location, session)
        if not text.lstrip("\ufeff").startswith("#EXTM3U"):
            raise IngestError(f"{location} is not an HLS playlist (no #EXTM3U header)")
        try:
            parsed = m3u8.loads(text)
        except Exception as exc:  # m3u8 raises assorted errors on malformed input
            raise IngestError(f"{location} is not a valid HLS playlist: {exc}") from exc
        if parsed.is_variant:
            location = _resolve(location, _choose_variant(parsed, variant, location).uri)
            continue
        sequence = parsed.media_sequence or 0
        uris = [_resolve(location, seg.uri) for seg in parsed.segments]
        try:
            ranges = hls_forms.byteranges(parsed.segments, uris)
        except hls_forms.FormError as exc:
            raise IngestError(f"{location}: {exc}") from exc
        segments = [
            SegmentRef(i, uris[i], Fraction(str(seg.duration or 0)), sequence + i,
                       bool(seg.discontinuity), seg.current_program_date_time,
                       init=_init_section(location, seg.init_section), byterange=ranges[i])
            for i, seg in enumerate(parsed.segments)
        ]
        if not segments:
            raise IngestError(f"{location} lists no segments")
        target = Fraction(parsed.target_duration) if parsed.target_duration else None
        name = Path(urlsplit(location).path).stem or "hls"
        durations = [ref.duration for ref in segments if ref.duration > 0]
        typical = Fraction(statistics.median(durations)).limit_denominator(1000) if durations else None
        ended = bool(parsed.is_endlist) or (parsed.playlist_type or "").upper() == "VOD"
        return Playlist(location=location, name=name, segments=segments, target_duration=target,
                        segment_duration=typical, media_sequence=sequence, ended=ended)
    raise IngestError(f"{location}: a master playlist points at another master playlist")


def _init_section(location: str, section: Any) -> InitSection | None:
    if section is None:
        return None
    if not section.uri:
        raise IngestError(f"{location}: an EXT-X-MAP has no URI")
    byterange = None
    if section.byterange:
        length, _, offset = str(section.byterange).partition("@")
        try:
            byterange = (int(offset or 0), int(length))
        except ValueError:
            raise IngestError(f"{location}: EXT-X-MAP BYTERANGE {section.byterange!r} is not length[@offset]") from None
    return InitSection(_resolve(location, section.uri), byterange)


async def read_range(uri: str, byterange: tuple[int, int] | None, session: aiohttp.ClientSession | None,
                     what: str = "segment") -> bytes:
    """The bytes of ``uri`` (a URL or a local path), or just ``byterange`` = (offset, length) of them.

    A range that runs past the end of the resource is an error naming it, never a short read.
    """
    if not _is_url(uri):
        return await asyncio.to_thread(_read_local, uri, byterange, what)
    assert session is not None
    data = await _fetch_url(uri, session, byterange)
    if byterange is not None:
        _check_length(uri, byterange, data, what)
    return data


def _read_local(path: str, byterange: tuple[int, int] | None, what: str = "segment") -> bytes:
    """``read_range`` of a local file, in the calling thread."""
    try:
        if byterange is None:
            return Path(path).read_bytes()
        with open(path, "rb") as file:
            file.seek(byterange[0])
            data = file.read(byterange[1])
    except OSError as exc:
        raise IngestError(f"cannot read {what} {hls_forms.shown(path)}: {exc.strerror or exc}") from exc
    _check_length(path, byterange, data, what)
    return data


def _check_length(uri: str, byterange: tuple[int, int], data: bytes, what: str) -> None:
    offset, length = byterange
    if len(data) != length:
        raise IngestError(f"{what} {hls_forms.shown(uri)}: byte range {length}@{offset} runs past the end of the resource "
                          f"({offset + len(data)} bytes)")


async def _segment_bytes(ref: SegmentRef, session: aiohttp.ClientSession | None) -> bytes:
    return await read_range(ref.uri, ref.byterange, session)


# --------------------------------------------------------------------------------------------
# Flows


def _derived_id(base: str, role: str) -> str:
    return str(uuid.uuid5(uuid.UUID(base), role))


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _differences(wanted: dict[str, Any], existing: dict[str, Any], prefix: str = "") -> list[str]:
    """Where ``existing`` disagrees with ``wanted`` (keys only ``wanted`` has count as different)."""
    found = []
    for key, value in wanted.items():
        have = existing.get(key)
        if isinstance(value, dict) and isinstance(have, dict):
            found += _differences(value, have, f"{prefix}{key}.")
        elif have != value:
            found.append(f"{prefix}{key} is {json.dumps(have)}, the media has {json.dumps(value)}")
    return found


_COMPARED = ("format", "codec", "container", "essence_parameters")


@dataclass
class _FlowPlan:
    kind: str
    flow_id: str
    body: dict[str, Any]
    exists: bool = False
    source_id_given: bool = False


async def _stored_flow(client: TAMSClient, flow_id: str) -> dict | None:
    try:
        return await client.get_flow(flow_id)
    except NotFound:
        return None


def _fresh_ids(options: IngestOptions, plans: list[_FlowPlan]) -> set[str]:
    """The Flow ids this run made up (a new uuid, and the ids derived from it): no store has them,
    so there is nothing to ask about them."""
    if options.flow_id:
        return set()
    return {plan.flow_id for plan in plans} - {options.audio_flow_id, options.multi_flow_id}


async def _check_flow(client: TAMSClient, plan: _FlowPlan,
                      looked_up: dict[str, asyncio.Task[dict | None]] | None = None) -> None:
    """Mark ``plan`` as existing if the store has the Flow, or raise if it differs; ``looked_up``
    holds the store's answers for Flows asked for early, by id."""
    early = (looked_up or {}).get(plan.flow_id)
    existing = await (early if early is not None else _stored_flow(client, plan.flow_id))
    if existing is None:
        return
    compared = {k: plan.body[k] for k in _COMPARED if k in plan.body}
    if plan.source_id_given:
        compared["source_id"] = plan.body["source_id"]
    problems = _differences(compared, existing)
    if plan.kind == "multi":
        have = {item.get("id") for item in existing.get("flow_collection") or []}
        wanted = {item["id"] for item in plan.body.get("flow_collection", [])}
        if not wanted <= have:
            problems.append("flow_collection does not hold this ingest's video and audio Flows")
    if problems:
        raise IngestError(f"flow {plan.flow_id} already exists with different properties: {problems[0]}")
    plan.exists = True
    plan.body["source_id"] = existing.get("source_id", plan.body["source_id"])
    logger.info("%s flow %s exists with the same properties; resuming", plan.kind, plan.flow_id)


def _plan_flows(options: IngestOptions, props: media.MediaProperties, playlist: Playlist,
                init_segments: bool = False) -> list[_FlowPlan]:
    if init_segments and props.video is not None and props.audio is not None:
        raise IngestError(f"{playlist.segments[options.start_segment].shown}: fMP4 segments that carry video and audio "
                          "together are not supported; CMAF packagers give each its own rendition (EXT-X-MEDIA)")
    flow_id = options.flow_id or str(uuid.uuid4())
    label = options.label or playlist.name
    description = options.description or f"Ingested from {Path(urlsplit(playlist.location).path).name}"
    segment_duration = playlist.segment_duration
    with_audio = props.audio is not None and not options.video_only

    def technical(fields: dict[str, Any], kind: str, fid: str, sid: str, suffix: str) -> dict[str, Any]:
        if init_segments:  # every object of the Flow needs its init object to be decoded
            fields = {**fields, "essence_parameters": {**fields.get("essence_parameters", {}), "init_segments": True}}
        body = {
            "id": fid,
            "source_id": sid,
            **fields,
            "container": props.container,
            "label": label + suffix,
            "description": description,
        }
        if segment_duration is not None:
            body["segment_duration"] = {
                "numerator": segment_duration.numerator,
                "denominator": segment_duration.denominator,
            }
        return body

    if props.audio is not None and (props.video is None or options.audio_only):
        # audio alone: one audio Flow, with the ids a video Flow would have had
        source = options.source_id or _derived_id(flow_id, "source")
        body = technical(props.audio.flow_fields(), "audio", flow_id, source, "")
        return [_FlowPlan("audio", flow_id, _merge(body, options.flow_params), source_id_given=bool(options.source_id))]
    if props.video is None:
        raise IngestError(f"{playlist.segments[0].shown} has no video or audio stream")
    video_source = options.source_id or _derived_id(flow_id, "source")
    video_body = technical(props.video.flow_fields(), "video", flow_id, video_source, " (video)" if with_audio else "")
    plans = [_FlowPlan("video", flow_id, _merge(video_body, options.flow_params), source_id_given=bool(options.source_id))]
    if with_audio:
        assert props.audio is not None
        audio_id = options.audio_flow_id or _derived_id(flow_id, "audio")
        audio_source = options.audio_source_id or _derived_id(audio_id, "source")
        multi_id = options.multi_flow_id or _derived_id(flow_id, "multi")
        multi_source = options.multi_source_id or _derived_id(multi_id, "source")
        plans.append(_FlowPlan(
            "audio", audio_id, technical(props.audio.flow_fields(), "audio", audio_id, audio_source, " (audio)"),
            source_id_given=bool(options.audio_source_id),
        ))
        plans.append(_FlowPlan(
            "multi",
            multi_id,
            {
                "id": multi_id,
                "source_id": multi_source,
                "format": "urn:x-nmos:format:multi",
                "label": label,
                "description": description,
                "flow_collection": [{"id": flow_id, "role": "video"}, {"id": audio_id, "role": "audio"}],
            },
            source_id_given=bool(options.multi_source_id),
        ))
    return plans


# --------------------------------------------------------------------------------------------
# Segments


@dataclass
class _Prepared:
    ref: SegmentRef
    timing: media.MediaTiming
    objects: dict[str, bytes]  # per essence kind: the bytes to upload


@dataclass
class _Registration:
    kind: str
    segment: dict[str, Any]
    timerange: TimeRange
    data: bytes  # emptied once uploaded
    size: int
    init: InitSection | None = None  # its fMP4 init section, uploaded once per Flow


def _boxes(data: bytes) -> list[bytes]:
    """The types of the top-level ISO BMFF boxes at the start of ``data`` (up to the first bad size)."""
    types: list[bytes] = []
    at = 0
    while at + 8 <= len(data) and len(types) < 16:
        size = int.from_bytes(data[at:at + 4], "big")
        types.append(data[at + 4:at + 8])
        if size == 1 and at + 16 <= len(data):
            size = int.from_bytes(data[at + 8:at + 16], "big")
        if size < 8:
            break
        at += size
    return types


_FRAGMENT_BOXES = {b"styp", b"sidx", b"moof", b"emsg", b"prft"}


class _InitObjects:
    """The fMP4 init sections of a playlist: each read once, and uploaded once per Flow when a
    segment that needs it is first registered (every segment then names it as ``init_object_id``)."""

    def __init__(self, client: TAMSClient, session: aiohttp.ClientSession | None) -> None:
        self._client = client
        self._session = session
        self._data: dict[InitSection, asyncio.Task[bytes]] = {}
        self._objects: dict[tuple[str, InitSection], asyncio.Task[str]] = {}

    async def data(self, section: InitSection) -> bytes:
        task = self._data.get(section)
        if task is None:
            task = self._data[section] = asyncio.create_task(self._read(section))
        return await asyncio.shield(task)

    async def _read(self, section: InitSection) -> bytes:
        data = await read_range(section.uri, section.byterange, self._session, "init segment")
        if b"moov" not in _boxes(data):
            raise IngestError(f"init segment {section.shown} is not an MP4 initialization segment (no moov box)")
        return data

    async def object_id(self, kind: str, section: InitSection, targets: _Targets) -> str:
        task = self._objects.get((kind, section))
        if task is None:
            task = self._objects[kind, section] = asyncio.create_task(self._upload(section, targets))
        return await asyncio.shield(task)

    async def _upload(self, section: InitSection, targets: _Targets) -> str:
        data = await self.data(section)
        target = await targets.next()
        await self._client.upload_object(target, data)
        logger.info("uploaded init segment %s as object %s", section.shown, target.object_id)
        return target.object_id

    async def close(self) -> None:
        tasks = [*self._data.values(), *self._objects.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _ExistingSegments:
    """The timeranges a Flow already has, for the resume check."""

    def __init__(self, timeranges: list[TimeRange]) -> None:
        spans = sorted((tr.start.to_nanosec(), tr.end.to_nanosec()) for tr in timeranges if tr.start and tr.end)
        self.starts = [s for s, _ in spans]
        self.ends = [e for _, e in spans]

    def __len__(self) -> int:
        return len(self.starts)

    def holds(self, timerange: TimeRange) -> bool:
        """True if a segment starting where this one starts is there; IngestError if one overlaps it."""
        assert timerange.start is not None and timerange.end is not None
        start, end = timerange.start.to_nanosec(), timerange.end.to_nanosec()
        i = bisect.bisect_left(self.starts, start)
        if i < len(self.starts) and self.starts[i] == start:
            return True
        before_ok = i == 0 or self.ends[i - 1] <= start
        after_ok = i == len(self.starts) or self.starts[i] >= end
        if not (before_ok and after_ok):
            raise IngestError(f"segment {timerange!s} overlaps a segment the flow already has")
        return False


async def _existing(client: TAMSClient, flow_id: str, timeline: hls_live.Timeline, kind: str) -> _ExistingSegments:
    listed = [seg async for seg in client.segments(flow_id, include_object_timerange=False)]
    timeline.know(kind, listed)  # a resumed run carries on the Flow's own timeline
    return _ExistingSegments([TimeRange.from_str(seg["timerange"]) for seg in listed])


class _Targets:
    """Upload targets for one Flow, shared by the upload tasks.

    A background task asks the store for ``batch`` at a time, from ``start()`` on. It hands
    targets on through a queue of half a batch, so the next batch is asked for while half of the
    current one is still to be used: uploads wait for an allocation only at the start, at most
    one batch and a half are held ahead of use, and no URL waits long enough to expire.
    """

    def __init__(self, client: TAMSClient, flow_id: str, batch: int, content_type: str) -> None:
        self._source = client.allocate_storage(flow_id, batch=batch, content_type=content_type)
        self._queue: asyncio.Queue[UploadTarget] = asyncio.Queue(maxsize=max(1, batch // 2))
        self._filler: asyncio.Task[None] | None = None

    async def _fill(self) -> None:
        async for target in self._source:
            await self._queue.put(target)

    def start(self) -> None:
        """Ask for the first batch now, before any upload needs it."""
        if self._filler is None:
            self._filler = asyncio.create_task(self._fill())

    async def next(self) -> UploadTarget:
        self.start()
        assert self._filler is not None
        if not self._queue.empty():
            return self._queue.get_nowait()
        getter = asyncio.create_task(self._queue.get())
        await asyncio.wait({getter, self._filler}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        self._filler.result()  # the allocation failed: raise why
        raise IngestError("the store stopped allocating storage")

    async def close(self) -> None:
        if self._filler is not None:
            self._filler.cancel()
            await asyncio.gather(self._filler, return_exceptions=True)
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()


class _Registrar:
    """Registers uploaded segments of one Flow, several per POST when they arrive together:
    while one POST is out, the segments whose uploads finish meanwhile wait for the next, and a
    POST with fewer than ``GATHER`` waits up to ``GATHER_SECONDS`` for more (each POST costs the
    store a transaction and an fsync, about a millisecond, whatever it holds). ``submit`` queues
    one and returns at once with a future of its registration, so an upload slot is free again
    while the store registers it. Once the last has been submitted (``last_submitted``), those
    still queued go out at once, beside the POSTs already out."""

    MAX_BATCH = 32
    IN_FLIGHT = 2  # POSTs out at once (one more for the last registrations)
    GATHER = 8
    GATHER_SECONDS = 0.05  # a live segment is registered at most this much later

    def __init__(self, client: TAMSClient, flow_id: str, kind: str) -> None:
        self._client = client
        self._flow_id = flow_id
        self._kind = kind
        self._queue: asyncio.Queue[tuple[_Registration, asyncio.Future[None]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._posts: set[asyncio.Task[None]] = set()
        self._free = asyncio.Semaphore(self.IN_FLIGHT)
        self._last = asyncio.Event()

    def last_submitted(self) -> None:
        """No more will be submitted: the queued ones need not wait for a POST to come back."""
        self._last.set()
        self._free.release()

    def submit(self, reg: _Registration) -> asyncio.Future[None]:
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((reg, done))
        return done

    async def _run(self) -> None:
        while True:
            await self._free.acquire()
            batch = [await self._queue.get()]
            try:
                await self._gather(batch)
            except asyncio.CancelledError:  # closed: these were never sent
                for _, done in batch:
                    done.cancel()
                raise
            post = asyncio.create_task(self._post(batch))
            self._posts.add(post)
            post.add_done_callback(self._done)

    async def _gather(self, batch: list[tuple[_Registration, asyncio.Future[None]]]) -> None:
        """Add the queued registrations to ``batch``, waiting a little for more while it is small."""
        deadline = asyncio.get_running_loop().time() + self.GATHER_SECONDS
        while len(batch) < self.MAX_BATCH:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            wait = deadline - asyncio.get_running_loop().time()
            if len(batch) >= self.GATHER or self._last.is_set() or wait <= 0:
                return
            more = asyncio.ensure_future(self._queue.get())
            last = asyncio.ensure_future(self._last.wait())
            try:
                await asyncio.wait({more, last}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when cancelled: one taken off the queue is in the batch, not lost
                last.cancel()
                if more.done() and not more.cancelled():
                    batch.append(more.result())
                else:
                    more.cancel()

    def _done(self, post: asyncio.Task[None]) -> None:
        self._posts.discard(post)
        self._free.release()

    async def _post(self, batch: list[tuple[_Registration, asyncio.Future[None]]]) -> None:
        try:
            failed = await self._client.post_segments(self._flow_id, [reg.segment for reg, _ in batch])
        except BaseException as exc:
            for _, done in batch:
                if done.done():
                    continue
                if isinstance(exc, Exception):
                    done.set_exception(exc)
                else:  # cancelled: so are the registrations (no exception left for nobody to read)
                    done.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        refused = {str(entry.get("object_id")): entry for entry in failed}
        for reg, done in batch:
            entry = refused.get(str(reg.segment["object_id"]))
            if done.done():  # its upload task was cancelled meanwhile
                continue
            if entry is None:
                done.set_result(None)
                continue
            error = entry.get("error") or {}
            summary = error.get("summary") if isinstance(error, dict) else error
            done.set_exception(IngestError(f"the store refused {self._kind} segment {reg.timerange!s}: {summary}"))

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._posts) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while not self._queue.empty():  # submitted, never sent: nobody is left to wait on them
            self._queue.get_nowait()[1].cancel()


def _check_form(ref: SegmentRef, data: bytes) -> None:
    """An fMP4 fragment where the playlist gives an init section, and only there."""
    fragment = bool(_FRAGMENT_BOXES & set(_boxes(data)[:2]))
    if ref.init is not None and not fragment:
        raise IngestError(f"segment {ref.shown} is not an fMP4 fragment, though the playlist gives it "
                          f"an init section (EXT-X-MAP {ref.init.shown})")
    if ref.init is None and fragment:
        raise IngestError(f"segment {ref.shown} is an fMP4 fragment, but the playlist gives it no init section (EXT-X-MAP)")


def _prepare_sync(ref: SegmentRef, data: bytes | None, kinds: tuple[str, ...], split: bool,
                  init: bytes | None = None, frame_rate: Fraction | None = None) -> _Prepared:
    """A segment's timing and objects; ``data`` None: read it here (a local file)."""
    if data is None:
        data = _read_local(ref.uri, ref.byterange)
    _check_form(ref, data)
    # A fragment's timing (tfdt, trun) needs its init segment's track timescales to be read.
    # The Flow's frame rate (from its first segment) spares each segment a probe of its own.
    timing = media.read_timing(data if init is None else init + data, kinds=kinds, name=ref.shown,
                               frame_rate=frame_rate)
    missing = [kind for kind in kinds if kind not in timing.streams]
    if missing:
        raise IngestError(f"segment {ref.shown} has no {missing[0]} stream")
    objects = media.split_essences(data, kinds, name=ref.shown) if split else {kinds[0]: data}
    return _Prepared(ref, timing, objects)


def _check_container(ref: SegmentRef, format_name: str, first: tuple[str, str] | None = None) -> None:
    try:
        hls_forms.check_container(ref.uri, format_name, first)
    except hls_forms.FormError as exc:
        where = f" (media sequence {ref.sequence}, byte range {hls_forms.describe(ref.byterange)})" if ref.byterange else ""
        raise IngestError(f"{exc}{where}") from exc


def _timeranges(
    stream: media.StreamTiming,
    offset: int,
    next_first: int | None,
    normalise_rate: Fraction | None,
) -> tuple[TimeRange, Timestamp, TimeRange, Timestamp]:
    """(timerange, ts_offset, object_timerange, last_duration) for one essence of one segment.

    ``offset`` is the wrap offset in ticks (a multiple of 2**33 for MPEG-TS); ``next_first`` the
    next segment's first pts on the same unwrapped timeline as ``stream.first + offset``.
    """
    end: Fraction = stream.end
    if next_first is not None:
        gap = next_first - offset - stream.end
        tolerance = (stream.nominal_duration or stream.last_duration) / 2
        if abs(gap) <= tolerance:
            end = Fraction(next_first - offset)  # contiguous: end where the next one starts
    timerange = stream.timerange(offset, end=end)
    if normalise_rate:
        timerange = timerange.normalise(normalise_rate.numerator, normalise_rate.denominator)
    assert timerange.start is not None and timerange.end is not None
    media_start = stream.timestamp(stream.first)
    ts_offset = timerange.start - media_start
    object_timerange = TimeRange(media_start, timerange.end - ts_offset, timerange.inclusivity)
    last_duration = timerange.end - stream.timestamp(stream.last + offset)
    return timerange, ts_offset, object_timerange, last_duration


# --------------------------------------------------------------------------------------------
# Audio renditions: a master playlist's EXT-X-MEDIA TYPE=AUDIO


async def _renditions(options: IngestOptions, session: aiohttp.ClientSession | None) -> tuple[str, str] | None:
    """The chosen video variant's media playlist and its audio rendition's, when ``options.hls`` is a
    master playlist whose variant plays with an ``EXT-X-MEDIA TYPE=AUDIO`` rendition of its own."""
    text = await _read_text(options.hls, session)
    if not text.lstrip("\ufeff").startswith("#EXTM3U"):
        return None  # load_playlist says what is wrong
    try:
        master = m3u8.loads(text)
    except Exception:  # m3u8 raises assorted errors on malformed input; load_playlist says which
        return None
    if not master.is_variant:
        return None
    variant = _choose_variant(master, options.variant, options.hls)
    audio = hls_forms.audio_rendition(master, variant)
    if audio is None:
        return None
    logger.info("audio rendition %s", audio)
    return _resolve(options.hls, variant.uri), _resolve(options.hls, audio)


async def _first_properties(playlist: Playlist, kind: str, master: str, session: aiohttp.ClientSession | None,
                            inits: _InitObjects) -> media.MediaProperties:
    ref = playlist.segments[0]
    data = await _segment_bytes(ref, session)
    _check_form(ref, data)
    init = await inits.data(ref.init) if ref.init is not None else b""
    try:
        props = await asyncio.to_thread(media.probe, init + data, name=ref.shown)
    except media.MediaError as exc:
        raise IngestError(str(exc)) from exc
    _check_container(ref, props.format_name)
    if getattr(props, kind) is None:
        raise IngestError(f"segment {ref.shown} of the {kind} playlist of {master} has no {kind} stream")
    return props


async def _all_or_none(*aws: Any) -> list[Any]:
    """Run ``aws`` concurrently; if one fails, cancel the others and raise its error."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _ingest_renditions(client: TAMSClient, options: IngestOptions, session: aiohttp.ClientSession | None,
                             inits: _InitObjects, started: float, video_uri: str, audio_uri: str) -> IngestResult:
    """A video variant and its audio rendition: a video Flow and an audio Flow, each ingested from its
    own media playlist (at the same time, each segment's timerange from its own media), collected
    by a multi-essence Flow as muxed audio is. All three Flows are checked and created before any
    segment is registered, once the first segment of each playlist says what it holds."""
    video_playlist, audio_playlist = await asyncio.gather(load_playlist(video_uri, session=session),
                                                          load_playlist(audio_uri, session=session))
    video_props, audio_props = await asyncio.gather(
        _first_properties(video_playlist, "video", options.hls, session, inits),
        _first_properties(audio_playlist, "audio", options.hls, session, inits))
    named = replace(video_playlist, location=options.hls, name=Path(urlsplit(options.hls).path).stem or "hls")
    plans = _plan_flows(options, replace(video_props, audio=audio_props.audio), named)
    video_plan, audio_plan, _ = plans
    audio_plan.body["container"] = audio_props.container
    for plan, media_playlist in ((video_plan, video_playlist), (audio_plan, audio_playlist)):
        if media_playlist.segments[0].init is not None:  # CMAF: each rendition's objects need its init object
            plan.body["essence_parameters"] = {**plan.body.get("essence_parameters", {}), "init_segments": True}
    audio_plan.body.pop("segment_duration", None)
    if audio_playlist.segment_duration is not None:
        duration = audio_playlist.segment_duration
        audio_plan.body["segment_duration"] = {"numerator": duration.numerator, "denominator": duration.denominator}
    for plan in plans:
        if plan.flow_id not in _fresh_ids(options, plans):
            await _check_flow(client, plan)
    for media_playlist in (video_playlist, audio_playlist):  # each checked before any Flow is created
        await _checked_window(media_playlist, options, hls_live.SegmentFeed(), session)
    for plan in plans:
        if not plan.exists:
            await client.put_flow(plan.flow_id, plan.body)
            logger.info("created %s flow %s (source %s)", plan.kind, plan.flow_id, plan.body["source_id"])
    # each its own playlist, and one Flow each: the ids of the others are decided here
    each: dict[str, Any] = {"variant": None, "audio_flow_id": None, "audio_source_id": None,
                            "multi_flow_id": None, "multi_source_id": None,
                            "created_flows": frozenset(plan.flow_id for plan in plans if not plan.exists)}
    video_options = replace(options, **each, hls=video_uri, video_only=True, flow_id=video_plan.flow_id,
                            source_id=video_plan.body["source_id"])
    audio_options = replace(options, **each, hls=audio_uri, audio_only=True, flow_id=audio_plan.flow_id,
                            source_id=audio_plan.body["source_id"], flow_params={})
    video, audio = await _all_or_none(_ingest(client, video_options, session, inits, started),
                                      _ingest(client, audio_options, session, inits, started))
    return IngestResult(
        flow_ids={plan.kind: plan.flow_id for plan in plans},
        source_ids={plan.kind: plan.body["source_id"] for plan in plans},
        registered=video.registered + audio.registered,
        skipped=video.skipped + audio.skipped,
        bytes=video.bytes + audio.bytes,
        seconds=time.perf_counter() - started,
        gaps=video.gaps + audio.gaps,
        left=video.left + audio.left,
        next_sequence=video.next_sequence,
        timeranges={**video.timeranges, **audio.timeranges},
        by_rendition={"video": video.registered, "audio": audio.registered},
    )


async def ingest(client: TAMSClient, options: IngestOptions) -> IngestResult:
    """Ingest ``options.hls`` into the store behind ``client``; see the module docstring."""
    started = time.perf_counter()
    # A local playlist may still name http(s) segments, so the session is there either way.
    session: aiohttp.ClientSession | None = aiohttp.ClientSession(timeout=_FETCH_TIMEOUT)
    inits = _InitObjects(client, session)
    try:
        renditions = None if options.video_only or options.audio_only else await _renditions(options, session)
        if renditions is not None:
            return await _ingest_renditions(client, options, session, inits, started, *renditions)
        return await _ingest(client, options, session, inits, started)
    except hls_live.LiveError as exc:
        raise IngestError(str(exc)) from exc
    finally:
        await inits.close()
        if session is not None:
            await session.close()


async def _checked_window(playlist: Playlist, options: IngestOptions, feed: hls_live.SegmentFeed,
                          session: aiohttp.ClientSession | None) -> list[SegmentRef]:
    """The segments to read first (queued on ``feed``), once their files are there and their
    byte ranges inside them: before anything is created in the store."""
    # Segments are picked by media sequence number (a live window slides under positions).
    if options.follow:
        window = [hls_live.first_to_read(playlist, options.start_segment)]
    else:
        window = hls_live.queue_window(playlist, feed, start=options.start_segment, count=options.segment_count)
    for ref in window:
        if not _is_url(ref.uri) and not Path(ref.uri).is_file():
            raise IngestError(f"no such segment file: {ref.shown}")
    try:
        await hls_forms.check_ranges(window, session)
    except hls_forms.FormError as exc:
        raise IngestError(str(exc)) from exc
    return window


async def _ingest(client: TAMSClient, options: IngestOptions, session: aiohttp.ClientSession | None,
                  inits: _InitObjects, started: float) -> IngestResult:
    if options.concurrency < 1:
        raise IngestError("--concurrency must be at least 1")
    if options.storage_batch is not None and options.storage_batch < 1:
        raise IngestError("--storage-batch must be at least 1")
    if options.segment_count is not None and options.segment_count < 1:
        raise IngestError("the segment count must be at least 1 (None: to the end of the playlist)")
    # The Flow named on the command line is looked up while the playlist and the first segment are
    # read and the segment is probed.
    looked_up = {fid: asyncio.create_task(_stored_flow(client, fid)) for fid in (options.flow_id,)
                 if fid and fid not in options.created_flows}
    try:
        loaded_at = asyncio.get_running_loop().time()
        playlist = await load_playlist(options.hls, variant=options.variant, session=session)
        feed = hls_live.SegmentFeed()
        window = await _checked_window(playlist, options, feed, session)
        first_data = await _segment_bytes(window[0], session)
        fragmented = window[0].init is not None  # fMP4: each object needs its init object (TAMS init_segments)
        _check_form(window[0], first_data)
        first_init = await inits.data(window[0].init) if window[0].init is not None else b""
        try:
            props = await asyncio.to_thread(media.probe, first_init + first_data, name=window[0].shown)
        except media.MediaError as exc:
            raise IngestError(str(exc)) from exc
        _check_container(window[0], props.format_name)
        plans = _plan_flows(options, props, playlist, fragmented)
        for plan in plans:
            if plan.flow_id in options.created_flows:
                plan.exists = True  # as the caller made it, with no segments yet
            elif plan.flow_id not in _fresh_ids(options, plans):
                await _check_flow(client, plan, looked_up)
    finally:
        for task in looked_up.values():
            task.cancel()
        await asyncio.gather(*looked_up.values(), return_exceptions=True)
    essences = [p for p in plans if p.kind != "multi"]
    kinds = tuple(p.kind for p in essences)
    split = len(kinds) > 1
    for plan in plans:
        if plan.exists:
            continue
        await client.put_flow(plan.flow_id, plan.body)
        logger.info("created %s flow %s (source %s)", plan.kind, plan.flow_id, plan.body["source_id"])
    flow_ids = {p.kind: p.flow_id for p in plans}
    result = IngestResult(flow_ids=flow_ids, source_ids={p.kind: p.body["source_id"] for p in plans},
                          timeranges={k: [] for k in kinds})
    if not options.follow:
        result.left = sum(1 for segment in playlist.segments if segment.sequence > window[-1].sequence)
        result.next_sequence = window[-1].sequence + 1
    for kind, fid in flow_ids.items():
        logger.info("%s flow id %s", kind, fid)

    batch = options.storage_batch or min(max(2 * options.concurrency, 8), 32)
    targets = {p.kind: _Targets(client, p.flow_id, batch, props.container) for p in essences}
    for target_source in targets.values():
        target_source.start()
    timeline = hls_live.Timeline()  # 33-bit wraps and timestamp bases
    # A Flow this run created has no segments yet: no need to list them.
    existing = {p.kind: await _existing(client, p.flow_id, timeline, p.kind)
                if p.exists and p.flow_id not in options.created_flows else _ExistingSegments([]) for p in essences}
    existing_counts = {kind: len(segs) for kind, segs in existing.items()}
    registrars = {p.kind: _Registrar(client, p.flow_id, p.kind) for p in essences}
    rates: dict[str, Fraction | None] = {"video": props.video.frame_rate if props.video else None}
    if props.audio is not None:
        rates["audio"] = Fraction(props.audio.sample_rate)
    sizes: dict[str, list[tuple[int, Fraction]]] = {k: [] for k in kinds}
    # The segment after the window (if any) is read too, only to end the last one exactly.
    follower: asyncio.Task[int] | None = None
    if options.follow:
        follower = asyncio.create_task(hls_live.follow(
            playlist, lambda: load_playlist(options.hls, variant=options.variant, session=session), (IngestError,),
            feed, start=options.start_segment, count=options.segment_count, reload_attempts=options.reload_attempts,
            stop=options.stop or asyncio.Event(), first_loaded_at=loaded_at,
        ))
    prepare_ahead = options.concurrency
    frame_rate = props.video.frame_rate if props.video is not None and "video" in kinds else None
    # One thread reads and times the segments, in playlist order: the first one is ready first,
    # rather than all those read ahead sharing the CPU (two cores serve this and the store).
    media_worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-media")
    pending: deque[tuple[hls_live.FeedEntry, asyncio.Task[_Prepared]]] = deque()
    uploads: set[asyncio.Task[None]] = set()
    bit_rates: asyncio.Task[None] | None = None
    slots = asyncio.Semaphore(options.concurrency)
    bar = _progress_bar(None if options.follow else len(window), options.progress)

    async def prepare(ref: SegmentRef) -> _Prepared:
        if (ref.init is not None) != fragmented:
            raise IngestError(f"segment {ref.shown} {'has no' if fragmented else 'has an'} EXT-X-MAP init section, "
                              f"unlike the Flow's first segment: a Flow's objects all have init objects or none")
        data: bytes | None = None  # a local file: read by the media worker, then timed
        if ref is window[0]:
            data = first_data
        elif _is_url(ref.uri):
            data = await _segment_bytes(ref, session)
        init = await inits.data(ref.init) if ref.init is not None else None
        try:
            prepared = await asyncio.get_running_loop().run_in_executor(
                media_worker, _prepare_sync, ref, data, kinds, split, init, frame_rate)
        except media.MediaError as exc:
            raise IngestError(str(exc)) from exc
        _check_container(ref, prepared.timing.format_name, (window[0].uri, props.format_name))
        return prepared

    async def upload(kind: str, reg: _Registration) -> asyncio.Future[None]:
        if reg.init is not None:
            reg.segment["init_object_id"] = await inits.object_id(kind, reg.init, targets[kind])
        target = await targets[kind].next()
        await client.upload_object(target, reg.data)
        reg.data = b""
        reg.segment["object_id"] = target.object_id
        return registrars[kind].submit(reg)

    latest: tuple[int, Timestamp | None] | None = None  # media sequence and Flow end of the latest registered

    async def upload_segment(regs: list[_Registration], ref: SegmentRef) -> None:
        # The slot (one segment's media held in memory) is free once the bytes are uploaded;
        # registering them, batched with others, goes on without it.
        nonlocal latest
        try:
            registrations = await asyncio.gather(*(upload(reg.kind, reg) for reg in regs))
        finally:
            slots.release()
        await asyncio.gather(*registrations)
        for reg in regs:
            logger.info("registered %s segment %s", reg.kind, reg.timerange)
        result.registered += 1
        result.bytes += sum(reg.size for reg in regs)
        bar.update(1)
        if options.follow:  # the live status line: uploads finish out of order, show the latest
            if latest is None or ref.sequence > latest[0]:
                latest = (ref.sequence, regs[0].timerange.end)
            bar.set_postfix_str(hls_live.status_line(result.registered, *latest))

    def top_up() -> None:
        while len(pending) < prepare_ahead + 1:
            entry = feed.ready()
            if entry is None:
                return
            pending.append((entry, asyncio.create_task(prepare(entry.ref))))

    async def next_prepared() -> tuple[hls_live.FeedEntry, _Prepared] | None:
        top_up()
        if not pending:
            entry = await feed.next()  # following: waits for the playlist to grow
            if entry is None:
                return None
            pending.append((entry, asyncio.create_task(prepare(entry.ref))))
        entry, task = pending.popleft()
        try:
            return entry, await task
        except IngestError:
            if entry.register:
                raise
            return None  # only the lookahead segment: end the last one by duration

    def reap() -> None:
        for task in [t for t in uploads if t.done()]:
            uploads.discard(task)
            task.result()  # re-raises the first failure

    try:
        with _logging_beside_the_bar() if options.progress else contextlib.nullcontext():
            entered = await next_prepared()
            while entered is not None and entered[0].register:
                current = entered[1]
                entered = await next_prepared()
                following = entered[1] if entered is not None else None
                regs: list[_Registration] = []
                placed = timeline.place({kind: current.timing.streams[kind] for kind in kinds}, current.ref)
                for kind in kinds:
                    stream = current.timing.streams[kind]
                    absolute = placed[kind]
                    offset = absolute - stream.first
                    next_first = None
                    if following is not None and kind in following.timing.streams:
                        next_first = media.unwrap_near(following.timing.streams[kind].first, stream.first) + offset
                    timerange, ts_offset, object_timerange, last_duration = _timeranges(
                        stream, offset, next_first, rates.get(kind) if options.normalise else None
                    )
                    result.timeranges[kind].append(timerange)
                    length = timerange.length
                    assert isinstance(length, Timestamp)
                    sizes[kind].append((len(current.objects[kind]), Fraction(length.to_nanosec(), 10**9)))
                    segment: dict[str, Any] = {
                        "timerange": str(timerange),
                        "ts_offset": str(ts_offset),
                        "object_timerange": str(object_timerange),
                        "last_duration": str(last_duration),
                    }
                    if kind == "video":
                        segment["key_frame_count"] = stream.key_frames
                    if existing[kind].holds(timerange):
                        continue
                    data = current.objects[kind]
                    regs.append(_Registration(kind, segment, timerange, data, len(data), current.ref.init))
                if not regs:
                    result.skipped += 1
                    bar.update(1)
                    logger.info("segment %d already present; skipped", current.ref.index)
                else:
                    await slots.acquire()
                    reap()
                    uploads.add(asyncio.create_task(upload_segment(regs, current.ref)))
            # Every segment is placed, so the bit rates are known. They are set while the last
            # registrations are out, once every object is stored (no upload holds a slot).
            for _ in range(options.concurrency):
                await slots.acquire()
            reap()
            for registrar in registrars.values():
                registrar.last_submitted()
            bit_rates = asyncio.create_task(_update_bit_rates(client, flow_ids, sizes, existing_counts, result, playlist))
            if uploads:
                await asyncio.gather(*uploads)
                reap()
            await bit_rates
            if follower is not None:
                result.gaps = await follower
    except BaseException:
        tasks: list[asyncio.Task[Any]] = [job for _, job in pending] + [*uploads]
        if follower is not None:
            tasks.append(follower)
        if bit_rates is not None:
            tasks.append(bit_rates)
        for job in tasks:
            job.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        media_worker.shutdown(wait=False, cancel_futures=True)
        bar.close()
        for target_source in targets.values():
            await target_source.close()
        for registrar in registrars.values():
            await registrar.close()

    result.seconds = time.perf_counter() - started
    return result


class _NoProgress:
    """The progress bar's calls, where none is shown."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int | None, shown: bool) -> Any:
    """A tqdm bar of segments (tqdm is imported only then: a quiet run's start-up needs none of it)."""
    if not shown:
        return _NoProgress()
    from tqdm import tqdm  # type: ignore[import-untyped]
    return tqdm(total=total, unit="seg", file=sys.stderr, leave=False)


def _logging_beside_the_bar() -> contextlib.AbstractContextManager[None]:
    """Log lines written above the progress bar rather than through it."""
    from tqdm.contrib.logging import logging_redirect_tqdm  # type: ignore[import-untyped]
    return logging_redirect_tqdm(loggers=[logging.getLogger()])


async def _flow_property(client: TAMSClient, flow_id: str, name: str) -> Any:
    try:
        return await client.get_flow_property(flow_id, name)
    except NotFound:
        return None


_SERVER_MANAGED = ("created", "metadata_updated", "segments_updated", "collected_by", "timerange",
                   "created_by", "updated_by")


async def _set_flow_properties(client: TAMSClient, flow_id: str, values: dict[str, Any]) -> None:
    """Set Flow properties through their own paths (all at once), or by a whole-Flow PUT where a
    store lacks them."""
    try:
        await asyncio.gather(*(client.put_flow_property(flow_id, name, value) for name, value in values.items()))
        return
    except TAMSResponseError as exc:
        if exc.status not in (404, 405):
            raise
        logger.debug("the store has no /flows/{id}/%s paths (%s); replacing the flow instead", "|".join(values), exc.status)
    flow = await client.get_flow(flow_id)
    for key in _SERVER_MANAGED:
        flow.pop(key, None)
    flow.update(values)
    await client.put_flow(flow_id, flow)


async def _update_bit_rates(client: TAMSClient, flow_ids: dict[str, str], sizes: dict[str, list[tuple[int, Fraction]]],
                            existing_counts: dict[str, int], result: IngestResult, playlist: Playlist) -> None:
    """Set avg/max_bit_rate from this run's segments (exact when the run covers the whole Flow)."""
    for kind, measured in sizes.items():
        if not measured:
            continue
        target = playlist.segment_duration or Fraction(statistics.median(seconds for _, seconds in measured))
        computed_average, peak = media.segment_bit_rates(measured, target)
        average: int | None = computed_average
        flow_id = flow_ids[kind]
        if existing_counts[kind] != result.skipped:
            # The Flow holds segments this run did not read: never lower its peak, and keep an
            # average that was worked out over them.
            current_max = await _flow_property(client, flow_id, "max_bit_rate")
            if isinstance(current_max, int):
                peak = max(peak, current_max)
            if await _flow_property(client, flow_id, "avg_bit_rate") is not None:
                average = None
        values = {"max_bit_rate": peak} if average is None else {"avg_bit_rate": average, "max_bit_rate": peak}
        await _set_flow_properties(client, flow_id, values)
        logger.info("%s flow %s: avg_bit_rate %s, max_bit_rate %s kbit/s", kind, flow_id, average, peak)


# --------------------------------------------------------------------------------------------
# Command line


def _non_negative_int(text: str) -> int:
    """An argparse type: a whole number, zero or more."""
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _positive_int(text: str) -> int:
    """An argparse type: a whole number, one or more."""
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not at least 1")
    return value


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Ingest an HLS playlist (MPEG-TS or fMP4/CMAF segments, byte ranges, audio renditions, "
        "live with --follow) into a TAMS store.",
        formatter_class=HelpFormatter,
    )
    add_credential_args(parser)
    parser.add_argument("--hls-filename", default=DEFAULT_PLAYLIST, help="playlist path or http(s) URL")
    parser.add_argument("--hls-start-segment", type=_non_negative_int, default=0,
                        help="first segment to ingest, by media sequence number (the first segment of a "
                        "playlist without EXT-X-MEDIA-SEQUENCE is 0)")
    parser.add_argument("--hls-segment-count", type=_non_negative_int, default=0,
                        help="how many segments, N for a part of the playlist (default: 0, all of them)")
    parser.add_argument("--variant", default=None, help="master playlist variant: index or part of its URI "
                        "(default: the highest bandwidth)")
    parser.add_argument("--flow-id", default=None, help="video flow id (the audio flow's for audio-only media); "
                        "reuse it to resume (default: new)")
    parser.add_argument("--source-id", default=None, help="video source id (default: derived from the flow id)")
    parser.add_argument("--audio-flow-id", default=None, help="audio flow id (default: derived from --flow-id)")
    parser.add_argument("--audio-source-id", default=None, help="audio source id (default: derived)")
    parser.add_argument("--multi-flow-id", default=None, help="multi-essence flow id (default: derived)")
    parser.add_argument("--multi-source-id", default=None, help="multi-essence source id (default: derived)")
    parser.add_argument("--flow-params", default=None, help="JSON object merged into the video flow")
    parser.add_argument("--label", default=None, help="flow label (default: the playlist name)")
    parser.add_argument("--description", default=None, help="flow description (default: where it came from)")
    parser.add_argument("--normalise", action="store_true", help="round timeranges to the frame/sample grid")
    parser.add_argument("--concurrency", type=_positive_int, default=8, help="segments uploaded at once")
    parser.add_argument("--storage-batch", type=_positive_int, default=None,
                        help="upload URLs asked for per storage request "
                        "(default: twice the concurrency, at least 8 and at most 32)")
    parser.add_argument("--retries", type=int, default=RetryPolicy().attempts - 1,
                        help="times a failed request is sent again (with exponential backoff)")
    parser.add_argument("--video-only", action="store_true", help="one video flow even if the segments carry audio")
    parser.add_argument("--follow", action="store_true",
                        help="follow a live playlist: reload it about every target duration and ingest new "
                        "segments as they appear, until EXT-X-ENDLIST (exit 0) or a stop signal (the segments "
                        "already read are finished, a second signal abandons them; exit 128 + the signal; run again "
                        "with the same --flow-id to go on)")
    parser.add_argument("--reload-attempts", type=_positive_int, default=6,
                        help="with --follow: failed playlist loads in a row (retried after 0.5, 1, 2, ... s) "
                        "before giving up")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def _options(args: argparse.Namespace) -> IngestOptions:
    flow_params: dict[str, Any] = {}
    if args.flow_params:
        try:
            flow_params = json.loads(args.flow_params)
        except json.JSONDecodeError as exc:
            raise IngestError(f"--flow-params is not JSON: {exc}") from exc
        if not isinstance(flow_params, dict):
            raise IngestError("--flow-params must be a JSON object")
    for name in ("flow_id", "source_id", "audio_flow_id", "audio_source_id", "multi_flow_id", "multi_source_id"):
        value = getattr(args, name)
        if value is not None:
            try:
                uuid.UUID(value)
            except ValueError as exc:
                raise IngestError(f"--{name.replace('_', '-')} is not a UUID: {value}") from exc
    return IngestOptions(
        hls=args.hls_filename,
        start_segment=args.hls_start_segment,
        segment_count=args.hls_segment_count if args.hls_segment_count > 0 else None,
        flow_id=args.flow_id,
        source_id=args.source_id,
        audio_flow_id=args.audio_flow_id,
        audio_source_id=args.audio_source_id,
        multi_flow_id=args.multi_flow_id,
        multi_source_id=args.multi_source_id,
        flow_params=flow_params,
        label=args.label,
        description=args.description,
        normalise=args.normalise,
        concurrency=args.concurrency,
        storage_batch=args.storage_batch,
        variant=args.variant,
        video_only=args.video_only,
        progress=not args.quiet and sys.stderr.isatty(),
        follow=args.follow,
        reload_attempts=args.reload_attempts,
    )


async def run(args: argparse.Namespace) -> int:
    url, credentials = connection_from_args(args)
    signals = hls_live.StopSignals()
    result: IngestResult | None = None
    try:
        options = _options(args)
        retry = RetryPolicy(attempts=max(args.retries, 0) + 1)
        # Following, the stop signals are the live ingest's until the connection is closed too
        with signals.installed() if options.follow else contextlib.nullcontext(signals):
            options.stop = signals.event
            try:
                async with TAMSClient(url, credentials, concurrency=max(args.concurrency, 1) * 2,
                                      retry=retry) as client:
                    result = await ingest(client, options)
                    signals.done()
            except asyncio.CancelledError:
                if result is None and signals.received is None:
                    raise
                # else: stopped as the connection closed, with the ingest done; or abandoned
    except (IngestError, TAMSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if result is None:
        assert signals.received is not None
        print(f"error: stopped by {signals.received.name} twice: abandoned the segments in flight "
              "(none is half-registered); run again with the same --flow-id to go on", file=sys.stderr)
        return signals.exit_code
    print_result(result.summary())
    if signals.received is not None:
        print(f"stopped by {signals.received.name}; run again with the same --flow-id to go on", file=sys.stderr)
    return signals.exit_code


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    try:
        return run_async(run(args))
    except KeyboardInterrupt as exc:
        what, status = interruption(exc)
        print(f"error: {what}; run again with the same --flow-id to resume", file=sys.stderr)
        return status

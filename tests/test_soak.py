"""Fault soak: ingest, outgest and edit complete through a faulty store and through a store that is
killed (SIGKILL) and restarted; every frame arrives exactly once and no media object is left
unreferenced.

Content is synthesized with its frame numbers burnt in (320x180, 30 fps, 2 s segments, 1 s GOPs);
its first half is ingested as Flow A and its second half as Flow B. Then A and B are exported,
a concatenation (B then A) and an interval edit (cuts every 1.5 s, inside GOPs) are made with
``simple_edit``, and both edits are exported. Scenarios:

a. the store answers a fifth of all requests (API and media) with 503 (``--fault-rate 0.2``);
b. the store is killed in the middle of ``ingest_hls.py`` (run as a script, told not to retry),
   restarted on the same data dir and port, and the script re-run with the same ``--flow-id``
   resumes; then the store is killed and restarted under a running ingest of B, which rides it
   out by retrying;
c. after each run, every media file under ``<data dir>/objects/`` belongs to an object some segment
   references: at once in (a), and in (b) once the store's garbage collector has had its grace
   period (see ``GC_GRACE_OPTION``), with an upload that was never registered left there on purpose.

Checked every time: the frame numbers read back from every export are exactly the frames asked
for, in order; each ingested Flow has each playlist segment registered once, with its exact
timerange, on an object of its own; the store lists exactly the Flows made, each with its own
Source; every object a segment uses is on disk and lists exactly the Flows using it in
``referenced_by_flows``; the edits add no media file.

``make test`` runs the short version (10 segments, one round of each). ``SOAK_LONG=1``
(``make soak``) runs the long one: 60 s of content in 30 segments, four fault seeds and four kill
points.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import pytest

import ingest_core
import sample_content
from client import TAMSClient, TAMSError, UploadTarget
from credentials import OAuth2ClientCredentials
from ingest_core import IngestOptions, ingest
from outgest_core import outgest
from simple_edit import EditRequest, edit
from tests.conftest import RunningStore
from tests.synthetic_media import SynthesizedHLS, synthesized

pytestmark = pytest.mark.soak

LONG = os.environ.get("SOAK_LONG", "") not in ("", "0")

FAULT_RATE = 0.2
FAULT_SEEDS = [11, 12, 13, 14] if LONG else [11]
# Where the store is killed during Flow A's ingest, as a fraction of A's segments already registered.
KILL_POINTS = [Fraction(1, 5), Fraction(2, 5), Fraction(3, 5), Fraction(4, 5)] if LONG else [Fraction(2, 5)]
KILL_LATENCY_MS = 60  # slows the ingest enough to kill the store part way through it
CUT_INTERVAL = Fraction(3, 2)  # seconds: 45 frames, so cuts fall inside the 1 s GOPs
EDIT_PAGE_LIMIT = 3  # the edits read their inputs a few segments a page: more requests to fail

# The store option (issue 8) that removes, after a grace period in seconds, media objects allocated
# but never registered and objects no segment references any more. The grace must outlast the
# store restart the ingest of B rides out, or objects it allocated before the kill would go.
GC_GRACE_OPTION = "--gc-grace"
GC_GRACE_SECONDS = 10  # well above the time an allocated batch waits for its uploads

INGEST_SCRIPT = Path(ingest_core.__file__).with_name("ingest_hls.py").resolve()


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> SynthesizedHLS:
    if LONG:
        return synthesized(tmp_path_factory, duration=60)
    return synthesized(tmp_path_factory)  # made once per session: the content of ``hls_content``


# --------------------------------------------------------------------------------------------
# Helpers


def client_for(store: RunningStore) -> TAMSClient:
    credentials = OAuth2ClientCredentials(store.oauth2_url, store.env["CLIENT_ID"], store.env["CLIENT_SECRET"])
    return TAMSClient(store.url, credentials)


def object_file_name(object_id: str) -> str:
    """The file name ``local_store.objects.ObjectFiles`` gives an object's bytes."""
    return hashlib.sha256(object_id.encode("utf-8")).hexdigest()


def object_files(store: RunningStore) -> set[str]:
    return {path.name for path in (store.data_dir / "objects").rglob("*") if path.is_file()}


@dataclass
class Run:
    """What one soak run made and what each of its Flows must hold."""

    store: RunningStore
    content: SynthesizedHLS
    work: Path
    half: int  # segments in Flow A (the rest are Flow B)
    flow_a: str = field(default_factory=lambda: str(uuid.uuid4()))
    flow_b: str = field(default_factory=lambda: str(uuid.uuid4()))
    frames: dict[str, list[int]] = field(default_factory=dict)  # flow id -> frames in order
    segments: dict[str, range] = field(default_factory=dict)  # ingested flow id -> playlist segments

    @property
    def windows(self) -> dict[str, range]:
        return {self.flow_a: range(0, self.half), self.flow_b: range(self.half, self.content.segment_count)}

    def ingest_options(self, flow_id: str, **options: Any) -> IngestOptions:
        window = self.windows[flow_id]
        return IngestOptions(hls=str(self.content.playlist), start_segment=window.start, segment_count=len(window),
                             flow_id=flow_id, video_only=True, **options)

    def expect_ingested(self, flow_id: str) -> None:
        window = self.windows[flow_id]
        self.segments[flow_id] = window
        self.frames[flow_id] = [n for k in window for n in self.content.frames(k)]


def new_run(store: RunningStore, content: SynthesizedHLS, work: Path) -> Run:
    work.mkdir(parents=True, exist_ok=True)
    return Run(store, content, work, half=content.segment_count // 2)


async def export_and_check(client: TAMSClient, run: Run, flow_id: str) -> None:
    """Export the Flow with --check-timing; its frames must be exactly the expected ones."""
    output = run.work / f"{flow_id}.ts"
    summary = await outgest(client, flow_id, output, check_timing=True)
    frames = await asyncio.to_thread(sample_content.read_frame_numbers, output)
    expected = run.frames[flow_id]
    if frames != expected:
        pairs = zip(frames, expected, strict=False)
        at = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(frames), len(expected)))
        raise AssertionError(f"flow {flow_id}: {len(frames)} frames read back, {len(expected)} expected; they differ "
                             f"from position {at}: {frames[at:at + 5]} instead of {expected[at:at + 5]}")
    assert summary.timing_warnings == 0, f"flow {flow_id}: outgest --check-timing warned"


async def edit_and_export(client: TAMSClient, run: Run) -> None:
    """Concatenate B then A, cut between A and B every CUT_INTERVAL; export and check both.
    The edits work by reference: they must not add a single media file."""
    files_before = object_files(run.store)
    concatenation = await edit(client, EditRequest(run.flow_b, run.flow_a, label="soak: B then A",
                                                         page_limit=EDIT_PAGE_LIMIT))
    run.frames[concatenation.output_flow_id] = run.frames[run.flow_b] + run.frames[run.flow_a]
    interval = await edit(client, EditRequest(run.flow_a, run.flow_b, cut_interval=CUT_INTERVAL,
                                              label="soak: A / B cuts", page_limit=EDIT_PAGE_LIMIT))
    per_cut = int(CUT_INTERVAL * run.content.fps)
    run.frames[interval.output_flow_id] = sample_content.interval_edit_frames(run.frames[run.flow_a], run.frames[run.flow_b], per_cut)
    assert object_files(run.store) <= files_before, "an edit created media files"
    for result in (concatenation, interval):
        assert result.written
        await export_and_check(client, run, result.output_flow_id)


async def check_store(client: TAMSClient, run: Run) -> set[str]:
    """Flows, Sources, segments and objects as the store holds them; returns the ids of every
    object a segment references."""
    flows = [flow async for flow in client.flows()]
    flow_ids = [flow["id"] for flow in flows]
    assert len(flow_ids) == len(set(flow_ids)), f"a Flow is listed twice: {sorted(flow_ids)}"
    assert set(flow_ids) == set(run.frames), "the store holds other Flows than the ones made"
    source_ids = [source["id"] async for source in client.sources()]
    assert len(source_ids) == len(set(source_ids)), "a Source is listed twice"
    assert sorted(source_ids) == sorted(flow["source_id"] for flow in flows), "Flows do not each have a Source"

    referencing: dict[str, set[str]] = {}
    for flow_id in flow_ids:
        segments = [segment async for segment in client.segments(flow_id)]
        assert segments, f"flow {flow_id} has no segments"
        for segment in segments:
            referencing.setdefault(segment["object_id"], set()).add(flow_id)
        if flow_id in run.segments:  # an ingested Flow: each playlist segment once, on its own object
            expected = [str(run.content.video_timerange(k)) for k in run.segments[flow_id]]
            assert [segment["timerange"] for segment in segments] == expected, f"flow {flow_id} segments"
            objects = [segment["object_id"] for segment in segments]
            assert len(set(objects)) == len(objects), f"flow {flow_id} uses an object twice"

    ingested = {oid for oid, flows_using in referencing.items() if flows_using & set(run.segments)}
    assert ingested == set(referencing), "an edit references an object no ingested Flow holds"
    assert len(ingested) == sum(len(window) for window in run.segments.values()), "ingested Flows share objects"
    on_disk = object_files(run.store)
    for object_id, flows_using in referencing.items():
        assert object_file_name(object_id) in on_disk, f"object {object_id} is referenced but its bytes are gone"
        listed = (await client.get_object(object_id))["referenced_by_flows"]
        assert set(listed) == flows_using, f"object {object_id}: referenced_by_flows {listed}, not {flows_using}"
    return set(referencing)


def unreferenced_files(store: RunningStore, referenced: set[str]) -> set[str]:
    """Media files under the data dir that no segment's object is stored as."""
    return object_files(store) - {object_file_name(object_id) for object_id in referenced}


async def run_after_ingest(client: TAMSClient, run: Run) -> set[str]:
    """Outgest A and B, edit, outgest the edits, check the store; the referenced objects."""
    for flow_id in (run.flow_a, run.flow_b):
        await export_and_check(client, run, flow_id)
    await edit_and_export(client, run)
    return await check_store(client, run)


# --------------------------------------------------------------------------------------------
# a. a store that answers a fifth of all requests with 503


@pytest.mark.parametrize("seed", FAULT_SEEDS)
async def test_faulty_store_ingest_outgest_edit_every_frame_once(
    store_factory: Callable[..., RunningStore], content: SynthesizedHLS, tmp_path: Path, seed: int
) -> None:
    store = store_factory(fault_rate=FAULT_RATE, fault_seed=seed)
    run = new_run(store, content, tmp_path)
    async with client_for(store) as client:
        for flow_id in (run.flow_a, run.flow_b):
            result = await ingest(client, run.ingest_options(flow_id, concurrency=8))
            assert (result.registered, result.skipped) == (len(run.windows[flow_id]), 0)
            run.expect_ingested(flow_id)
        referenced = await run_after_ingest(client, run)
        assert client.stats.retries > 0, "no request was refused: the fault injection is not working"
    # Injected faults come before the store does any work, so no retry can leave a file behind.
    assert unreferenced_files(store, referenced) == set(), "media files no segment references"


# --------------------------------------------------------------------------------------------
# b. the store killed with SIGKILL in the middle of an ingest, and restarted


async def wait_for_segments(client: TAMSClient, flow_id: str, count: int, finished: Callable[[], bool]) -> list[str]:
    """Poll until the Flow has at least ``count`` segments; their timeranges. The ingest that
    adds them must still be running (``finished()`` false) when it returns."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            timeranges = [segment["timerange"] async for segment in client.segments(flow_id)]
        except TAMSError:
            timeranges = []  # the Flow may not exist yet
        assert not finished(), "the ingest ended before the store could be killed part way through it"
        if len(timeranges) >= count:
            return timeranges
        await asyncio.sleep(0.02)
    raise AssertionError(f"flow {flow_id} never reached {count} segments")


def ingest_command(run: Run, flow_id: str, *options: str) -> list[str]:
    window = run.windows[flow_id]
    return [sys.executable, str(INGEST_SCRIPT), "--hls-filename", str(run.content.playlist),
            "--hls-start-segment", str(window.start), "--hls-segment-count", str(len(window)),
            "--flow-id", flow_id, "--video-only", "--quiet", *options]


async def upload_without_registering(client: TAMSClient, flow_id: str, data: bytes) -> str:
    """What an uploader that dies between upload and segment registration leaves: an object
    allocated for the Flow, with its bytes stored, that no segment will ever reference."""
    targets = cast(AsyncGenerator[UploadTarget, None], client.allocate_storage(flow_id, batch=1))
    target = await anext(targets)
    await targets.aclose()
    await client.upload_object(target, data)
    return target.object_id


@pytest.mark.parametrize("kill_point", KILL_POINTS, ids=str)
async def test_store_killed_mid_ingest_then_resumed_every_frame_once(
    store_factory: Callable[..., RunningStore], content: SynthesizedHLS, tmp_path: Path, kill_point: Fraction
) -> None:
    store = store_factory(latency_ms=KILL_LATENCY_MS, extra_args=[GC_GRACE_OPTION, str(GC_GRACE_SECONDS)])
    run = new_run(store, content, tmp_path)
    kill_after = max(1, int(kill_point * run.half))

    # Flow A, with the script: kill the store part way through; told not to retry, the script fails
    # with one line. Then re-run it with the same --flow-id against the restarted store.
    environ = {**os.environ, **store.env}
    command = ingest_command(run, run.flow_a)
    process = subprocess.Popen([*command, "--concurrency", "1", "--retries", "0"], cwd=tmp_path, env=environ, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        async with client_for(store) as watcher:
            before_kill = await wait_for_segments(watcher, run.flow_a, kill_after, lambda: process.poll() is not None)
        store.kill()
        stdout, stderr = await asyncio.to_thread(process.communicate, timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1, (stdout, stderr)
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("error: "), stderr
    await asyncio.to_thread(store.restart)

    async with client_for(store) as client:
        after_restart = [segment["timerange"] async for segment in client.segments(run.flow_a)]
        assert set(before_kill) <= set(after_restart), "segments acknowledged before the kill were lost"
        assert len(after_restart) < run.half, "the killed ingest had registered every segment"
        # What an uploader that died between upload and registration leaves behind.
        orphan = await upload_without_registering(client, run.flow_a, run.content.segment_paths()[0].read_bytes())
        assert object_file_name(orphan) in object_files(store)
        resumed = await asyncio.to_thread(subprocess.run, [*command, "--concurrency", "2"], cwd=tmp_path,
                                          env=environ, text=True, capture_output=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        assert resumed.stdout.startswith(
            f"ingested {run.half - len(after_restart)} segments ({len(after_restart)} already present)"
        ), resumed.stdout
        run.expect_ingested(run.flow_a)

        # Flow B: kill and restart the store under a running ingest, which rides it out by retrying.
        retries_before = client.stats.retries
        task = asyncio.create_task(ingest(client, run.ingest_options(run.flow_b, concurrency=1)))
        await wait_for_segments(client, run.flow_b, 1, task.done)
        store.kill()
        await asyncio.to_thread(store.restart)
        result = await task
        assert (result.registered, result.skipped) == (len(run.windows[run.flow_b]), 0)
        assert client.stats.retries > retries_before, "the store went down without the ingest noticing"
        run.expect_ingested(run.flow_b)

        referenced = await run_after_ingest(client, run)
        assert orphan not in referenced

    # c. No object left unreferenced: the store's garbage collector removes, after its grace
    # period, the orphan and anything the killed ingest uploaded but never registered.
    leftovers = unreferenced_files(store, referenced)
    orphan_state = "still there" if object_file_name(orphan) in leftovers else "already collected"
    print(f"at the end of the run, {len(leftovers)} media files no segment references (the orphan uploaded "
          f"on purpose: {orphan_state})")
    await assert_gc_removes_unreferenced_objects(store, referenced, leftovers)
    async with client_for(store) as client:
        assert await check_store(client, run) == referenced
        for flow_id in run.frames:  # the collector must not have touched media still referenced
            await export_and_check(client, run, flow_id)


async def assert_gc_removes_unreferenced_objects(store: RunningStore, referenced: set[str],
                                                 leftovers: set[str]) -> None:
    """Every media file no segment references is gone soon after the grace period."""
    deadline = time.monotonic() + GC_GRACE_SECONDS + 10
    while (remaining := unreferenced_files(store, referenced)) and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    assert remaining == set(), (
        f"{len(remaining)} of the {len(leftovers)} media files no segment references are still on disk 10 s "
        f"after the store's {GC_GRACE_OPTION} {GC_GRACE_SECONDS} grace period"
    )

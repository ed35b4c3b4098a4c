"""End-to-end tests of simple_edit.py against a real local store.

Two Flows are ingested from synthesized content with frame numbers burnt in (320x180, 30 fps,
2 s segments, 1 s GOPs): playlist segments 0-4 are Flow A (frames 0-299, first frame at
0:66666666) and segments 5-9 are Flow B (frames 300-599). Each edit is exported with
outgest_file and its frame numbers read back; they must be exactly the frames asked for. No
edit may create a media object.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from mediatimestamp.immutable import TimeRange, Timestamp

import sample_content
import simple_edit
from client import NotFound, TAMSClient
from credentials import BasicCredentials
from ingest_core import IngestOptions, ingest
from outgest_core import outgest
from simple_edit import (
    EditError,
    EditRequest,
    EditResult,
    edit,
    parse_interval,
    parse_timerange,
)
from tests.conftest import REPO_ROOT, RunningStore, start_store
from tests.loopback import serve

T = TypeVar("T")
FRAMES_A = list(range(300))
FRAMES_B = list(range(300, 600))


@dataclass
class Inputs:
    store: RunningStore
    flow_a: str
    flow_b: str
    objects: set[str]      # every object id the two input Flows reference
    export_dir: Path

    def client(self, url: str | None = None) -> TAMSClient:
        return TAMSClient(url or self.store.url, BasicCredentials(self.store.username, self.store.password))

    def object_files(self) -> int:
        return sum(1 for p in (self.store.data_dir / "objects").rglob("*") if p.is_file())


def run(coro_fn: Callable[[TAMSClient], Awaitable[T]], inputs: Inputs, url: str | None = None) -> T:
    async def go() -> T:
        async with inputs.client(url) as client:
            return await coro_fn(client)
    return asyncio.run(go())


@contextlib.contextmanager
def two_flows(base: Path, playlist: Path, segments_each: int) -> Iterator[Inputs]:
    """A store (in ``base``) holding Flow A, the playlist's first ``segments_each`` segments,
    and Flow B, the next as many; stopped afterwards."""
    store = start_store(base / "data")
    try:
        async def setup(client: TAMSClient) -> tuple[str, str, set[str]]:
            a = await ingest(client, IngestOptions(hls=str(playlist), start_segment=0, segment_count=segments_each,
                                                   video_only=True, label="A"))
            b = await ingest(client, IngestOptions(hls=str(playlist), start_segment=segments_each,
                                                   segment_count=segments_each, video_only=True, label="B"))
            ids = a.flow_ids["video"], b.flow_ids["video"]
            objects = {s["object_id"] for fid in ids async for s in client.segments(fid)}
            return ids[0], ids[1], objects

        inputs = Inputs(store, "", "", set(), base / "exports")
        inputs.flow_a, inputs.flow_b, inputs.objects = run(setup, inputs)
        inputs.export_dir.mkdir()
        yield inputs
    finally:
        store.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inputs]:
    base = tmp_path_factory.mktemp("edit")
    playlist = sample_content.synthesize(base / "content", width=320, height=180, fps=30, duration=20,
                                         segment_seconds=2, gop_seconds=1)
    with two_flows(base, playlist, 5) as inputs:
        assert len(inputs.objects) == 10
        yield inputs


def edit_and_export(inputs: Inputs, request: EditRequest) -> tuple[EditResult, list[int], list[dict]]:
    """Make the edit, check it created no media object, export it; returns the result,
    the exported frame numbers and the output Flow's segments as the store lists them."""
    files_before = inputs.object_files()
    output = inputs.export_dir / f"{request.output_flow_id}.ts"

    async def go(client: TAMSClient) -> tuple[EditResult, list[dict]]:
        result = await edit(client, request)
        await outgest(client, result.output_flow_id, output)
        segments = [s async for s in client.segments(result.output_flow_id)]
        return result, segments

    result, segments = run(go, inputs)
    assert inputs.object_files() == files_before, "the edit created media objects"
    assert {s["object_id"] for s in segments} <= inputs.objects
    return result, sample_content.read_frame_numbers(output), segments


def test_reverse_order_concatenation_of_inputs_longer_than_a_page(inputs: Inputs) -> None:
    """The README walk-through: Flow B then Flow A, read two segments per page."""
    request = EditRequest(inputs.flow_b, inputs.flow_a, page_limit=2)
    result, frames, segments = edit_and_export(inputs, request)
    assert frames == FRAMES_B + FRAMES_A
    assert len(segments) == 10
    # Whole segments: B keeps its timeline, A follows straight on; nothing trimmed.
    assert segments[0]["timerange"] == "[10:66666666_12:66666666)" and segments[0]["ts_offset"] == "0:0"
    assert segments[5]["timerange"] == "[20:66666666_22:66666666)" and segments[5]["ts_offset"] == "20:0"
    for s in segments:  # each object is used whole, and described whole
        tr, ts = TimeRange.from_str(s["timerange"]), Timestamp.from_str(s["ts_offset"])
        assert tr.start is not None and tr.end is not None
        assert s["object_timerange"] == str(TimeRange(tr.start - ts, tr.end - ts, tr.inclusivity))
    assert str(result.timerange) == "[10:66666666_30:66666666)"

    async def check_flow(client: TAMSClient) -> None:
        out = await client.get_flow(result.output_flow_id)
        a = await client.get_flow(inputs.flow_a)
        for name in ("format", "codec", "container", "essence_parameters"):
            assert out[name] == a[name]
        assert out["source_id"] not in (a["source_id"], (await client.get_flow(inputs.flow_b))["source_id"])
        source = await client.get_source(out["source_id"])
        assert source["format"] == "urn:x-nmos:format:video" and source["label"] == "B then A"
        assert out["label"] == "B then A"
        assert out["tags"]["edit_mode"] == "concatenation"
        assert out["tags"]["edit_inputs"] == [inputs.flow_b, inputs.flow_a]
        assert out["tags"]["edit_input_timeranges"] == ["_", "_"]
    run(check_flow, inputs)


def test_timeranges_starting_and_ending_mid_segment(inputs: Inputs) -> None:
    # A: frame n is at (2 + n) / 30 s. [1:0_3:5) holds frames 28..102.
    # B: frame 300 + i is at (302 + i) / 30 s. [12:0_13:0] holds frames 358..388 (end included).
    request = EditRequest(inputs.flow_a, inputs.flow_b, parse_timerange("[1:0_3:500000000)"),
                          parse_timerange("[12:0_13:0]"), start=Timestamp(), legacy_sample_fields=True,
                          label="mid-segment", page_limit=1)
    result, frames, segments = edit_and_export(inputs, request)
    assert frames == list(range(28, 103)) + list(range(358, 389))
    assert [s["timerange"] for s in segments] == [
        "[0:0_1:66666666)", "[1:66666666_2:500000000)", "[2:500000000_2:566666666)", "[2:566666666_3:533333333)",
    ]
    first = segments[0]
    assert first["ts_offset"] == "-1:0"                     # object time 1:0 lands on 0:0
    assert first["object_timerange"] == "[0:66666666_2:66666666)"  # the whole object
    assert (first["sample_offset"], first["sample_count"]) == (28, 32)
    assert [(s["sample_offset"], s["sample_count"]) for s in segments[1:]] == [(0, 43), (58, 2), (0, 29)]
    assert str(result.timerange) == "[0:0_3:533333333)"


@pytest.mark.parametrize(("interval", "frames_per_cut"), [
    ("2", 60),      # on segment boundaries (and GOPs)
    ("1", 30),      # on GOPs, not segments
    ("1.5", 45),    # neither
])
def test_interval_cuts(inputs: Inputs, interval: str, frames_per_cut: int) -> None:
    request = EditRequest(inputs.flow_a, inputs.flow_b, cut_interval=parse_interval(interval), page_limit=3)
    result, frames, _ = edit_and_export(inputs, request)
    assert frames == sample_content.interval_edit_frames(FRAMES_A, FRAMES_B, frames_per_cut)
    assert result.frames == len(frames)


def test_interval_cut_from_mid_segment_timeranges(inputs: Inputs) -> None:
    request = EditRequest(inputs.flow_b, inputs.flow_a, parse_timerange("[11:0_"), parse_timerange("(2:0_9:0)"),
                          cut_interval=Fraction(7, 10))
    _, frames, _ = edit_and_export(inputs, request)
    # B from (302 + i) / 30 >= 11 -> frame 328; A after 2:0 -> frame 59, before 9:0 -> up to 267.
    assert frames == sample_content.interval_edit_frames(list(range(328, 600)), list(range(59, 268)), 21)


def test_dry_run_writes_nothing(inputs: Inputs) -> None:
    files_before = inputs.object_files()
    request = EditRequest(inputs.flow_a, inputs.flow_b, parse_timerange("[1:0_3:0)"), dry_run=True)

    async def go(client: TAMSClient) -> EditResult:
        result = await edit(client, request)
        with pytest.raises(NotFound):
            await client.get_flow(request.output_flow_id)
        return result
    result = run(go, inputs)
    assert not result.written and result.frames == 60 + 300
    assert inputs.object_files() == files_before


# ---------------------------------------------------------------------------
# A store that refuses list POSTs, or fails part way: a forwarding server on loopback


@dataclass
class Behaviour:
    refuse_lists: bool = False
    fail_after: int | None = None   # single-segment POSTs allowed before the rest get 400
    posts: int = 0
    hold_posts: asyncio.Event | None = None  # segment POSTs set this, then wait for ``release`` (refused then)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    hold_deletes: asyncio.Event | None = None  # DELETEs set this, then wait for ``release_deletes``
    release_deletes: asyncio.Event = field(default_factory=asyncio.Event)


async def forwarding_store(target: str, behaviour: Behaviour) -> tuple[web.AppRunner, str]:
    session = aiohttp.ClientSession()

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.method == "POST" and request.path.endswith("/segments"):
            if behaviour.hold_posts is not None:
                behaviour.hold_posts.set()
                await behaviour.release.wait()
                return web.json_response({"type": "BadRequest", "summary": "released",
                                          "time": "2025-01-01T00:00:00Z"}, status=400)
            listed = body.lstrip().startswith(b"[")
            if listed and behaviour.refuse_lists:
                return web.json_response({"type": "BadRequest", "summary": "lists not supported here",
                                          "time": "2025-01-01T00:00:00Z"}, status=400)
            if not listed:
                behaviour.posts += 1
                if behaviour.fail_after is not None and behaviour.posts > behaviour.fail_after:
                    return web.json_response({"type": "BadRequest", "summary": "segment refused",
                                              "time": "2025-01-01T00:00:00Z"}, status=400)
        if request.method == "DELETE" and behaviour.hold_deletes is not None:
            behaviour.hold_deletes.set()
            await behaviour.release_deletes.wait()
            if request.transport is None or request.transport.is_closing():  # the client gave up on it
                return web.Response(status=499)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with session.request(request.method, target + request.path_qs, headers=headers, data=body,
                                   allow_redirects=False) as reply:
            payload = await reply.read()
            keep = {k: v for k, v in reply.headers.items()
                    if k.lower() not in ("content-length", "content-encoding", "transfer-encoding", "connection")}
            return web.Response(status=reply.status, body=payload, headers=keep)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)

    async def close_session(_: web.Application) -> None:
        await session.close()
    app.on_cleanup.append(close_session)
    return await serve(app)


def through_forwarder(inputs: Inputs, behaviour: Behaviour, request: EditRequest) -> EditResult | EditError:
    async def go() -> EditResult | EditError:
        runner, url = await forwarding_store(inputs.store.url, behaviour)
        try:
            async with inputs.client(url) as client:
                try:
                    return await edit(client, request)
                except EditError as exc:
                    return exc
        finally:
            await runner.cleanup()
    return asyncio.run(go())


def test_falls_back_to_one_segment_at_a_time_when_lists_are_refused(inputs: Inputs) -> None:
    behaviour = Behaviour(refuse_lists=True)
    request = EditRequest(inputs.flow_a, inputs.flow_b, parse_timerange("[1:0_5:0)"), parse_timerange("[12:0_15:0)"))
    result = through_forwarder(inputs, behaviour, request)
    assert isinstance(result, EditResult) and not result.bulk
    assert behaviour.posts == len(result.segments) == 6

    async def listed(client: TAMSClient) -> list[dict]:
        return [s async for s in client.segments(request.output_flow_id)]
    stored = run(listed, inputs)
    assert [(s["object_id"], s["timerange"], s["ts_offset"]) for s in stored] == [
        (p.object_id, str(p.timerange), str(p.ts_offset)) for p in result.segments]


def test_a_failure_part_way_leaves_no_output_flow(inputs: Inputs) -> None:
    behaviour = Behaviour(refuse_lists=True, fail_after=2)
    request = EditRequest(inputs.flow_a, inputs.flow_b)
    result = through_forwarder(inputs, behaviour, request)
    assert isinstance(result, EditError) and "segment refused" in str(result)
    assert behaviour.posts == 3

    async def gone(client: TAMSClient) -> None:
        with pytest.raises(NotFound):
            await client.get_flow(request.output_flow_id)
        assert [s async for s in client.segments(request.output_flow_id)] == []
    run(gone, inputs)


# ---------------------------------------------------------------------------
# The command line


def cli(inputs: Inputs, *args: str, url: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TAMS_URL", "USERNAME", "PASSWORD", "OAUTH2_URL",
                                                             "CLIENT_ID", "CLIENT_SECRET")}
    return subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "simple_edit.py"), "--tams-url", url or inputs.store.url,
         "--username", inputs.store.username, "--password", inputs.store.password, *args],
        cwd=inputs.export_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_bad_input_is_one_line_a_failure_status_and_no_output_flow(inputs: Inputs) -> None:
    async def make_25fps(client: TAMSClient) -> str:
        flow = await client.get_flow(inputs.flow_a)
        flow_id = str(uuid.uuid4())
        other = {k: flow[k] for k in ("format", "codec", "container", "essence_parameters")}
        other["essence_parameters"] = {**other["essence_parameters"], "frame_rate": {"numerator": 25, "denominator": 1}}
        await client.put_flow(flow_id, {"id": flow_id, "source_id": str(uuid.uuid4()), **other})
        return flow_id
    flow_25 = run(make_25fps, inputs)
    unknown = str(uuid.uuid4())
    a, b = inputs.flow_a, inputs.flow_b
    cases: list[tuple[list[str], str]] = [
        (["--input1-flow-id", unknown, "--input2-flow-id", b], f"input 1 flow {unknown} not found"),
        (["--input1-flow-id", a, "--input2-flow-id", unknown], f"input 2 flow {unknown} not found"),
        (["--input1-flow-id", a, "--input2-flow-id", b, "--input1-timerange", "yesterday"], "bad --input1-timerange"),
        (["--input1-flow-id", a, "--input2-flow-id", b, "--input2-timerange", "[5:0_5:0)"], "is empty"),
        (["--input1-flow-id", a, "--input2-flow-id", b, "--input2-timerange", "[1000:0_1001:0)"],
         "input 2 has no segments in timerange [1000:0_1001:0)"),
        (["--input1-flow-id", a, "--input2-flow-id", b, "--input1-timerange", "[1:10000000_1:20000000)"],
         "input 1 timerange [1:10000000_1:20000000) selects no frames"),
        (["--input1-flow-id", a, "--input2-flow-id", b, "--cut-interval-sec", "0.01"], "shorter than one frame"),
        (["--input1-flow-id", a, "--input2-flow-id", b, "--cut-interval-sec", "soon"], "bad --cut-interval-sec"),
        (["--input1-flow-id", a, "--input2-flow-id", flow_25], "input flows differ in frame_rate: 30/1 vs 25/1"),
        (["--input1-flow-id", a, "--input2-flow-id", b, "--start", "1.5"], "bad --start"),
        (["--input1-flow-id", "not-a-uuid", "--input2-flow-id", b], "bad --input1-flow-id"),
        (["--input2-flow-id", b], "the following arguments are required: --input1-flow-id"),
    ]
    outputs = [str(uuid.uuid4()) for _ in cases]
    procs = [cli(inputs, *args, "--output-flow-id", out) for (args, _), out in zip(cases, outputs)]
    existing = cli(inputs, "--input1-flow-id", a, "--input2-flow-id", b, "--output-flow-id", b)
    for proc, (args, message) in zip([*procs, existing], [*cases, ([], f"output flow {b} already exists")]):
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode != 0, args
        assert stdout == ""
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and lines[0].startswith("simple_edit.py: error: "), stderr

    async def absent(client: TAMSClient) -> list[str]:
        left = []
        for out in outputs:
            try:
                await client.get_flow(out)
                left.append(out)
            except NotFound:
                pass
        return left
    assert run(absent, inputs) == []

    async def b_untouched(client: TAMSClient) -> dict:
        return await client.get_flow(b)
    assert run(b_untouched, inputs)["label"] == "B"


def test_command_line_dry_run_and_edit(inputs: Inputs) -> None:
    output = str(uuid.uuid4())
    dry = cli(inputs, "--input1-flow-id", inputs.flow_a, "--input2-flow-id", inputs.flow_b, "--input1-timerange",
              "[1:0_3:0)", "--input2-timerange", "[11:0_12:0)", "--output-flow-id", output, "--dry-run")
    stdout, stderr = dry.communicate(timeout=60)
    assert dry.returncode == 0, stderr
    lines = stdout.splitlines()
    assert lines[0] == f"dry run: would create flow {output} with 3 segments, 90 frames, timerange [1:0_4:0)"
    assert lines[1].startswith("[1:0_2:66666666) object ") and "frames 28-59 (input 1 [1:0_2:66666666))" in lines[1]
    assert "ts_offset 0:0" in lines[1] and "object_timerange [0:66666666_2:66666666)" in lines[1]
    assert len(lines) == 4

    real = cli(inputs, "--input1-flow-id", inputs.flow_a, "--input2-flow-id", inputs.flow_b, "--input1-timerange",
               "[1:0_3:0)", "--input2-timerange", "[11:0_12:0)", "--output-flow-id", output, "--label", "cli")
    stdout, stderr = real.communicate(timeout=60)
    assert real.returncode == 0, stderr
    assert stdout.strip() == (f"output flow {output}: 3 segments, 90 frames, timerange [1:0_4:0); "
                              "input 1: 60 frames from 2 segments; input 2: 30 frames from 1 segment")
    logged = stderr.splitlines()
    assert sum("wrote segment" in line for line in logged) == 3
    assert any(f"created output flow {output}" in line for line in logged)

    async def label(client: TAMSClient) -> Any:
        return (await client.get_flow(output))["label"]
    assert run(label, inputs) == "cli"


@pytest.mark.parametrize("again", [None, signal.SIGTERM, signal.SIGINT], ids=["once", "SIGTERM again", "Ctrl-C after"])
async def test_sigterm_while_writing_segments_deletes_the_unfinished_output_flow(
    inputs: Inputs, again: signal.Signals | None
) -> None:
    """``kill`` while the segments are being written: the edit is cancelled as Ctrl-C cancels
    it, so the output Flow it made is deleted, and the status is 143 with one line. Another
    signal while the deletion is under way does not cut it short."""
    behaviour = Behaviour(hold_posts=asyncio.Event(), hold_deletes=asyncio.Event())
    runner, url = await forwarding_store(inputs.store.url, behaviour)
    output = str(uuid.uuid4())
    logged: list[str] = []
    try:
        process = cli(inputs, "--input1-flow-id", inputs.flow_a, "--input2-flow-id", inputs.flow_b,
                      "--output-flow-id", output, url=url)
        assert process.stderr is not None
        reading = asyncio.create_task(asyncio.to_thread(lambda: logged.extend(iter(process.stderr.readline, ""))))
        await asyncio.wait_for(behaviour.hold_posts.wait(), 60)
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(behaviour.hold_deletes.wait(), 60)
        if again is not None:
            process.send_signal(again)
            async with asyncio.timeout(60):  # until the edit has handled it, as cancelling or not
                while not any("already stopping" in line for line in logged) and process.poll() is None:
                    await asyncio.sleep(0.01)
        behaviour.release_deletes.set()
        assert process.stdout is not None
        stdout = await asyncio.to_thread(process.stdout.read)
        await reading
        await asyncio.to_thread(process.wait, 60)
        stderr = "".join(logged)
    finally:
        behaviour.release.set()
        behaviour.release_deletes.set()
        await runner.cleanup()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines()[-1] == "simple_edit.py: stopped by SIGTERM" and "Traceback" not in stderr
    assert any(f"deleting the unfinished output flow {output}" in line for line in stderr.splitlines())
    assert stdout == ""
    async with inputs.client(inputs.store.url) as client:
        with pytest.raises(NotFound):
            await client.get_flow(output)


async def test_a_store_that_hangs_cannot_hold_a_stopped_edit_for_ever(
    inputs: Inputs, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped while writing, against a store that never answers the DELETE: the deletion is
    given up after CLEAN_UP_SECONDS, with a warning naming the Flow to delete by hand."""
    monkeypatch.setattr(simple_edit, "CLEAN_UP_SECONDS", 0.5)
    behaviour = Behaviour(hold_posts=asyncio.Event(), hold_deletes=asyncio.Event())
    runner, url = await forwarding_store(inputs.store.url, behaviour)
    request = EditRequest(inputs.flow_a, inputs.flow_b)
    try:
        async with inputs.client(url) as client:
            editing = asyncio.create_task(edit(client, request))
            await asyncio.wait_for(behaviour.hold_posts.wait(), 60)
            editing.cancel()
            started = time.monotonic()
            with pytest.raises(asyncio.CancelledError):
                await editing
            took = time.monotonic() - started
    finally:
        behaviour.release.set()
        behaviour.release_deletes.set()
        await runner.cleanup()
    assert behaviour.hold_deletes.is_set() and 0.5 <= took < 5
    assert any(f"could not delete the unfinished output flow {request.output_flow_id} (delete it by hand): "
               "no answer in 0.5 s" in r.getMessage() for r in caplog.records)


def test_help_lists_every_option_with_its_default() -> None:
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "simple_edit.py"), "--help"], check=False, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for option in ("--tams-url", "--username", "--client-id", "--input1-flow-id", "--input1-timerange",
                   "--input2-flow-id", "--input2-timerange", "--output-flow-id", "--output-source-id",
                   "--cut-interval-sec", "--start", "--legacy-sample-fields", "--dry-run", "--label"):
        assert option in text
    assert "(default: _)" in text and "$TAMS_URL" in text


# ---------------------------------------------------------------------------
# NTSC-family rates: frame times that are not whole 90 kHz ticks


@dataclass
class RateInputs:
    inputs: Inputs
    rate: Fraction
    frames_a: list[int]
    frames_b: list[int]

    def at(self, n: int) -> Timestamp:
        """Frame n's stored Flow time: its real pts (a whole tick, rounded down from the exact
        frame time, so up to 0.75 tick before it at 24000/1001 and 0.5 tick at 60000/1001)."""
        return Timestamp(ns=sample_content.frame_pts(n, self.rate) * 10**9 // 90000)


@pytest.fixture(scope="module", params=[Fraction(24000, 1001), Fraction(60000, 1001)], ids=["23.976", "59.94"])
def rate_inputs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RateInputs]:
    """8 s at the rate in 2 s segments (ultrafast, for speed): segments 0-1 are Flow A, 2-3 Flow B."""
    rate: Fraction = request.param
    base = tmp_path_factory.mktemp("edit_rate")
    playlist = sample_content.synthesize(base / "content", width=320, height=180, fps=rate, duration=8,
                                         segment_seconds=2, gop_seconds=1, preset="ultrafast")
    total = math.floor(8 * rate)
    per_segment = round(2 * rate)
    with two_flows(base, playlist, 2) as inputs:
        yield RateInputs(inputs, rate, list(range(2 * per_segment)), list(range(2 * per_segment, total)))


def export_checked(inputs: Inputs, request: EditRequest) -> tuple[EditResult, list[int]]:
    """Edit, then export with --check-timing; no timing warning may appear."""
    output = inputs.export_dir / f"{request.output_flow_id}.ts"

    async def go(client: TAMSClient) -> EditResult:
        result = await edit(client, request)
        summary = await outgest(client, result.output_flow_id, output, check_timing=True)
        assert summary.timing_warnings == 0
        assert summary.frames == result.frames
        return result

    result = run(go, inputs)
    return result, sample_content.read_frame_numbers(output)


def test_mid_segment_concatenation_at_ntsc_rates_gives_exactly_the_frames_asked_for(rate_inputs: RateInputs) -> None:
    """Cuts on frames whose pts is just before their exact time (17 and 105 at 23.976, odd
    frames at 59.94) neither leak the next frame nor lose the one on the bound."""
    r = rate_inputs
    b0 = r.frames_b[0]
    request = EditRequest(
        r.inputs.flow_a, r.inputs.flow_b,
        TimeRange(r.at(10), r.at(17), TimeRange.INCLUDE_START),        # frames 10..16
        TimeRange(r.at(b0 + 9), r.at(b0 + 13), TimeRange.INCLUSIVE),   # mid-segment of B, end included
        start=Timestamp(),
    )
    result, frames = export_checked(r.inputs, request)
    assert frames == list(range(10, 17)) + list(range(b0 + 9, b0 + 14))
    assert result.frames == len(frames) == 12
    # Twelve frame durations long (each placed segment's bounds are rounded down to 1 ns).
    assert result.timerange.end is not None
    error = Fraction(result.timerange.end.to_nanosec(), 10**9) - 12 / r.rate
    assert abs(error) <= Fraction(len(result.segments), 10**9)


def test_interval_cuts_at_ntsc_rates_with_an_interval_off_the_frame_grid(rate_inputs: RateInputs) -> None:
    """0.7 s is 16.78 frames at 23.976 (17) and 41.96 at 59.94 (42): every cut lands between
    90 kHz ticks, and A and B hold different frames, so any off-by-one shows."""
    r = rate_inputs
    n = round(Fraction(7, 10) * r.rate)
    request = EditRequest(r.inputs.flow_a, r.inputs.flow_b, cut_interval=Fraction(7, 10))
    result, frames = export_checked(r.inputs, request)
    assert frames == sample_content.interval_edit_frames(r.frames_a, r.frames_b, n)
    assert result.frames == len(frames)
    # And from mid-segment timeranges: A from frame 5, B after its frame b0 + 3.
    b0 = r.frames_b[0]
    request = EditRequest(r.inputs.flow_a, r.inputs.flow_b,
                          TimeRange(r.at(5), None, TimeRange.INCLUDE_START),
                          TimeRange(r.at(b0 + 3), None, TimeRange.EXCLUSIVE), cut_interval=Fraction(7, 10))
    result, frames = export_checked(r.inputs, request)
    assert frames == sample_content.interval_edit_frames(r.frames_a[5:], r.frames_b[4:], n)
    assert result.frames == len(frames)

"""simple_edit.py on CMAF (fMP4 + init segment) Flows, against a real local store.

Numbered content (320x180, 30 fps, 2 s segments, 1 s GOPs, x264 B-frames) is made into fMP4 HLS
by libavformat's hls muxer and registered per the CMAF Flow contract (tests/edit_cmaf_support.py):
Flow C1 holds media segments 0-1 (frames 0-119), Flow C2 segments 2-3 (frames 120-239), each with
its own init object. An MPEG-TS Flow of the same essence is ingested with ingest_hls. Edits must
reference the inputs' media and init objects (no new object), declare init segments and the
input's container, and play back exactly the frames asked for, read from the new Flow's init +
media objects in timerange order.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import TypeVar

import pytest
from mediatimestamp.immutable import TimeRange, Timestamp

from client import TAMSClient
from credentials import BasicCredentials
from ingest_core import IngestOptions, ingest
from sample_content import interval_edit_frames
from simple_edit import EditError, EditRequest, edit
from tests.conftest import REPO_ROOT, RunningStore, start_store
from tests.edit_cmaf_support import RegisteredCmaf, flow_frame_numbers, make_cmaf, register_cmaf_flow

T = TypeVar("T")


@dataclass
class CmafInputs:
    store: RunningStore
    c1: RegisteredCmaf
    c2: RegisteredCmaf
    ts_flow: str

    def run(self, fn: Callable[[TAMSClient], Awaitable[T]]) -> T:
        async def go() -> T:
            async with TAMSClient(self.store.url, BasicCredentials(self.store.username, self.store.password)) as c:
                return await fn(c)
        return asyncio.run(go())


@pytest.fixture(scope="module")
def cmaf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CmafInputs]:
    base = tmp_path_factory.mktemp("edit_cmaf")
    content = make_cmaf(base / "content", duration=8)
    assert len(content.segments) == 4
    store = start_store(base / "data")
    try:
        async def setup(client: TAMSClient) -> tuple[RegisteredCmaf, RegisteredCmaf, str]:
            c1 = await register_cmaf_flow(client, content, first=0, count=2, label="C1")
            c2 = await register_cmaf_flow(client, content, first=2, count=2, label="C2")
            ts = await ingest(client, IngestOptions(hls=str(base / "content" / "ts" / "hls_output.m3u8"),
                                                    video_only=True, label="TS"))
            return c1, c2, ts.flow_ids["video"]
        inputs = CmafInputs(store, *asyncio.run(_with_client(store, setup)))
        yield inputs
    finally:
        store.stop()


async def _with_client(store: RunningStore, fn: Callable[[TAMSClient], Awaitable[T]]) -> T:
    async with TAMSClient(store.url, BasicCredentials(store.username, store.password)) as client:
        return await fn(client)


def test_cmaf_inputs_read_back_as_their_frames(cmaf: CmafInputs) -> None:
    """The helper's registration and reader agree with the content before any edit is judged."""
    assert cmaf.run(lambda c: flow_frame_numbers(c, cmaf.c1.flow_id)) == list(range(120))
    assert cmaf.run(lambda c: flow_frame_numbers(c, cmaf.c2.flow_id)) == list(range(120, 240))


def test_concatenation_of_cmaf_flows_references_media_and_init_objects(cmaf: CmafInputs) -> None:
    request = EditRequest(cmaf.c2.flow_id, cmaf.c1.flow_id)

    async def go(client: TAMSClient) -> tuple[dict, list[dict], list[int]]:
        await edit(client, request)
        flow = await client.get_flow(request.output_flow_id)
        segments = [s async for s in client.segments(request.output_flow_id)]
        return flow, segments, await flow_frame_numbers(client, request.output_flow_id)
    flow, segments, frames = cmaf.run(go)
    assert flow["container"] == "video/mp4"
    assert flow["essence_parameters"]["init_segments"] is True
    assert [s["object_id"] for s in segments] == cmaf.c2.object_ids + cmaf.c1.object_ids
    assert [s["init_object"]["object_id"] for s in segments] == [cmaf.c2.init_object_id] * 2 + [cmaf.c1.init_object_id] * 2
    assert frames == list(range(120, 240)) + list(range(120))


def test_mid_segment_and_interval_edits_of_cmaf_flows_play_the_frames_asked_for(cmaf: CmafInputs) -> None:
    # Frame n is n frame durations after frame 0, whose time the fragments' own timing gave C1.
    start = cmaf.c1.timeranges[0].start
    assert start is not None

    def ts(n: int) -> str:
        return str(start + Timestamp.from_count(n, 30))
    cut = EditRequest(cmaf.c1.flow_id, cmaf.c2.flow_id, TimeRange.from_str(f"[{ts(30)}_{ts(75)})"),
                      TimeRange.from_str(f"[{ts(150)}_{ts(200)}]"))
    interval = EditRequest(cmaf.c1.flow_id, cmaf.c2.flow_id, cut_interval=Fraction(7, 10))

    async def go(client: TAMSClient) -> tuple[list[int], list[int], list[str]]:
        await edit(client, cut)
        await edit(client, interval)
        inits = [s["init_object"]["object_id"] async for s in client.segments(interval.output_flow_id)]
        return (await flow_frame_numbers(client, cut.output_flow_id),
                await flow_frame_numbers(client, interval.output_flow_id), inits)
    cut_frames, interval_frames, inits = cmaf.run(go)
    assert cut_frames == list(range(30, 75)) + list(range(150, 201))
    assert interval_frames == interval_edit_frames(list(range(120)), list(range(120, 240)), 21)
    assert set(inits) == {cmaf.c1.init_object_id, cmaf.c2.init_object_id}


def test_a_cmaf_flow_and_a_ts_flow_are_not_edited_together(cmaf: CmafInputs) -> None:
    for first, second, shown in ((cmaf.c1.flow_id, cmaf.ts_flow, "video/mp4 (fMP4 with init segments) vs video/mp2t"),
                                 (cmaf.ts_flow, cmaf.c1.flow_id, "video/mp2t vs video/mp4 (fMP4 with init segments)")):
        request = EditRequest(first, second, force=True)
        with pytest.raises(EditError) as info:
            cmaf.run(lambda c, r=request: edit(c, r))
        assert str(info.value) == (f"input flows differ in container: {shown}: a Flow has one container, so the edit "
                                   "could not be exported correctly (--force cannot accept this)")

    output = str(uuid.uuid4())
    env = {k: v for k, v in os.environ.items() if k not in ("TAMS_URL", "USERNAME", "PASSWORD", "OAUTH2_URL",
                                                             "CLIENT_ID", "CLIENT_SECRET")}
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "simple_edit.py"), "--tams-url", cmaf.store.url, "--username",
         cmaf.store.username, "--password", cmaf.store.password, "--input1-flow-id", cmaf.ts_flow,
         "--input2-flow-id", cmaf.c2.flow_id, "--output-flow-id", output],
        env=env, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "simple_edit.py: error: input flows differ in container: video/mp2t vs video/mp4 (fMP4 with init "
        "segments): a Flow has one container, so the edit could not be exported correctly"]

    async def absent(client: TAMSClient) -> bool:
        return not [f async for f in client.flows() if f["id"] == output]
    assert cmaf.run(absent)

"""simple_edit.py's essence checks against a real local store (issue 14 item 5).

Flows are registered through client.py with the essence parameters under test; each difference
is refused in one line naming the field and both values, ``--force`` accepts the ones an output
Flow can declare truly and the output then declares only what is true of both. End to end: an
8-bit High and a 10-bit High 10 H.264 input, both made with PyAV's libx264 and ingested with
ingest_hls, are refused; forced, the output Flow declares High 10 and no single bit depth, and
its export holds every frame of both, in order.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import av
import pytest
from store_http import ELSEWHERE

import sample_content
from client import NotFound, TAMSClient
from credentials import BasicCredentials
from ingest_core import IngestOptions, ingest
from outgest_core import outgest
from simple_edit import EditError, EditRequest, edit
from tests.conftest import REPO_ROOT, RunningStore

T = TypeVar("T")

BASE_ESSENCE: dict[str, Any] = {
    "frame_width": 320, "frame_height": 180, "frame_rate": {"numerator": 30, "denominator": 1},
    "interlace_mode": "progressive", "bit_depth": 8, "component_type": "YCbCr", "horiz_chroma_subs": 2,
    "vert_chroma_subs": 2, "colorspace": "BT709", "transfer_characteristic": "SDR",
    "aspect_ratio": {"numerator": 16, "denominator": 9}, "pixel_aspect_ratio": {"numerator": 1, "denominator": 1},
    "avc_parameters": {"profile": 100, "level": 30, "flags": 0},
}
FORCE_HINT = ": the edit would be mislabelled or undecodable (--force to make it anyway, declaring only what is true of both)"


def on_store(store: RunningStore, fn: Callable[[TAMSClient], Awaitable[T]]) -> T:
    async def go() -> T:
        async with TAMSClient(store.url, BasicCredentials(store.username, store.password)) as client:
            return await fn(client)
    return asyncio.run(go())


async def register(client: TAMSClient, *, essence: dict[str, Any] | None = None, segments: int = 1,
                   **fields: Any) -> str:
    """A video Flow with ``essence`` over BASE_ESSENCE and ``segments`` 2 s segments (objects held
    elsewhere, registered as uncontrolled; nothing reads their bytes here)."""
    flow_id = str(uuid.uuid4())
    flow = {"id": flow_id, "source_id": str(uuid.uuid4()), "format": "urn:x-nmos:format:video",
            "codec": "video/h264", "container": "video/mp2t", "label": "in",
            "essence_parameters": {**BASE_ESSENCE, **(essence or {})}, **fields}
    await client.put_flow(flow_id, flow)
    bodies = [{**ELSEWHERE, "object_id": f"obj-{uuid.uuid4()}", "timerange": f"[{2 * i}:0_{2 * i + 2}:0)"} for i in range(segments)]
    assert await client.post_segments(flow_id, bodies) == []
    return flow_id


async def refusal(client: TAMSClient, request: EditRequest) -> str:
    with pytest.raises(EditError) as info:
        await edit(client, request)
    with pytest.raises(NotFound):
        await client.get_flow(request.output_flow_id)
    return str(info.value)


HARD_CASES = [
    ({"codec": "video/h265"}, "codec: video/h264 vs video/h265: the joined media could not be decoded as one stream"),
    ({"essence": {"frame_rate": {"numerator": 25, "denominator": 1}}},
     "frame_rate: 30/1 vs 25/1: the edit counts frames at one frame_rate"),
    ({"essence": {"frame_width": 640}}, "frame_width: 320 vs 640: a Flow declares one frame size"),
    ({"essence": {"frame_height": 360}}, "frame_height: 180 vs 360: a Flow declares one frame size"),
    ({"container": "video/iso.segment", "essence": {"init_segments": True}},
     "container: video/mp2t vs video/iso.segment (fMP4 with init segments): a Flow has one container, so the edit "
     "could not be exported correctly"),
]
SOFT_CASES = [
    ({"avc_parameters": {"profile": 110, "level": 30, "flags": 0}}, "avc_parameters.profile: 100 (High) vs 110 (High 10)"),
    ({"avc_parameters": {"profile": 100, "level": 41, "flags": 0}}, "avc_parameters.level: 30 (3.0) vs 41 (4.1)"),
    ({"bit_depth": 10}, "bit_depth: 8 vs 10"),
    ({"component_type": "RGB"}, "component_type: YCbCr vs RGB"),
    ({"horiz_chroma_subs": 1}, "horiz_chroma_subs: 2 vs 1"),
    ({"vert_chroma_subs": 1}, "vert_chroma_subs: 2 vs 1"),
    ({"interlace_mode": "interlaced_tff"}, "interlace_mode: progressive vs interlaced_tff"),
    ({"colorspace": "BT2020"}, "colorspace: BT709 vs BT2020"),
    ({"transfer_characteristic": "PQ"}, "transfer_characteristic: SDR vs PQ"),
    ({"aspect_ratio": {"numerator": 4, "denominator": 3}}, "aspect_ratio: 16/9 vs 4/3"),
    ({"pixel_aspect_ratio": {"numerator": 12, "denominator": 11}}, "pixel_aspect_ratio: 1/1 vs 12/11"),
]


@pytest.mark.parametrize(("change", "shown"), HARD_CASES, ids=[c[1].split(":")[0] for c in HARD_CASES])
def test_differences_no_flow_can_declare_are_refused_even_with_force(shared_store: RunningStore, change: dict,
                                                                     shown: str) -> None:
    async def go(client: TAMSClient) -> tuple[str, str]:
        a = await register(client)
        b = await register(client, essence=change.get("essence"), segments=0,
                           **{k: v for k, v in change.items() if k != "essence"})
        return await refusal(client, EditRequest(a, b)), await refusal(client, EditRequest(a, b, force=True))
    plain, forced = on_store(shared_store, go)
    assert plain == f"input flows differ in {shown}"
    assert forced == f"input flows differ in {shown} (--force cannot accept this)"


@pytest.mark.parametrize(("essence", "shown"), SOFT_CASES, ids=[c[1].split(":")[0] for c in SOFT_CASES])
def test_each_essence_difference_is_refused_and_forced_output_declares_the_truth(
        shared_store: RunningStore, essence: dict, shown: str) -> None:
    async def go(client: TAMSClient) -> tuple[str, dict]:
        a = await register(client)
        b = await register(client, essence=essence)
        message = await refusal(client, EditRequest(a, b))
        forced = EditRequest(a, b, force=True)
        result = await edit(client, forced)
        assert result.written and len(result.segments) == 2
        return message, await client.get_flow(forced.output_flow_id)
    message, out = on_store(shared_store, go)
    assert message == f"input flows differ in {shown}{FORCE_HINT}"
    name = shown.split(":")[0]
    notes = out["tags"]["edit_forced_differences"]
    assert len(notes) == 1 and notes[0].startswith(name + ": ")
    ep = out["essence_parameters"]
    if name == "avc_parameters.profile":
        assert ep["avc_parameters"] == {"profile": 110, "level": 30, "flags": 0}
    elif name == "avc_parameters.level":
        assert ep["avc_parameters"] == {"profile": 100, "level": 41, "flags": 0}
    else:
        assert name not in ep and notes[0].endswith("; left out")
    # Everything else the inputs agree on is still declared.
    unchanged = {k: v for k, v in BASE_ESSENCE.items() if k != name.split(".")[0]}
    assert {k: ep[k] for k in unchanged} == unchanged


def test_command_line_refusal_is_one_line_and_force_makes_the_edit(shared_store: RunningStore, tmp_path: Path) -> None:
    async def flows(client: TAMSClient) -> tuple[str, str]:
        return await register(client), await register(client, essence={"bit_depth": 10, "interlace_mode": "interlaced_bff"})
    a, b = on_store(shared_store, flows)
    env = {k: v for k, v in os.environ.items() if k not in ("TAMS_URL", "USERNAME", "PASSWORD", "OAUTH2_URL",
                                                             "CLIENT_ID", "CLIENT_SECRET")}
    base = [sys.executable, str(REPO_ROOT / "simple_edit.py"), "--tams-url", shared_store.url, "--username",
            shared_store.username, "--password", shared_store.password, "--input1-flow-id", a, "--input2-flow-id", b]
    refused = subprocess.run(base, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        "simple_edit.py: error: input flows differ in bit_depth: 8 vs 10; interlace_mode: progressive vs "
        "interlaced_bff" + FORCE_HINT]
    output = str(uuid.uuid4())
    forced = subprocess.run([*base, "--force", "--output-flow-id", output], env=env, capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, check=False)
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.startswith(f"output flow {output}: 2 segments, 120 frames")
    warned = [line for line in forced.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warned) == 2 and "bit_depth: 8 (input 1), 10 (input 2); left out" in warned[0]

    async def out(client: TAMSClient) -> dict:
        return await client.get_flow(output)
    ep = on_store(shared_store, out)["essence_parameters"]
    assert "bit_depth" not in ep and "interlace_mode" not in ep and ep["frame_width"] == 320


# ---------------------------------------------------------------------------
# Real media: 8-bit High and 10-bit High 10 H.264


def reencode_10_bit(playlist: Path, output_dir: Path) -> Path:
    """The playlist's frames, re-encoded by libx264 at yuv420p10le (High 10), timestamps kept, as HLS."""
    full = output_dir / "full.ts"
    output_dir.mkdir(parents=True)
    sources = sorted(playlist.parent.glob("hls_output_*.ts"))
    with av.open(str(full), "w", format="mpegts", container_options=sample_content.TS_MUX_OPTIONS) as out:
        video = out.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 320, 180, "yuv420p10le"
        video.codec_context.time_base = Fraction(1, 90000)
        video.options = {"preset": "veryfast", "x264-params": "keyint=30:min-keyint=30:scenecut=0"}
        for path in sources:
            with av.open(str(path)) as source:
                for i, frame in enumerate(source.decode(source.streams.video[0])):
                    ten = frame.reformat(format="yuv420p10le")
                    ten.pts, ten.time_base = frame.pts, Fraction(1, 90000)
                    if i == 0:
                        ten.pict_type = av.video.frame.PictureType.I
                    out.mux(video.encode(ten))
        out.mux(video.encode(None))
    playlist_10 = sample_content.remux_to_hls(full, output_dir / "hls", segment_seconds=2)
    full.unlink()
    return playlist_10


def test_8_bit_high_and_10_bit_high_10_inputs_are_refused_and_forced_output_declares_the_truth(
        shared_store: RunningStore, tmp_path: Path) -> None:
    playlist = sample_content.synthesize(tmp_path / "content8", width=320, height=180, fps=30, duration=8,
                                         segment_seconds=2, gop_seconds=1)
    # Frames 120-239 (segments 2 and 3) again, at 10 bits: a different input with the same timeline.
    for path in sorted(playlist.parent.glob("hls_output_*.ts"))[:2]:
        path.rename(tmp_path / path.name)
    playlist_10 = reencode_10_bit(playlist, tmp_path / "content10")
    for path in tmp_path.glob("hls_output_*.ts"):
        path.rename(playlist.parent / path.name)
    output = tmp_path / "edit.ts"

    async def go(client: TAMSClient) -> tuple[dict, dict, str, dict]:
        eight = await ingest(client, IngestOptions(hls=str(playlist), segment_count=2, video_only=True, label="8"))
        ten = await ingest(client, IngestOptions(hls=str(playlist_10), video_only=True, label="10"))
        a, b = eight.flow_ids["video"], ten.flow_ids["video"]
        flow_a, flow_b = await client.get_flow(a), await client.get_flow(b)
        message = await refusal(client, EditRequest(a, b))
        forced = EditRequest(a, b, force=True)
        await edit(client, forced)
        await outgest(client, forced.output_flow_id, output)
        return flow_a, flow_b, message, await client.get_flow(forced.output_flow_id)
    flow_a, flow_b, message, out = on_store(shared_store, go)
    # The ingest declared what the streams are.
    assert (flow_a["essence_parameters"]["bit_depth"], flow_a["essence_parameters"]["avc_parameters"]["profile"]) == (8, 100)
    assert (flow_b["essence_parameters"]["bit_depth"], flow_b["essence_parameters"]["avc_parameters"]["profile"]) == (10, 110)
    assert message.startswith("input flows differ in bit_depth: 8 vs 10; avc_parameters.profile: 100 (High) vs "
                              "110 (High 10)")
    ep = out["essence_parameters"]
    assert "bit_depth" not in ep
    levels = [f["essence_parameters"]["avc_parameters"]["level"] for f in (flow_a, flow_b)]
    assert ep["avc_parameters"]["profile"] == 110 and ep["avc_parameters"]["level"] == max(levels)
    notes = out["tags"]["edit_forced_differences"]
    assert notes[0] == "bit_depth: 8 (input 1), 10 (input 2); left out"
    assert any(n.startswith("avc_parameters.profile: 100 (High) (input 1), 110 (High 10) (input 2); declared 110")
               for n in notes)
    # Every frame of both inputs, in order, across the change of bit depth.
    assert sample_content.read_frame_numbers(output) == list(range(240))

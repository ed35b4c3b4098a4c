"""outgest_file.py writes files players take as they are: MP4 with the ``moov`` box first (fast
start), HEVC tagged ``hvc1``, a timescale on which 29.97 and 59.94 fps are exact, and decode
timestamps that rise steadily where a re-encoded head meets copied frames. Checked with
libavformat's own probe and decoder (PyAV), on PyAV-made media ingested into the real store.
Also: bad input leaves one line, a non-zero exit and no output file.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import uuid
from fractions import Fraction
from pathlib import Path

import av
import pytest
from mediatimestamp.immutable import TimeRange, Timestamp

from ingest_core import IngestOptions, ingest
from outgest_core import outgest
from sample_content import read_frame_numbers
from tests.conftest import REPO_ROOT, RunningStore
from tests.gop_media import make_hls, top_level_boxes
from tests.test_outgest_gop import connect

FRAMES = 120
RATES = {"x265-59.94": ("x265", Fraction(60000, 1001)), "x264-29.97": ("x264-pyramid", Fraction(30000, 1001))}


@pytest.fixture(scope="module")
def store(shared_store: RunningStore) -> RunningStore:
    return shared_store


@pytest.fixture(scope="module")
def flows(store: RunningStore, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, Fraction, Fraction]]:
    """name -> (flow id, Flow time of frame 0 in seconds, frame rate)."""
    root = tmp_path_factory.mktemp("players_media")

    async def setup() -> dict[str, tuple[str, Fraction, Fraction]]:
        out = {}
        async with connect(store) as client:
            for name, (encoder, fps) in RATES.items():
                playlist = make_hls(root / name, encoder=encoder, fps=fps, frames=FRAMES, segment_seconds=Fraction(1),
                                    gop_frames=round(fps), split_by_time=False)
                done = await ingest(client, IngestOptions(hls=str(playlist), segment_count=None,
                                                          flow_id=str(uuid.uuid4()), video_only=True))
                first = await anext(aiter(client.segments(done.flow_ids["video"])))
                start = TimeRange.from_str(first["timerange"]).start
                assert start is not None
                out[name] = (done.flow_ids["video"], Fraction(start.to_nanosec(), 10**9), fps)
        return out

    return asyncio.run(setup())


def window(start: Fraction, fps: Fraction, first: int, stop: int) -> TimeRange:
    def at(n: int) -> Timestamp:
        return Timestamp.from_nanosec(int((start + n / fps) * 10**9))

    return TimeRange(at(first), at(stop), TimeRange.INCLUDE_START)


@pytest.mark.parametrize("name", list(RATES))
@pytest.mark.parametrize("suffix", [".mp4", ".ts"])
async def test_exact_cut_plays_as_players_expect(
    store: RunningStore, flows: dict[str, tuple[str, Fraction, Fraction]], tmp_path: Path, name: str, suffix: str
) -> None:
    flow_id, start, fps = flows[name]
    out = tmp_path / f"cut{suffix}"
    async with connect(store) as client:  # starts and ends inside GOPs: re-encoded head and tail around copies
        summary = await outgest(client, flow_id, out, timerange=window(start, fps, 13, 100), exact=True)
    assert summary.reencoded >= 1
    assert read_frame_numbers(out) == list(range(13, 100))
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        time_base = Fraction(stream.time_base)
        packets = [(p.pts, p.dts) for p in container.demux(stream) if p.size]
        if suffix == ".mp4":
            assert stream.average_rate == fps  # 60000/1001, 30000/1001: no 90 kHz rounding
            assert (1 / time_base) % fps.numerator == 0
            # re-encoded frames carry their own parameter sets in-band, which hvc1 does not allow
            tag = stream.codec_context.codec_tag
            assert tag == ("hev1" if stream.codec_context.name == "hevc" else "avc1")
    step = time_base / fps if suffix == ".mp4" else None
    dts = [d for _, d in packets]
    assert all(d <= p for p, d in packets), "a frame would be decoded after it is shown"
    # Decode timestamps rise by whole frames everywhere, joins included: no one-tick nudges.
    frame_ticks = 1 / (fps * time_base)
    for a, b in itertools.pairwise(dts):
        assert b > a and abs((b - a) / frame_ticks - round((b - a) / frame_ticks)) < Fraction(1, 100), (a, b, step)
    if suffix == ".mp4":
        boxes = top_level_boxes(out)
        assert boxes.index("moov") < boxes.index("mdat")  # fast start


@pytest.fixture(scope="module")
def joined(store: RunningStore, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Fraction]:
    """A 25 fps Flow of two encodes, frames 0-49 without B-frames, then frames 50-99 with a
    B-pyramid (decode times two frames behind): (flow id, Flow time of frame 0)."""
    root = tmp_path_factory.mktemp("joined_media")
    fps = Fraction(25)
    parts = [make_hls(root / "ip", encoder="x264-ip", fps=fps, frames=50, segment_seconds=Fraction(1), gop_frames=25),
             make_hls(root / "pyramid", encoder="x264-pyramid", fps=fps, frames=50, segment_seconds=Fraction(1),
                      gop_frames=25, first_frame=50)]

    async def setup() -> tuple[str, Fraction]:
        flow_id = str(uuid.uuid4())
        async with connect(store) as client:
            for playlist in parts:
                await ingest(client, IngestOptions(hls=str(playlist), segment_count=None, flow_id=flow_id,
                                                   video_only=True))
            first = await anext(aiter(client.segments(flow_id)))
        start = TimeRange.from_str(first["timerange"]).start
        assert start is not None
        return flow_id, Fraction(start.to_nanosec(), 10**9)

    return asyncio.run(setup())


@pytest.mark.parametrize("suffix", [".mp4", ".ts"])
@pytest.mark.parametrize("frames", [(0, 100), (13, 90)], ids=["whole", "cut"])
async def test_a_later_encode_that_reorders_more_deeply_keeps_decode_times_steady(
    store: RunningStore, joined: tuple[str, Fraction], tmp_path: Path, suffix: str, frames: tuple[int, int]
) -> None:
    flow_id, start = joined
    fps = Fraction(25)
    out = tmp_path / f"joined{suffix}"
    async with connect(store) as client:
        timerange = window(start, fps, *frames) if frames != (0, 100) else None
        summary = await outgest(client, flow_id, out, timerange=timerange, exact=timerange is not None)
    assert read_frame_numbers(out) == list(range(*frames))
    assert summary.nudged == 0
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frame_ticks = 1 / (fps * Fraction(stream.time_base))
        packets = [(p.pts, p.dts) for p in container.demux(stream) if p.size]
    assert all(d <= p for p, d in packets), "a frame would be decoded after it is shown"
    # The pyramid part decodes two frames ahead of presentation; the first part's last packets
    # take that delay on gradually (a DecodeClock window), never two packets at one time.
    steps = [(b - a) / frame_ticks for (_, a), (_, b) in itertools.pairwise(packets)]
    assert all(Fraction(9, 10) <= step <= 1 for step in steps), steps
    assert sum(1 for step in steps if step < 1) <= 32
    # the i-th decode time is the i-th presentation time less the reorder delay: none at first
    # (whole export), two frames through the pyramid part
    lag = [shown - dts for shown, (_, dts) in zip(sorted(p for p, _ in packets), packets)]
    assert set(lag[-40:]) == {2 * frame_ticks}
    if frames == (0, 100):
        assert set(lag[:10]) == {0}


async def test_whole_hevc_mp4_is_hvc1_with_exact_rate(
    store: RunningStore, flows: dict[str, tuple[str, Fraction, Fraction]], tmp_path: Path
) -> None:
    flow_id, _, fps = flows["x265-59.94"]
    out = tmp_path / "whole.mp4"
    async with connect(store) as client:
        summary = await outgest(client, flow_id, out)
    assert summary.reencoded == 0
    assert read_frame_numbers(out) == list(range(FRAMES))
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.codec_tag, stream.average_rate, stream.frames) == ("hvc1", fps, FRAMES)
    boxes = top_level_boxes(out)
    assert boxes.index("moov") < boxes.index("mdat")


def run_cli(store: RunningStore, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **store.env}
    return subprocess.run([sys.executable, str(REPO_ROOT / "outgest_file.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_encoder_logs_are_quiet_unless_verbose(
    store: RunningStore, flows: dict[str, tuple[str, Fraction, Fraction]], tmp_path: Path
) -> None:
    flow_id, start, fps = flows["x265-59.94"]
    args = ["--flow-id", flow_id, "--timerange", str(window(start, fps, 5, 30)), "--exact"]
    quiet = run_cli(store, tmp_path, *args, "--output", str(tmp_path / "a.ts"))
    assert quiet.returncode == 0, quiet.stderr
    assert "x265 [info]" not in quiet.stderr and "re-encoded segment" in quiet.stderr
    loud = run_cli(store, tmp_path, *args, "--output", str(tmp_path / "b.ts"), "--verbose")
    assert loud.returncode == 0 and "x265 [info]" in loud.stderr
    assert read_frame_numbers(tmp_path / "a.ts") == read_frame_numbers(tmp_path / "b.ts") == list(range(5, 30))


async def test_undecodable_object_gives_one_line_and_no_output(
    store: RunningStore, flows: dict[str, tuple[str, Fraction, Fraction]], tmp_path: Path
) -> None:
    flow_id, _, _ = flows["x264-29.97"]
    async with connect(store) as client:
        flow = await client.get_flow(flow_id)
        broken = str(uuid.uuid4())
        await client.put_flow(broken, {**{k: flow[k] for k in ("format", "codec", "container", "essence_parameters")},
                                       "id": broken, "source_id": str(uuid.uuid4())})
        segments = [s async for s in client.segments(flow_id)]
        target = await anext(aiter(client.allocate_storage(broken, batch=1)))
        garbage = tmp_path / "garbage.ts"
        garbage.write_bytes(b"\x47" + os.urandom(188 * 50))
        await client.upload_object(target, garbage)
        garbage.unlink()
        await client.post_segments(broken, [
            {"object_id": segments[0]["object_id"], "timerange": segments[0]["timerange"]},
            {"object_id": target.object_id, "timerange": segments[1]["timerange"]},
        ])
    out = tmp_path / "out.mp4"
    result = run_cli(store, tmp_path, "--flow-id", broken, "--output", str(out), "--quiet")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert target.object_id in lines[0] and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []

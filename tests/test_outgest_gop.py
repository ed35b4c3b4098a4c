"""outgest_file.py on long-GOP structures: x265 open GOPs, x264 B-pyramids, HLS segments that
start inside a GOP (``split_by_time``), at 25, 29.97 and 59.94 fps.

Media is made with PyAV (``tests/gop_media.py``), ingested into the real local store with
ingest_hls.py, exported with and without ``--exact``, and the frame numbers burnt into the
pictures are read back: exactly the frames of the timerange, in order, each once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import pytest
from mediatimestamp.immutable import TimeRange, Timestamp

from client import TAMSClient
from credentials import BasicCredentials
from ingest_core import IngestOptions, ingest
from outgest_core import OutgestError, outgest
from sample_content import read_frame_numbers
from tests.conftest import RunningStore
from tests.gop_media import make_hls, top_level_boxes
from tests.synthetic_media import synthesized

FRAMES = 150


@dataclass(frozen=True)
class Case:
    encoder: str
    fps: Fraction
    gop: int  # frames
    segment_seconds: Fraction
    split_by_time: bool


CASES = {
    "x265-open-gop-29.97": Case("x265", Fraction(30000, 1001), 60, Fraction(2), False),
    "x264-pyramid-split-25": Case("x264-pyramid", Fraction(25), 45, Fraction(1), True),
    "x265-split-59.94": Case("x265", Fraction(60000, 1001), 90, Fraction(1), True),
}


@dataclass
class Ingested:
    case: Case
    flow_id: str
    start: Fraction  # Flow time of frame 0, seconds
    playlist: Path

    def time(self, n: int) -> Timestamp:
        return Timestamp.from_nanosec(int((self.start + n / self.case.fps) * 10**9))

    def window(self, first: int, stop: int) -> TimeRange:
        return TimeRange(self.time(first), self.time(stop), TimeRange.INCLUDE_START)


@pytest.fixture(scope="module")
def store(shared_store: RunningStore) -> RunningStore:
    return shared_store


def connect(store: RunningStore) -> TAMSClient:
    return TAMSClient(store.url, BasicCredentials(store.username, store.password))


@pytest.fixture(scope="module")
def flows(store: RunningStore, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ingested]:
    root = tmp_path_factory.mktemp("gop_media")

    async def setup() -> dict[str, Ingested]:
        out = {}
        async with connect(store) as client:
            for name, case in CASES.items():
                playlist = make_hls(root / name, encoder=case.encoder, fps=case.fps, frames=FRAMES,
                                    segment_seconds=case.segment_seconds, gop_frames=case.gop,
                                    split_by_time=case.split_by_time)
                done = await ingest(client, IngestOptions(hls=str(playlist), segment_count=None,
                                                          flow_id=str(uuid.uuid4()), video_only=True))
                flow_id = done.flow_ids["video"]
                first = await anext(aiter(client.segments(flow_id)))
                start = TimeRange.from_str(first["timerange"]).start
                assert start is not None
                out[name] = Ingested(case, flow_id, Fraction(start.to_nanosec(), 10**9), playlist)
        return out

    return asyncio.run(setup())


async def export(store: RunningStore, flow: Ingested, path: Path, **options: object):  # type: ignore[no-untyped-def]
    async with connect(store) as client:
        return await outgest(client, flow.flow_id, path, **options)  # type: ignore[arg-type]


def segment_starts(flow: Ingested) -> list[int]:
    """The first frame number (presentation order) of each segment file as the muxer wrote it."""
    starts = []
    for path in sorted(flow.playlist.parent.glob("seg_*.ts")):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            pts = min(p.pts for p in container.demux(stream) if p.size and p.pts is not None)
            starts.append(round((pts * Fraction(stream.time_base) - Fraction(0)) * flow.case.fps))
    return [s - starts[0] for s in starts]


@pytest.mark.parametrize("name", list(CASES))
async def test_whole_flow_and_exact_cuts_hold_exactly_the_frames(
    store: RunningStore, flows: dict[str, Ingested], tmp_path: Path, name: str
) -> None:
    flow = flows[name]
    whole = await export(store, flow, tmp_path / "whole.ts")
    assert read_frame_numbers(tmp_path / "whole.ts") == list(range(FRAMES))
    assert whole.frames == FRAMES and whole.reencoded == 0
    for first, stop in ((7, 71), (flow.case.gop, min(FRAMES, 2 * flow.case.gop + 3)), (61, 62), (33, FRAMES)):
        out = tmp_path / f"cut_{first}_{stop}.ts"
        summary = await export(store, flow, out, timerange=flow.window(first, stop), exact=True)
        assert read_frame_numbers(out) == list(range(first, stop)), (first, stop)
        assert summary.frames == stop - first


@pytest.mark.parametrize("name", list(CASES))
async def test_one_segment_without_exact_decodes_from_its_first_frame_by_precharge(
    store: RunningStore, flows: dict[str, Ingested], tmp_path: Path, name: str
) -> None:
    """A segment whose first frames need the object before (open GOP leading frames, or a start
    inside a GOP) is exported whole and decodable: they are re-encoded after precharge."""
    flow = flows[name]
    starts = segment_starts(flow)
    assert len(starts) >= 3
    first, stop = starts[1], starts[2]
    out = tmp_path / "one.ts"
    summary = await export(store, flow, out, timerange=flow.window(first + 1, first + 2))
    assert read_frame_numbers(out) == list(range(first, stop))
    assert summary.frames == stop - first and summary.segments == 1
    assert summary.reencoded == 1  # just the frames that needed precharge; the rest copied


async def test_no_segment_before_to_precharge_from_warns_and_counts_what_the_file_holds(
    store: RunningStore, flows: dict[str, Ingested], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = flows["x264-pyramid-split-25"]
    async with connect(store) as client:
        done = await ingest(client, IngestOptions(hls=str(source.playlist), start_segment=1, segment_count=1,
                                                  flow_id=str(uuid.uuid4()), video_only=True))
        flow = Ingested(source.case, done.flow_ids["video"], source.start, source.playlist)
        out = tmp_path / "alone.ts"
        with caplog.at_level(logging.WARNING, logger="outgest_file"):
            summary = await outgest(client, flow.flow_id, out)
        with pytest.raises(OutgestError, match="precharge"):
            await outgest(client, flow.flow_id, tmp_path / "exact.ts", timerange=TimeRange.eternity(), exact=True)
    starts = segment_starts(source)
    numbers = read_frame_numbers(out)
    assert summary.frames == len(numbers) and numbers == list(range(numbers[0], starts[2]))
    lost = numbers[0] - starts[1]
    assert lost > 0  # the segment starts inside a GOP begun in the segment before
    assert any(f"{lost} frames at" in r.getMessage() and "left out" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "exact.ts").exists()


@pytest.fixture(scope="module")
def audio_flow(store: RunningStore, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An AAC audio Flow (48 kHz, 6 s from 0.067 s) over the same stretch of Flow time as FLOWS."""
    content = synthesized(tmp_path_factory, fps=25, duration=6, audio=True)

    async def setup() -> str:
        async with connect(store) as client:
            done = await ingest(client, IngestOptions(hls=str(content.playlist), segment_count=None,
                                                      flow_id=str(uuid.uuid4())))
        return done.flow_ids["audio"]

    return asyncio.run(setup())


def samples(t: Timestamp | None) -> int:
    assert t is not None
    return round(Fraction(t.to_nanosec(), 10**9) * 48000)


@pytest.mark.parametrize("suffix", [".mp4", ".ts"])
@pytest.mark.parametrize("name", ["x264-pyramid-split-25", "x265-split-59.94"])
async def test_muxed_exports_precharge_segments_that_start_inside_a_gop(
    store: RunningStore, flows: dict[str, Ingested], audio_flow: str, tmp_path: Path, name: str, suffix: str
) -> None:
    """With --audio-flow-id too, a cut (or a whole segment) whose first frames need the object
    before gets them by precharge, and the audio is cut to the same timerange."""
    flow = flows[name]
    starts = segment_starts(flow)
    cut = flow.window(starts[1] + 1, starts[2] + 5)
    out = tmp_path / f"cut{suffix}"
    async with connect(store) as client:
        summary = await outgest(client, flow.flow_id, out, timerange=cut, exact=True, audio_flow_id=audio_flow)
        assert read_frame_numbers(out) == list(range(starts[1] + 1, starts[2] + 5))
        assert summary.reencoded >= 1 and summary.nudged == 0
        assert summary.audio_samples == samples(cut.end) - samples(cut.start)  # type: ignore[attr-defined]
        with av.open(str(out)) as container:
            assert sorted(s.type for s in container.streams) == ["audio", "video"]
        one = tmp_path / f"one{suffix}"
        whole = await outgest(client, flow.flow_id, one, timerange=flow.window(starts[1] + 1, starts[1] + 2),
                              audio_flow_id=audio_flow)
    assert read_frame_numbers(one) == list(range(starts[1], starts[2]))
    assert whole.frames == starts[2] - starts[1] and whole.reencoded == 1


@pytest.mark.parametrize(("name", "first", "stop", "tag"), [
    ("x265-open-gop-29.97", 60, FRAMES, "hvc1"),  # whole GOPs: every frame copied, one set of parameter sets
    ("x265-split-59.94", 20, 130, "hev1"),  # re-encoded heads and tails carry their own
])
async def test_muxed_mp4_is_player_ready(
    store: RunningStore, flows: dict[str, Ingested], audio_flow: str, tmp_path: Path, name: str, first: int,
    stop: int, tag: str
) -> None:
    """A muxed A/V MP4 is made as the single-Flow one is: moov first, hvc1 where it can be, the
    exact frame rate; the audio keeps its edit list (exactly the samples of the cut) through the
    hvc1 rewrite."""
    flow = flows[name]
    cut = flow.window(first, stop)
    out = tmp_path / "av.mp4"
    async with connect(store) as client:
        summary = await outgest(client, flow.flow_id, out, timerange=cut, exact=True, audio_flow_id=audio_flow)
    assert read_frame_numbers(out) == list(range(first, stop))
    assert (summary.reencoded == 0) == (tag == "hvc1")
    wanted = samples(cut.end) - samples(cut.start)
    assert summary.audio_samples == wanted  # type: ignore[attr-defined]
    with av.open(str(out)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.codec_tag, video.average_rate, video.frames) == (tag, flow.case.fps, stop - first)
        assert (1 / Fraction(video.time_base)) % flow.case.fps.numerator == 0
        assert audio.duration is not None
        assert audio.duration * Fraction(audio.time_base) * 48000 == wanted  # the edit list's duration
        frames = [frame for packet in container.demux(audio) for frame in packet.decode()]
    # decoding starts at the cut's first sample (priming and skip by the edit list); libavformat
    # gives the last frame whole, the edit list's duration ends it
    assert frames[0].pts == 0
    assert 0 <= sum(frame.samples for frame in frames) - wanted < 1024
    boxes = top_level_boxes(out)
    assert boxes.index("moov") < boxes.index("mdat")

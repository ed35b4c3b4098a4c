"""outgest_file.py on audio + video: one muxed file from a multi-essence Flow (or a video Flow plus
``--audio-flow-id``), both streams in sync on the Flow timeline, audio cut to the sample.

Content is synthesized with PyAV (320x180, 25 and 29.97 fps, 6 s in 2 s segments, frame numbers
burnt in, AAC stereo at 48 kHz) and ingested with ingest_hls.py into a real local store, which
registers a video Flow, an audio Flow and a multi-essence Flow collecting both.

The audio is a 1 kHz tone on the left and a 1.5 kHz tone on the right (``sample_content``): input
sample ``s`` is ``g * sin(2 pi f s / 48000)`` and is presented at Flow sample ``AUDIO_ORIGIN + s``
(the encoder input starts one AAC frame after the first packet's pts, the frame its priming fills).
The phase of each tone over a window of decoded samples says which source samples they are, to a
fraction of a sample, modulo 48 and 32 samples: together modulo 96. The sample count and the
timestamps pin the rest, so a file that starts or ends one sample early or late fails.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import uuid
from array import array
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import pytest
from mediatimestamp.immutable import TimeRange, Timestamp

from client import TAMSClient
from credentials import BasicCredentials
from ingest_core import IngestOptions, ingest
from outgest_core import main, outgest
from sample_content import read_frame_numbers
from tests.conftest import REPO_ROOT, RunningStore
from tests.synthetic_media import SynthesizedHLS, synthesized, ticks_to_ns

RATE = 48000
AAC_FRAME = 1024
AUDIO_ORIGIN = 6000 * RATE // 90000 + AAC_FRAME  # Flow sample index of input sample 0 (4224)
FIRST_PACKET = 6000 * RATE // 90000  # the first AAC packet's Flow sample index (3200)
WINDOW = 2880  # whole periods of both tones
FPS = [Fraction(25), Fraction(30000, 1001)]
EACH_FORM = pytest.mark.parametrize(
    ("fps", "suffix"), [pytest.param(fps, suffix, id=f"{float(fps):.2f}{suffix}") for fps in FPS for suffix in (".ts", ".mp4")]
)


def flow_samples(t: Timestamp) -> int:
    """The Flow sample index nearest a timerange bound: the first sample a cut there keeps."""
    return round(Fraction(t.to_nanosec(), 10**9) * RATE)


def frame_time(content: SynthesizedHLS, n: int) -> Timestamp:
    return Timestamp.from_nanosec(ticks_to_ns(content.frame_pts(n)))


@dataclass
class Decoded:
    first_pts: int  # of the first decoded frame, in the audio stream's time base
    time_base: Fraction
    left: array
    right: array
    declared: int | None  # the stream's duration in samples, as the container declares it


def decode_audio(path: Path) -> Decoded:
    left, right = array("f"), array("f")
    first = None
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        tb = Fraction(stream.time_base)
        declared = round(stream.duration * tb * RATE) if stream.duration is not None else None
        for packet in container.demux(stream):
            for frame in packet.decode():
                if first is None:
                    first = frame.pts
                for values, plane in zip((left, right), frame.planes):
                    values.frombytes(bytes(plane)[: 4 * frame.samples])
    assert first is not None
    return Decoded(first, tb, left, right, declared)


def lag(values: array, start: int, flow_index: int, frequency: int) -> float:
    """How many samples ``values[start:start + WINDOW]`` lag the tone that sample ``flow_index``
    carries, modulo the tone's period (0 when they are that sample)."""
    omega = 2 * math.pi * frequency / RATE
    i_sum = q_sum = 0.0
    for k in range(WINDOW):
        s = flow_index - AUDIO_ORIGIN + k
        i_sum += values[start + k] * math.cos(omega * s)
        q_sum += values[start + k] * math.sin(omega * s)
    assert math.hypot(i_sum, q_sum) > 0.05 * WINDOW / 2, "no tone here"
    return math.atan2(i_sum, q_sum) / omega


def assert_samples_are(decoded: Decoded, start: int, flow_index: int) -> None:
    """Decoded samples from ``start`` are the source's samples from Flow sample ``flow_index``."""
    for values, frequency in ((decoded.left, 1000), (decoded.right, 1500)):
        # AAC keeps a tone's phase to a few tenths of a sample; one sample off is a lag of 1
        assert abs(lag(values, start, flow_index, frequency)) < 0.4, (start, flow_index, frequency)


def rms(values: array, start: int, stop: int) -> float:
    return math.sqrt(sum(v * v for v in values[start:stop]) / max(1, stop - start))


@dataclass
class Ingested:
    content: SynthesizedHLS
    video: str
    audio: str
    multi: str
    audio_timerange: TimeRange


@pytest.fixture(scope="module")
def ingested(shared_store: RunningStore, tmp_path_factory: pytest.TempPathFactory) -> dict[Fraction, Ingested]:
    async def run() -> dict[Fraction, Ingested]:
        result = {}
        async with connect(shared_store) as client:
            for fps in FPS:
                content = synthesized(tmp_path_factory, fps=fps, duration=6, audio=True)
                flows = (await ingest(client, IngestOptions(hls=str(content.playlist), segment_count=None,
                                                            flow_id=str(uuid.uuid4())))).flow_ids
                audio = await client.get_flow(flows["audio"], include_timerange=True)
                result[fps] = Ingested(content, flows["video"], flows["audio"], flows["multi"],
                                       TimeRange.from_str(audio["timerange"]))
        return result

    return asyncio.run(run())


def run_outgest(args: list[str], as_script: bool, cwd: Path, capsys: pytest.CaptureFixture[str],
                stream: str = "out") -> tuple[int, str]:
    """outgest_file's exit code and its stdout (or stderr): through ``main`` in this process, or
    as a user runs it, where outgest_file.py is ``__main__`` and outgest_audio imports it by name."""
    if as_script:
        done = subprocess.run([sys.executable, str(REPO_ROOT / "outgest_file.py"), *args], capture_output=True,
                              text=True, cwd=cwd, timeout=120)
        return done.returncode, done.stdout if stream == "out" else done.stderr
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out if stream == "out" else captured.err


def connect(store: RunningStore) -> TAMSClient:
    return TAMSClient(store.url, BasicCredentials(store.username, store.password))


def cut_for(content: SynthesizedHLS) -> tuple[int, int]:
    """Frames [first, stop) of a cut from inside a GOP of the first segment to inside one of the
    third, with bounds on the video frame grid (so, at 29.97 fps, off the audio sample grid)."""
    return content.segment_frames * 3 // 4, content.segment_frames * 9 // 4


@EACH_FORM
async def test_multi_flow_exports_muxed_whole(
    shared_store: RunningStore, ingested: dict[Fraction, Ingested], tmp_path: Path, fps: Fraction, suffix: str
) -> None:
    content = ingested[fps].content
    out = tmp_path / f"whole{suffix}"
    async with connect(shared_store) as client:
        summary = await outgest(client, ingested[fps].multi, out)
    flows = ingested[fps]
    assert read_frame_numbers(out) == list(range(content.frame_count))
    audio_start = flow_samples(flows.audio_timerange.start)
    audio_samples = flow_samples(flows.audio_timerange.end) - audio_start
    assert summary.audio_samples == audio_samples  # type: ignore[attr-defined]
    decoded = decode_audio(out)
    assert len(decoded.left) == audio_samples  # whole segments: whole AAC frames
    # (the encoder's first frames after its priming are still settling: check from the fourth)
    assert_samples_are(decoded, 4 * AAC_FRAME, audio_start + 4 * AAC_FRAME)
    assert_samples_are(decoded, audio_samples - WINDOW, audio_start + audio_samples - WINDOW)
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        video_start = Fraction(video.start_time) * Fraction(video.time_base)
    audio_time = decoded.first_pts * decoded.time_base
    # sync: the first frame and the first sample where their Flow times put them
    if suffix == ".ts":
        assert video_start == Fraction(content.frame_pts(0), 90000)
        assert audio_time == Fraction(audio_start, RATE)
    else:
        assert video_start == 0
        assert audio_time == Fraction(audio_start, RATE) - Fraction(content.frame_pts(0), 90000)


@EACH_FORM
async def test_exact_cut_holds_the_frames_and_samples_of_the_timerange(
    shared_store: RunningStore, ingested: dict[Fraction, Ingested], tmp_path: Path, fps: Fraction, suffix: str
) -> None:
    flows = ingested[fps]
    content = flows.content
    first, stop = cut_for(content)
    window = TimeRange(frame_time(content, first), frame_time(content, stop), TimeRange.INCLUDE_START)
    out = tmp_path / f"cut{suffix}"
    async with connect(shared_store) as client:
        summary = await outgest(client, flows.multi, out, timerange=window, exact=True)
    assert read_frame_numbers(out) == list(range(first, stop))
    m0, m1 = flow_samples(window.start), flow_samples(window.end)
    assert summary.audio_samples == m1 - m0  # type: ignore[attr-defined]
    decoded = decode_audio(out)
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        video_start = Fraction(video.start_time) * Fraction(video.time_base)
    if suffix == ".mp4":
        # the edit list: the file declares exactly the samples, and decoding starts at the first
        assert decoded.declared == m1 - m0
        assert decoded.first_pts == 0
        assert_samples_are(decoded, 0, m0)
        assert_samples_are(decoded, m1 - m0 - WINDOW, m1 - WINDOW)
        # sync: audio starts at the first sample of the timerange, video at its first frame
        assert video_start == Fraction(round((Fraction(content.frame_pts(first), 90000) - Fraction(m0, RATE)) * 90000),
                                       90000)
        assert summary.silent_samples == 0  # type: ignore[attr-defined]
    else:
        # MPEG-TS holds whole AAC frames: the ones the bounds fall in, silenced outside the timerange,
        # after one frame of silence that primes the decoder for the first
        head = (m0 - FIRST_PACKET) // AAC_FRAME * AAC_FRAME + FIRST_PACKET - AAC_FRAME
        tail = -(-(m1 - FIRST_PACKET) // AAC_FRAME) * AAC_FRAME + FIRST_PACKET
        assert decoded.first_pts * decoded.time_base == Fraction(head, RATE)
        assert len(decoded.left) == tail - head
        assert summary.silent_samples == (tail - head) - (m1 - m0)  # type: ignore[attr-defined]
        start = m0 - head
        assert_samples_are(decoded, start, m0)
        assert_samples_are(decoded, m1 - head - WINDOW, m1 - WINDOW)
        for values in (decoded.left, decoded.right):
            loud = rms(values, start, start + WINDOW)
            # silenced (what is left is the coding noise of the frame the cut falls in, below -20 dB)
            assert rms(values, 0, max(0, start - 64)) < loud / 10  # before the cut
            assert rms(values, m1 - head + 64, tail - head) < loud / 10  # and after it
        assert video_start == Fraction(content.frame_pts(first), 90000)


@pytest.mark.parametrize("as_script", [False, True], ids=["main", "script"])
def test_video_flow_with_audio_flow_id_on_the_command_line(
    shared_store: RunningStore, ingested: dict[Fraction, Ingested], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], as_script: bool,
) -> None:
    flows = ingested[Fraction(25)]
    out = tmp_path / "av.mp4"
    code, printed = run_outgest(["--tams-url", shared_store.url, "--username", shared_store.username,
                                 "--password", shared_store.password, "--flow-id", flows.video, "--audio-flow-id",
                                 flows.audio, "--output", str(out), "--timerange", "[1:500000000_4:0)", "--exact"],
                                as_script, tmp_path, capsys)
    assert code == 0
    assert "120000 audio samples (2.500000 s at 48000 Hz)" in printed
    decoded = decode_audio(out)
    assert decoded.declared == 120000 and decoded.first_pts == 0
    assert_samples_are(decoded, 0, 72000)
    # 25 fps frames from 6000 ticks: the first at or after 1.5 s is frame 36
    assert read_frame_numbers(out) == list(range(36, 99))


@pytest.mark.parametrize(
    ("case", "message"),
    [("codec", "codec audio/x-mystery"), ("not_audio", "is not an audio Flow"), ("missing", "not found")],
)
@pytest.mark.parametrize("as_script", [False, True], ids=["main", "script"])
def test_bad_audio_input_gives_one_line_and_no_output(
    shared_store: RunningStore, ingested: dict[Fraction, Ingested], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], case: str, message: str, as_script: bool,
) -> None:
    flows = ingested[Fraction(25)]
    audio_id = str(uuid.uuid4())
    if case == "codec":
        async def put() -> None:
            async with connect(shared_store) as client:
                await client.put_flow(audio_id, {
                    "id": audio_id, "source_id": str(uuid.uuid4()), "format": "urn:x-nmos:format:audio",
                    "codec": "audio/x-mystery", "container": "video/mp2t",
                    "essence_parameters": {"sample_rate": 48000, "channels": 2},
                })  # fmt: skip

        asyncio.run(put())
    elif case == "not_audio":
        audio_id = flows.video
    out = tmp_path / "out.ts"
    args = ["--tams-url", shared_store.url, "--username", shared_store.username, "--password",
            shared_store.password, "--flow-id", flows.video, "--audio-flow-id", audio_id, "--output", str(out),
            "--quiet"]
    code, err = run_outgest(args, as_script, tmp_path, capsys, stream="err")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert list(tmp_path.iterdir()) == []


async def test_streams_are_placed_by_flow_time_not_media_time(
    shared_store: RunningStore, ingested: dict[Fraction, Ingested], tmp_path: Path
) -> None:
    """An audio Flow reusing the ingested audio objects 48009 samples later on the timeline (a shift
    the tones' phase shows, being no multiple of their periods): the export puts its samples that
    much after the video frames they came with."""
    flows = ingested[Fraction(25)]
    shifted = str(uuid.uuid4())
    shift_samples = 48009
    shift = Timestamp.from_sec_nsec("1:187500")  # 48009 / 48000 s
    async with connect(shared_store) as client:
        source = await client.get_flow(flows.audio)
        await client.put_flow(shifted, {**{k: source[k] for k in ("format", "codec", "container", "essence_parameters")},
                                        "id": shifted, "source_id": str(uuid.uuid4())})
        segments = [item async for item in client.segments(flows.audio)]
        assert await client.post_segments(shifted, [{
            "object_id": item["object_id"],
            "timerange": str(TimeRange(TimeRange.from_str(item["timerange"]).start + shift,
                                       TimeRange.from_str(item["timerange"]).end + shift, TimeRange.INCLUDE_START)),
            "ts_offset": str(shift),
        } for item in segments]) == []  # fmt: skip
        out = tmp_path / "shifted.mp4"
        window = TimeRange.from_str("[2:0_4:0)")
        summary = await outgest(client, flows.video, out, timerange=window, exact=True, audio_flow_id=shifted)
    assert summary.audio_samples == 2 * RATE  # type: ignore[attr-defined]
    decoded = decode_audio(out)
    assert decoded.first_pts == 0 and decoded.declared == 2 * RATE
    assert_samples_are(decoded, 0, 2 * RATE - shift_samples)  # Flow sample 96000 is the source's 47991
    assert_samples_are(decoded, RATE, 3 * RATE - shift_samples)
    # 25 fps frames from 6000 ticks: the first at or after 2 s is frame 49, at 2.0267 s
    assert read_frame_numbers(out) == list(range(49, 99))
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        # on the nearest tick of the video's frame-rate time base (1/12800 s at 25 fps)
        tick = Fraction(video.time_base)
        assert abs(video.start_time * tick - (Fraction(6000 + 49 * 3600, 90000) - 2)) <= tick / 2


async def test_audio_flow_alone_cuts_to_the_sample_with_inclusive_bounds(
    shared_store: RunningStore, ingested: dict[Fraction, Ingested], tmp_path: Path
) -> None:
    """An audio-only MP4 of ``[1:500010000_3:0]``: the first sample is the one nearest the start
    (1.5 s, 0.48 of a sample before it), and the inclusive end keeps the sample exactly at 3 s."""
    flows = ingested[Fraction(25)]
    out = tmp_path / "audio.mp4"
    async with connect(shared_store) as client:
        summary = await outgest(client, flows.audio, out, timerange=TimeRange.from_str("[1:500010000_3:0]"), exact=True)
    assert summary.audio_samples == 3 * RATE + 1 - 72000  # type: ignore[attr-defined]
    decoded = decode_audio(out)
    assert decoded.declared == 3 * RATE + 1 - 72000 and decoded.first_pts == 0
    assert_samples_are(decoded, 0, 72000)
    assert_samples_are(decoded, 3 * RATE + 1 - 72000 - WINDOW, 3 * RATE + 1 - WINDOW)
    with av.open(str(out)) as container:
        assert [s.type for s in container.streams] == ["audio"]

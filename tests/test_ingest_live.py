"""ingest_hls.py --follow against live windows that the tests advance while it runs, as a real
subprocess against the real local store: exactly once in media sequence order, across the 33-bit
pts wrap, across resumed runs and a discontinuity, through a playlist that briefly goes missing,
a SIGTERM, a gap, and a media sequence that goes backwards. Every check reads the burnt-in frame
numbers back from an outgest_file.py export, or from the registered objects themselves."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import os
import pty
import re
import signal
import struct
import sys
import termios
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import pytest
from mediatimestamp.immutable import TimeRange

import ingest_core
import outgest_core
import sample_content
from client import TAMSClient
from credentials import OAuth2ClientCredentials
from tests.synthetic_media import SynthesizedHLS, synthesized, ticks_to_ns

if TYPE_CHECKING:
    from tests.conftest import RunningStore

SCRIPT = Path(ingest_core.__file__).with_name("ingest_hls.py").resolve()
WRAP = 1 << 33
FPS = 10
FRAMES_PER_SEGMENT = FPS  # 1-second segments
# frame 0 2.5 s before the wrap: segment 2 holds it, segments 3 on come after it
WRAP_START = WRAP - 225000


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory: pytest.TempPathFactory) -> SynthesizedHLS:
    """8 one-second segments of 10 frames (frames 0-79), the 2^33 wrap inside segment 2."""
    return synthesized(tmp_path_factory, fps=FPS, duration=8, segment_seconds=1, start_pts=WRAP_START)


@dataclass(frozen=True)
class Splice:
    first: SynthesizedHLS  # frames 0-39 from pts 6000
    second: Path  # frames 40-79 on a new timestamp base
    second_start: int  # its first pts


@pytest.fixture(scope="module")
def splice(tmp_path_factory: pytest.TempPathFactory) -> Splice:
    first = synthesized(tmp_path_factory, fps=FPS, duration=4, segment_seconds=1)
    start = 7_000_000  # 77.8 s: nowhere near where the first part ends
    second = sample_content.synthesize(tmp_path_factory.mktemp("splice"), fps=FPS, duration=4, segment_seconds=1,
                                       start_pts=start, first_frame=40)
    return Splice(first, second, start)


def _client(store: RunningStore) -> TAMSClient:
    credentials = OAuth2ClientCredentials(store.oauth2_url, store.env["CLIENT_ID"], store.env["CLIENT_SECRET"])
    return TAMSClient(store.url, credentials)


async def _segments(store: RunningStore, flow_id: str) -> list[dict[str, Any]]:
    async with _client(store) as client:
        return [s async for s in client.segments(flow_id, include_object_timerange=True)]


@dataclass
class Run:
    """One ``ingest_hls.py`` subprocess; stderr goes to a file read at the end."""

    process: asyncio.subprocess.Process
    stderr_path: Path

    async def loaded(self, timeout: float = 20) -> None:
        """Wait until the run has read the playlist and set up its Flows (it logs their ids), so a
        test advances the window only once it is being followed."""
        deadline = time.monotonic() + timeout
        while "flow id" not in self.stderr_path.read_text():
            assert self.process.returncode is None, self.stderr_path.read_text()
            assert time.monotonic() < deadline, self.stderr_path.read_text()
            await asyncio.sleep(0.05)

    async def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        stdout, _ = await asyncio.wait_for(self.process.communicate(), timeout)
        assert self.process.returncode is not None
        return self.process.returncode, stdout.decode(), self.stderr_path.read_text()


async def _start(store: RunningStore, playlist: Path, flow_id: str, *args: str, cwd: Path,
                 video_only: bool = True) -> Run:
    stderr_path = cwd / f"stderr-{uuid.uuid4().hex[:8]}.txt"
    environ = {**os.environ, **store.env}
    with stderr_path.open("w") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), "--hls-filename", str(playlist), "--flow-id", flow_id,
            *(["--video-only"] if video_only else []), "--hls-segment-count", "0", *args,
            stdout=asyncio.subprocess.PIPE, stderr=stderr, cwd=cwd, env=environ,
        )
    return Run(process, stderr_path)


async def _wait_for_segments(store: RunningStore, flow_id: str, count: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while True:
        have = len(await _segments(store, flow_id))
        if have >= count:
            return have
        assert time.monotonic() < deadline, f"{have} of {count} segments after {timeout} s"
        await asyncio.sleep(0.1)


async def _exported_frames(store: RunningStore, flow_id: str, path: Path) -> list[int]:
    async with _client(store) as client:
        await outgest_core.outgest(client, flow_id, path)
    return sample_content.read_frame_numbers(path)


async def _each_segment_holds_its_frames(store: RunningStore, flow_id: str, tmp_path: Path,
                                         content: SynthesizedHLS) -> list[int]:
    """Nothing half-registered: every segment is one of the content's, at its exact timerange, and
    its object is there and holds exactly that segment's frames. Returns which segments they are."""
    starts = [ticks_to_ns(content.video_ticks(k)[0]) for k in range(content.segment_count)]
    found = []
    async with _client(store) as client:
        for segment in await _segments(store, flow_id):
            timerange = TimeRange.from_str(segment["timerange"])
            assert timerange.start is not None and timerange.start.to_nanosec() in starts, timerange
            k = starts.index(timerange.start.to_nanosec())
            assert timerange == content.video_timerange(k)
            path = tmp_path / f"object-{k}.ts"
            path.write_bytes(await client.download_object(segment["get_urls"][0]))
            assert sample_content.read_frame_numbers(path) == content.frames(k)
            found.append(k)
    return found


def _contiguous(segments: list[dict[str, Any]]) -> list[TimeRange]:
    ranges = [TimeRange.from_str(s["timerange"]) for s in segments]
    for before, after in zip(ranges, ranges[1:]):
        assert before.end == after.start, (before, after)
    return ranges


def _live(directory: Path, content: SynthesizedHLS | Path, window: int) -> sample_content.LiveWindow:
    live = sample_content.LiveWindow(directory, window=window)
    live.add(content if isinstance(content, Path) else content.playlist)
    return live


async def _following(store: RunningStore, content: SynthesizedHLS, tmp_path: Path, *, window: int, published: int,
                     args: list[str] | None = None, first_segment: bool = True,
                     ) -> tuple[sample_content.LiveWindow, str, Run]:
    """A live window of ``content`` with ``published`` segments, followed by a new run into a new
    Flow; returns once the run has registered its first segment (or, without ``first_segment``,
    once it has set up its Flows)."""
    live = _live(tmp_path / "live", content, window)
    live.publish(published)
    flow_id = str(uuid.uuid4())
    run = await _start(store, live.playlist, flow_id, "--follow", *(args or []), cwd=tmp_path)
    if first_segment:
        await _wait_for_segments(store, flow_id, 1)
    else:
        await run.loaded()
    return live, flow_id, run


async def _advance(live: sample_content.LiveWindow, until: int, every: float = 0.5) -> None:
    """Publish one segment each ``every`` seconds (half the target duration: none is missed)."""
    while live.published < until:
        await asyncio.sleep(every)
        live.publish(1)


# -- following --------------------------------------------------------------------------------


async def test_follow_ingests_a_live_window_across_the_wrap_every_frame_once_in_order(
    shared_store: RunningStore, wrapped: SynthesizedHLS, tmp_path: Path
) -> None:
    live, flow_id, run = await _following(shared_store, wrapped, tmp_path, window=4, published=3, first_segment=False)
    await _advance(live, 8)
    live.end()
    code, stdout, stderr = await run.finish()
    assert code == 0, stderr
    assert stdout.startswith("ingested 8 segments (0 already present)"), stdout
    segments = await _segments(shared_store, flow_id)
    ranges = _contiguous(segments)
    assert [r.start.to_nanosec() for r in ranges if r.start] == [ticks_to_ns(wrapped.video_ticks(k)[0]) for k in range(8)]
    assert ranges[-1].start.to_nanosec() > ticks_to_ns(WRAP)  # type: ignore[union-attr]
    assert await _exported_frames(shared_store, flow_id, tmp_path / "out.ts") == list(range(80))


async def test_follow_on_a_master_playlist_follows_the_video_and_its_audio_rendition_to_the_end(
    shared_store: RunningStore, tmp_path: Path
) -> None:
    vod = sample_content.synthesize(tmp_path / "vod", fps=FPS, duration=6, segment_seconds=1, audio_form="rendition")
    lives = {}
    for kind, media_playlist in (("video", "hls_output_0.m3u8"), ("audio", "hls_output_1.m3u8")):
        lives[kind] = _live(tmp_path / "live" / kind, vod.parent / media_playlist, window=4)
        lives[kind].publish(2)
    master = tmp_path / "live" / "master.m3u8"
    master.write_text(vod.read_text().replace("hls_output_0.m3u8", "video/live.m3u8")
                      .replace("hls_output_1.m3u8", "audio/live.m3u8"))
    flow_id = str(uuid.uuid4())
    run = await _start(shared_store, master, flow_id, "--follow", cwd=tmp_path, video_only=False)
    await _wait_for_segments(shared_store, flow_id, 1)
    while any(live.published < len(live.segments) for live in lives.values()):
        await asyncio.sleep(0.5)  # half the target duration: none is missed
        for live in lives.values():
            if live.published < len(live.segments):
                live.publish(1)
    for live in lives.values():
        live.end()
    code, stdout, stderr = await run.finish()
    assert code == 0, stderr
    video, audio = (len(live.segments) for live in lives.values())
    assert stdout.startswith(f"ingested {video + audio} segments ({video} video + {audio} audio) (0 already"), stdout
    ids = dict(re.findall(r"(video|audio|multi) ([0-9a-f-]{36})", stdout))
    assert ids["video"] == flow_id and set(ids) == {"video", "audio", "multi"}
    assert len(_contiguous(await _segments(shared_store, ids["video"]))) == video
    assert len(_contiguous(await _segments(shared_store, ids["audio"]))) == audio
    out = tmp_path / "muxed.ts"
    assert await _exported_frames(shared_store, ids["multi"], out) == list(range(6 * FPS))
    with av.open(str(out)) as container:
        assert sorted(s.type for s in container.streams) == ["audio", "video"]


async def test_on_a_terminal_follow_shows_a_live_status_line(
    shared_store: RunningStore, wrapped: SynthesizedHLS, tmp_path: Path
) -> None:
    live = _live(tmp_path / "live", wrapped, window=5)
    live.publish(3)
    flow_id = str(uuid.uuid4())
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))  # a 200-column terminal
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), "--hls-filename", str(live.playlist), "--flow-id", flow_id, "--follow",
            "--video-only", "--hls-segment-count", "0", stdout=asyncio.subprocess.PIPE, stderr=terminal, cwd=tmp_path,
            env={**os.environ, **shared_store.env},
        )
        os.close(terminal)
        terminal = -1
        reader = asyncio.create_task(asyncio.to_thread(_read_all, controller))
        await _advance(live, 5)
        live.end()
        await asyncio.wait_for(process.wait(), 30)
        shown = await reader
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    assert process.returncode == 0
    lines = re.findall(r"(\d+) segments ingested, last media sequence (\d+), Flow ends at (\d+:\d+)", shown)
    assert lines, shown
    ingested, sequence, end = lines[-1]
    assert (int(ingested), int(sequence)) == (5, 4)
    assert end == str(TimeRange.from_str((await _segments(shared_store, flow_id))[-1]["timerange"]).end)


def _read_all(fd: int) -> str:
    """Everything written to a pty until its last writer closes it."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


async def test_resumed_runs_after_the_wrap_carry_on_the_flows_timeline(
    shared_store: RunningStore, wrapped: SynthesizedHLS, tmp_path: Path
) -> None:
    live = _live(tmp_path / "live", wrapped, window=3)
    flow_id = str(uuid.uuid4())
    # polled: a run per window; the second window holds only segments after the wrap, whose pts
    # alone would put them 26.5 hours before the first window
    for publish in (3, 3):
        live.publish(publish)
        code, _, stderr = await (await _start(shared_store, live.playlist, flow_id, cwd=tmp_path)).finish()
        assert code == 0, stderr
    live.publish(2)
    live.end()
    code, stdout, stderr = await (await _start(shared_store, live.playlist, flow_id, "--follow", cwd=tmp_path)).finish()
    assert code == 0, stderr
    assert stdout.startswith("ingested 2 segments (1 already present)"), stdout
    segments = await _segments(shared_store, flow_id)
    ranges = _contiguous(segments)
    assert [r.start.to_nanosec() for r in ranges if r.start] == [ticks_to_ns(wrapped.video_ticks(k)[0]) for k in range(8)]
    assert await _exported_frames(shared_store, flow_id, tmp_path / "out.ts") == list(range(80))


async def test_audio_and_video_resumed_and_followed_across_the_wrap_stay_contiguous_and_in_sync(
    shared_store: RunningStore, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    content = synthesized(tmp_path_factory, fps=FPS, duration=6, segment_seconds=1, audio=True, start_pts=WRAP_START)
    live = _live(tmp_path / "live", content, window=3)
    live.publish(3)
    flow_id = str(uuid.uuid4())
    code, _, stderr = await (await _start(shared_store, live.playlist, flow_id, cwd=tmp_path,
                                          video_only=False)).finish()
    assert code == 0, stderr
    live.publish(1)  # the window now holds only segments after the wrap
    run = await _start(shared_store, live.playlist, flow_id, "--follow", cwd=tmp_path, video_only=False)
    await run.loaded()
    await _advance(live, 6, every=1.0)
    live.end()
    code, stdout, stderr = await run.finish()
    assert code == 0, stderr
    assert stdout.startswith("ingested 3 segments (2 already present)"), stdout
    audio_flow_id = re.search(r"audio ([0-9a-f-]{36})", stdout)
    assert audio_flow_id is not None, stdout
    video = _contiguous(await _segments(shared_store, flow_id))
    audio = _contiguous(await _segments(shared_store, audio_flow_id[1]))
    assert [r.start.to_nanosec() for r in video if r.start] == [ticks_to_ns(content.video_ticks(k)[0]) for k in range(6)]
    assert [r.start.to_nanosec() for r in audio if r.start] == [ticks_to_ns(content.audio_first_ticks(k))
                                                                for k in range(6)]
    assert await _exported_frames(shared_store, flow_id, tmp_path / "out.ts") == list(range(60))


@pytest.mark.parametrize("dated", [False, True], ids=["after-the-last", "program-date-time"])
async def test_a_discontinuity_with_a_new_timestamp_base_is_placed_where_the_playlist_says(
    shared_store: RunningStore, splice: Splice, tmp_path: Path, dated: bool
) -> None:
    live = sample_content.LiveWindow(tmp_path / "live", window=5)
    began = datetime.datetime(2026, 12, 7, 6, 0, tzinfo=datetime.UTC)
    hole = 2 if dated else 0  # the dated playlist says the second part starts 2 s after the first ends
    live.add(splice.first.playlist, program_date_time=began if dated else None)
    live.add(splice.second, discontinuity=True,
             program_date_time=began + datetime.timedelta(seconds=4 + hole) if dated else None)
    live.publish(3)
    flow_id = str(uuid.uuid4())
    run = await _start(shared_store, live.playlist, flow_id, "--follow", cwd=tmp_path)
    await run.loaded()
    await _advance(live, 8)
    live.end()
    code, _, stderr = await run.finish()
    assert code == 0, stderr
    segments = await _segments(shared_store, flow_id)
    ranges = [TimeRange.from_str(s["timerange"]) for s in segments]
    assert len(ranges) == 8
    first_end = ranges[3].end
    assert first_end is not None and first_end.to_nanosec() == ticks_to_ns(splice.first.video_ticks(3)[1])
    second_start = ranges[4].start
    assert second_start is not None
    assert second_start.to_nanosec() == first_end.to_nanosec() + hole * 10**9
    _contiguous(segments[4:])
    # the media keep their own timestamps: ts_offset carries the new base
    media_start = TimeRange.from_str(segments[4]["object_timerange"]).start
    assert media_start is not None and media_start.to_nanosec() == ticks_to_ns(splice.second_start)
    assert await _exported_frames(shared_store, flow_id, tmp_path / "out.ts") == list(range(80))
    # a re-run over the last window (both sides of the discontinuity) finds each segment again
    code, stdout, stderr = await (await _start(shared_store, live.playlist, flow_id, cwd=tmp_path)).finish()
    assert code == 0, stderr
    assert stdout.startswith("ingested 0 segments (5 already present)"), stdout


async def test_after_a_new_timestamp_base_audio_keeps_its_place_against_the_video(
    shared_store: RunningStore, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    first = synthesized(tmp_path_factory, fps=FPS, duration=3, segment_seconds=1, audio=True)
    start = 7_000_000
    second = sample_content.synthesize(tmp_path_factory.mktemp("splice-audio"), fps=FPS, duration=3,
                                       segment_seconds=1, audio=True, start_pts=start, first_frame=30)
    live = sample_content.LiveWindow(tmp_path / "live", window=6)
    live.add(first.playlist)
    live.add(second, discontinuity=True)
    live.publish(6)
    live.end()
    flow_id = str(uuid.uuid4())
    code, stdout, stderr = await (await _start(shared_store, live.playlist, flow_id, "--follow", cwd=tmp_path,
                                               video_only=False)).finish()
    assert code == 0, stderr
    audio_flow_id = re.search(r"audio ([0-9a-f-]{36})", stdout)
    assert audio_flow_id is not None, stdout
    video = [TimeRange.from_str(s["timerange"]) for s in await _segments(shared_store, flow_id)]
    audio = [TimeRange.from_str(s["timerange"]) for s in await _segments(shared_store, audio_flow_id[1])]
    # The first part's audio runs on past its video's end: the second part (whose audio starts a
    # tick before its video) goes right after that audio, and its essences keep their offset.
    assert audio[2].end is not None and video[2].end is not None and audio[2].end > video[2].end
    assert audio[3].start == audio[2].end
    assert video[3].start is not None and audio[3].start is not None
    assert video[3].start.to_nanosec() - audio[3].start.to_nanosec() == ticks_to_ns(start) - ticks_to_ns(start - 1)
    _contiguous([{"timerange": str(r)} for r in audio[3:]])
    assert await _exported_frames(shared_store, flow_id, tmp_path / "out.ts") == list(range(60))


async def test_a_playlist_briefly_missing_is_loaded_again_and_nothing_is_lost(
    shared_store: RunningStore, wrapped: SynthesizedHLS, tmp_path: Path
) -> None:
    live, flow_id, run = await _following(shared_store, wrapped, tmp_path, window=4, published=3)
    hidden = live.playlist.with_name("hidden.m3u8")
    live.playlist.rename(hidden)
    await asyncio.sleep(2.5)  # a few failed reloads (0.5, 1, 2 s apart), fewer than the limit
    hidden.rename(live.playlist)
    await _advance(live, 8)
    live.end()
    code, stdout, stderr = await run.finish()
    assert code == 0, stderr
    assert "trying again" in stderr
    assert stdout.startswith("ingested 8 segments"), stdout
    assert await _exported_frames(shared_store, flow_id, tmp_path / "out.ts") == list(range(80))


async def test_a_playlist_gone_for_good_ends_the_run_in_one_line_with_whole_segments(
    shared_store: RunningStore, wrapped: SynthesizedHLS, tmp_path: Path
) -> None:
    live, flow_id, run = await _following(shared_store, wrapped, tmp_path, window=3, published=3,
                                          args=["--reload-attempts", "2", "--quiet"])
    live.playlist.unlink()
    code, stdout, stderr = await run.finish()
    assert code == 1
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "failed to load 2 times in a row" in errors[0], stderr
    assert stderr.strip().splitlines()[-1] == errors[0]
    assert stdout == ""
    held = await _each_segment_holds_its_frames(shared_store, flow_id, tmp_path, wrapped)
    assert held == list(range(len(held))) and held


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
async def test_sigterm_finishes_what_was_read_and_a_resumed_run_completes_the_flow(
    shared_store: RunningStore, wrapped: SynthesizedHLS, tmp_path: Path, stop: signal.Signals
) -> None:
    """SIGTERM (or SIGHUP, a closed terminal) while following: the segments already read are
    finished, and the same command carries on later."""
    live, flow_id, run = await _following(shared_store, wrapped, tmp_path, window=4, published=4, args=["--concurrency", "1"])
    run.process.send_signal(stop)
    code, stdout, stderr = await run.finish()
    assert code == 128 + stop, stderr
    assert "Traceback" not in stderr
    assert f"stopped by {stop.name}; run again" in stderr
    found = re.match(r"ingested (\d+) segments", stdout)
    assert found is not None, stdout
    first_run = int(found[1])
    assert await _each_segment_holds_its_frames(shared_store, flow_id, tmp_path, wrapped) == list(range(first_run))

    # the window moves on while nothing follows it, by less than it holds
    live.publish(first_run)
    run = await _start(shared_store, live.playlist, flow_id, "--follow", cwd=tmp_path)
    await _advance(live, 8)
    live.end()
    code, stdout, stderr = await run.finish()
    assert code == 0, stderr
    assert stdout.startswith(f"ingested {8 - first_run} segments"), stdout
    _contiguous(await _segments(shared_store, flow_id))
    assert await _exported_frames(shared_store, flow_id, tmp_path / "out.ts") == list(range(80))


async def test_a_second_sigterm_abandons_the_segments_in_flight_and_a_resumed_run_completes_the_flow(
    store_factory: Callable[..., RunningStore], wrapped: SynthesizedHLS, tmp_path: Path
) -> None:
    store = store_factory(latency_ms=200)  # uploads and registrations are in flight when the signals come
    live, flow_id, run = await _following(store, wrapped, tmp_path, window=8, published=6, args=["--concurrency", "2"])
    run.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.05)
    run.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):  # a third, while it abandons them, changes nothing
        run.process.send_signal(signal.SIGINT)
    code, stdout, stderr = await run.finish()
    assert code == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("error: ")] == [stderr.strip().splitlines()[-1]]
    assert stderr.strip().splitlines()[-1].startswith("error: stopped by SIGTERM twice: abandoned"), stderr
    assert stdout == ""
    first_run = len(await _each_segment_holds_its_frames(store, flow_id, tmp_path, wrapped))
    assert first_run < 6  # some were abandoned

    live.publish(2)
    live.end()
    code, stdout, stderr = await (await _start(store, live.playlist, flow_id, "--follow", cwd=tmp_path)).finish()
    assert code == 0, stderr
    assert stdout.startswith(f"ingested {8 - first_run} segments ({first_run} already present)"), stdout
    _contiguous(await _segments(store, flow_id))
    assert await _exported_frames(store, flow_id, tmp_path / "out.ts") == list(range(80))


async def test_segments_gone_before_they_were_read_are_reported_as_a_gap_not_made_up(
    shared_store: RunningStore, wrapped: SynthesizedHLS, tmp_path: Path
) -> None:
    live, flow_id, run = await _following(shared_store, wrapped, tmp_path, window=2, published=2)
    live.publish(4)  # 2 and 3 come and go between two reloads
    live.end()
    code, stdout, stderr = await run.finish()
    assert code == 0, stderr
    assert "media sequence 2-3 left" in stderr
    assert "4 segments (0 already present, 2 missed" in stdout, stdout
    assert await _each_segment_holds_its_frames(shared_store, flow_id, tmp_path, wrapped) == [0, 1, 4, 5]


async def test_a_media_sequence_going_backwards_stops_in_one_line_with_whole_segments(
    shared_store: RunningStore, wrapped: SynthesizedHLS, tmp_path: Path
) -> None:
    live, flow_id, run = await _following(shared_store, wrapped, tmp_path, window=3, published=3, args=["--quiet"])
    live.publish(2)
    await _wait_for_segments(shared_store, flow_id, 3)
    live.rewrite(0)  # media sequence 2 -> 0
    code, stdout, stderr = await run.finish()
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "went backwards, from 2 to 0" in lines[0], stderr
    assert stdout == ""
    held = await _each_segment_holds_its_frames(shared_store, flow_id, tmp_path, wrapped)
    assert held == list(range(len(held))) and held


async def test_sample_content_plays_a_live_window_out_that_follow_ingests_whole(
    shared_store: RunningStore, wrapped: SynthesizedHLS, tmp_path: Path
) -> None:
    live = tmp_path / "live"
    player = asyncio.create_task(asyncio.to_thread(sample_content.play_live, wrapped.playlist, live, window=4,
                                                   speed=2.0))
    while not (live / "live.m3u8").exists():
        await asyncio.sleep(0.05)
    flow_id = str(uuid.uuid4())
    run = await _start(shared_store, live / "live.m3u8", flow_id, "--follow", cwd=tmp_path)
    code, stdout, stderr = await run.finish()
    await player
    assert code == 0, stderr
    # it joins at the oldest segment the window holds when it starts (a slow start may miss the first)
    found = re.match(r"ingested (\d+) segments \(0 already present\)", stdout)
    assert found is not None and int(found[1]) >= 4, stdout
    joined = 8 - int(found[1])
    assert await _exported_frames(shared_store, flow_id, tmp_path / "out.ts") == list(range(10 * joined, 80))


def test_live_window_lists_the_last_segments_with_their_media_sequence(wrapped: SynthesizedHLS, tmp_path: Path) -> None:
    live = _live(tmp_path / "live", wrapped, window=3)
    live.publish(5)
    text = live.playlist.read_text()
    assert "#EXT-X-MEDIA-SEQUENCE:2" in text and "#EXT-X-ENDLIST" not in text
    assert [line for line in text.splitlines() if line.endswith(".ts")] == ["live_00002.ts", "live_00003.ts",
                                                                            "live_00004.ts"]
    assert sample_content.read_frame_numbers(live.directory / "live_00004.ts") == list(range(40, 50))
    live.end()
    assert live.playlist.read_text().endswith("#EXT-X-ENDLIST\n")
    assert Fraction(1) in {segment.duration for segment in live.segments}

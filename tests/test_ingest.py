"""ingest_hls.py against the real local store: properties, exact timeranges, resume, faults,
audio, playlists over HTTP, and bad input (one line, non-zero exit, nothing half-registered)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from mediatimestamp.immutable import TimeRange, Timestamp

import ingest_core
import media
import sample_content
from client import TAMSClient
from credentials import OAuth2ClientCredentials
from tests.conftest import signalled_as_the_client_closes
from tests.synthetic_media import SynthesizedHLS, copy_content, synthesized

pytest_plugins = ["tests.media_fixtures"]

if TYPE_CHECKING:
    from tests.conftest import RunningStore

SCRIPT = Path(ingest_core.__file__).with_name("ingest_hls.py").resolve()


def _client(store: RunningStore) -> TAMSClient:
    credentials = OAuth2ClientCredentials(store.oauth2_url, store.env["CLIENT_ID"], store.env["CLIENT_SECRET"])
    return TAMSClient(store.url, credentials)


async def _ingest(store: RunningStore, content: SynthesizedHLS | str, **options: Any) -> ingest_core.IngestResult:
    hls = content if isinstance(content, str) else str(content.playlist)
    options.setdefault("segment_count", None)
    async with _client(store) as client:
        return await ingest_core.ingest(client, ingest_core.IngestOptions(hls=hls, **options))


async def _segments(store: RunningStore, flow_id: str) -> list[dict[str, Any]]:
    async with _client(store) as client:
        return [s async for s in client.segments(flow_id, include_object_timerange=True)]


async def _flow(store: RunningStore, flow_id: str) -> dict[str, Any]:
    async with _client(store) as client:
        return await client.get_flow(flow_id)


def _run_script(store_url: str | None, env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("TAMS_URL", "OAUTH2_URL", "CLIENT_ID",
                                                                  "CLIENT_SECRET", "USERNAME", "PASSWORD")}
    environ.update(env)
    if store_url is not None:
        environ["TAMS_URL"] = store_url
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False, timeout=120,
                          cwd=cwd, env=environ)


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


# -- properties and timing ---------------------------------------------------------------------


async def test_flow_properties_equal_what_the_media_says(tams_store: RunningStore, hls_content: SynthesizedHLS) -> None:
    result = await _ingest(tams_store, hls_content)
    flow = await _flow(tams_store, result.flow_ids["video"])
    assert (flow["format"], flow["codec"], flow["container"]) == ("urn:x-nmos:format:video", "video/h264", "video/mp2t")
    params = flow["essence_parameters"]
    assert params["frame_rate"] == {"numerator": 30, "denominator": 1}
    assert (params["frame_width"], params["frame_height"]) == (320, 180)
    assert (params["interlace_mode"], params["component_type"], params["bit_depth"]) == ("progressive", "YCbCr", 8)
    assert (params["horiz_chroma_subs"], params["vert_chroma_subs"]) == (2, 2)
    assert flow["label"] == "hls_output"
    assert flow["segment_duration"] == {"numerator": 2, "denominator": 1}
    # AppNote 0013 from the files themselves: 2 s segments with a 2 s target are each a run alone
    sizes = [path.stat().st_size for path in hls_content.segment_paths()]
    assert flow["avg_bit_rate"] == sum(sizes) * 8 // (20 * 1000)
    assert flow["max_bit_rate"] == max(sizes) * 8 // (2 * 1000)
    source = await _source(tams_store, flow["source_id"])
    assert source["format"] == "urn:x-nmos:format:video"


async def _source(store: RunningStore, source_id: str) -> dict[str, Any]:
    async with _client(store) as client:
        return await client.get_source(source_id)


async def test_segment_timeranges_are_exact_and_hold_the_right_frames(
    tams_store: RunningStore, hls_content: SynthesizedHLS, tmp_path: Path
) -> None:
    result = await _ingest(tams_store, hls_content, concurrency=4)
    assert (result.registered, result.skipped) == (10, 0)
    segments = await _segments(tams_store, result.flow_ids["video"])
    assert [s["timerange"] for s in segments] == [str(hls_content.video_timerange(k)) for k in range(10)]
    assert segments[0]["timerange"] == "[0:66666666_2:66666666)"
    for segment in segments:
        assert segment["object_timerange"] == segment["timerange"]
        assert segment.get("ts_offset", "0:0") == "0:0"
        assert segment["key_frame_count"] == 2
        assert segment["last_duration"] == "0:33333333"
    async with _client(tams_store) as client:
        for k in (0, 7):
            data = await client.download_object(segments[k]["get_urls"][0])
            path = tmp_path / f"{k}.ts"
            path.write_bytes(data)
            assert sample_content.read_frame_numbers(path) == hls_content.frames(k)


async def test_normalise_rounds_timeranges_to_the_frame_grid(
    tams_store: RunningStore, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # 1 tick after the 30 fps grid: exact timeranges are off-grid, normalised ones on it
    content = synthesized(tmp_path_factory, width=128, height=72, duration=2, segment_seconds=1, start_pts=6001)
    exact = await _ingest(tams_store, content)
    assert [str(tr) for tr in exact.timeranges["video"]] == ["[0:66677777_1:66677777)", "[1:66677777_2:66677777)"]
    normalised = await _ingest(tams_store, content, normalise=True)
    segments = await _segments(tams_store, normalised.flow_ids["video"])
    assert [s["timerange"] for s in segments] == ["[0:66666666_1:66666666)", "[1:66666666_2:66666666)"]
    for segment in segments:
        # the media's own timestamps plus ts_offset give the regular Flow timeline
        obj = TimeRange.from_str(segment["object_timerange"])
        offset = Timestamp.from_str(segment["ts_offset"])
        assert obj.start is not None
        assert obj.start + offset == TimeRange.from_str(segment["timerange"]).start
        assert obj.start.to_nanosec() == (6001 + 90000 * segments.index(segment)) * 10**9 // 90000


async def test_segments_across_the_33_bit_wrap_carry_it_in_ts_offset(
    tams_store: RunningStore, tmp_path_factory: pytest.TempPathFactory
) -> None:
    start = (1 << 33) - 45000
    content = synthesized(tmp_path_factory, width=128, height=72, duration=2, segment_seconds=1, start_pts=start)
    result = await _ingest(tams_store, content)
    segments = await _segments(tams_store, result.flow_ids["video"])
    wrap_ns = (1 << 33) * 10**9 // 90000
    first, second = (TimeRange.from_str(s["timerange"]) for s in segments)
    assert _ns(first.start) == start * 10**9 // 90000
    assert first.end == second.start  # contiguous over the wrap
    assert _ns(second.end) == (start + 2 * 90000) * 10**9 // 90000
    assert segments[0].get("ts_offset", "0:0") == "0:0"
    assert Timestamp.from_str(segments[1]["ts_offset"]).to_nanosec() in (wrap_ns, wrap_ns + 1)
    assert _ns(TimeRange.from_str(segments[1]["object_timerange"]).start) == 45000 * 10**9 // 90000


def _ns(timestamp: Timestamp | None) -> int:
    assert timestamp is not None
    return timestamp.to_nanosec()


# -- storage batches and concurrency, from the store's access log ----------------------------


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    start: float  # seconds (wall clock), worked out from the log time (at the end) less the duration
    end: float


_ACCESS = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO local_store\.access: \S+ "(\w+) (\S+)" \d+ \S+ ([\d.]+)ms$')


def _access_log(store: RunningStore) -> list[_Request]:
    requests = []
    for line in store.log_text().splitlines():
        found = _ACCESS.match(line)
        if found:
            end = datetime.datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            requests.append(_Request(found[2], found[3], end - float(found[4]) / 1000, end))
    return requests


async def _logged_through(store: RunningStore, flow_id: str) -> list[_Request]:
    """The access log once it holds every request made so far: the store logs a request after
    answering it, so once a GET of the Flow sent now is there, all before it are."""
    await _flow(store, flow_id)
    deadline = time.monotonic() + 10
    while ("GET", f"/flows/{flow_id}") not in [(r.method, r.path) for r in _access_log(store)]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    return _access_log(store)


async def test_storage_is_allocated_in_batches_as_uploads_use_it_with_at_most_concurrency_uploads_at_once(
    store_factory: Callable[..., RunningStore], tmp_path_factory: pytest.TempPathFactory
) -> None:
    concurrency, batch, count = 2, 4, 12
    content = synthesized(tmp_path_factory, width=128, height=72, duration=count, segment_seconds=1)
    # latency makes every request last long enough for the log's millisecond times to show overlaps
    store = store_factory(latency_ms=50, extra_args=["--access-log"])
    result = await _ingest(store, content, concurrency=concurrency, storage_batch=batch)
    assert result.registered == count
    log = _access_log(store)
    flow_id = result.flow_ids["video"]
    storage = [r for r in log if (r.method, r.path) == ("POST", f"/flows/{flow_id}/storage")]
    puts = sorted((r for r in log if r.method == "PUT" and r.path.startswith("/objects-data/")), key=lambda r: r.start)
    assert len(puts) == count
    slack = 0.002  # the log's times are to the millisecond

    # Batches are asked for as they are used, not all up front: three are needed and at most one
    # more is asked for ahead. Storage request k (from 0) starts only once the batches before it
    # are half used: k * batch - batch // 2 targets handed out, of which up to `concurrency` may not
    # have reached the store yet. (Asking while a whole batch still waits would give k * batch - 6.)
    assert count // batch <= len(storage) <= count // batch + 1
    for k, request in enumerate(storage):
        started_puts = sum(1 for put in puts if put.start < request.start + slack)
        assert started_puts >= k * batch - batch // 2 - concurrency, (k, started_puts)
    assert storage[-1].start > puts[0].end  # interleaved: a batch was asked for after uploads finished

    # At no moment are more than `concurrency` uploads in flight, and the limit is reached.
    events = sorted([(put.start + slack, 1) for put in puts] + [(put.end - slack, -1) for put in puts])
    in_flight, most = 0, 0
    for _, step in events:
        in_flight += step
        most = max(most, in_flight)
    assert most == concurrency


async def test_bit_rates_are_set_while_the_last_registrations_are_out(
    store_factory: Callable[..., RunningStore], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Once every object is stored the bit rates are known, and set beside the last segment POST
    rather than a round trip after it (at 50 ms a store that far away costs 50 ms less)."""
    content = synthesized(tmp_path_factory, width=128, height=72, duration=6, segment_seconds=1)
    store = store_factory(latency_ms=50, extra_args=["--access-log"])
    result = await _ingest(store, content, concurrency=2)
    flow_id = result.flow_ids["video"]
    flow = await _flow(store, flow_id)
    log = await _logged_through(store, flow_id)
    objects = [r for r in log if r.method == "PUT" and r.path.startswith("/objects-data/")]
    posts = [r for r in log if (r.method, r.path) == ("POST", f"/flows/{flow_id}/segments")]
    rates = [r for r in log if r.method == "PUT" and r.path in (f"/flows/{flow_id}/avg_bit_rate",
                                                                 f"/flows/{flow_id}/max_bit_rate")]
    assert len(objects) == 6 and posts and len(rates) == 2
    slack = 0.002  # the log's times are to the millisecond
    assert min(r.start for r in rates) > max(r.end for r in objects) - slack  # after every object is stored
    assert min(r.start for r in rates) < max(r.end for r in posts) - 0.025  # while the last POST is out
    assert flow["avg_bit_rate"] > 0 and flow["max_bit_rate"] >= flow["avg_bit_rate"]


async def _uploaded(client: TAMSClient, flow_id: str, count: int) -> list[ingest_core._Registration]:
    """A new video Flow with ``count`` one-packet objects uploaded: their registrations, one a second."""
    await client.put_flow(flow_id, {
        "id": flow_id, "source_id": str(uuid.uuid4()), "format": "urn:x-nmos:format:video",
        "codec": "video/h264", "container": "video/mp2t",
        "essence_parameters": {"frame_width": 320, "frame_height": 180, "frame_rate": {"numerator": 25}},
    })  # fmt: skip
    targets = client.allocate_storage(flow_id, batch=count)
    registrations = []
    for k in range(count):
        target = await anext(targets)
        await client.upload_object(target, b"\x47" + bytes(187))
        timerange = TimeRange.from_str(f"[{k}:0_{k + 1}:0)")
        segment = {"object_id": target.object_id, "timerange": str(timerange)}
        registrations.append(ingest_core._Registration("video", segment, timerange, b"", 188))
    return registrations


async def test_the_last_registrations_go_out_beside_the_posts_already_out(
    store_factory: Callable[..., RunningStore]
) -> None:
    """Two segment POSTs are out at once, and a registration arriving meanwhile waits for one to
    come back, to go with others; but once the last one is submitted it goes out at once (at the
    end of an ingest, a round trip sooner)."""
    store = store_factory(latency_ms=200, extra_args=["--access-log"])  # far more than the sleeps below
    flow_id = str(uuid.uuid4())
    async with _client(store) as client:
        registrations = await _uploaded(client, flow_id, 3)
        registrar = ingest_core._Registrar(client, flow_id, "video")
        registrar.GATHER_SECONDS = 0  # no wait for more (see the next test)
        done = []
        for reg in registrations:  # each its own POST: the first two go out, the third waits
            done.append(registrar.submit(reg))
            await asyncio.sleep(0.01)
        registrar.last_submitted()
        await asyncio.gather(*done)
        await registrar.close()
    log = await _logged_through(store, flow_id)
    posts = sorted((r for r in log if (r.method, r.path) == ("POST", f"/flows/{flow_id}/segments")), key=lambda r: r.start)
    assert len(posts) == 3
    assert posts[2].start < posts[0].end - 0.1  # it did not wait for the first to come back
    assert [s["timerange"] for s in await _segments(store, flow_id)] == [str(r.timerange) for r in registrations]


async def _registered(store: RunningStore, count: int, gap: float, last: bool,
                      gather_seconds: float = ingest_core._Registrar.GATHER_SECONDS) -> tuple[int, float]:
    """Submit ``count`` registrations ``gap`` seconds apart (then ``last_submitted`` if ``last``);
    the segment POSTs the store logged, and the seconds from the first submit to the last done."""
    flow_id = str(uuid.uuid4())
    async with _client(store) as client:
        registrations = await _uploaded(client, flow_id, count)
        registrar = ingest_core._Registrar(client, flow_id, "video")
        registrar.GATHER_SECONDS = gather_seconds
        started = time.monotonic()
        done = []
        for reg in registrations:
            done.append(registrar.submit(reg))
            await asyncio.sleep(gap)
        if last:
            registrar.last_submitted()
        await asyncio.gather(*done)
        took = time.monotonic() - started
        await registrar.close()
        assert len(await _segments(store, flow_id)) == count
    log = await _logged_through(store, flow_id)
    return len([r for r in log if (r.method, r.path) == ("POST", f"/flows/{flow_id}/segments")]), took


async def test_registrations_arriving_close_together_share_a_post(store_factory: Callable[..., RunningStore]) -> None:
    """A POST of fewer than GATHER waits up to GATHER_SECONDS for more: five uploads finishing
    5 ms apart are one POST (one transaction and fsync in the store), not five."""
    store = store_factory(extra_args=["--access-log"])
    posts, _ = await _registered(store, 5, 0.005, last=False)
    assert posts == 1


async def test_a_lone_registration_waits_no_longer_than_gather_seconds(store_factory: Callable[..., RunningStore]) -> None:
    """A live segment, the only one for seconds, is registered GATHER_SECONDS after its upload at
    most; the last of an ingest is not held at all."""
    store = store_factory(extra_args=["--access-log"])
    posts, took = await _registered(store, 1, 0, last=False, gather_seconds=0.3)
    assert posts == 1 and 0.3 <= took < 1.0
    posts, took = await _registered(store, 1, 0, last=True, gather_seconds=30)
    assert posts == 1 and took < 5


async def test_gather_registrations_go_out_at_once(store_factory: Callable[..., RunningStore]) -> None:
    """GATHER registrations queued together are a POST at once; one fewer waits for more."""
    store = store_factory(extra_args=["--access-log"])
    gather = ingest_core._Registrar.GATHER
    posts, took = await _registered(store, gather, 0, last=False, gather_seconds=30)
    assert posts == 1 and took < 5
    posts, took = await _registered(store, gather - 1, 0, last=False, gather_seconds=0.3)
    assert posts == 1 and 0.3 <= took < 1.0


async def test_closing_the_registrar_cancels_what_it_never_sent(store_factory: Callable[..., RunningStore]) -> None:
    """Closed while it gathers (an ingest interrupted): the registrations waiting in it end
    cancelled, not pending for ever, and none reaches the store."""
    store = store_factory()
    flow_id = str(uuid.uuid4())
    async with _client(store) as client:
        registrations = await _uploaded(client, flow_id, 3)
        registrar = ingest_core._Registrar(client, flow_id, "video")
        registrar.GATHER_SECONDS = 30
        gathering = registrar.submit(registrations[0])
        await asyncio.sleep(0.1)  # taken off the queue: it is in the batch being gathered
        queued = [registrar.submit(reg) for reg in registrations[1:]]
        await registrar.close()
        assert [done.cancelled() for done in [gathering, *queued]] == [True] * 3, [gathering, *queued]
        assert await _segments(store, flow_id) == []


# -- resume and faults -------------------------------------------------------------------------


async def test_rerun_skips_what_the_flow_has_and_completes_it(tams_store: RunningStore, hls_content: SynthesizedHLS) -> None:
    flow_id = str(uuid.uuid4())
    first = await _ingest(tams_store, hls_content, flow_id=flow_id, segment_count=5)
    assert (first.registered, first.skipped) == (5, 0)
    second = await _ingest(tams_store, hls_content, flow_id=flow_id)
    assert (second.registered, second.skipped) == (5, 5)
    segments = await _segments(tams_store, flow_id)
    assert [s["timerange"] for s in segments] == [str(hls_content.video_timerange(k)) for k in range(10)]
    assert len({s["object_id"] for s in segments}) == 10
    third = await _ingest(tams_store, hls_content, flow_id=flow_id)
    assert (third.registered, third.skipped, third.bytes) == (0, 10, 0)


def test_a_killed_ingest_completes_on_a_second_run(
    store_factory: Callable[..., RunningStore], hls_content: SynthesizedHLS, tmp_path: Path
) -> None:
    store = store_factory(latency_ms=100)
    flow_id = str(uuid.uuid4())
    args = ["--hls-filename", str(hls_content.playlist), "--flow-id", flow_id]
    environ = {**os.environ, **store.env}
    process = subprocess.Popen([sys.executable, str(SCRIPT), *args, "--concurrency", "1"], stderr=subprocess.PIPE, text=True,
                               cwd=tmp_path, env=environ)
    assert process.stderr is not None
    deadline = time.monotonic() + 60
    for line in process.stderr:
        if "registered video segment" in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()
    done = _run_script(None, store.env, *args, "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = re.match(r"ingested (\d+) segments \((\d+) already present\)", done.stdout)
    assert found is not None, done.stdout
    registered, skipped = int(found[1]), int(found[2])
    assert skipped >= 1 and registered + skipped == 10
    segments = _sync(_segments(store, flow_id))
    assert [s["timerange"] for s in segments] == [str(hls_content.video_timerange(k)) for k in range(10)]


@pytest.mark.parametrize("follow", [False, True], ids=["playlist", "--follow to its end"])
def test_a_signal_as_the_connection_closes_leaves_a_finished_ingest_finished(
    tams_store: RunningStore, hls_content: SynthesizedHLS, tmp_path: Path, follow: bool
) -> None:
    """SIGTERM once every segment is registered, as the connection to the store closes: the
    ingest is done, so it reports so and exits 0 (not "stopped", not "run again")."""
    late_signal = signalled_as_the_client_closes("ingest_core")
    flow_id = str(uuid.uuid4())
    done = subprocess.run(
        [sys.executable, "-c", late_signal, "--hls-filename", str(hls_content.playlist), "--flow-id", flow_id,
         "--quiet", *(["--follow"] if follow else [])],
        cwd=SCRIPT.parent, env={**os.environ, **tams_store.env}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout.startswith("ingested 10 segments (0 already present)"), done.stdout
    assert len(_sync(_segments(tams_store, flow_id))) == 10


def _sync(coro: Any) -> Any:
    return asyncio.run(coro)


async def test_ingest_through_a_faulty_store_registers_every_segment_once(
    store_factory: Callable[..., RunningStore], hls_content: SynthesizedHLS
) -> None:
    store = store_factory(fault_rate=0.2, fault_seed=4)
    result = await _ingest(store, hls_content)
    assert result.registered == 10
    segments = await _segments(store, result.flow_ids["video"])
    assert [s["timerange"] for s in segments] == [str(hls_content.video_timerange(k)) for k in range(10)]
    assert len({s["object_id"] for s in segments}) == 10
    async with _client(store) as client:
        for segment in segments:
            obj = await client.get_object(segment["object_id"])
            assert result.flow_ids["video"] in obj["referenced_by_flows"]


# -- audio -------------------------------------------------------------------------------------


async def test_audio_gives_video_audio_and_multi_flows_with_collections(
    tams_store: RunningStore, hls_audio_content: SynthesizedHLS, tmp_path: Path
) -> None:
    result = await _ingest(tams_store, hls_audio_content)
    ids = result.flow_ids
    assert set(ids) == {"video", "audio", "multi"}
    video, audio, multi = [await _flow(tams_store, ids[k]) for k in ("video", "audio", "multi")]
    assert video["format"] == "urn:x-nmos:format:video"
    assert (audio["format"], audio["codec"]) == ("urn:x-nmos:format:audio", "audio/aac")
    assert audio["essence_parameters"]["sample_rate"] == 48000 and audio["essence_parameters"]["channels"] == 2
    assert multi["format"] == "urn:x-nmos:format:multi"
    assert multi["flow_collection"] == [{"id": ids["video"], "role": "video"}, {"id": ids["audio"], "role": "audio"}]
    assert len({video["source_id"], audio["source_id"], multi["source_id"]}) == 3
    assert video["collected_by"] == [ids["multi"]]
    assert audio["collected_by"] == [ids["multi"]]
    audio_segments = await _segments(tams_store, ids["audio"])
    assert [s["timerange"] for s in audio_segments] == [str(hls_audio_content.audio_timerange(k)) for k in range(4)]
    # the last segment has no next one to end at: it ends with its last AAC packet, one packet
    # (1024 samples of encoder priming) after the 8 s of input
    assert audio_segments[-1]["timerange"] == "[6:82666666_8:88000000)"
    video_segments = await _segments(tams_store, ids["video"])
    assert [s["timerange"] for s in video_segments] == [str(hls_audio_content.video_timerange(k)) for k in range(4)]
    async with _client(tams_store) as client:
        audio_object = await client.download_object(audio_segments[1]["get_urls"][0])
        video_object = await client.download_object(video_segments[1]["get_urls"][0])
    assert set(media.read_timing(audio_object).streams) == {"audio"}
    assert set(media.read_timing(video_object).streams) == {"video"}
    path = tmp_path / "v.ts"
    path.write_bytes(video_object)
    assert sample_content.read_frame_numbers(path) == hls_audio_content.frames(1)
    again = await _ingest(tams_store, hls_audio_content, flow_id=ids["video"])
    assert (again.registered, again.skipped, again.flow_ids) == (0, 4, ids)


async def test_video_only_uploads_the_segments_as_they_are(
    tams_store: RunningStore, hls_audio_content: SynthesizedHLS
) -> None:
    result = await _ingest(tams_store, hls_audio_content, video_only=True, segment_count=2)
    assert set(result.flow_ids) == {"video"}
    segments = await _segments(tams_store, result.flow_ids["video"])
    async with _client(tams_store) as client:
        data = await client.download_object(segments[0]["get_urls"][0])
    assert data == hls_audio_content.segment_paths()[0].read_bytes()


# -- playlists over HTTP -----------------------------------------------------------------------


async def test_http_master_playlist_picks_the_highest_bandwidth_unless_told(
    tams_store: RunningStore, hls_content: SynthesizedHLS, tmp_path: Path, aiohttp_server: Any
) -> None:
    root = tmp_path / "site"
    shutil.copytree(hls_content.directory, root / "high")
    names = [p.name for p in hls_content.segment_paths()]
    (root / "low").mkdir()
    (root / "low" / "index.m3u8").write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n"
        + "".join(f"#EXTINF:2.0,\n../high/{name}\n" for name in names[:2]) + "#EXT-X-ENDLIST\n"
    )
    (root / "master.m3u8").write_text(
        "#EXTM3U\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=100000,RESOLUTION=160x90\nlow/index.m3u8\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=900000,RESOLUTION=320x180\nhigh/hls_output.m3u8\n"
    )
    app = web.Application()
    app.router.add_static("/", root)
    server = await aiohttp_server(app)
    url = str(server.make_url("/master.m3u8"))
    best = await _ingest(tams_store, url)
    assert best.registered == 10
    chosen = await _ingest(tams_store, url, variant="low")
    assert chosen.registered == 2
    segments = await _segments(tams_store, chosen.flow_ids["video"])
    assert [s["timerange"] for s in segments] == [str(hls_content.video_timerange(k)) for k in range(2)]


# -- bad input ---------------------------------------------------------------------------------


# These fail before the store is asked anything, so no store is started for them.
NO_STORE = {"TAMS_URL": "http://127.0.0.1:9", "USERNAME": "u", "PASSWORD": "p"}


def test_missing_playlist_is_one_line(tmp_path: Path) -> None:
    done = _run_script(None, NO_STORE, "--hls-filename", str(tmp_path / "nope.m3u8"), cwd=tmp_path)
    assert "no such playlist" in _one_error_line(done)


def test_a_file_that_is_not_hls_is_one_line(hls_content: SynthesizedHLS, tmp_path: Path) -> None:
    done = _run_script(None, NO_STORE, "--hls-filename", str(hls_content.segment_paths()[0]), cwd=tmp_path)
    assert "not an HLS playlist" in _one_error_line(done)


def test_missing_segment_file_registers_nothing(tams_store: RunningStore, hls_content: SynthesizedHLS, tmp_path: Path) -> None:
    content = copy_content(hls_content, tmp_path / "broken")
    content.segment_paths()[6].unlink()
    done = _run_script(None, tams_store.env, "--hls-filename", str(content.playlist), "--hls-segment-count", "0",
                       cwd=tmp_path)
    assert "no such segment file" in _one_error_line(done)
    assert _sync(_all_flows(tams_store)) == []


async def _all_flows(store: RunningStore) -> list[dict[str, Any]]:
    async with _client(store) as client:
        return [f async for f in client.flows()]


def test_unreadable_segment_stops_with_only_whole_segments_registered(
    tams_store: RunningStore, hls_content: SynthesizedHLS, tmp_path: Path
) -> None:
    content = copy_content(hls_content, tmp_path / "broken")
    content.segment_paths()[5].write_bytes(b"\x47not really a transport stream" * 400)
    flow_id = str(uuid.uuid4())
    done = _run_script(None, tams_store.env, "--hls-filename", str(content.playlist), "--flow-id", flow_id,
                       "--quiet", cwd=tmp_path)
    assert "hls_output_00005.ts" in _one_error_line(done)
    segments = _sync(_segments(tams_store, flow_id))
    expected = {str(hls_content.video_timerange(k)) for k in range(10) if k != 5}
    assert {s["timerange"] for s in segments} <= expected
    for segment in segments:  # every registered segment has its object
        assert _sync(_object(tams_store, segment["object_id"]))["referenced_by_flows"] == [flow_id]


async def _object(store: RunningStore, object_id: str) -> dict[str, Any]:
    async with _client(store) as client:
        return await client.get_object(object_id)


def test_existing_flow_with_other_properties_is_refused_before_any_write(
    tams_store: RunningStore, hls_content: SynthesizedHLS, tmp_path: Path
) -> None:
    flow_id = str(uuid.uuid4())
    body = {
        "id": flow_id, "source_id": str(uuid.uuid4()), "format": "urn:x-nmos:format:video",
        "codec": "video/h264", "container": "video/mp2t",
        "essence_parameters": {"frame_width": 320, "frame_height": 180, "frame_rate": {"numerator": 25}},
    }  # fmt: skip

    async def create() -> None:
        async with _client(tams_store) as client:
            await client.put_flow(flow_id, body)

    _sync(create())
    done = _run_script(None, tams_store.env, "--hls-filename", str(hls_content.playlist), "--flow-id", flow_id,
                       cwd=tmp_path)
    line = _one_error_line(done)
    assert "different properties" in line and "frame_rate" in line
    assert _sync(_segments(tams_store, flow_id)) == []
    assert _sync(_flow(tams_store, flow_id))["essence_parameters"]["frame_rate"]["numerator"] == 25


def test_unreachable_store_is_one_line(hls_content: SynthesizedHLS, tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"USERNAME": "u", "PASSWORD": "p"}
    done = _run_script(f"http://127.0.0.1:{port}", env, "--hls-filename", str(hls_content.playlist), "--retries", "2",
                       "--quiet", cwd=tmp_path)
    assert "127.0.0.1" in _one_error_line(done)


def test_bad_flow_params_is_one_line(hls_content: SynthesizedHLS, tmp_path: Path) -> None:
    done = _run_script(None, NO_STORE, "--hls-filename", str(hls_content.playlist), "--flow-params", "{nope",
                       cwd=tmp_path)
    assert "--flow-params" in _one_error_line(done)


@pytest.mark.parametrize("option, value, reason", [
    ("--hls-segment-count", "-3", "is negative"),
    ("--hls-start-segment", "-1", "is negative"),
    ("--concurrency", "0", "is not at least 1"),
    ("--storage-batch", "0", "is not at least 1"),
    ("--hls-segment-count", "three", "is not a whole number"),
])  # fmt: skip
def test_negative_counts_and_zero_concurrency_are_an_argparse_error(
    option: str, value: str, reason: str, hls_content: SynthesizedHLS, tmp_path: Path
) -> None:
    done = _run_script(None, NO_STORE, "--hls-filename", str(hls_content.playlist), option, value, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.startswith("usage: ")
    assert done.stderr.strip().splitlines()[-1] == f"ingest_hls.py: error: argument {option}: '{value}' {reason}"


def test_help_lists_every_option_with_its_default(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0
    for option in ("--hls-filename", "--hls-start-segment", "--hls-segment-count", "--flow-id", "--source-id",
                   "--flow-params", "--normalise", "--concurrency", "--variant", "--video-only", "--quiet",
                   "--tams-url", "--client-id"):
        assert option in done.stdout
    text = " ".join(done.stdout.split())
    assert "default: 8)" in text and "(default: sample_content/hls_output.m3u8)" in text


def test_flow_params_override_the_probed_properties(tams_store: RunningStore, hls_content: SynthesizedHLS) -> None:
    params = {"essence_parameters": {"colorspace": "BT709"}, "tags": {"genre": "test"}}
    result = _sync(_ingest(tams_store, hls_content, flow_params=params, segment_count=1))
    flow = _sync(_flow(tams_store, result.flow_ids["video"]))
    assert flow["essence_parameters"]["colorspace"] == "BT709"
    assert flow["essence_parameters"]["frame_width"] == 320
    assert flow["tags"] == {"genre": "test"}
    assert json.dumps(flow)  # still a valid Flow document
    assert Fraction(flow["segment_duration"]["numerator"], flow["segment_duration"].get("denominator", 1)) == 2


async def test_a_flow_id_made_up_by_the_run_is_not_looked_up_before_it_is_created(
    store_factory: Callable[..., RunningStore], hls_content: SynthesizedHLS
) -> None:
    store = store_factory(extra_args=["--access-log"])
    fresh = await _ingest(store, hls_content, segment_count=2, video_only=True)
    given = str(uuid.uuid4())
    await _ingest(store, hls_content, segment_count=2, video_only=True, flow_id=given)
    asked = [(r.method, r.path) for r in _access_log(store) if r.path.startswith("/flows/") and r.path.count("/") == 2]
    made_up = fresh.flow_ids["video"]
    assert ("PUT", f"/flows/{made_up}") in asked and ("GET", f"/flows/{made_up}") not in asked
    assert asked.index(("GET", f"/flows/{given}")) < asked.index(("PUT", f"/flows/{given}"))  # a given id is checked

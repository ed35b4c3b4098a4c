"""The forms of HLS ingest beyond MPEG-TS segments (issue 13): defaults first."""

from __future__ import annotations

import asyncio
import functools
import http.server
import os
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from mediatimestamp.immutable import TimeRange

import ingest_core
import sample_content
from tests.synthetic_media import SynthesizedHLS
from tests.test_ingest_cmaf import _exported, _flow_and_segments

if TYPE_CHECKING:
    from tests.conftest import RunningStore

pytest_plugins = ["tests.media_fixtures"]

SCRIPT = Path(ingest_core.__file__).with_name("ingest_hls.py").resolve()


def test_the_default_segment_count_is_every_segment() -> None:
    options = ingest_core._options(ingest_core._parse_args(["--hls-filename", "p.m3u8"]))
    assert options.segment_count is None
    assert ingest_core.IngestOptions(hls="p.m3u8").segment_count is None


def test_a_segment_count_takes_a_part() -> None:
    options = ingest_core._options(ingest_core._parse_args(["--hls-filename", "p.m3u8", "--hls-segment-count", "4"]))
    assert options.segment_count == 4


def test_a_run_that_stops_short_says_how_many_segments_it_left(tams_store: RunningStore, hls_content: SynthesizedHLS,
                                                                tmp_path: Path) -> None:
    environ = {**os.environ, **tams_store.env}
    done = subprocess.run([sys.executable, str(SCRIPT), "--hls-filename", str(hls_content.playlist),
                           "--hls-segment-count", "3", "--video-only"], capture_output=True, text=True, check=False,
                          timeout=120, cwd=tmp_path, env=environ)
    assert done.returncode == 0, done.stderr
    total = hls_content.segment_count
    assert "ingested 3 segments" in done.stdout
    assert f"{total - 3} segments of the playlist left (--hls-start-segment 3 goes on)" in done.stdout
    everything = subprocess.run([sys.executable, str(SCRIPT), "--hls-filename", str(hls_content.playlist),
                                 "--video-only"], capture_output=True, text=True, check=False,
                                timeout=120, cwd=tmp_path, env=environ)
    assert everything.returncode == 0, everything.stderr
    assert f"ingested {total} segments" in everything.stdout and "left" not in everything.stdout


def test_file_urls_and_http_urls_mix_with_relative_segments(tams_store: RunningStore, hls_content: SynthesizedHLS,
                                                            tmp_path: Path) -> None:
    from urllib.parse import quote

    served = tmp_path / "served dir"
    served.mkdir()
    paths = hls_content.segment_paths()[:3]
    (served / paths[2].name).write_bytes(paths[2].read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        local = tmp_path / "mixed"
        local.mkdir()
        (local / paths[0].name).write_bytes(paths[0].read_bytes())
        spaced = tmp_path / "a dir" / paths[1].name
        spaced.parent.mkdir()
        spaced.write_bytes(paths[1].read_bytes())
        text = hls_content.playlist.read_text()
        lines = [line for line in text.splitlines() if line.startswith("#EXT-X-ENDLIST") is False]
        header = [line for line in lines if line.startswith("#") and not line.startswith("#EXTINF")]
        infs = [line for line in lines if line.startswith("#EXTINF")][:3]
        uris = [paths[0].name, "file://" + quote(str(spaced)),
                f"http://127.0.0.1:{server.server_address[1]}/{paths[2].name}"]
        body = [x for inf, uri in zip(infs, uris, strict=True) for x in (inf, uri)]
        (local / "p.m3u8").write_text("\n".join([*header, *body, "#EXT-X-ENDLIST"]) + "\n")
        done = subprocess.run([sys.executable, str(SCRIPT), "--hls-filename", str(local / "p.m3u8"), "--video-only"],
                              capture_output=True, text=True, check=False, timeout=120, cwd=tmp_path,
                              env={**os.environ, **tams_store.env})
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "ingested 3 segments" in done.stdout


def test_a_packagers_absolute_urls_near_the_wrap_ingest_every_frame_once_in_order(
    tams_store: RunningStore, tmp_path: Path
) -> None:
    # libavformat's hls muxer as a packager: segment URIs absolute (hls_base_url), served over
    # HTTP, and the timestamps of an encoder that has run for a day (output_ts_offset): 3 s before
    # the MPEG-TS 2^33 wrap, so segment 3 starts after it.
    source = sample_content.synthesize(tmp_path / "source", fps=10, duration=6, segment_seconds=1)
    whole = tmp_path / "whole.ts"
    whole.write_bytes(b"".join((source.parent / line).read_bytes() for line in source.read_text().splitlines()
                               if line and not line.startswith("#")))
    served = tmp_path / "served"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    wrap = Fraction(1 << 33, 90000)
    try:
        playlist = sample_content.package_hls(whole, served, form="ts", segment_seconds=1,
                                              base_url=f"http://127.0.0.1:{server.server_address[1]}/",
                                              ts_offset=wrap - 3)
        local = tmp_path / "local.m3u8"  # the playlist read from disk, its segments over HTTP
        local.write_text(playlist.read_text())
        assert "http://127.0.0.1:" in local.read_text()
        done = subprocess.run([sys.executable, str(SCRIPT), "--hls-filename", str(local), "--quiet"],
                              capture_output=True, text=True, check=False, timeout=120, cwd=tmp_path,
                              env={**os.environ, **tams_store.env})
        assert done.returncode == 0, done.stderr
        flow_id = done.stdout.split("into video ", 1)[1].split(":", 1)[0]
        _, segments = asyncio.run(_flow_and_segments(tams_store, flow_id))
        ranges = [TimeRange.from_str(s["timerange"]) for s in segments]
        assert len(ranges) == 6
        assert all(a.end == b.start for a, b in zip(ranges, ranges[1:]))
        assert ranges[2].start.to_nanosec() < wrap * 10**9 < ranges[3].start.to_nanosec()  # type: ignore[union-attr]
        assert _exported(tams_store, flow_id, tmp_path / "out.ts") == list(range(60))
    finally:
        server.shutdown()

"""The forms of HLS ingest beyond MPEG-TS segments (issue 13): defaults first."""

from __future__ import annotations

import ingest_hls


def test_the_default_segment_count_is_every_segment() -> None:
    options = ingest_hls._options(ingest_hls._parse_args(["--hls-filename", "p.m3u8"]))
    assert options.segment_count is None
    assert ingest_hls.IngestOptions(hls="p.m3u8").segment_count is None


def test_a_segment_count_takes_a_part() -> None:
    options = ingest_hls._options(ingest_hls._parse_args(["--hls-filename", "p.m3u8", "--hls-segment-count", "4"]))
    assert options.segment_count == 4

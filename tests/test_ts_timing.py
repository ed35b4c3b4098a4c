"""An MPEG-TS segment's video timing read from its headers (``ts_scan.access_units``, used by
``media.read_timing`` once the frame rate is known) is exactly what demuxing it with PyAV gives:
first and last pts, frame duration, packet, key frame and byte counts. Segments whose PES packets
the scan cannot vouch for are demuxed as before."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import pytest

import media
import ts_scan
from tests import gop_media
from tests.synthetic_media import synthesized

RATE = Fraction(30000, 1001)
# Beyond gop_media's encoders: the H.264 streams whose key frames libavformat's parser finds by
# a recovery point SEI message (open GOPs, intra refresh), interlaced (MBAFF) pictures whose
# access units carry picture timing SEI, and pictures cut into several slices.
EXTRA_ENCODERS = {
    "x264-open-gop": ("libx264", {"preset": "veryfast",
                                  "x264-params": "keyint={gop}:min-keyint={gop}:scenecut=0:bframes=3:open-gop=1"}),
    "x264-intra-refresh": ("libx264", {"preset": "veryfast",
                                       "x264-params": "keyint={gop}:scenecut=0:bframes=0:intra-refresh=1"}),
    "x264-mbaff": ("libx264", {"preset": "veryfast",
                               "x264-params": "keyint={gop}:min-keyint={gop}:scenecut=0:interlaced=1:tff=1"}),
    "x264-slices": ("libx264", {"preset": "veryfast", "x264-params": "keyint={gop}:min-keyint={gop}:scenecut=0:slices=4"}),
}
ENCODERS = [*gop_media.ENCODERS, *EXTRA_ENCODERS]


def _demuxed(data: bytes, rate: Fraction) -> media.MediaTiming:
    """The timing PyAV's demuxer gives (a file object never takes the header scan)."""
    return media.read_timing(io.BytesIO(data), kinds=("video",), frame_rate=rate)


def _segments(directory: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted(directory.glob("*.ts"))]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], list[bytes]]:
    """Each encoder's segments, cut at key frames and (split_by_time) at any frame."""
    made = {}
    try:
        gop_media.ENCODERS.update(EXTRA_ENCODERS)
        for encoder in ENCODERS:
            for split in (False, True):
                directory = tmp_path_factory.mktemp(encoder)
                gop_media.make_hls(directory, encoder=encoder, fps=RATE, frames=100, segment_seconds=Fraction(2),
                                   gop_frames=36, split_by_time=split)
                made[encoder, split] = _segments(directory)
    finally:
        for name in EXTRA_ENCODERS:
            gop_media.ENCODERS.pop(name, None)
    return made


@pytest.mark.parametrize("split_by_time", [False, True])
@pytest.mark.parametrize("encoder", ENCODERS)
def test_scanned_timing_is_what_pyav_demuxes(encoded: dict[tuple[str, bool], list[bytes]], encoder: str,
                                             split_by_time: bool) -> None:
    segments = encoded[encoder, split_by_time]
    assert len(segments) >= 2
    for data in segments:
        scanned = media._scanned_timing(data, RATE)
        assert scanned is not None, ts_scan.access_units(data, ts_scan.scan(data))  # type: ignore[arg-type]
        timing = media.read_timing(data, kinds=("video",), frame_rate=RATE)
        assert timing.streams["video"] == scanned
        assert timing == _demuxed(data, RATE)


def test_recovery_point_key_frames_are_counted_as_the_demuxer_counts_them(
        encoded: dict[tuple[str, bool], list[bytes]]) -> None:
    """Intra refresh has one IDR picture, at the start: every later key frame is one by its SEI."""
    data = b"".join(encoded["x264-intra-refresh", False])
    scanned = media._scanned_timing(data, RATE)
    assert scanned is not None
    assert scanned.key_frames == _demuxed(data, RATE).streams["video"].key_frames >= 2


def test_timing_across_the_33_bit_wrap_is_what_pyav_demuxes(tmp_path_factory: pytest.TempPathFactory) -> None:
    content = synthesized(tmp_path_factory, width=128, height=72, duration=2, segment_seconds=1,
                          start_pts=(1 << 33) - 45000)
    for path in content.segment_paths():
        data = path.read_bytes()
        scanned = media._scanned_timing(data, content.fps)
        assert scanned is not None
        assert media.read_timing(data, kinds=("video",), frame_rate=content.fps) == _demuxed(data, content.fps)
    crossing = media._scanned_timing(content.segment_paths()[0].read_bytes(), content.fps)
    assert crossing is not None and crossing.first < 1 << 33 < crossing.last


def test_pes_packets_of_two_access_units_are_demuxed_instead(tmp_path: Path) -> None:
    """A muxer that puts two pictures in one PES packet: the demuxer's parser splits them, so the
    scan gives no timing of its own (it would count one frame for the two)."""
    playlist = gop_media.make_hls(tmp_path, encoder="x264-ip", fps=RATE, frames=24, segment_seconds=Fraction(10),
                                  gop_frames=12)
    (source,) = _segments(playlist.parent)
    with av.open(io.BytesIO(source)) as container:
        packets = [(bytes(p), p.pts, p.dts, p.is_keyframe) for p in container.demux(container.streams.video[0])
                   if p.size]
        template = container.streams.video[0]
        out_file = io.BytesIO()
        with av.open(out_file, "w", format="mpegts", container_options={"mpegts_copyts": "1"}) as out:
            stream = out.add_stream_from_template(template)
            for first, second in zip(packets[::2], packets[1::2]):
                packet = av.Packet(first[0] + second[0])
                packet.pts, packet.dts, packet.time_base = first[1], first[2], template.time_base
                packet.is_keyframe = first[3]
                packet.stream = stream
                out.mux(packet)
    data = out_file.getvalue()
    found = ts_scan.scan(data)
    assert isinstance(found, ts_scan.TsScan) and len(found.pts) == len(packets) // 2
    assert isinstance(ts_scan.access_units(data, found), str)
    assert media._scanned_timing(data, RATE) is None
    timing = media.read_timing(data, kinds=("video",), frame_rate=RATE)
    assert timing == _demuxed(data, RATE)
    with av.open(io.BytesIO(data)) as container:  # the parser made two packets of each PES again
        assert len([p for p in container.demux(container.streams.video[0]) if p.size]) == len(packets)


RECOVERY_POINT = b"\x06\x01\x80"  # payloadType 6, payloadSize 1, recovery_frame_cnt 0 and flags 0
USER_DATA = b"\x05\x11" + bytes(range(16)) + b"\x01"  # payloadType 5 (16-byte UUID, one byte)
TRAILING = b"\x80"  # rbsp_trailing_bits


@pytest.mark.parametrize(("messages", "expected"), [
    (RECOVERY_POINT, True),
    (RECOVERY_POINT + USER_DATA, True),
    (USER_DATA, False),
    (USER_DATA + USER_DATA, False),
    (USER_DATA + RECOVERY_POINT, None),  # a recovery point read only after another message: not vouched for
    (b"\x05\x20\x00\x01", None),  # a message longer than its NAL unit
    (b"\x06\x01\x00", None),  # a recovery_frame_cnt that does not read as ue(v) within its message
])
def test_sei_recovery_points_are_read_as_libavcodec_reads_them_or_refused(messages: bytes, expected: bool | None) -> None:
    found = ts_scan._sei_recovery(b"\x06" + messages + TRAILING)
    assert (None if isinstance(found, str) else found) == expected


def test_sei_emulation_prevention_bytes_are_not_counted_in_message_sizes() -> None:
    payload = b"\x00\x00\x03\x01"  # two bytes of payload, 0x000001 escaped as 0x00000301
    assert ts_scan._sei_recovery(b"\x06\x05\x03" + payload + TRAILING) is False
    assert isinstance(ts_scan._sei_recovery(b"\x06\x05\x05" + payload + TRAILING), str)


def test_a_pes_length_short_of_its_payload_is_demuxed_instead(encoded: dict[tuple[str, bool], list[bytes]]) -> None:
    """A PES_packet_length that ends the packet before its payload does: the demuxer cuts the
    payload there, so the scan gives no timing of its own; the exact length is read as usual."""
    source = encoded["x264-ip", False][0]
    found = ts_scan.scan(source)
    assert isinstance(found, ts_scan.TsScan)
    units = ts_scan.access_units(source, found)
    assert isinstance(units, ts_scan.AccessUnits)
    at = ts_scan._payload(source, found.starts[2])
    assert at is not None and not int.from_bytes(source[at + 4:at + 6], "big")  # the muxer wrote 0: unbounded
    exact = units.sizes[2] + 3 + source[at + 8]
    for length, scanned in ((exact, True), (exact - 50, False)):
        data = bytearray(source)
        data[at + 4:at + 6] = length.to_bytes(2, "big")
        assert (media._scanned_timing(bytes(data), RATE) is not None) == scanned
        assert media.read_timing(bytes(data), kinds=("video",), frame_rate=RATE) == _demuxed(bytes(data), RATE)


@pytest.mark.parametrize(("first_mbs", "expected"), [((0, 20, 40), False), ((0, 40, 20), None), ((0, 40, 40), None)])
def test_slices_out_of_picture_order_are_refused(first_mbs: tuple[int, ...], expected: bool | None) -> None:
    """libavcodec's parser starts a new picture at a slice whose first_mb_in_slice is not past the
    one before (arbitrary slice order, redundant slices): such a PES is not vouched for."""
    coded = {0: b"\x80\x00", 20: b"\x0a\x80", 40: b"\x05\x20"}  # ue(v) first_mb_in_slice, then zero bits
    es = b"\0\0\1\x09\xf0" + b"".join(b"\0\0\1\x41" + coded[mb] + b"\xff" for mb in first_mbs)
    nals = [at + 3 for at in range(len(es)) if es[at:at + 3] == b"\0\0\1"]
    found = ts_scan._unit_h264(es, nals, len(es))
    assert (None if isinstance(found, str) else found) == expected

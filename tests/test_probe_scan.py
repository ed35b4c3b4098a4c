"""The probe of an MPEG-TS object of H.264 video read from its headers and SPS, without PyAV
(``media._scanned_properties``, ``h264_sps``): it gives exactly what PyAV's probe gives, or
declines and leaves the object to PyAV.

Each case encodes a short clip with PyAV (as a packager would) and probes it both ways: as bytes
(the scanned probe, where it does not decline) and as a file object (always PyAV).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest

import h264_sps
import media
import ts_scan
from tests.conftest import RunningStore
from tests.synthetic_media import SynthesizedHLS

pytest_plugins = ["tests.media_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
TS_MUX = {"mpegts_copyts": "1", "avoid_negative_ts": "disabled"}


def clip(rate: Fraction = Fraction(25), size: tuple[int, int] = (64, 48), *, frames: int = 30,
         pix_fmt: str = "yuv420p", x264: str = "", profile: str | None = None, sar: Fraction | None = None,
         full_range: bool = False, start_pts: int = 90000, audio: bool = False, step: int | None = None,
         time_base: Fraction = Fraction(1, 90000), noise: bool = False) -> bytes:
    """An MPEG-TS clip of ``frames`` frames of H.264 from libx264, key frame first, a frame every
    ``step`` 90 kHz ticks (by default, a frame of ``rate``); ``noise`` makes frames that do not
    compress."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts", container_options=TS_MUX) as out:
        video = out.add_stream("libx264", rate=rate)
        video.width, video.height = size
        video.pix_fmt = pix_fmt
        video.codec_context.time_base = time_base
        options = {"preset": "ultrafast", "x264-params": "keyint=50:scenecut=0:bframes=0" + (":" + x264 if x264 else "")}
        if profile:
            options["profile"] = profile
        video.options = options
        if sar is not None:
            video.codec_context.sample_aspect_ratio = sar
        if full_range:
            video.codec_context.color_range = 2  # AVCOL_RANGE_JPEG
        sound = out.add_stream("aac", rate=48000, layout="stereo") if audio else None
        for n in range(frames):
            frame = av.VideoFrame(size[0], size[1], pix_fmt)
            for number, plane in enumerate(frame.planes):
                plane.update(os.urandom(plane.buffer_size) if noise else
                             bytes([(40 + 9 * n) % 200 if number == 0 else 128]) * plane.buffer_size)
            ticks = start_pts + (n * step if step else n * 90000 * rate.denominator // rate.numerator)
            frame.pts = int(Fraction(ticks, 90000) / time_base)  # on the codec's time base
            frame.time_base = time_base
            out.mux(video.encode(frame))
            if sound is not None and n % 2 == 0:
                samples = av.AudioFrame(format="fltp", layout="stereo", samples=1024)
                for plane in samples.planes:
                    plane.update(bytes(plane.buffer_size))
                samples.sample_rate = 48000
                samples.pts = n * 1024
                out.mux(sound.encode(samples))
        out.mux(video.encode())
        if sound is not None:
            out.mux(sound.encode())
    return buffer.getvalue()


def both_ways(data: bytes) -> tuple[media.MediaProperties | None, media.MediaProperties]:
    return media._scanned_properties(data), media.probe(io.BytesIO(data), name="clip")


READ_FROM_HEADERS: dict[str, dict[str, Any]] = {
    "25 fps": {},
    "30000/1001": {"rate": Fraction(30000, 1001)},
    "50 fps": {"rate": Fraction(50)},
    "24 fps": {"rate": Fraction(24)},
    "cropped (180 lines of 192)": {"size": (320, 180)},
    "cropped both ways (66x34)": {"size": (66, 34)},
    "1080 lines": {"size": (1920, 1080)},
    "baseline profile": {"profile": "baseline"},
    "main profile": {"profile": "main"},
    "high profile, B-frames": {"profile": "high", "x264": "bframes=2"},
    "16:11 pixels (a Table E-1 entry)": {"sar": Fraction(16, 11)},
    "extended SAR 7:5": {"sar": Fraction(7, 5)},
    "full range": {"full_range": True},
    "scaling matrix": {"profile": "high", "x264": "cqm=jvt"},
    "timestamps past the 33-bit wrap": {"start_pts": (1 << 33) - 90000 // 25 * 3},
}


@pytest.mark.parametrize("case", READ_FROM_HEADERS)
def test_a_plain_h264_object_is_read_from_its_headers_exactly_as_pyav_probes_it(case: str) -> None:
    scanned, probed = both_ways(clip(**READ_FROM_HEADERS[case]))
    assert scanned is not None, "the scanned probe declined"
    assert scanned == probed


DECLINED: dict[str, dict[str, Any]] = {
    "interlaced (tff)": {"x264": "tff=1", "size": (64, 64)},
    "fake interlaced (pic_struct)": {"x264": "fake-interlaced=1:pic-struct=1"},
    "pic_struct alone": {"x264": "pic-struct=1"},
    "NAL HRD (a bit rate)": {"x264": "nal-hrd=vbr:vbv-maxrate=500:vbv-bufsize=500"},
    "4:2:2": {"pix_fmt": "yuv422p"},
    "4:4:4": {"pix_fmt": "yuv444p"},
    "23 frames (too few for the step to be the estimate)": {"frames": 23},
    "24000/1001 (steps of 3753 and 3754 ticks)": {"rate": Fraction(24000, 1001)},
    "60000/1001 (steps of 1501 and 1502 ticks)": {"rate": Fraction(60000, 1001)},
    "240 fps (steps of 375 ticks)": {"rate": Fraction(240)},
    "VUI timing below the steps' rate (force-cfr)": {"x264": "force-cfr=1", "step": 1800},
    "frames too large for the probe's 5 MB": {"size": (448, 336), "noise": True, "x264": "qp=0:keyint=1",
                                               "rate": Fraction(90000, 3001), "time_base": Fraction(3001, 90000)},
    "under 5 fps (1000/999)": {"rate": Fraction(1000, 999), "time_base": Fraction(999, 1000), "start_pts": 0},
    "muxed audio": {"audio": True},
}


@pytest.mark.parametrize("case", DECLINED)
def test_an_object_the_headers_leave_in_doubt_goes_to_pyav(case: str) -> None:
    data = clip(**DECLINED[case])
    scanned, probed = both_ways(data)
    assert scanned is None
    assert media.probe(data, name="clip") == probed


def test_uneven_steps_between_frames_go_to_pyav() -> None:
    data = bytearray(clip())
    found = ts_scan.scan(bytes(data))
    assert not isinstance(found, str)
    # move the last frame's pts one frame later: the steps are no longer all 3600 ticks
    index = found.starts[-1]
    at = index * ts_scan.PACKET_SIZE + 4
    if data[index * ts_scan.PACKET_SIZE + 3] & 0x20:
        at += 1 + data[at]
    pts = ts_scan._timestamp(data, at + 9) + 3600
    flags = data[at + 9] & 0xF0
    data[at + 9:at + 14] = bytes([flags | ((pts >> 29) & 0x0E) | 1, (pts >> 22) & 0xFF,
                                  ((pts >> 14) & 0xFE) | 1, (pts >> 7) & 0xFF, ((pts << 1) & 0xFE) | 1])
    changed = ts_scan.scan(bytes(data))
    assert not isinstance(changed, str) and changed.pts[-1] == found.pts[-1] + 3600
    assert media._scanned_properties(bytes(data)) is None


def test_synthesized_video_segments_read_from_their_headers_and_muxed_ones_go_to_pyav(
        hls_content: SynthesizedHLS, hls_audio_content: SynthesizedHLS) -> None:
    video = sorted(hls_content.playlist.parent.glob("*.ts"))
    muxed = sorted(hls_audio_content.playlist.parent.glob("*.ts"))
    assert video and muxed
    for path in video:
        scanned, probed = both_ways(path.read_bytes())
        assert scanned is not None and scanned == probed, path.name
    for path in muxed:
        scanned, probed = both_ways(path.read_bytes())
        assert scanned is None and probed.audio is not None, path.name


def test_a_broken_sps_is_declined_not_misread() -> None:
    data = clip()
    found = ts_scan.scan(data)
    assert not isinstance(found, str)
    headers = ts_scan.h264_headers(data, found)
    assert not isinstance(headers, str) and headers[0]
    sps = headers[0][0].rstrip(b"\0")
    assert h264_sps.parse(sps) is not None
    for cut in range(1, len(sps)):  # every truncation loses the stop bit, at least
        assert h264_sps.parse(sps[:cut]) is None, cut
    assert h264_sps.parse(b"\x68" + sps[1:]) is None  # a PPS header
    assert h264_sps.parse(b"") is None


def test_a_video_only_ingest_never_imports_pyav(shared_store: RunningStore, tmp_path: Path) -> None:
    """A playlist of video-only H.264 MPEG-TS segments is probed and timed without PyAV: the
    ingest never imports it (about 40 ms of start-up and the probe's decode saved)."""
    for k in range(3):
        (tmp_path / f"s{k}.ts").write_bytes(clip(frames=50, start_pts=90000 + k * 180000))
    playlist = tmp_path / "index.m3u8"
    playlist.write_text("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
                        + "".join(f"#EXTINF:2.0,\ns{k}.ts\n" for k in range(3)) + "#EXT-X-ENDLIST\n")
    child = ("import sys, ingest_core\n"
             "status = ingest_core.main(sys.argv[1:])\n"
             "print('av imported' if 'av' in sys.modules else 'no av')\n"
             "sys.exit(status)\n")
    env = {**os.environ, "TAMS_URL": shared_store.url, "USERNAME": shared_store.username,
           "PASSWORD": shared_store.password}
    done = subprocess.run([sys.executable, "-c", child, "--hls-filename", str(playlist), "--hls-segment-count", "0",
                           "--flow-id", str(uuid.uuid4()), "--quiet"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "no av"


class _BitWriter:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, count: int, value: int) -> None:
        self.bits += [(value >> shift) & 1 for shift in range(count - 1, -1, -1)]

    def ue(self, value: int) -> None:
        width = (value + 1).bit_length()
        self.u(width - 1, 0)
        self.u(width, value + 1)

    def nal(self, header: int) -> bytes:
        bits = [*self.bits, 1]  # rbsp_stop_one_bit
        bits += [0] * (-len(bits) % 8)
        rbsp = int("".join(map(str, bits)), 2).to_bytes(len(bits) // 8, "big")
        out, zeros = bytearray(), 0
        for byte in rbsp:  # emulation prevention
            if zeros >= 2 and byte <= 3:
                out.append(3)
                zeros = 0
            out.append(byte)
            zeros = zeros + 1 if byte == 0 else 0
        return bytes([header]) + bytes(out)


def crafted_sps(*, size_mbs: tuple[int, int] = (4, 3), frame_num_bits: int = 4, poc_lsb_bits: int = 4,
                refs: int = 1, crop: tuple[int, int, int, int] | None = None, sar: tuple[int, int] | None = None,
                chroma_loc: tuple[int, int] | None = None, reorder: int | None = None) -> bytes:
    """A baseline-profile SPS NAL unit with these fields (every other one 0 or absent)."""
    bits = _BitWriter()
    bits.u(8, 66)
    bits.u(8, 0xC0)
    bits.u(8, 30)
    bits.ue(0)  # seq_parameter_set_id
    bits.ue(frame_num_bits - 4)
    bits.ue(0)  # pic_order_cnt_type
    bits.ue(poc_lsb_bits - 4)
    bits.ue(refs)
    bits.u(1, 0)
    bits.ue(size_mbs[0] - 1)
    bits.ue(size_mbs[1] - 1)
    bits.u(2, 0b11)  # frame_mbs_only_flag, direct_8x8_inference_flag
    bits.u(1, crop is not None)
    for value in crop or ():
        bits.ue(value)
    bits.u(1, 1)  # VUI
    bits.u(1, sar is not None)
    if sar is not None:
        bits.u(8, 255)
        bits.u(16, sar[0])
        bits.u(16, sar[1])
    bits.u(2, 0)  # no overscan info, no video signal type
    bits.u(1, chroma_loc is not None)
    for value in chroma_loc or ():
        bits.ue(value)
    bits.u(1, 1)  # timing info: 25 frames a second
    bits.u(32, 1)
    bits.u(32, 50)
    bits.u(1, 1)
    bits.u(3, 0)  # no NAL or VCL HRD, no pic_struct
    bits.u(1, reorder is not None)
    if reorder is not None:
        bits.u(1, 1)
        for value in (2, 1, 16, 16, reorder, max(reorder, refs)):
            bits.ue(value)
    return bits.nal(0x67)


def test_a_crafted_sps_reads_back_its_fields() -> None:
    sps = h264_sps.parse(crafted_sps(size_mbs=(20, 12), crop=(0, 3, 0, 6), sar=(16, 11), chroma_loc=(1, 1), reorder=2))
    assert sps is not None
    assert (sps.width, sps.height, sps.crop_left, sps.crop_top) == (320 - 6, 192 - 12, 0, 0)
    assert (sps.sample_aspect_ratio, sps.frame_rate, sps.profile_idc, sps.level_idc) == ((16, 11), 25, 66, 30)
    cropped = h264_sps.parse(crafted_sps(crop=(1, 0, 2, 0)))
    assert cropped is not None and (cropped.width, cropped.height, cropped.crop_left, cropped.crop_top) == (62, 44, 2, 4)


@pytest.mark.parametrize("fields", [
    {"frame_num_bits": 17}, {"poc_lsb_bits": 17}, {"refs": 17}, {"reorder": 17}, {"chroma_loc": (6, 0)},
    {"chroma_loc": (0, 6)}, {"size_mbs": (8192, 8192)},
], ids=str)
def test_an_sps_libavcodec_refuses_is_not_read(fields: dict[str, Any]) -> None:
    """libavcodec refuses these values (and PyAV's probe then finds no picture size), so the
    scanned probe must not describe them."""
    assert h264_sps.parse(crafted_sps()) is not None
    assert h264_sps.parse(crafted_sps(**fields)) is None


@pytest.mark.parametrize(("sar", "expected"), [
    (None, Fraction(1)), ((0, 7), Fraction(1)), ((16, 11), Fraction(16, 11)), ((2, 4), Fraction(1, 2)),
    ((5, 0), Fraction(5)),  # libavcodec reads a height of 0 as 1
    ((1, 65), None), ((49, 1), None),  # scaled to no width (64 samples) or no height (48 lines): declined
], ids=str)
def test_the_sample_aspect_ratio_is_the_decoders(sar: tuple[int, int] | None, expected: Fraction | None) -> None:
    sps = h264_sps.parse(crafted_sps(sar=sar))
    assert sps is not None
    assert media._decoded_sar(sps) == expected

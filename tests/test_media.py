"""media.py: exact timing (pts to Timestamp, 33-bit wrap, segment timeranges) and properties."""

from __future__ import annotations

import io
import random
from fractions import Fraction
from pathlib import Path

import av
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mediatimestamp.immutable import TimeRange, Timestamp

import media
import sample_content
from tests.synthetic_media import SynthesizedHLS, synthesized, ticks_to_ns

pytest_plugins = ["tests.media_fixtures"]

WRAP = 1 << 33


# -- time --------------------------------------------------------------------------------------


def test_first_sample_pts_6000_is_0_66666666() -> None:
    assert str(media.pts_to_timestamp(6000, Fraction(1, 90000))) == "0:66666666"


@given(st.integers(min_value=-(2**40), max_value=2**40), st.sampled_from([90000, 48000, 30000, 15360, 1001]))
def test_pts_to_timestamp_is_exact_and_floors(pts: int, rate: int) -> None:
    ts = media.pts_to_timestamp(pts, Fraction(1, rate))
    assert ts == Timestamp.from_count(pts, rate)  # the one rounding everyone using mediatimestamp gets
    if pts >= 0:
        assert ts.to_nanosec() == (pts * 10**9) // rate
    assert media.pts_to_timestamp(Fraction(pts, 7), Fraction(7, rate)) == ts  # Fractions are exact too


def test_unwrapper_adds_a_period_after_a_forward_wrap() -> None:
    unwrapper = media.PtsUnwrapper()
    raw = [WRAP - 6000, WRAP - 3000, 0, 3000]
    assert [unwrapper.unwrap(p) for p in raw] == [WRAP - 6000, WRAP - 3000, WRAP, WRAP + 3000]


def test_unwrapper_accepts_libav_negative_values_near_the_wrap() -> None:
    unwrapper = media.PtsUnwrapper()
    # libavformat reports pts just before the wrap as negative when a file starts there
    assert [unwrapper.unwrap(p) for p in (-6000, -3000, 0, 3000)] == [WRAP - 6000, WRAP - 3000, WRAP, WRAP + 3000]


def test_unwrapper_keeps_reordered_pts_on_the_right_side_of_the_wrap() -> None:
    unwrapper = media.PtsUnwrapper()
    # decode order with B-frames: the I-frame after the wrap, then B-frames from before it
    raw = [WRAP - 9000, 3000, WRAP - 3000, 0]
    assert [unwrapper.unwrap(p) for p in raw] == [WRAP - 9000, WRAP + 3000, WRAP - 3000, WRAP]


@given(st.integers(min_value=0, max_value=WRAP - 1), st.lists(st.integers(min_value=-9000, max_value=2**31), max_size=40))
def test_unwrapper_recovers_any_timeline_from_33_bit_values(start: int, steps: list[int]) -> None:
    truth = [start]
    for step in steps:
        truth.append(truth[-1] + step)
    unwrapper = media.PtsUnwrapper()
    assert [unwrapper.unwrap(value % WRAP) for value in truth] == truth


# -- timing ------------------------------------------------------------------------------------


def test_segment_timing_matches_the_synthesis(hls_content: SynthesizedHLS) -> None:
    for k, path in enumerate(hls_content.segment_paths()):
        timing = media.read_timing(path)
        video = timing.video
        assert video is not None and timing.audio is None
        first, end = hls_content.video_ticks(k)
        assert (video.first, video.end, video.packets, video.key_frames) == (first, end, 60, 2)
        assert video.last_duration == 3000
        assert video.timerange() == hls_content.video_timerange(k)
    assert str(media.media_timerange(hls_content.segment_paths()[0])) == "[0:66666666_2:66666666)"


def test_audio_timing_matches_the_synthesis(hls_audio_content: SynthesizedHLS) -> None:
    for k, path in enumerate(hls_audio_content.segment_paths()):
        audio = media.read_timing(path).audio
        assert audio is not None
        assert audio.last_duration == 1920
        assert audio.timerange() == hls_audio_content.audio_timerange(k)


def test_timing_counts_the_video_packet_payload_bytes_and_the_file_size(hls_content: SynthesizedHLS) -> None:
    path = hls_content.segment_paths()[0]
    with av.open(str(path)) as container:
        payload = sum(p.size for p in container.demux(video=0) if p.size)
    timing = media.read_timing(path.read_bytes())  # bytes in, same answer
    assert timing.video is not None and timing.video.bytes == payload
    assert timing.size == path.stat().st_size


def _overwrite_slice_data(data: bytes, pid: int, keep: int = 8) -> tuple[bytes, int]:
    """``data`` (MPEG-TS) with the coded picture data of every H.264 slice on ``pid`` overwritten,
    and how many bytes were changed. TS headers, adaptation fields, PES headers (with PTS/DTS),
    start codes, parameter sets, SEI and the first ``keep`` bytes of each slice (its header, which
    says the slice type) are kept, so the packets and their timing are as they were; 0xA5 holds no
    zero bytes, so no new start code appears."""
    out = bytearray(data)
    pes_offsets: list[list[int]] = []  # per PES packet: the file offset of each of its ES bytes
    for at in range(0, len(data) - 187, 188):
        header = data[at : at + 4]
        assert header[0] == 0x47
        if ((header[1] & 0x1F) << 8 | header[2]) != pid or not (header[3] >> 4) & 1:
            continue
        start = at + 4 + (1 + data[at + 4] if (header[3] >> 4) & 2 else 0)
        if header[1] & 0x40:  # a PES packet starts here
            assert data[start : start + 3] == b"\x00\x00\x01"
            start += 9 + data[start + 8]
            pes_offsets.append([])
        if pes_offsets:
            pes_offsets[-1].extend(range(start, at + 188))
    changed = 0
    for offsets in pes_offsets:
        es = bytes(data[i] for i in offsets)
        nal_starts = []
        found = es.find(b"\x00\x00\x01")
        while found >= 0:
            nal_starts.append(found + 3)
            found = es.find(b"\x00\x00\x01", found + 3)
        for n, nal in enumerate(nal_starts):
            end = nal_starts[n + 1] - 4 if n + 1 < len(nal_starts) else len(es)  # before a 4-byte start code
            if es[nal] & 0x1F in (1, 5):  # coded slice (non-IDR, IDR)
                for j in range(nal + keep, end):
                    out[offsets[j]] = 0xA5
                    changed += 1
    return bytes(out), changed


def test_timing_is_read_without_decoding_so_undecodable_pictures_time_the_same(
    hls_content: SynthesizedHLS, tmp_path: Path
) -> None:
    original = hls_content.segment_paths()[0].read_bytes()
    with av.open(str(hls_content.segment_paths()[0])) as container:
        pid = container.streams.video[0].id
    damaged, changed = _overwrite_slice_data(original, pid)
    expected = media.read_timing(original)
    assert expected.video is not None
    assert changed > expected.video.bytes // 2  # most of the coded pictures are gone
    path = tmp_path / "damaged.ts"
    path.write_bytes(damaged)
    try:  # the pictures cannot be decoded: no frame reads back its number
        numbers = sample_content.read_frame_numbers(path)
    except sample_content.SampleContentError:
        numbers = []
    assert not set(numbers) & set(hls_content.frames(0))
    assert sample_content.read_frame_numbers(hls_content.segment_paths()[0]) == hls_content.frames(0)
    assert media.read_timing(damaged) == expected
    assert media.read_timing(path) == expected


def test_timing_across_the_33_bit_wrap(tmp_path_factory: pytest.TempPathFactory) -> None:
    start = WRAP - 45000  # half a second before the wrap
    content = synthesized(tmp_path_factory, width=128, height=72, duration=2, segment_seconds=1, start_pts=start)
    first, second = content.segment_paths()
    crossing = media.read_timing(first).video
    assert crossing is not None
    assert crossing.first == start
    assert crossing.end == start + 30 * 3000 > WRAP  # unwrapped inside the segment
    after = media.read_timing(second).video
    assert after is not None
    assert after.first == start + 30 * 3000 - WRAP  # a raw 33-bit value in the next file
    assert media.unwrap_near(after.first, crossing.first) == crossing.end
    assert sample_content.read_frame_numbers(first) == list(range(30))


def test_fractional_rate_durations_stay_exact(tmp_path_factory: pytest.TempPathFactory) -> None:
    content = synthesized(tmp_path_factory, width=128, height=72, fps=Fraction(30000, 1001), duration=4,
                          segment_seconds=2)
    video = media.read_timing(content.segment_paths()[0]).video
    assert video is not None
    assert video.last_duration == 3003
    assert video.timerange() == content.video_timerange(0)


def test_mp4_timing_from_its_index_agrees_with_its_packets(tmp_path: Path) -> None:
    film = tmp_path / "film.mp4"
    with av.open(str(film), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128, 72, "yuv420p"
        stream.options = {"preset": "ultrafast", "bframes": "2"}
        for n in range(50):
            frame = av.VideoFrame(128, 72, "yuv420p")
            for plane in frame.planes:
                plane.update(bytes([(n * 5) % 256]) * plane.buffer_size)
            frame.pts, frame.time_base = n, Fraction(1, 25)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(str(film)) as container:
        pts = [p.pts for p in container.demux(video=0) if p.size and p.pts is not None]
        time_base = Fraction(container.streams.video[0].time_base or 0)
    frame_ticks = 1 / (25 * time_base)
    timing = media.read_timing(film).video
    assert timing is not None
    assert (timing.first, timing.packets) == (min(pts), 50)
    assert timing.end == max(pts) + frame_ticks
    assert timing.end - timing.first == 50 * frame_ticks  # 50 frames, no gaps


def test_unreadable_media_raises_media_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.ts"
    bogus.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(media.MediaError):
        media.read_timing(bogus)
    with pytest.raises(media.MediaError):
        media.probe(b"#EXTM3U\n")


# -- properties --------------------------------------------------------------------------------


def test_probe_reads_video_and_audio_properties(hls_audio_content: SynthesizedHLS) -> None:
    props = media.probe(hls_audio_content.segment_paths()[1])
    assert props.container == "video/mp2t"
    video, audio = props.video, props.audio
    assert video is not None and audio is not None
    assert (video.codec, video.width, video.height, video.frame_rate) == ("video/h264", 320, 180, Fraction(30))
    assert (video.interlace_mode, video.component_type, video.bit_depth) == ("progressive", "YCbCr", 8)
    assert (video.horiz_chroma_subs, video.vert_chroma_subs) == (2, 2)
    assert video.avc is not None and video.avc[0] == 100  # x264's default High profile
    assert (audio.codec, audio.sample_rate, audio.channels, audio.coded_frame_size) == ("audio/aac", 48000, 2, 1024)
    fields = video.flow_fields()
    assert fields["essence_parameters"]["frame_rate"] == {"numerator": 30, "denominator": 1}
    assert fields["essence_parameters"]["aspect_ratio"] == {"numerator": 16, "denominator": 9}
    assert audio.flow_fields()["essence_parameters"]["codec_parameters"]["mp4_oti"] == 2  # AAC-LC


def test_probe_gives_an_exact_fractional_frame_rate(tmp_path_factory: pytest.TempPathFactory) -> None:
    content = synthesized(tmp_path_factory, width=128, height=72, fps=Fraction(30000, 1001), duration=4,
                          segment_seconds=2)
    video = media.probe(content.segment_paths()[0]).video
    assert video is not None and video.frame_rate == Fraction(30000, 1001)


# -- segments ----------------------------------------------------------------------------------


def test_bit_rates_follow_appnote_0013() -> None:
    # four 2 s segments of 250 kB, 250 kB, 500 kB, 250 kB with a 2 s target: runs of 1 s to 3 s
    # are single segments, so the peak is the 500 kB one: 2000 kbit/s; average 1250 kB*8/8 s.
    segments = [(250_000, Fraction(2)), (250_000, Fraction(2)), (500_000, Fraction(2)), (250_000, Fraction(2))]
    assert media.segment_bit_rates(segments, Fraction(2)) == (1250, 2000)
    # 1 s segments, 4 s target: only runs of 2 to 6 s count, so a one-segment burst is averaged out
    short = [(100_000, Fraction(1)), (300_000, Fraction(1)), (100_000, Fraction(1))]
    assert media.segment_bit_rates(short, Fraction(4)) == (1333, 1600)
    # ...but with a 2 s target a single 1 s segment is a run of its own
    assert media.segment_bit_rates(short, Fraction(2)) == (1333, 2400)
    # a single segment longer than 1.5 targets counts on its own
    assert media.segment_bit_rates([(1_000_000, Fraction(8))], Fraction(2)) == (1000, 1000)


def test_split_essences_keeps_every_timestamp(hls_audio_content: SynthesizedHLS, tmp_path: Path) -> None:
    data = hls_audio_content.segment_paths()[1].read_bytes()
    whole = media.read_timing(data)
    parts = media.split_essences(data)
    assert set(parts) == {"video", "audio"}
    for kind, blob in parts.items():
        alone = media.read_timing(blob)
        assert set(alone.streams) == {kind}
        mine, theirs = alone.streams[kind], whole.streams[kind]
        assert (mine.first, mine.last, mine.packets, mine.bytes) == (theirs.first, theirs.last, theirs.packets, theirs.bytes)
    video_only = tmp_path / "video.ts"
    video_only.write_bytes(parts["video"])
    assert sample_content.read_frame_numbers(video_only) == hls_audio_content.frames(1)


def test_timerange_of_a_single_frame_without_rate_is_an_instant() -> None:
    timing = media.StreamTiming(kind="video", index=0, time_base=Fraction(1, 90000), first=6000, last=6000,
                                last_duration=Fraction(0), packets=1, key_frames=1, bytes=10)
    assert timing.timerange() == TimeRange.from_single_timestamp(Timestamp.from_nanosec(ticks_to_ns(6000)))


def _full_probe_timing(data: bytes) -> media.MediaTiming:
    """read_timing as it would be with libavformat's probe decoding pictures (no TIMING_OPTIONS)."""
    saved = media.TIMING_OPTIONS
    try:
        media.TIMING_OPTIONS = {}
        return media.read_timing(data)
    finally:
        media.TIMING_OPTIONS = saved


def _hevc_ts_with_b_frames() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts") as out:
        stream = out.add_stream("libx265", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        stream.options = {"x265-params": "log-level=none:bframes=4"}
        for n in range(50):
            frame = av.VideoFrame(320, 180, "yuv420p")
            for plane in frame.planes:
                plane.update(bytes([n * 5 % 256]) * plane.buffer_size)
            frame.pts = n
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def test_timing_reads_skip_picture_decoding_and_give_the_same_timing(tmp_path_factory: pytest.TempPathFactory) -> None:
    """read_timing opens media with skip_frame=all (the probe decodes no pictures); the timing it
    gives is the same as with a full probe, for H.264 + AAC at 29.97 fps and HEVC with B-frames."""
    assert media.TIMING_OPTIONS == {"skip_frame": "all"}
    content = synthesized(tmp_path_factory, fps=Fraction(30000, 1001), duration=6, audio=True)
    samples = [path.read_bytes() for path in content.segment_paths()] + [_hevc_ts_with_b_frames()]
    for data in samples:
        assert media.read_timing(data) == _full_probe_timing(data)


def _noisy_first_picture_ts(rate: Fraction) -> bytes:
    """MPEG-TS whose first picture (lossless noise) is larger than the 32 KiB a quick probe reads."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts", container_options={"mpegts_copyts": "1"}) as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 90000)
        stream.options = {"preset": "ultrafast", "crf": "0"}
        noise = random.Random(16)
        for n in range(12):
            frame = av.VideoFrame(320, 180, "yuv420p")
            for plane in frame.planes:
                plane.update(noise.randbytes(plane.buffer_size) if n == 0 else bytes([n * 9]) * plane.buffer_size)
            frame.pts, frame.time_base = 6000 + n * 90000 * rate.denominator // rate.numerator, Fraction(1, 90000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def test_a_timing_read_given_the_frame_rate_probes_only_the_start_and_times_the_same(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """With the frame rate known (the Flow's, from its first segment) read_timing probes only the
    first 32 KiB; the timing is the full probe's: for H.264 + AAC at 29.97 fps, HEVC with B-frames,
    and at 23.976 fps where those 32 KiB hold too little of the stream to tell its rate, so the
    rate given is what makes the last frame 3753.75 ticks long."""
    assert media.QUICK_TIMING_OPTIONS == {"skip_frame": "all", "probesize": "32768", "analyzeduration": "0"}
    content = synthesized(tmp_path_factory, fps=Fraction(30000, 1001), duration=6, audio=True)
    for data in [path.read_bytes() for path in content.segment_paths()]:
        assert media.read_timing(data, frame_rate=Fraction(30000, 1001)) == media.read_timing(data)
    hevc = _hevc_ts_with_b_frames()
    assert media.read_timing(hevc, frame_rate=Fraction(25)) == media.read_timing(hevc)
    noisy = _noisy_first_picture_ts(Fraction(24000, 1001))
    with av.open(io.BytesIO(noisy), options=media.QUICK_TIMING_OPTIONS) as container:
        assert media._nominal_rate(container.streams.video[0]) != Fraction(24000, 1001)
    quick = media.read_timing(noisy, frame_rate=Fraction(24000, 1001))
    assert quick == media.read_timing(noisy)
    assert quick.video is not None and quick.video.last_duration == Fraction(15015, 4)
    assert quick.video.packets == 12


def test_probe_decodes_only_key_frames_and_reads_what_a_full_probe_reads(
        hls_audio_content: SynthesizedHLS) -> None:
    """media.probe skips the probe's decoding of all but key frames, in one decoder thread; the
    properties are the same as with libavformat's full probe (picture format and field order
    included)."""
    assert media.PROBE_OPTIONS == {"skip_frame": "nokey", "threads": "1"}
    data = hls_audio_content.segment_paths()[0].read_bytes()
    saved = media.PROBE_OPTIONS
    try:
        media.PROBE_OPTIONS = {}
        full = media.probe(data)
    finally:
        media.PROBE_OPTIONS = saved
    assert media.probe(data) == full
    assert full.video is not None and full.video.component_type == "YCbCr" and full.video.bit_depth == 8


def _ts_with_audio_after_a_large_picture() -> bytes:
    """Muxed H.264 + AAC MPEG-TS whose first audio packet lies past the first 32 KiB: the audio
    starts with the third picture, after a large first one (lossless noise), as 1080p pictures come
    before a muxer's first audio PES."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts", container_options={"mpegts_copyts": "1"}) as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 320, 180, "yuv420p"
        video.codec_context.time_base = Fraction(1, 90000)
        video.options = {"preset": "ultrafast", "crf": "0"}
        audio = out.add_stream("aac", rate=48000, layout="mono")
        noise = random.Random(16)
        audio_pts = 7040  # 48 kHz: with the third picture, at 13200 ticks
        for n in range(12):
            frame = av.VideoFrame(320, 180, "yuv420p")
            for plane in frame.planes:
                plane.update(noise.randbytes(plane.buffer_size) if n == 0 else bytes([n * 9]) * plane.buffer_size)
            frame.pts, frame.time_base = 6000 + n * 3600, Fraction(1, 90000)
            out.mux(video.encode(frame))
            while audio_pts * 15 < (n + 1) * 3600 * 8:  # to the end of this picture (90 kHz = 48 kHz * 15/8)
                samples = av.AudioFrame(format="fltp", layout="mono", samples=1024)
                samples.planes[0].update(bytes(samples.planes[0].buffer_size))
                samples.sample_rate, samples.pts, samples.time_base = 48000, audio_pts, Fraction(1, 48000)
                out.mux(audio.encode(samples))
                audio_pts += 1024
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    return buffer.getvalue()


def test_a_quick_timing_read_of_audio_that_starts_past_the_probe_still_times_its_last_frame() -> None:
    """The quick probe (32 KiB) of a muxed segment whose first audio packet comes later sees the
    audio stream in the PMT but not its sample rate; the timing read probes the whole file then,
    so the audio's last frame lasts its 1024 samples (1920 ticks), as with a full probe."""
    data = _ts_with_audio_after_a_large_picture()
    with av.open(io.BytesIO(data)) as container:
        first_audio = next(p for p in container.demux() if p.stream.type == "audio")
        assert first_audio.pos > 32768
    with av.open(io.BytesIO(data), options=media.QUICK_TIMING_OPTIONS) as container:
        assert container.streams.audio[0].codec_context.sample_rate == 0  # the quick probe did not get to it
    full = media.read_timing(data)
    assert full.audio is not None and full.audio.last_duration == 1920
    assert media.read_timing(data, frame_rate=Fraction(25)) == full

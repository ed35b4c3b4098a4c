"""1080p HLS content for the whole-process benchmark, made quickly and cached between runs.

One 2-second GOP of 1080p30 H.264 (libx264 ``ultrafast`` at about 3 Mbit/s, a scrolling random
texture so that every frame costs bits, as real pictures do) is encoded once; a playlist of N
segments is then that GOP remuxed N times without re-encoding, each copy's timestamps moved on by
one segment, so the segments are continuous on the timeline and each is a realistic ~0.75 MB
MPEG-TS file starting with an IDR frame. Playlists are cached under ``bench/cache/`` (gitignored;
``$BENCH_CACHE_DIR`` elsewhere), keyed by picture size, segment count and CONTENT_VERSION.
"""

from __future__ import annotations

import os
import shutil
from fractions import Fraction
from pathlib import Path

import av

__all__ = ["CACHE_DIR", "CONTENT_VERSION", "playlist"]

CACHE_DIR = Path(os.environ.get("BENCH_CACHE_DIR") or Path(__file__).resolve().parent / "cache")
CONTENT_VERSION = 1
FPS = 30
SEGMENT_SECONDS = 2
TS_CLOCK = 90000
FIRST_PTS = 6000
# Keep timestamps as written: no mux delay, no shift (as sample_content does).
TS_MUX_OPTIONS = {"mpegts_copyts": "1", "avoid_negative_ts": "disabled"}
BIT_RATE_KBPS = 3000


def _encode_gop(path: Path, width: int, height: int) -> None:
    """One segment's worth of frames (one GOP) as MPEG-TS."""
    frames = FPS * SEGMENT_SECONDS
    texture_width = width + frames * 8
    texture = os.urandom(texture_width * height)  # luma; scrolled 8 pixels a frame
    chroma = bytes([128]) * ((width // 2) * (height // 2))
    with av.open(str(path), "w", format="mpegts", container_options=TS_MUX_OPTIONS) as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, TS_CLOCK)
        stream.options = {
            "preset": "ultrafast",
            "x264-params": f"keyint={frames}:min-keyint={frames}:scenecut=0:bitrate={BIT_RATE_KBPS}:"
                           f"vbv-maxrate={BIT_RATE_KBPS}:vbv-bufsize={BIT_RATE_KBPS * 2}",
        }
        for n in range(frames):
            frame = av.VideoFrame(width, height, "yuv420p")
            shift = n * 8
            luma = b"".join(texture[r * texture_width + shift:r * texture_width + shift + width] for r in range(height))
            for plane, data, w, h in ((frame.planes[0], luma, width, height),
                                      (frame.planes[1], chroma, width // 2, height // 2),
                                      (frame.planes[2], chroma, width // 2, height // 2)):
                if plane.line_size != w:
                    pad = bytes(plane.line_size - w)
                    data = b"".join(data[r * w:(r + 1) * w] + pad for r in range(h))
                plane.update(data)
            frame.pts = FIRST_PTS + n * TS_CLOCK // FPS
            frame.time_base = Fraction(1, TS_CLOCK)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _copy_shifted(gop: Path, destination: Path, shift: int) -> None:
    with av.open(str(gop)) as source, \
            av.open(str(destination), "w", format="mpegts", container_options=TS_MUX_OPTIONS) as out:
        video = source.streams.video[0]
        stream = out.add_stream_from_template(video)
        for packet in source.demux(video):
            if packet.size == 0:
                continue
            if packet.pts is not None:
                packet.pts += shift
            if packet.dts is not None:
                packet.dts += shift
            packet.stream = stream
            out.mux(packet)


def playlist(segments: int, *, width: int = 1920, height: int = 1080) -> Path:
    """The cached playlist of ``segments`` 2-second segments at ``width``x``height``; made if missing."""
    folder = CACHE_DIR / f"v{CONTENT_VERSION}-{width}x{height}-{segments}x{SEGMENT_SECONDS}s"
    index = folder / "index.m3u8"
    if index.exists():
        return index
    gop = CACHE_DIR / f"v{CONTENT_VERSION}-{width}x{height}-gop.ts"
    if not gop.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        partial = gop.with_suffix(".partial")
        _encode_gop(partial, width, height)
        partial.rename(gop)
    work = folder.with_name(folder.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    step = SEGMENT_SECONDS * TS_CLOCK
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{SEGMENT_SECONDS}", "#EXT-X-MEDIA-SEQUENCE:0",
             "#EXT-X-PLAYLIST-TYPE:VOD"]
    for k in range(segments):
        name = f"segment_{k:05d}.ts"
        _copy_shifted(gop, work / name, k * step)
        lines += [f"#EXTINF:{SEGMENT_SECONDS}.000000,", name]
    lines.append("#EXT-X-ENDLIST")
    (work / "index.m3u8").write_text("\n".join(lines) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    work.rename(folder)
    return index

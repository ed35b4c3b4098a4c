"""Numbered test media with the GOP structures real encoders make, written by PyAV's ``hls`` muxer.

``make_hls(directory, encoder=..., fps=..., ...)`` encodes frames carrying their numbers (the
code of ``sample_content``, read back by ``sample_content.read_frame_numbers``) with

- ``"x265"``: libx265 at its defaults, so open GOPs (CRA keyframes whose leading pictures
  reference the GOP before);
- ``"x264-pyramid"``: libx264 with three B-frames and a B-pyramid (referenced B-frames);
- ``"x264-ip"``: libx264 without B-frames (decode order is presentation order);

and cuts them into MPEG-TS segments with the ``hls`` muxer: at keyframes (``hls_time``), or with
``split_by_time`` at the first frame past each ``hls_time``, keyframe or not, so segments may
start in the middle of a GOP.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av

import sample_content

__all__ = ["ENCODERS", "make_hls"]

ENCODERS = {
    "x265": ("libx265", {"preset": "ultrafast", "x265-params": "log-level=error:keyint={gop}:min-keyint={gop}:bframes=4"}),
    "x264-pyramid": ("libx264", {"preset": "veryfast",
                                 "x264-params": "keyint={gop}:min-keyint={gop}:scenecut=0:bframes=3:b-pyramid=normal"}),
    "x264-ip": ("libx264", {"preset": "veryfast", "x264-params": "keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"}),
}


def make_hls(
    directory: Path,
    *,
    encoder: str,
    fps: Fraction,
    frames: int,
    segment_seconds: Fraction,
    gop_frames: int,
    split_by_time: bool = False,
    width: int = 320,
    height: int = 180,
    first_frame: int = 0,
) -> Path:
    """Write ``frames`` numbered frames as an HLS playlist in ``directory``; returns its path.
    ``first_frame`` > 0 continues earlier content: frame numbers and timestamps go on from it."""
    directory.mkdir(parents=True, exist_ok=True)
    playlist = directory / "index.m3u8"
    options = {
        "hls_time": str(float(segment_seconds)),
        "hls_list_size": "0",
        "hls_playlist_type": "vod",
        "hls_segment_filename": str(directory / "seg_%03d.ts"),
    }
    if split_by_time:
        options["hls_flags"] = "split_by_time"
    name, codec_options = ENCODERS[encoder]
    layout = sample_content._Layout.for_size(width, height)
    background = sample_content._background(width, height)
    chroma = bytes([128]) * ((width // 2) * (height // 2))
    with av.open(str(playlist), "w", format="hls", options=options) as out:
        stream = out.add_stream(name, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = 1 / fps
        stream.options = {k: v.format(gop=gop_frames) for k, v in codec_options.items()}
        for n in range(first_frame, first_frame + frames):
            frame = av.VideoFrame(width, height, "yuv420p")
            luma = sample_content._draw_luma(n, layout, background)
            frame.planes[0].update(sample_content._padded(luma, width, height, frame.planes[0].line_size))
            for plane in frame.planes[1:]:
                plane.update(sample_content._padded(chroma, width // 2, height // 2, plane.line_size))
            frame.pts = n
            frame.time_base = 1 / fps
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return playlist

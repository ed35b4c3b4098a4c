"""CMAF (fragmented MP4 with an init segment) Flows for the edit tests, per the CMAF Flow contract.

``make_cmaf(dir)`` synthesises numbered H.264 content with ``sample_content`` and remuxes it, without
re-encoding, through libavformat's own ``hls`` muxer with ``hls_segment_type=fmp4``: one ``init.mp4``
(the playlist's ``EXT-X-MAP``) and ``.m4s`` media segments. ``register_cmaf_flow(client, content)``
registers (some of) its segments as a Flow the way the contract says (``container``
``video/mp4``, ``init_segments: true``, the init segment as its own object allocated with
``content_type`` ``video/mp4``, every segment POST carrying ``init_object_id``, timeranges from the
demuxed ``init + media`` pts). ``flow_frame_numbers(client, flow_id)`` reads a Flow back as a
player would: each segment's init and media objects downloaded and demuxed together, in timerange
order, keeping the frames whose Flow time (pts + ``ts_offset``) lies in the segment's timerange.

The outgest engineer keeps a similar helper for their tests; the two are to be merged.
"""

from __future__ import annotations

import io
import tempfile
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import m3u8
from mediatimestamp.immutable import TimeRange, Timestamp

import media
import sample_content
from client import TAMSClient

__all__ = ["CmafContent", "RegisteredCmaf", "flow_frame_numbers", "make_cmaf", "register_cmaf_flow"]

CMAF_CONTAINER = "video/mp4"
INIT_CONTENT_TYPE = CMAF_CONTAINER  # every object of a Flow has its container as content-type (TAMS 8.2)


@dataclass(frozen=True)
class CmafContent:
    playlist: Path
    init: Path
    segments: list[Path]   # media segments, in playlist order
    rate: Fraction


@dataclass(frozen=True)
class RegisteredCmaf:
    flow_id: str
    init_object_id: str
    object_ids: list[str]  # one per registered media segment, in timeline order
    timeranges: list[TimeRange]


def make_cmaf(output_dir: Path, *, fps: Fraction | int = 30, duration: int = 8, segment_seconds: int = 2,
              width: int = 320, height: int = 180) -> CmafContent:
    """Numbered content (frame n shows n) as an fMP4 HLS playlist made by libavformat's hls muxer."""
    rate = Fraction(fps)
    ts_dir = output_dir / "ts"
    sample_content.synthesize(ts_dir, width=width, height=height, fps=rate, duration=duration,
                              segment_seconds=segment_seconds, gop_seconds=1)
    sources = sorted(ts_dir.glob("hls_output_*.ts"))
    out_dir = output_dir / "cmaf"
    out_dir.mkdir(parents=True)
    playlist = out_dir / "index.m3u8"
    options = {"hls_segment_type": "fmp4", "hls_time": str(segment_seconds), "hls_playlist_type": "vod",
               "hls_fmp4_init_filename": "init.mp4", "hls_segment_filename": str(out_dir / "seg_%03d.m4s")}
    with av.open(str(sources[0])) as first, av.open(str(playlist), "w", format="hls", options=options) as out:
        stream = out.add_stream_from_template(first.streams.video[0])
        for path in sources:
            with av.open(str(path)) as source:
                video = source.streams.video[0]
                assert video.time_base is not None
                # MPEG-TS packets carry no duration; the fragments' timing needs one per sample.
                frame_ticks = int(1 / (rate * Fraction(video.time_base)))
                for packet in source.demux(video):
                    if packet.size == 0:
                        continue
                    packet.duration = frame_ticks
                    packet.stream = stream
                    out.mux(packet)
    parsed = m3u8.load(str(playlist))
    assert parsed.segment_map, "the hls muxer wrote no EXT-X-MAP"
    return CmafContent(playlist, out_dir / parsed.segment_map[0].uri,
                       [out_dir / str(s.uri) for s in parsed.segments], rate)


def _object_timerange(init: bytes, data: bytes, rate: Fraction) -> TimeRange:
    """The media segment's span on its own timeline: first pts to last pts + one frame."""
    with av.open(io.BytesIO(init + data)) as container:
        stream = container.streams.video[0]
        assert stream.time_base is not None
        tb = Fraction(stream.time_base)
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None and p.size)
    start = media.pts_to_timestamp(pts[0], tb)
    end = media.pts_to_timestamp(Fraction(pts[-1]) + 1 / (rate * tb), tb)
    return TimeRange(start, end, TimeRange.INCLUDE_START)


async def register_cmaf_flow(client: TAMSClient, content: CmafContent, *, first: int = 0, count: int | None = None,
                             label: str = "cmaf") -> RegisteredCmaf:
    """Register media segments ``first .. first + count - 1`` of ``content`` as a new CMAF Flow."""
    chosen = content.segments[first:] if count is None else content.segments[first:first + count]
    init = content.init.read_bytes()
    props = media.probe(init + chosen[0].read_bytes())
    assert props.video is not None
    fields = props.video.flow_fields()
    flow_id = str(uuid.uuid4())
    flow: dict[str, Any] = {"id": flow_id, "source_id": str(uuid.uuid4()), "label": label, **fields,
                            "container": CMAF_CONTAINER}
    flow["essence_parameters"] = {**fields["essence_parameters"], "init_segments": True}
    await client.put_flow(flow_id, flow)

    init_targets = client.allocate_storage(flow_id, batch=1, content_type=INIT_CONTENT_TYPE)
    init_target = await anext(init_targets)
    await init_targets.aclose()
    await client.upload_object(init_target, init)
    targets = client.allocate_storage(flow_id, batch=len(chosen), content_type=CMAF_CONTAINER)
    bodies: list[dict[str, Any]] = []
    timeranges: list[TimeRange] = []
    for path in chosen:
        target = await anext(targets)
        data = path.read_bytes()
        await client.upload_object(target, data)
        timerange = _object_timerange(init, data, content.rate)
        timeranges.append(timerange)
        bodies.append({"object_id": target.object_id, "timerange": str(timerange), "ts_offset": "0:0",
                       "init_object_id": init_target.object_id})
    await targets.aclose()
    failed = await client.post_segments(flow_id, bodies)
    assert failed == [], failed
    return RegisteredCmaf(flow_id, init_target.object_id, [b["object_id"] for b in bodies], timeranges)


async def flow_frame_numbers(client: TAMSClient, flow_id: str) -> list[int]:
    """The burnt-in numbers of the frames a Flow of init-segment objects holds, in timeline order."""
    flow = await client.get_flow(flow_id)
    rate_field = flow["essence_parameters"]["frame_rate"]
    tolerance = media.bound_tolerance(1 / Fraction(rate_field["numerator"], rate_field.get("denominator", 1)))
    inits: dict[str, bytes] = {}
    numbers: list[int] = []
    with tempfile.TemporaryDirectory(prefix="cmaf-read-") as tmp:
        path = Path(tmp) / "segment.mp4"
        async for segment in client.segments(flow_id):
            init_object = segment["init_object"]
            init_id = init_object["object_id"]
            if init_id not in inits:
                inits[init_id] = await client.download_object(init_object["get_urls"][0])
            data = inits[init_id] + await client.download_object(segment["get_urls"][0])
            path.write_bytes(data)
            frame_numbers = sample_content.read_frame_numbers(path)
            with av.open(io.BytesIO(data)) as container:
                stream = container.streams.video[0]
                assert stream.time_base is not None
                tb = Fraction(stream.time_base)
                pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None and p.size)
            assert len(pts) == len(frame_numbers), "a frame of the object did not decode"
            timerange = TimeRange.from_str(segment["timerange"])
            offset = Fraction(Timestamp.from_str(segment.get("ts_offset", "0:0")).to_nanosec(), 10**9)
            numbers += [n for p, n in zip(pts, frame_numbers)
                        if media.in_timerange(p * tb + offset, timerange, tolerance)]
    return numbers

"""Frame-exact cuts of long-GOP video for outgest_file.py: which packets to copy, which frames to
re-encode, and the re-encoding itself, with precharge from the objects before.

An object's packets (decode order) fall into GOPs, each starting at a keyframe. A GOP's
*leading* frames are those presented before its keyframe (an open GOP's RASL pictures, x265's
default): they reference the GOP before, so they decode only when the decoder has just decoded
that GOP's original packets. An object that starts inside a GOP (HLS ``split_by_time``) has a
first, *headless* GOP, all of whose frames need the GOP's start from the object before.

A segment's kept frames are written as up to three pieces, in this decode order:

1. a *head*: kept frames before the first GOP that can be copied, re-encoded;
2. the packets of every GOP whose keyframe and trailing frames are all kept, copied as stored
   (with its leading frames when the GOP before was copied too, else without them: nothing
   else references leading pictures, and they are then part of the head);
3. a *tail*: kept frames of the GOP the cut's end breaks, re-encoded.

Re-encoded pieces are each a closed GOP without B-frames, so they join copied ones without
decode-order conflicts. Decoding a head that needs frames from before the object's first
keyframe needs *precharge*: the preceding objects of the Flow are decoded first and nothing from
them is emitted (TAMS's long-GOP precharge).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol, cast

from media import av  # PyAV, imported on first use

__all__ = [
    "ENCODERS",
    "ENCODER_OPTIONS",
    "Gop",
    "NeedPrecharge",
    "Pieces",
    "ReencodeError",
    "Timing",
    "encoder_options_for",
    "gops",
    "needs_prior",
    "plan_pieces",
    "reencode",
    "set_verbose",
]

ENCODERS = {"h264": "libx264", "hevc": "libx265"}
ENCODER_OPTIONS = {
    "libx264": {"preset": "medium", "crf": "16"},
    "libx265": {"preset": "medium", "crf": "18"},
}
PRECHARGE = -1  # decode_from(): decoding has to start in an object before this one

_verbose = False


def set_verbose(verbose: bool) -> None:
    """Let encoders and decoders log (FFmpeg's log at info, x265's own [info] lines) or keep
    them quiet (the default: only errors)."""
    global _verbose
    _verbose = verbose
    if verbose:
        av.logging.set_level(av.logging.INFO)


class ReencodeError(Exception):
    """Decoding or re-encoding failed; ``str()`` is one line."""


class NeedPrecharge(Exception):
    """Frames of the segment need media from before the object's first keyframe.

    ``frames`` are their decode-order indices; raised before anything is written."""

    def __init__(self, frames: Sequence[int]) -> None:
        super().__init__(f"{len(frames)} frames need the media before the object's first keyframe")
        self.frames = tuple(frames)


class Timing(Protocol):
    """One coded frame's timing (outgest_file.FrameTiming, a frozen dataclass: read-only here)."""

    @property
    def pts(self) -> int: ...

    @property
    def dts(self) -> int: ...

    @property
    def keyframe(self) -> bool: ...


class Media(Protocol):
    """What :func:`reencode` needs of an opened object (outgest_file.ObjectMedia)."""

    stream: av.stream.Stream
    packets: list[av.Packet]
    time_base: Fraction
    codec: str
    frame_duration: Fraction | None

    @property
    def frames(self) -> Sequence[Timing]: ...


@dataclass(frozen=True)
class Gop:
    """Packets ``[start, stop)`` in decode order; ``keyframe`` False for an object's first packets
    when they precede its first keyframe; ``lead``: the frames presented before the keyframe."""

    start: int
    stop: int
    keyframe: bool
    lead: frozenset[int]

    def core(self) -> list[int]:
        return [i for i in range(self.start, self.stop) if i not in self.lead]


def gops(frames: Sequence[Timing]) -> list[Gop]:
    starts = [i for i, f in enumerate(frames) if f.keyframe]
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    out = []
    for start, stop in zip(starts, [*starts[1:], len(frames)]):
        keyed = frames[start].keyframe
        if keyed:
            lead = frozenset(i for i in range(start + 1, stop) if frames[i].pts < frames[start].pts)
        else:
            lead = frozenset(range(start, stop))
        out.append(Gop(start, stop, keyed, lead))
    return out


def needs_prior(frames: Sequence[Timing]) -> set[int]:
    """Frames that decode only after the media before the object: its headless or leading first frames."""
    first = gops(frames)[0]
    return set(first.lead)


def _decode_from(groups: Sequence[Gop], index: int) -> int:
    """Where decoding must start for frame ``index`` to come out right (PRECHARGE: before the object)."""
    j = next(k for k, g in enumerate(groups) if g.start <= index < g.stop)
    if index in groups[j].lead:
        j -= 1
    return groups[j].start if j >= 0 and groups[j].keyframe else PRECHARGE


@dataclass(frozen=True)
class Pieces:
    """How a segment's kept frames are written: ``head`` and ``tail`` (decode indices, presentation
    order) re-encoded, ``copy`` (decode order) copied; ``precharge``: the head needs the objects
    before; ``clean_end``: the object's last GOP went out as stored, so a following object's
    leading frames can be copied after it."""

    head: tuple[int, ...]
    copy: tuple[int, ...]
    tail: tuple[int, ...]
    precharge: bool
    clean_end: bool

    @property
    def reencoded(self) -> bool:
        return bool(self.head or self.tail)


def plan_pieces(frames: Sequence[Timing], kept: Sequence[int], *, context: bool) -> Pieces:
    """Split the ``kept`` frames (decode-order indices of one presentation-order run) into pieces.

    ``context``: the output's previous packets are the original media just before this object,
    ending with a GOP as stored, so this object's leading or headless frames may be copied.
    """
    groups = gops(frames)
    wanted = set(kept)
    copied: list[int] = []
    prior_copied = context
    last_core_copied = False
    for group in groups:
        core = group.core()
        lead = sorted(group.lead)
        if not group.keyframe:  # headless: all of it leads
            ok = prior_copied and set(lead) <= wanted
            if ok:
                copied += lead
            prior_copied = last_core_copied = ok
            continue
        core_ok = set(core) <= wanted
        if core_ok:
            take_lead = bool(lead) and prior_copied and set(lead) <= wanted
            copied += sorted(core + (lead if take_lead else []))
        prior_copied = last_core_copied = core_ok
    copy = tuple(sorted(copied))
    rest = sorted((i for i in wanted if i not in set(copy)), key=lambda i: frames[i].pts)
    if copy:
        low = min(frames[i].pts for i in copy)
        high = max(frames[i].pts for i in copy)
        head = tuple(i for i in rest if frames[i].pts < low)
        tail = tuple(i for i in rest if frames[i].pts > high)
        if len(head) + len(tail) != len(rest):  # a frame to re-encode amid copied ones: re-encode all
            head, tail, copy = tuple(sorted(wanted, key=lambda i: frames[i].pts)), (), ()
    else:
        head, tail = tuple(rest), ()
    precharge = any(_decode_from(groups, i) == PRECHARGE for i in head + tail)
    return Pieces(head, copy, tail, precharge, clean_end=last_core_copied and bool(copy))


def encoder_options_for(encoder_name: str, options: Mapping[str, str] | None) -> dict[str, str]:
    """``options`` (default: ENCODER_OPTIONS) with the encoder's own logging quiet unless verbose."""
    out = dict(ENCODER_OPTIONS.get(encoder_name, {}) if options is None else options)
    if encoder_name == "libx265":
        level = "info" if _verbose else "error"
        params = [p for p in out.get("x265-params", "").split(":") if p and not p.startswith("log-level=")]
        out["x265-params"] = ":".join([*params, f"log-level={level}"])
    return out


def reencode(
    media: Media,
    wanted: Sequence[int],
    *,
    chain: Sequence[Media] = (),
    options: Mapping[str, str] | None = None,
) -> Iterator[tuple[av.Packet, int, int]]:
    """Decode ``media`` (after the precharge objects ``chain``, oldest first, when given) and
    re-encode the frames ``wanted`` (decode indices, presentation order) as one closed GOP without
    B-frames, with the object's size, pixel format, frame rate and colour and encoder ``options``.

    Yields (packet, pts, dts) as unwrapped media timestamps in the object's time base. Raises
    NeedPrecharge when the chain holds no keyframe to start from, ReencodeError otherwise.
    """
    frames = media.frames
    groups = gops(frames)
    targets = {frames[i].pts for i in wanted}
    base = frames[wanted[0]].pts
    start = min(_decode_from(groups, i) for i in wanted)
    stop = max(wanted) + 1
    feed: list[tuple[av.Packet, int, int]] = []  # (packet, pts, dts) in decode order
    if start == PRECHARGE:
        oldest = next((k for k, m in enumerate(chain) if any(f.keyframe for f in m.frames)), None)
        if oldest is None:
            raise NeedPrecharge([i for i in wanted if _decode_from(groups, i) == PRECHARGE])
        for k, earlier in enumerate(chain[oldest:]):
            if earlier.time_base != media.time_base or earlier.codec != media.codec:
                raise ReencodeError("the object before is coded differently, so it cannot precharge this one")
            first = max(i for i, f in enumerate(earlier.frames) if f.keyframe) if k == 0 else 0
            feed += [(earlier.packets[i], earlier.frames[i].pts, earlier.frames[i].dts)
                     for i in range(first, len(earlier.frames))]
        start = 0
    feed += [(media.packets[i], frames[i].pts, frames[i].dts) for i in range(start, stop)]

    encoder_name = ENCODERS.get(media.codec, media.codec)
    try:
        av.codec.Codec(encoder_name, "w")
    except (av.error.FFmpegError, ValueError) as exc:
        raise ReencodeError(f"cannot re-encode {media.codec} (no {encoder_name} encoder) for a cut inside a GOP") from exc
    template = media.stream.codec_context
    decoder = cast(av.video.codeccontext.VideoCodecContext, av.CodecContext.create(media.codec, "r"))
    if template.extradata:
        decoder.extradata = template.extradata
    encoder: av.video.codeccontext.VideoCodecContext | None = None
    seen: set[int] = set()

    def encode(frame: av.VideoFrame | None) -> Iterator[tuple[av.Packet, int, int]]:
        assert encoder is not None
        for packet in encoder.encode(frame):
            if packet.size == 0:
                continue
            if packet.pts is None:
                raise ReencodeError(f"the {encoder_name} encoder gave a packet without a timestamp")
            dts = packet.dts if packet.dts is not None else packet.pts
            yield packet, packet.pts + base, dts + base

    def decoded() -> Iterator[av.VideoFrame]:
        for packet, pts, dts in feed:
            # Small timestamps relative to the first wanted frame, so decoded frames match the plan.
            packet.pts, packet.dts = pts - base, dts - base
            yield from decoder.decode(packet)
            if len(seen) == len(targets):
                return
        yield from decoder.decode(None)

    try:
        for frame in decoded():
            if frame.pts is None or frame.pts + base not in targets:
                continue
            seen.add(frame.pts + base)
            if encoder is None:
                encoder = _encoder(encoder_name, frame, media, options)
            frame.pict_type = av.video.frame.PictureType.I if frame.pts == 0 else av.video.frame.PictureType.NONE
            frame.time_base = media.time_base
            yield from encode(frame)
            if len(seen) == len(targets):
                break
        if encoder is not None:
            yield from encode(None)
    except av.error.FFmpegError as exc:
        raise ReencodeError(f"cannot re-encode the object: {exc}") from exc
    if len(seen) != len(targets):
        raise ReencodeError(f"decoding the object gave {len(seen)} of the {len(targets)} frames the segment uses")


def _encoder(
    name: str, frame: av.VideoFrame, media: Media, options: Mapping[str, str] | None
) -> av.video.codeccontext.VideoCodecContext:
    template = media.stream.codec_context
    created = cast(av.video.codeccontext.VideoCodecContext, av.CodecContext.create(name, "w"))
    created.width = frame.width
    created.height = frame.height
    created.pix_fmt = frame.format.name
    created.time_base = media.time_base
    if media.frame_duration:
        created.framerate = 1 / media.frame_duration
    for attribute in ("color_range", "colorspace", "color_primaries", "color_trc", "sample_aspect_ratio"):
        value = getattr(template, attribute, None)
        if value:
            setattr(created, attribute, value)
    # No B-frames: decode order is presentation order, so the piece joins copied GOPs cleanly.
    created.max_b_frames = 0
    created.options = encoder_options_for(name, options)
    return created

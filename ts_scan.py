"""The timing of an MPEG-TS object's video stream read from its packet and PES headers alone, and
MPEG-TS objects joined byte for byte with their continuity counters carried on.

An export whose segments are whole MPEG-TS objects, in a ``.ts`` file, can write the objects as
they are: the frames, timestamps and PCRs are already the ones the export would write. To know
that, ``scan`` reads what libavformat's demuxer would give an export, but only what that needs:
the PAT and PMT, and the presentation and decode timestamps in the PES header of every access
unit of the one video stream, and whether the first access unit is an IDR (H.264) or IRAP (HEVC)
picture. It slices every packet's header bytes out at once (``bytes[1::188]``) and looks only at
packets that start a PES: about 0.3 ms for a 0.9 MB 1080p object, against about 1.3 ms to open
and demux it with PyAV, and with no PyAV to import.

``scan`` answers with the reason, a string, for anything it cannot vouch for; the export then demuxes
the object with PyAV as usual. That covers: not 188-byte packets; scrambled or errored packets;
more than one program; a program holding anything but one H.264 or HEVC video stream (a muxed
object's audio would come along), or a later PAT or PMT saying otherwise, or PES packets on a
PID the PMT does not list (a demuxer finds those streams too); a PAT, PMT or PES header not
within one packet; PIDs or a transport_stream_id that libavformat's muxer cannot carry on; an
access unit without a pts; video packets before the first access unit starts (the tail of one
cut off). It also reads how far the first PCR runs behind the decode times, for a muxer that
continues the stream to keep its PCRs as far behind.

``access_units`` goes on from a scan to what libavformat's H.264 and HEVC parsers make of the video
PES packets: one access unit in each (checked on the NAL unit headers), its size, and whether the
demuxer marks it a key frame. With it ``media.read_timing`` gives an ingested segment's timing
(every pts, the frame and key frame counts) without PyAV: about 1 ms for a 0.9 MB 1080p object,
against 1.5-3 ms demuxing it. Anything the check does not cover gives a reason, and the segment is
demuxed as before.

``h264_headers`` gives the SPS and PPS NAL units of a scanned H.264 object and the start of its
first slice, for ``media.probe`` to read the stream's properties from (``h264_sps``) without PyAV.

``Continuity`` renumbers the 4-bit continuity counter of each packet written, so that every PID
counts on across the joins between objects (each object's own counters usually start afresh,
which a demuxer reports as lost packets), and likewise for the bytes a muxer writes after them.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import BinaryIO

__all__ = ["PACKET_SIZE", "PAT_PID", "SDT_PID", "Continuity", "TsLayout", "TsScan", "access_units", "scan",
           "h264_headers"]

PACKET_SIZE = 188
SYNC = 0x47
PAT_PID = 0
# PMT stream_type -> FFmpeg codec name (ISO/IEC 13818-1 Table 2-34)
VIDEO_STREAM_TYPES = {0x1B: "h264", 0x24: "hevc"}
# A muxer can be told these PIDs (libavformat's mpegts_start_pid and mpegts_pmt_start_pid range).
MUXER_PIDS = range(0x0020, 0x1FFB)
FIRST_NAL_SEARCH = 32  # packets into the first access unit to look for its first picture slice
LEARN_BLOCK = PACKET_SIZE * 1024
PCR_SEARCH = 1024  # packets on the PCR PID to look for the first PCR in
SDT_PID = 0x11  # libavformat's muxer writes a service description table there


@dataclass(frozen=True)
class TsLayout:
    """What objects joined into one stream must share: their PAT and PMT (sections, byte for
    byte) and what they say."""

    pat: bytes
    pmt: bytes
    transport_stream_id: int
    program: int
    pmt_pid: int
    video_pid: int
    codec: str
    version: int  # the PMT's version_number

    def same_stream(self, other: TsLayout) -> bool:
        """Whether a demuxer reading ``other``'s packets after these finds the same stream (the
        tables' other bytes may differ)."""
        return (self.transport_stream_id, self.program, self.pmt_pid, self.video_pid, self.codec) == (
            other.transport_stream_id, other.program, other.pmt_pid, other.video_pid, other.codec)


@dataclass(frozen=True)
class TsScan:
    """An object's video access units in decode order: raw 33-bit pts and dts (90 kHz)."""

    layout: TsLayout
    pts: tuple[int, ...]
    dts: tuple[int, ...]
    first_is_key: bool  # the first access unit is an IDR/IRAP picture
    others: tuple[int, ...]  # indices of the packets not on the video PID
    first_video: int  # index of the first and last packet on the video PID
    last_video: int
    pcr_lag: int | None = None  # 90 kHz ticks the first PCR runs behind the next access unit's dts
    starts: tuple[int, ...] = ()  # indices of the video packets that start a PES


@cache
def _table(kind: str, value: int) -> bytes:
    """A ``bytes.translate`` table giving 1 where a header byte does not match, else 0."""
    if kind == "pid_high":  # byte 1: the top five bits of the PID
        return bytes(int(b & 0x1F != value) for b in range(256))
    if kind == "pid_low":  # byte 2: the low eight bits of the PID
        return bytes(int(b != value) for b in range(256))
    if kind == "start":  # byte 1: payload_unit_start_indicator set
        return bytes(int(not b & 0x40) for b in range(256))
    if kind == "flip":  # a 0/1 mask inverted
        return bytes(int(b == 0) for b in range(256))
    if kind == "clear":  # 1 where none of the bits of ``value`` is set
        return bytes(int(not b & value) for b in range(256))
    if kind == "bad":  # byte 1: transport_error_indicator; byte 3: transport_scrambling_control
        return bytes(int(bool(b & value)) for b in range(256))
    raise ValueError(kind)


def _or(*masks: bytes | bytearray) -> bytes:
    """Byte-wise OR of equal-length 0/1 masks (through big integers: C speed)."""
    value = 0
    for mask in masks:
        value |= int.from_bytes(mask, "big")
    return value.to_bytes(len(masks[0]), "big")


def _where(mask: bytes, value: int) -> list[int]:
    """The indices of ``value`` in ``mask``."""
    found, at = [], mask.find(value)
    while at != -1:
        found.append(at)
        at = mask.find(value, at + 1)
    return found


def _payload(data: bytes | bytearray, index: int) -> int | None:
    """Offset of packet ``index``'s payload, None if it has none."""
    offset = index * PACKET_SIZE
    control = (data[offset + 3] >> 4) & 3
    start = offset + 4
    if control & 2:
        start += 1 + data[start]
    if not control & 1 or start >= offset + PACKET_SIZE:
        return None
    return start


def _section(data: bytes | bytearray, index: int) -> bytes | None:
    """The PSI section starting in packet ``index`` (PUSI set), if it ends within the packet."""
    start = _payload(data, index)
    if start is None:
        return None
    start += 1 + data[start]  # pointer_field
    end = index * PACKET_SIZE + PACKET_SIZE
    if start + 3 > end:
        return None
    length = ((data[start + 1] & 0x0F) << 8) | data[start + 2]
    if start + 3 + length > end or length < 9:
        return None
    return bytes(data[start:start + 3 + length])


def _layout(data: bytes | bytearray, count: int) -> TsLayout | str:
    pat = pmt = None
    pmt_pid = None
    for index in range(count):
        offset = index * PACKET_SIZE
        if not data[offset + 1] & 0x40:
            continue
        pid = ((data[offset + 1] & 0x1F) << 8) | data[offset + 2]
        if pid == PAT_PID and pat is None:
            pat = _section(data, index)
            if pat is None or pat[0] != 0:
                return "its PAT is not within one packet"
            programs = [(int.from_bytes(pat[i:i + 2], "big"), int.from_bytes(pat[i + 2:i + 4], "big") & 0x1FFF)
                        for i in range(8, len(pat) - 4, 4)]
            programs = [p for p in programs if p[0] != 0]  # program 0 points at the NIT
            if len(programs) != 1:
                return f"its PAT lists {len(programs)} programs"
            pmt_pid = programs[0][1]
        elif pmt_pid is not None and pid == pmt_pid:
            pmt = _section(data, index)
            break
    if pat is None or pmt is None:
        return "it has no PAT and PMT within one packet each"
    if pmt[0] != 2:
        return "its PMT PID holds another table"
    info_length = ((pmt[10] & 0x0F) << 8) | pmt[11]
    streams = []
    at = 12 + info_length
    while at + 5 <= len(pmt) - 4:
        es_length = ((pmt[at + 3] & 0x0F) << 8) | pmt[at + 4]
        streams.append((pmt[at], int.from_bytes(pmt[at + 1:at + 3], "big") & 0x1FFF))
        at += 5 + es_length
    if len(streams) != 1 or streams[0][0] not in VIDEO_STREAM_TYPES:
        return f"its program holds stream types {[hex(s[0]) for s in streams]}, not one H.264 or HEVC stream"
    video_pid = streams[0][1]
    assert pmt_pid is not None
    if pmt_pid not in MUXER_PIDS or video_pid not in MUXER_PIDS or pmt_pid == video_pid:
        return "its PIDs are outside the range a muxer can continue"
    if not int.from_bytes(pat[3:5], "big"):  # libavformat's muxer takes 1-65535
        return "its transport_stream_id is outside the range a muxer can continue"
    return TsLayout(pat=pat, pmt=pmt, transport_stream_id=int.from_bytes(pat[3:5], "big"),
                    program=int.from_bytes(pmt[3:5], "big"), pmt_pid=pmt_pid, video_pid=video_pid,
                    codec=VIDEO_STREAM_TYPES[streams[0][0]], version=(pmt[5] >> 1) & 0x1F)


def _timestamp(data: bytes | bytearray, at: int) -> int:
    return (((data[at] >> 1) & 0x07) << 30 | data[at + 1] << 22 | (data[at + 2] >> 1) << 15
            | data[at + 3] << 7 | data[at + 4] >> 1)


def _first_is_key(data: bytes | bytearray, video: list[int], codec: str) -> bool:
    """Whether the first access unit's first picture slice is IDR (H.264) or IRAP (HEVC)."""
    payload = bytearray()
    for number, index in enumerate(video[:FIRST_NAL_SEARCH]):
        start = _payload(data, index)
        if start is None:
            continue
        if number == 0:
            start += 9 + data[start + 8]  # past the PES header
        payload += data[start:index * PACKET_SIZE + PACKET_SIZE]
        at = payload.find(b"\0\0\1")
        while at != -1 and at + 3 < len(payload):
            header = payload[at + 3]
            if codec == "h264":
                kind = header & 0x1F
                if 1 <= kind <= 5:
                    return kind == 5
            else:
                kind = (header >> 1) & 0x3F
                if kind < 32:
                    return 16 <= kind <= 23
            at = payload.find(b"\0\0\1", at + 3)
    return False


def _pcr_lag(data: bytes | bytearray, layout: TsLayout, heads: tuple[bytes | bytearray, bytes | bytearray],
             starts: list[int], dts: list[int]) -> int | None:
    """How far the object's first PCR (on the PMT's PCR_PID, looked for in the first
    ``PCR_SEARCH`` packets there) runs behind the dts of the access unit starting with or after
    it: the delay a muxer continuing the stream must give its PCRs, else they step back (None
    when not found)."""
    pcr_pid = int.from_bytes(layout.pmt[8:10], "big") & 0x1FFF
    others = _or(heads[0].translate(_table("pid_high", pcr_pid >> 8)), heads[1].translate(_table("pid_low", pcr_pid & 0xFF)))
    index = others.find(0)
    for _ in range(PCR_SEARCH):
        if index == -1:
            return None
        offset = index * PACKET_SIZE
        if data[offset + 3] & 0x20 and data[offset + 4] >= 7 and data[offset + 5] & 0x10:
            base = int.from_bytes(data[offset + 6:offset + 11], "big") >> 7  # the 33-bit 90 kHz part
            following = bisect.bisect_left(starts, index)
            if following == len(starts):
                return None
            lag = (dts[following] - base) % (1 << 33)
            return lag if lag < 1 << 32 else None
        index = others.find(0, index + 1)
    return None


def scan(data: bytes | bytearray) -> TsScan | str:
    """The video timing of the MPEG-TS object ``data``, or why it cannot be vouched for."""
    if not data or len(data) % PACKET_SIZE:
        return "it is not whole 188-byte packets"
    count = len(data) // PACKET_SIZE
    if data[0::PACKET_SIZE] != bytes([SYNC]) * count:
        return "a packet has no sync byte"
    head1, head2, head3 = data[1::PACKET_SIZE], data[2::PACKET_SIZE], data[3::PACKET_SIZE]
    if head1.translate(_table("bad", 0x80)).find(1) != -1 or head3.translate(_table("bad", 0xC0)).find(1) != -1:
        return "a packet is marked errored or scrambled"
    layout = _layout(data, count)
    if isinstance(layout, str):
        return layout
    pid = layout.video_pid
    other = _or(head1.translate(_table("pid_high", pid >> 8)), head2.translate(_table("pid_low", pid & 0xFF)))
    starts = _where(_or(other, head1.translate(_table("start", 0))), 0)
    if not starts:
        return "it has no video access units"
    first_video = other.find(0)
    if starts[0] != first_video:  # a demuxer drops those bytes; copied, they would end the frame before
        return "it starts inside an access unit"
    pts: list[int] = []
    dts: list[int] = []
    for index in starts:
        at = _payload(data, index)
        end = index * PACKET_SIZE + PACKET_SIZE
        if at is None or at + 9 > end or data[at:at + 3] != b"\0\0\1" or at + 9 + data[at + 8] > end:
            return "a PES header is not within one packet"
        flags = data[at + 7] >> 6
        if not flags & 2:
            return "an access unit has no pts"
        if data[at + 8] < (10 if flags == 3 else 5):
            return "a PES header is shorter than its timestamps"
        pts.append(_timestamp(data, at + 9))
        dts.append(_timestamp(data, at + 14) if flags == 3 else pts[-1])
    # The other packets that start a section or PES: a later PMT could add a stream (audio, say),
    # and a demuxer finds a PES stream even on a PID no PMT lists. (A section running on over
    # packets starts with one whose section does not end there: not the first PAT or PMT either.)
    others_starting = _where(_or(other.translate(_table("flip", 0)), head1.translate(_table("start", 0))), 0)
    tables = {PAT_PID: layout.pat, layout.pmt_pid: layout.pmt}
    for index in others_starting:
        pid = ((data[index * PACKET_SIZE + 1] & 0x1F) << 8) | data[index * PACKET_SIZE + 2]
        if pid in tables and _section(data, index) != tables[pid]:
            return "its PAT or PMT changes within it"
    for index in others_starting:
        at = _payload(data, index)
        if at is not None and data[at:at + 3] == b"\0\0\1":
            pid = ((data[index * PACKET_SIZE + 1] & 0x1F) << 8) | data[index * PACKET_SIZE + 2]
            return f"it holds PES packets on PID {pid:#x}, which its PMT does not list"
    video = [first_video, *(i for i in range(first_video + 1, min(count, first_video + FIRST_NAL_SEARCH))
                            if not other[i])]
    return TsScan(layout=layout, pts=tuple(pts), dts=tuple(dts),
                  first_is_key=_first_is_key(data, video, layout.codec),
                  others=tuple(_where(other, 1)), first_video=first_video, last_video=other.rfind(0),
                  pcr_lag=_pcr_lag(data, layout, (head1, head2), starts, dts), starts=tuple(starts))


@cache
def _shift(delta: int) -> bytes:
    """Translate table adding ``delta`` (mod 16) to the continuity counter in header byte 3."""
    return bytes((b & 0xF0) | ((b + delta) & 0x0F) for b in range(256))


class Continuity:
    """The continuity counter of every PID written so far; renumbers packets to count on from it.

    A packet with a payload takes the next count; one without (adaptation field only) repeats the
    last. Each object's video packets move by one shift (its own counting, gaps included, is kept);
    the few others (PSI, null packets) are renumbered one by one.
    """

    def __init__(self) -> None:
        self.last: dict[int, int] = {}

    def _next(self, data: bytearray, index: int, pid: int) -> None:
        offset = index * PACKET_SIZE + 3
        last = self.last.get(pid)
        if last is not None:
            count = (last + 1) & 0x0F if data[offset] & 0x10 else last
            data[offset] = (data[offset] & 0xF0) | count
        self.last[pid] = data[offset] & 0x0F

    def join(self, data: bytearray, found: TsScan) -> None:
        """Renumber the scanned object ``data`` in place."""
        pid = found.layout.video_pid
        last = self.last.get(pid)
        first = found.first_video * PACKET_SIZE + 3
        if last is not None:
            expected = (last + 1) & 0x0F if data[first] & 0x10 else last
            delta = (expected - data[first]) & 0x0F
            if delta:
                data[3::PACKET_SIZE] = data[3::PACKET_SIZE].translate(_shift(delta))
        for index in found.others:  # after the shift, which moved them too
            offset = index * PACKET_SIZE
            self._next(data, index, ((data[offset + 1] & 0x1F) << 8) | data[offset + 2])
        self.last[pid] = data[found.last_video * PACKET_SIZE + 3] & 0x0F

    def learn(self, file: BinaryIO, pids: Iterable[int], limit: int = 1 << 24) -> None:
        """Take the counters of ``pids`` from the last of their packets in ``file`` (whole
        packets, such as a muxer wrote), reading back from its end at most ``limit`` bytes."""
        wanted = set(pids)
        end = position = file.seek(0, os.SEEK_END)
        found: dict[int, int] = {}
        while wanted and position > 0 and end - position < limit:
            start = max(0, position - LEARN_BLOCK)
            file.seek(start)
            data = file.read(position - start)
            for index in range(len(data) // PACKET_SIZE - 1, -1, -1):
                offset = index * PACKET_SIZE
                pid = ((data[offset + 1] & 0x1F) << 8) | data[offset + 2]
                if pid in wanted:
                    found[pid] = data[offset + 3] & 0x0F
                    wanted.discard(pid)
            position = start
        file.seek(0, os.SEEK_END)
        self.last.update(found)

    def carry_on(self, data: bytearray) -> None:
        """Renumber whole packets a muxer wrote (each PID counting from its own start) in place."""
        for index in range(len(data) // PACKET_SIZE):
            offset = index * PACKET_SIZE
            self._next(data, index, ((data[offset + 1] & 0x1F) << 8) | data[offset + 2])


# --------------------------------------------------------------------------------------------
# Access units: what libavformat's H.264 and HEVC parsers make of the video PES packets

H264_AUD, H264_SEI, H264_IDR, H264_FILLER = 9, 6, 5, 12
H264_PARAMETER_SETS = (7, 8)  # SPS, PPS
H264_RECOVERY_POINT = 6  # SEI payloadType
HEVC_AUD, HEVC_FILLER, HEVC_SEI_SUFFIX = 35, 38, 40
HEVC_BEFORE_SLICES = (32, 33, 34, 39)  # VPS, SPS, PPS, prefix SEI
HEVC_SLICES = (*range(0, 10), *range(16, 22))  # the types libavcodec's HEVC parser reads as slices
HEVC_IRAP = range(16, 24)
START_CODE = b"\0\0\1"
_START_CODES = re.compile(re.escape(START_CODE))


@dataclass(frozen=True)
class AccessUnits:
    """The video access units of a scanned object, one per PES packet, in decode order."""

    sizes: tuple[int, ...]  # elementary stream bytes of each (its PES payload)
    key: tuple[bool, ...]  # whether the demuxer marks it a key frame (see ``access_units``)


def _elementary_stream(data: bytes | bytearray, found: TsScan) -> tuple[bytes, list[int]] | str:
    """The video PID's payload bytes joined, PES headers left out, and where each PES's payload
    starts in them. Most video packets are a 4-byte header and 184 payload bytes: every packet is
    stripped of its first four bytes at once, and only the others (other PIDs, adaptation fields,
    PES starts) are sliced one by one."""
    pid = found.layout.video_pid
    head1, head2, head3 = data[1::PACKET_SIZE], data[2::PACKET_SIZE], data[3::PACKET_SIZE]
    irregular = _or(head1.translate(_table("pid_high", pid >> 8)), head2.translate(_table("pid_low", pid & 0xFF)),
                    head1.translate(_table("bad", 0x40)), head3.translate(_table("bad", 0x20)),
                    head3.translate(_table("clear", 0x10)))
    stripped = bytearray(data)
    for step in range(PACKET_SIZE, PACKET_SIZE - 4, -1):  # the header bytes, one column at a time
        del stripped[0::step]
    body = PACKET_SIZE - 4
    view = memoryview(stripped)
    pieces: list[bytes | bytearray | memoryview] = []
    size = 0
    pes: list[int] = []
    declared: list[int | None] = []  # each PES's elementary stream bytes by its PES_packet_length
    previous = found.first_video - 1  # nothing of the video PID comes before its first PES start
    starting = set(found.starts)
    for index in _where(irregular, 1):
        if index <= previous:
            continue
        if index > previous + 1:
            pieces.append(view[(previous + 1) * body:index * body])
            size += (index - previous - 1) * body
        previous = index
        offset = index * PACKET_SIZE
        if ((data[offset + 1] & 0x1F) << 8 | data[offset + 2]) != pid:
            continue
        start = _payload(data, index)
        if start is None:
            continue
        if index in starting:
            # PES_packet_length, when not 0, must be what follows it here: the demuxer would cut
            # the payload at it (scan checked the PES header lies within the packet)
            length = int.from_bytes(data[start + 4:start + 6], "big")
            declared.append(length - 3 - data[start + 8] if length else None)
            start += 9 + data[start + 8]
            pes.append(size)
        pieces.append(data[start:offset + PACKET_SIZE])
        size += offset + PACKET_SIZE - start
    if found.last_video > previous:
        pieces.append(view[(previous + 1) * body:(found.last_video + 1) * body])
    joined = b"".join(pieces)
    view.release()
    if len(pes) != len(found.starts):
        return "a PES header is not where its packet starts"
    ends = [*pes[1:], len(joined)]
    if any(length is not None and length != end - begin for length, begin, end in zip(declared, pes, ends)):
        return "a PES packet's length is not that of its payload"
    return joined, pes


def _ue(data: bytes, at: int) -> tuple[int, int] | None:
    """An Exp-Golomb ue(v) starting at byte ``at`` (bit 0): (value, bits read), or None."""
    bits = int.from_bytes(data[at:at + 8], "big")
    width = 8 * len(data[at:at + 8])
    zeros = 0
    while zeros < 32 and zeros < width and not bits >> (width - 1 - zeros) & 1:
        zeros += 1
    if 2 * zeros + 1 > width or zeros == 32:
        return None
    value = (bits >> (width - 2 * zeros - 1)) & ((1 << (zeros + 1)) - 1)
    return value - 1, 2 * zeros + 1


def _sei_recovery(nal: bytes) -> bool | str:
    """Whether an H.264 SEI NAL unit (header byte first) starts with a recovery point message, as
    libavcodec's parser reads it; a string for what it might read otherwise."""
    rbsp = nal[1:].replace(b"\0\0\3", b"\0\0")
    at, first = 0, True
    while at < len(rbsp) and rbsp[at:].rstrip(b"\0") not in (b"\x80", b""):
        values = []
        for _ in range(2):  # payloadType, payloadSize
            value = 0
            while at < len(rbsp) and rbsp[at] == 0xFF:
                value += 255
                at += 1
            if at >= len(rbsp):
                return "an SEI message header runs past its NAL unit"
            values.append(value + rbsp[at])
            at += 1
        kind, size = values
        if at + size > len(rbsp):
            return "an SEI message runs past its NAL unit"
        if kind == H264_RECOVERY_POINT:
            count = _ue(rbsp, at)
            if not first or count is None or count[0] > 0xFFFF or 8 * size < count[1]:
                return "a recovery point SEI message that is not the first of its NAL unit, or not readable"
            return True
        first = False
        at += size
    return False


def _unit_h264(es: bytes, nals: list[int], end: int) -> bool | str:
    key = seen_slice = False
    last_mb = -1
    for number, at in enumerate(nals):
        header, after = es[at], es[at + 1] if at + 1 < end else 0
        kind = header & 0x1F
        if header & 0x80:
            return "a NAL unit has its forbidden bit set"
        if number == 0:
            if kind != H264_AUD:
                return "a PES packet does not start with an access unit delimiter"
        elif kind in (1, H264_IDR):  # a slice: the first of a picture has first_mb_in_slice 0
            if seen_slice == bool(after & 0x80):
                return "a PES packet does not hold exactly one picture"
            # the parser starts a picture at any slice not after the one before (slices out of order)
            head = es[at + 1:min(at + 9, end)]
            first_mb = _ue(head, 0) if b"\0\0\3" not in head else None
            if first_mb is None or first_mb[0] <= last_mb:
                return "a PES packet's slices are not in picture order"
            last_mb = first_mb[0]
            if not seen_slice:
                key = key or kind == H264_IDR
                seen_slice = True
        elif seen_slice and kind != H264_FILLER:
            return "a PES packet holds NAL units that start another access unit"
        elif kind == H264_SEI:
            recovery = _sei_recovery(es[at:nals[number + 1] - len(START_CODE) if number + 1 < len(nals) else end])
            if isinstance(recovery, str):
                return recovery
            key = key or recovery
        elif kind not in H264_PARAMETER_SETS:
            return f"an access unit holds a NAL unit of type {kind}"
    return key if seen_slice else "an access unit has no picture"


def _unit_hevc(es: bytes, nals: list[int], end: int) -> bool | str:
    key = seen_slice = False
    for number, at in enumerate(nals):
        if at + 2 >= end:
            return "a NAL unit header is cut off"
        kind, layer = (es[at] >> 1) & 0x3F, ((es[at] & 1) << 5) | es[at + 1] >> 3
        if es[at] & 0x80 or layer:
            return "a NAL unit has its forbidden bit or a layer id set"
        if number == 0:
            if kind != HEVC_AUD:
                return "a PES packet does not start with an access unit delimiter"
        elif kind in HEVC_SLICES:  # the first of a picture has first_slice_segment_in_pic_flag
            if seen_slice == bool(es[at + 2] & 0x80):
                return "a PES packet does not hold exactly one picture"
            if not seen_slice:
                key = kind in HEVC_IRAP
                seen_slice = True
        elif seen_slice and kind not in (HEVC_FILLER, HEVC_SEI_SUFFIX):
            return "a PES packet holds NAL units that start another access unit"
        elif not seen_slice and kind not in HEVC_BEFORE_SLICES:
            return f"an access unit holds a NAL unit of type {kind}"
    return key if seen_slice else "an access unit has no picture"


def access_units(data: bytes | bytearray, found: TsScan) -> AccessUnits | str:
    """The access units of the object ``data`` that ``scan`` gave ``found``: what libavformat's
    demuxer gives as packets, when each PES packet holds exactly one access unit.

    That is checked, as the parsers find access units: each PES payload starts with an access unit
    delimiter and holds one picture (one slice that starts a picture, H.264 ``first_mb_in_slice``
    0 or HEVC ``first_slice_segment_in_pic_flag``) and after it only more of its slices, filler
    (and HEVC suffix SEI). A key frame is what the parsers mark as one: H.264, an IDR picture or
    one whose access unit carries a recovery point SEI message before its first slice; HEVC, an
    IRAP picture. Anything else (a NAL unit type not listed, an SEI message that does not read
    plainly, a layer id) gives the reason, a string.
    """
    joined = _elementary_stream(data, found)
    if isinstance(joined, str):
        return joined
    es, pes = joined
    unit = _unit_h264 if found.layout.codec == "h264" else _unit_hevc
    nals = [match.end() for match in _START_CODES.finditer(es)]  # where each NAL unit's header is
    sizes, keys = [], []
    first = 0
    for number, begin in enumerate(pes):
        end = pes[number + 1] if number + 1 < len(pes) else len(es)
        if es[begin:begin + 3] != START_CODE and es[begin:begin + 4] != b"\0" + START_CODE:
            return "a PES payload does not start with a NAL unit"
        last = bisect.bisect_left(nals, end + len(START_CODE), first)  # a start code may not run past the PES
        key = unit(es, nals[first:last], end)
        if isinstance(key, str):
            return key
        first = last
        sizes.append(end - begin)
        keys.append(key)
    return AccessUnits(sizes=tuple(sizes), key=tuple(keys))



def h264_headers(data: bytes | bytearray, found: TsScan) -> tuple[list[bytes], list[bytes], bytes] | str:
    """The H.264 SPS and PPS NAL units in the video stream of the object ``data`` that ``scan``
    gave ``found``, in stream order, each from its header byte to the next start code (so with
    any trailing zero bytes), and the first 16 bytes of its first slice; or why they cannot be
    read."""
    if found.layout.codec != "h264":
        return f"its video is {found.layout.codec}, not H.264"
    joined = _elementary_stream(data, found)
    if isinstance(joined, str):
        return joined
    es = joined[0]
    nals = [match.end() for match in _START_CODES.finditer(es)]
    sets: dict[int, list[bytes]] = {7: [], 8: []}
    first_slice = b""
    for at, following in zip(nals, [*nals[1:], 0]):
        kind = es[at] & 0x1F if at < len(es) else None
        if kind in sets:
            sets[kind].append(es[at:following - len(START_CODE)] if following else es[at:])
        elif kind in (1, H264_IDR) and not first_slice:
            first_slice = es[at:at + 16]
    if not first_slice:
        return "it has no slice"
    return sets[7], sets[8], first_slice

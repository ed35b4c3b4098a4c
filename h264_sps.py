"""An H.264 sequence parameter set read as far as its VUI's picture timing (ITU-T H.264 7.3.2.1.1
and E.1.1), for a probe that needs no decoder.

``parse(nal)`` takes an SPS NAL unit (its header byte first, emulation prevention bytes still in)
(without the zero bytes that may follow it before the next start code) and gives an ``Sps``, or
None when the bytes do not read as one to its stop bit, or a value that libavcodec checks is out
of the standard's range (ids, bit depths, frame number and picture order count lengths, reference
and reorder frame counts, chroma sample locations, a picture too large). HRD parameters and the
bitstream restrictions are read over; ``hrd`` says the former were there.

``pps_sps_id(nal)`` gives the SPS id a picture parameter set refers to, and ``slice_pps_id(nal)``
the PPS id of a slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

__all__ = ["ASPECT_RATIOS", "Sps", "parse", "pps_sps_id", "slice_pps_id"]

SPS_NAL_TYPE = 7
PPS_NAL_TYPE = 8
SLICE_NAL_TYPES = (1, 5)
# Profiles whose SPS carries chroma_format_idc, bit depths and scaling matrices (7.3.2.1.1)
HIGH_PROFILES = frozenset({100, 110, 118, 122, 128, 134, 135, 138, 139, 144, 244, 44, 83, 86})
# aspect_ratio_idc 1..16 (Table E-1); 255 is Extended_SAR, given in the SPS itself
ASPECT_RATIOS = {
    1: (1, 1), 2: (12, 11), 3: (10, 11), 4: (16, 11), 5: (40, 33), 6: (24, 11), 7: (20, 11), 8: (32, 11),
    9: (80, 33), 10: (18, 11), 11: (15, 11), 12: (64, 33), 13: (160, 99), 14: (4, 3), 15: (3, 2), 16: (2, 1),
}
EXTENDED_SAR = 255
MAX_DPB_FRAMES = 16
# libavcodec's check of a picture's size (av_image_check_size: (w + 128) (h + 128) < INT_MAX / 8)
MAX_PICTURE_AREA = (2**31 - 1) // 8


@dataclass(frozen=True)
class Sps:
    profile_idc: int
    constraint_flags: int  # constraint_set0..5 flags and the two reserved bits, as one byte
    level_idc: int
    sps_id: int
    chroma_format_idc: int  # 0 monochrome, 1 4:2:0, 2 4:2:2, 3 4:4:4
    separate_colour_planes: bool
    bit_depth_luma: int
    bit_depth_chroma: int
    frame_mbs_only: bool  # no field or MBAFF coding: every picture is a progressive frame
    width: int  # the cropped picture, in luma samples
    height: int
    crop_left: int  # in luma samples
    crop_top: int
    sample_aspect_ratio: tuple[int, int] | None  # None: not stated, or aspect_ratio_idc 0 (unspecified)
    full_range: bool | None  # video_full_range_flag, None without a video signal type
    matrix_coefficients: int | None
    num_units_in_tick: int | None  # timing info, None when absent
    time_scale: int | None
    fixed_frame_rate: bool
    hrd: bool  # NAL or VCL HRD parameters are present
    pic_struct_present: bool

    @property
    def frame_rate(self) -> Fraction | None:
        """time_scale / (2 num_units_in_tick): two ticks a frame, as for progressive frames."""
        if not self.num_units_in_tick or not self.time_scale:
            return None
        return Fraction(self.time_scale, 2 * self.num_units_in_tick)


class _Bits:
    """Reads an RBSP bit by bit, most significant first; ``EOFError`` past its end."""

    def __init__(self, rbsp: bytes) -> None:
        self.value = int.from_bytes(rbsp, "big")
        self.left = 8 * len(rbsp)

    def u(self, count: int) -> int:
        if count > self.left:
            raise EOFError
        self.left -= count
        return (self.value >> self.left) & ((1 << count) - 1)

    def flag(self) -> bool:
        return bool(self.u(1))

    def ue(self) -> int:
        zeros = 0
        while not self.u(1):
            zeros += 1
            if zeros > 31:
                raise ValueError("an Exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


def _scaling_list(bits: _Bits, size: int) -> None:
    last = following = 8
    for _ in range(size):
        if following:
            delta = bits.se()
            if not -128 <= delta <= 127:
                raise ValueError("delta_scale out of range")
            following = (last + delta + 256) % 256
        last = following or last


def _hrd(bits: _Bits) -> None:
    count = bits.ue() + 1
    if count > 32:
        raise ValueError("cpb_cnt_minus1 out of range")
    bits.u(8)  # bit_rate_scale, cpb_size_scale
    for _ in range(count):
        bits.ue()  # bit_rate_value_minus1
        bits.ue()  # cpb_size_value_minus1
        bits.u(1)  # cbr_flag
    bits.u(20)  # four 5-bit lengths


def parse(nal: bytes) -> Sps | None:
    """The SPS in the NAL unit ``nal``, or None if it is not one or does not read to its stop bit."""
    if not nal or nal[0] & 0x9F != SPS_NAL_TYPE:  # forbidden_zero_bit 0, nal_unit_type 7
        return None
    bits = _Bits(nal[1:].replace(b"\0\0\3", b"\0\0"))
    try:
        return _read(bits)
    except (EOFError, ValueError):
        return None


def _read(bits: _Bits) -> Sps:
    profile, constraints, level, sps_id = bits.u(8), bits.u(8), bits.u(8), bits.ue()
    if sps_id > 31:
        raise ValueError("seq_parameter_set_id out of range")
    chroma, separate, depth_luma, depth_chroma = 1, False, 8, 8
    if profile in HIGH_PROFILES:
        chroma = bits.ue()
        if chroma > 3:
            raise ValueError("chroma_format_idc out of range")
        separate = chroma == 3 and bits.flag()
        depth_luma, depth_chroma = bits.ue() + 8, bits.ue() + 8
        if depth_luma > 14 or depth_chroma > 14:
            raise ValueError("bit depth out of range")
        bits.u(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.flag():  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma != 3 else 12):
                if bits.flag():
                    _scaling_list(bits, 16 if index < 6 else 64)
    if bits.ue() > 12:
        raise ValueError("log2_max_frame_num_minus4 out of range")
    poc_type = bits.ue()
    if poc_type == 0:
        if bits.ue() > 12:
            raise ValueError("log2_max_pic_order_cnt_lsb_minus4 out of range")
    elif poc_type == 1:
        bits.u(1)
        bits.se()
        bits.se()
        cycle = bits.ue()
        if cycle > 255:
            raise ValueError("num_ref_frames_in_pic_order_cnt_cycle out of range")
        for _ in range(cycle):
            bits.se()
    elif poc_type != 2:
        raise ValueError("pic_order_cnt_type out of range")
    if bits.ue() > MAX_DPB_FRAMES:
        raise ValueError("max_num_ref_frames out of range")
    bits.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs, height_units = bits.ue() + 1, bits.ue() + 1
    frame_mbs_only = bits.flag()
    if not frame_mbs_only:
        bits.u(1)  # mb_adaptive_frame_field_flag
    bits.u(1)  # direct_8x8_inference_flag
    crop = [bits.ue() for _ in range(4)] if bits.flag() else [0, 0, 0, 0]  # left, right, top, bottom
    # crop units (7-19 to 7-22): chroma samples across and down, and fields count twice down
    unit_x = 1 if chroma in (0, 3) or separate else 2
    unit_y = (2 - frame_mbs_only) * (2 if chroma == 1 and not separate else 1)
    width = 16 * width_mbs - unit_x * (crop[0] + crop[1])
    height = 16 * height_units * (2 - frame_mbs_only) - unit_y * (crop[2] + crop[3])
    if width <= 0 or height <= 0:
        raise ValueError("cropped away")
    if (16 * width_mbs + 128) * (16 * height_units * (2 - frame_mbs_only) + 128) >= MAX_PICTURE_AREA:
        raise ValueError("a picture too large for libavcodec")
    sar = full_range = matrix = ticks = scale = None
    fixed = hrd = pic_struct = False
    if bits.flag():  # vui_parameters_present_flag
        if bits.flag():  # aspect_ratio_info_present_flag
            idc = bits.u(8)
            if idc == EXTENDED_SAR:
                sar = (bits.u(16), bits.u(16))
            elif idc in ASPECT_RATIOS:
                sar = ASPECT_RATIOS[idc]
            elif idc != 0:
                raise ValueError("aspect_ratio_idc reserved")
        if bits.flag():  # overscan_info_present_flag
            bits.u(1)
        if bits.flag():  # video_signal_type_present_flag
            bits.u(3)  # video_format
            full_range = bits.flag()
            if bits.flag():  # colour_description_present_flag
                bits.u(16)  # colour_primaries, transfer_characteristics
                matrix = bits.u(8)
        if bits.flag() and (bits.ue() > 5 or bits.ue() > 5):  # chroma_loc_info_present_flag, top, bottom
            raise ValueError("chroma_sample_loc_type out of range")
        if bits.flag():  # timing_info_present_flag
            ticks, scale, fixed = bits.u(32), bits.u(32), bits.flag()
        nal_hrd = bits.flag()
        if nal_hrd:
            _hrd(bits)
        vcl_hrd = bits.flag()
        if vcl_hrd:
            _hrd(bits)
        hrd = nal_hrd or vcl_hrd
        if hrd:
            bits.u(1)  # low_delay_hrd_flag
        pic_struct = bits.flag()
        if bits.flag():  # bitstream_restriction_flag
            bits.u(1)  # motion_vectors_over_pic_boundaries_flag
            for _ in range(4):  # max_bytes_per_pic_denom .. log2_max_mv_length_vertical
                bits.ue()
            if bits.ue() > MAX_DPB_FRAMES or bits.ue() > MAX_DPB_FRAMES:
                raise ValueError("max_num_reorder_frames or max_dec_frame_buffering out of range")
    # rbsp_trailing_bits: a one, then zeros to the end (after the trailing zero bytes are cut off)
    if bits.u(1) != 1 or bits.u(bits.left) != 0:
        raise ValueError("no rbsp_stop_one_bit where the SPS ends")
    return Sps(
        profile_idc=profile, constraint_flags=constraints, level_idc=level, sps_id=sps_id, chroma_format_idc=chroma,
        separate_colour_planes=separate, bit_depth_luma=depth_luma, bit_depth_chroma=depth_chroma,
        frame_mbs_only=frame_mbs_only, width=width, height=height, crop_left=unit_x * crop[0],
        crop_top=unit_y * crop[2], sample_aspect_ratio=sar, full_range=full_range, matrix_coefficients=matrix,
        num_units_in_tick=ticks, time_scale=scale, fixed_frame_rate=fixed, hrd=hrd, pic_struct_present=pic_struct,
    )


def pps_sps_id(nal: bytes) -> tuple[int, int] | None:
    """``(pic_parameter_set_id, seq_parameter_set_id)`` of a PPS NAL unit, or None."""
    if not nal or nal[0] & 0x9F != PPS_NAL_TYPE:
        return None
    bits = _Bits(nal[1:9].replace(b"\0\0\3", b"\0\0"))
    try:
        return bits.ue(), bits.ue()
    except (EOFError, ValueError):
        return None


def slice_pps_id(nal: bytes) -> int | None:
    """The pic_parameter_set_id of a coded slice NAL unit (types 1 and 5), or None."""
    if not nal or nal[0] & 0x80 or nal[0] & 0x1F not in SLICE_NAL_TYPES:
        return None
    bits = _Bits(nal[1:16].replace(b"\0\0\3", b"\0\0"))
    try:
        bits.ue()  # first_mb_in_slice
        bits.ue()  # slice_type
        return bits.ue()
    except (EOFError, ValueError):
        return None

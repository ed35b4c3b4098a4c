"""Tests of simple_edit's pure planning: frame-exact selection, placement and timing.

The property tests build synthetic Flows frame by frame (each frame's stored timestamp is
its exact time rounded down to the nanosecond, as ingest does), plan an edit, then play the
output back the way a reader does (object timestamp + ts_offset, kept when inside the
segment's timerange) and compare the frames with what the request asked for, worked out
independently in whole-frame indices.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mediatimestamp.immutable import TimeRange, Timestamp

from simple_edit import (
    EditError,
    PlannedSegment,
    check_compatible,
    grid_anchor,
    interval_frames,
    merged_essence,
    output_flow,
    parse_interval,
    parse_segment,
    parse_timerange,
    parse_timestamp,
    plan_concatenation,
    plan_interval,
    select_frames,
)

NS = 10**9


def floor_ts(seconds: Fraction) -> Timestamp:
    return Timestamp(ns=math.floor(seconds * NS))


def tr(start: Timestamp | None, end: Timestamp | None) -> TimeRange:
    return TimeRange(start, end, TimeRange.INCLUDE_START)


# ---------------------------------------------------------------------------
# A synthetic Flow: objects with frames at exact times, segments referencing them


@dataclass
class SynthObject:
    object_id: str
    start: Fraction   # exact time of frame 0 on the object's timeline
    frames: int
    rate: Fraction

    def stored(self, j: int) -> Timestamp:
        return floor_ts(self.start + Fraction(j) / self.rate)


@dataclass
class SynthFlow:
    rate: Fraction
    origin: Fraction                  # exact flow time of global frame index 0
    objects: dict[str, SynthObject]
    segments: list[dict]              # API dicts
    index: dict[int, tuple[str, int]]  # global frame index -> (object id, frame in object)
    flow_times: dict[int, Timestamp]   # global frame index -> stored flow timestamp

    def time_of(self, g: int, phase: Fraction = Fraction(0)) -> Timestamp:
        return floor_ts(self.origin + (g + phase) / self.rate)

    def parsed(self):
        return [parse_segment(s, self.rate) for s in self.segments]


RATES = [Fraction(25), Fraction(30), Fraction(30000, 1001), Fraction(50), Fraction(24000, 1001), Fraction(60)]


@st.composite
def synth_flows(draw, name: str, rate: Fraction, gaps: bool = True, trims: bool = True) -> SynthFlow:
    """Segments of 1-30 frames; objects may hold a few unused frames either side (as
    segments of an earlier edit do); optional gaps of whole frames between segments."""
    if draw(st.booleans()):
        origin = Fraction(draw(st.integers(0, 10**6))) / rate          # on the rate's global grid
    else:
        origin = Fraction(draw(st.integers(0, 10**12)), 90000 * 7)    # anywhere
    n_segments = draw(st.integers(1, 6))
    objects: dict[str, SynthObject] = {}
    segments: list[dict] = []
    index: dict[int, tuple[str, int]] = {}
    flow_times: dict[int, Timestamp] = {}
    g = 0
    for k in range(n_segments):
        if gaps and k > 0:
            g += draw(st.sampled_from([0, 0, 0, 1, 7]))
        n = draw(st.integers(1, 30))
        pre = draw(st.integers(0, 3)) if trims else 0
        post = draw(st.integers(0, 3)) if trims else 0
        if draw(st.booleans()):
            object_start = Fraction(draw(st.integers(0, 10**6))) / rate       # on the rate's grid
        else:
            object_start = Fraction(draw(st.integers(0, 10**9)), 90000)       # MPEG-TS ticks
        obj = SynthObject(f"{name}-obj{k}", object_start, pre + n + post, rate)
        objects[obj.object_id] = obj
        seg_start = floor_ts(origin + Fraction(g) / rate)
        ts_offset = seg_start - obj.stored(pre)
        for j in range(pre, pre + n):
            index[g + j - pre] = (obj.object_id, j)
            flow_times[g + j - pre] = obj.stored(j) + ts_offset
        end = obj.stored(pre + n) + ts_offset
        segment = {"object_id": obj.object_id, "timerange": str(tr(seg_start, end)), "ts_offset": str(ts_offset)}
        if pre or post or draw(st.booleans()):
            segment["object_timerange"] = str(tr(obj.stored(0), obj.stored(obj.frames)))
        segments.append(segment)
        g += n
    # Contiguous neighbours must not overlap: clip each end to the next start.
    for a, b in itertools.pairwise(segments):
        ta, tb = TimeRange.from_str(a["timerange"]), TimeRange.from_str(b["timerange"])
        assert ta.end is not None and tb.start is not None
        if ta.end > tb.start:
            a["timerange"] = str(tr(ta.start, tb.start))
    return SynthFlow(rate, origin, objects, segments, index, flow_times)


def on_frame(g: int, phase: Fraction) -> tuple[int, bool]:
    """Where a bound ``phase`` of a frame after frame g acts, by the membership rule: on a
    frame (True) when within a quarter frame of one, else between g and g + 1 (False)."""
    if phase <= Fraction(1, 4):
        return g, True
    if phase >= Fraction(3, 4):
        return g + 1, True
    return g, False


@st.composite
def bounds(draw, flow: SynthFlow):
    """A requested timerange and the global frame indices it selects (worked out in indices)."""
    last = max(flow.index)

    def bound():
        g = draw(st.integers(-3, last + 3))
        phase = draw(st.sampled_from([Fraction(0), Fraction(0), Fraction(1, 100), Fraction(1, 5), Fraction(3, 10),
                                      Fraction(1, 2), Fraction(7, 10), Fraction(4, 5), Fraction(99, 100)]))
        return g, phase

    start = None if draw(st.integers(0, 4)) == 0 else bound()
    end = None if draw(st.integers(0, 4)) == 0 else bound()
    include_start = draw(st.booleans())
    include_end = draw(st.booleans())
    inc = (TimeRange.INCLUDE_START if include_start else 0) | (TimeRange.INCLUDE_END if include_end else 0)
    if start is not None and end is not None:
        assume((start[0] + start[1]) < (end[0] + end[1]))

    def selected(g: int) -> bool:
        if start is not None:
            s, on = on_frame(*start)
            if not on:
                if g <= s:
                    return False
            elif g < s or (g == s and not include_start):
                return False
        if end is not None:
            e, on = on_frame(*end)
            if not on:
                if g > e:
                    return False
            elif g > e or (g == e and not include_end):
                return False
        return True

    timerange = TimeRange(
        flow.time_of(*start) if start else None,
        flow.time_of(*end) if end else None,
        TimeRange.Inclusivity(inc),
    )
    return timerange, [g for g in sorted(flow.index) if selected(g)]


def play(planned: list[PlannedSegment], flows: list[SynthFlow]) -> list[tuple[str, int]]:
    """Read the output as a reader would: each object's frames moved by ts_offset, kept
    when inside the segment's timerange; segments in order."""
    objects = {oid: obj for f in flows for oid, obj in f.objects.items()}
    frames: list[tuple[str, int]] = []
    for p in planned:
        obj = objects[p.object_id]
        frames.extend((obj.object_id, j) for j in range(obj.frames) if (obj.stored(j) + p.ts_offset) in p.timerange)
    return frames


def play_times(planned: list[PlannedSegment], flows: list[SynthFlow]) -> list[Timestamp]:
    """The output timestamp of each frame :func:`play` returns."""
    objects = {oid: obj for f in flows for oid, obj in f.objects.items()}
    times: list[Timestamp] = []
    for p in planned:
        obj = objects[p.object_id]
        times.extend(t for t in (obj.stored(j) + p.ts_offset for j in range(obj.frames)) if t in p.timerange)
    return times


def check_output_shape(planned: list[PlannedSegment]) -> None:
    """Half-open, non-empty, back to back, and every trim inside its object."""
    for p in planned:
        assert p.timerange.includes_start() and not p.timerange.includes_end()
        assert p.timerange.start is not None and p.timerange.end is not None
        assert p.timerange.start < p.timerange.end
        on_object = TimeRange(p.timerange.start - p.ts_offset, p.timerange.end - p.ts_offset, p.timerange.inclusivity)
        assert p.object_timerange.contains_subrange(on_object), (p.describe(), str(on_object))
    for a, b in itertools.pairwise(planned):
        assert a.timerange.end == b.timerange.start


# ---------------------------------------------------------------------------
# Property tests


@st.composite
def concat_cases(draw):
    rate = draw(st.sampled_from(RATES))
    f1 = draw(synth_flows("a", rate))
    f2 = draw(synth_flows("b", rate))
    r1, want1 = draw(bounds(f1))
    r2, want2 = draw(bounds(f2))
    start = draw(st.none() | st.integers(-10**10, 10**12).map(lambda ns: Timestamp(ns=ns)))
    return f1, f2, r1, want1, r2, want2, start


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(concat_cases())
def test_concatenation_plays_back_exactly_the_requested_frames(case):
    f1, f2, r1, want1, r2, want2, start = case
    if not want1 or not want2:
        with pytest.raises(EditError, match="input [12]"):
            plan_concatenation(f1.parsed(), r1, f2.parsed(), r2, start=start)
        return
    planned = plan_concatenation(f1.parsed(), r1, f2.parsed(), r2, start=start)
    check_output_shape(planned)
    expected = [f1.index[g] for g in want1] + [f2.index[g] for g in want2]
    assert play(planned, [f1, f2]) == expected
    # The output starts where asked, or at input 1's first frame (its stored timestamp,
    # or 1 ns before it when the object is off the rate's grid) ...
    if start is None:
        first_time = f1.flow_times[want1[0]]
        assert first_time - Timestamp(ns=1) <= planned[0].timerange.start <= first_time
    else:
        assert planned[0].timerange.start == start
    # ... and lasts exactly as long as the two selections together.
    total = planned[-1].timerange.end - planned[0].timerange.start
    assert total == sum((p.input_timerange.end - p.input_timerange.start for p in planned), Timestamp())
    # Legacy sample fields count the same frames.
    assert [p.sample_count for p in planned] == [len(play([p], [f1, f2])) for p in planned]
    assert [p.sample_offset for p in planned] == [play([p], [f1, f2])[0][1] for p in planned]
    assert [p.input_number for p in planned] == sorted(p.input_number for p in planned)


@st.composite
def interval_cases(draw):
    rate = draw(st.sampled_from(RATES))
    f1 = draw(synth_flows("a", rate))
    f2 = draw(synth_flows("b", rate))
    r1, want1 = draw(bounds(f1))
    r2, want2 = draw(bounds(f2))
    n = draw(st.integers(1, 40))
    return f1, f2, r1, want1, r2, want2, n


def expected_interval(wants: tuple[list[int], list[int]], n: int) -> list[tuple[int, int]]:
    """(input, global index) of each output frame: turn k of input i shows the indices in
    [first_i + k*n, first_i + (k+1)*n); stop at the first turn that cannot be filled."""
    out: list[tuple[int, int]] = []
    turn = 0
    while True:
        i = turn % 2
        want = wants[i]
        lo = want[0] + turn * n
        hi = lo + n
        if lo > want[-1]:
            break
        out.extend((i, g) for g in want if lo <= g < hi)
        if hi > want[-1] + 1:
            break
        turn += 1
    return out


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(interval_cases())
def test_interval_cuts_alternate_every_n_frames_each_input_in_its_own_timeline(case):
    f1, f2, r1, want1, r2, want2, n = case
    if not want1 or not want2:
        with pytest.raises(EditError):
            plan_interval(f1.parsed(), r1, f2.parsed(), r2, n)
        return
    planned = plan_interval(f1.parsed(), r1, f2.parsed(), r2, n)
    check_output_shape(planned)
    flows = (f1, f2)
    expected = [flows[i].index[g] for i, g in expected_interval((want1, want2), n)]
    assert play(planned, [f1, f2]) == expected
    first_time = f1.flow_times[want1[0]]
    assert first_time - Timestamp(ns=1) <= planned[0].timerange.start <= first_time


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(RATES), st.integers(1, 60), st.integers(1, 12), st.integers(1, 12))
def test_interval_turns_have_n_frames_until_an_input_runs_out(rate, n, seg1, seg2):
    """Contiguous inputs: every turn but the last is exactly n frames, inputs alternate,
    and the edit ends when the input whose turn it is has nothing left."""
    segs1 = contiguous(rate, "a", [30] * seg1)
    segs2 = contiguous(rate, "b", [30] * seg2)
    planned = plan_interval(segs1, TimeRange.eternity(), segs2, TimeRange.eternity(), n)
    turns: list[list[int]] = []  # [input, frames]
    for p in planned:
        if turns and turns[-1][0] == p.input_number:
            turns[-1][1] += p.sample_count
        else:
            turns.append([p.input_number, p.sample_count])
    assert [t[0] for t in turns] == [1 + i % 2 for i in range(len(turns))]
    assert all(t[1] == n for t in turns[:-1])
    totals = {1: 30 * seg1, 2: 30 * seg2}
    last = len(turns) - 1
    current = turns[-1][0]
    other = 3 - current
    # Turn k of an input shows its frames k*n .. (k+1)*n - 1 of its own timeline.
    assert turns[-1][1] == min(n, totals[current] - last * n) > 0
    # It stopped because this input ran out mid-turn, or the other has nothing at its next turn.
    assert turns[-1][1] < n or (last + 1) * n >= totals[other]


def contiguous(rate: Fraction, name: str, counts: list[int], first: int = 2):
    """Parsed segments of a flow whose frame g is at (first + g) / rate, like our TS ingest."""
    segs = []
    g = first
    for k, n in enumerate(counts):
        s, e = Timestamp.from_count(g, rate.numerator, rate.denominator), Timestamp.from_count(
            g + n, rate.numerator, rate.denominator)
        segs.append(parse_segment({"object_id": f"{name}{k}", "timerange": str(tr(s, e)), "ts_offset": "0:0"}, rate))
        g += n
    return segs


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_an_edit_of_an_edit_plays_back_the_frames_of_the_originals(data):
    """Output segments (trimmed, with object_timerange) work as inputs to a further edit."""
    rate = data.draw(st.sampled_from(RATES))
    f1 = data.draw(synth_flows("a", rate))
    f2 = data.draw(synth_flows("b", rate))
    r1, want1 = data.draw(bounds(f1))
    r2, want2 = data.draw(bounds(f2))
    assume(want1 and want2)
    first = plan_concatenation(f1.parsed(), r1, f2.parsed(), r2)
    as_input = [parse_segment(p.to_json(), rate) for p in first]
    played_first = play(first, [f1, f2])
    assume(len(played_first) > 1)
    # Cut the first edit's output in two at a frame and swap the halves; the cut is at
    # that frame's timestamp as a reader of the first edit sees it.
    cut = data.draw(st.integers(1, len(played_first) - 1))
    t_cut = play_times(first, [f1, f2])[cut]
    head = TimeRange(None, t_cut, TimeRange.INCLUDE_START)
    tail = TimeRange(t_cut, None, TimeRange.INCLUDE_START)
    second = plan_concatenation(as_input, tail, as_input, head, start=Timestamp())
    check_output_shape(second)
    assert play(second, [f1, f2]) == played_first[cut:] + played_first[:cut]


# ---------------------------------------------------------------------------
# Worked examples


def ts_ingest_flow(name: str, n_segments: int = 5, per_segment: int = 60) -> list:
    """Like sample_content + ingest: 30 fps, first frame at 0:66666666, 2 s segments."""
    return contiguous(Fraction(30), name, [per_segment] * n_segments)


def test_concatenation_example_mid_segment_cuts_exact_timestamps():
    flow = ts_ingest_flow("s")
    planned = plan_concatenation(flow, parse_timerange("[3:0_5:0)"), flow, parse_timerange("[1:0_2:500000000)"),
                                 start=parse_timestamp("0:0"))
    assert [p.to_json(legacy_sample_fields=True) for p in planned] == [
        {"object_id": "s1", "timerange": "[0:0_1:66666666)", "ts_offset": "-3:0",
         "object_timerange": "[2:66666666_4:66666666)", "sample_offset": 28, "sample_count": 32},
        {"object_id": "s2", "timerange": "[1:66666666_2:0)", "ts_offset": "-3:0",
         "object_timerange": "[4:66666666_6:66666666)", "sample_offset": 0, "sample_count": 28},
        {"object_id": "s0", "timerange": "[2:0_3:66666666)", "ts_offset": "1:0",
         "object_timerange": "[0:66666666_2:66666666)", "sample_offset": 28, "sample_count": 32},
        {"object_id": "s1", "timerange": "[3:66666666_3:500000000)", "ts_offset": "1:0",
         "object_timerange": "[2:66666666_4:66666666)", "sample_offset": 0, "sample_count": 13},
    ]


def test_legacy_sample_fields_only_when_asked():
    planned = plan_concatenation(ts_ingest_flow("s", 1), TimeRange.eternity(), ts_ingest_flow("t", 1),
                                 TimeRange.eternity())
    body = planned[0].to_json()
    assert "sample_offset" not in body and "sample_count" not in body
    assert planned[0].to_json(legacy_sample_fields=True)["sample_count"] == 60


def test_whole_segments_keep_their_timeranges_shifted_and_their_object_properties():
    raw = {"object_id": "x", "timerange": "[10:0_12:0)", "ts_offset": "5:0", "key_frame_count": 2,
           "last_duration": "0:40000000", "init_object": {"object_id": "init-x", "get_urls": []}}
    seg = parse_segment(raw, Fraction(25))
    planned = plan_concatenation([seg], TimeRange.eternity(), [seg], TimeRange.eternity())
    assert [p.to_json() for p in planned] == [
        {"object_id": "x", "timerange": "[10:0_12:0)", "ts_offset": "5:0", "object_timerange": "[5:0_7:0)",
         "last_duration": "0:40000000", "key_frame_count": 2, "init_object_id": "init-x"},
        {"object_id": "x", "timerange": "[12:0_14:0)", "ts_offset": "7:0", "object_timerange": "[5:0_7:0)",
         "last_duration": "0:40000000", "key_frame_count": 2, "init_object_id": "init-x"},
    ]
    # A trimmed end has a new last frame, so the input's last_duration no longer applies.
    trimmed = plan_concatenation([seg], parse_timerange("[10:0_11:0)"), [seg], TimeRange.eternity())
    assert "last_duration" not in trimmed[0].to_json()


def test_reverse_order_concatenation_puts_input_1_first_on_the_timeline():
    later = contiguous(Fraction(30), "late", [60, 60], first=302)   # frames 300.. of the content
    earlier = contiguous(Fraction(30), "early", [60, 60], first=2)
    planned = plan_concatenation(later, TimeRange.eternity(), earlier, TimeRange.eternity())
    assert [p.object_id for p in planned] == ["late0", "late1", "early0", "early1"]
    assert str(planned[0].timerange) == "[10:66666666_12:66666666)"
    assert str(planned[2].timerange) == "[14:66666666_16:66666666)"
    assert str(planned[2].ts_offset) == "14:0"


def test_interval_example_unaligned_with_segments():
    flow = ts_ingest_flow("s")
    planned = plan_interval(flow, TimeRange.eternity(), ts_ingest_flow("t"), TimeRange.eternity(),
                            interval_frames(parse_interval("1.5"), Fraction(30)))
    lines = [(p.input_number, p.object_id, p.sample_offset, p.sample_count, str(p.timerange)) for p in planned]
    assert lines[:4] == [
        (1, "s0", 0, 45, "[0:66666666_1:566666666)"),
        (2, "t0", 45, 15, "[1:566666666_2:66666666)"),
        (2, "t1", 0, 30, "[2:66666666_3:66666666)"),
        (1, "s1", 30, 30, "[3:66666666_4:66666666)"),
    ]
    # 300 frames each; turns of 45 frames; turn k reads frames 45k.. of its input:
    # input 1 has turns 0,2,4,6 (frames 0-44, 90-134, 180-224, 270-299 partial) -> stops.
    assert sum(p.sample_count for p in planned) == 45 * 6 + 30
    assert planned[-1].input_number == 1 and planned[-1].object_id == "s4"


def test_requested_bounds_snap_to_the_later_frame_between_frames():
    flow = ts_ingest_flow("s", 1)  # frames at (2 + k) / 30
    # Start 1/3 into frame 10, end 2/3 into frame 20: frames 11..20 have timestamps inside.
    start = Timestamp.from_count(12, 30) + Timestamp(ns=11_111_111)
    end = Timestamp.from_count(22, 30) + Timestamp(ns=22_222_222)
    spans = select_frames(flow, TimeRange(start, end, TimeRange.INCLUDE_START))
    assert (spans[0].first, spans[0].stop) == (11, 21)


def test_bounds_within_a_quarter_frame_of_a_frame_are_on_it():
    """The membership rule outgest_file reads by: a bound within a quarter frame of a frame
    acts as on that frame, so its inclusivity decides whether the frame is in."""
    flow = ts_ingest_flow("s", 1)  # frames at (2 + k) / 30
    near10 = Timestamp.from_count(12, 30) + Timestamp(ns=8_000_000)   # 0.24 frame after frame 10
    near20 = Timestamp.from_count(22, 30) - Timestamp(ns=8_000_000)   # 0.24 frame before frame 20
    assert select_frames(flow, TimeRange(near10, None, TimeRange.INCLUDE_START))[0].first == 10
    assert select_frames(flow, TimeRange(near10, None, TimeRange.EXCLUSIVE))[0].first == 11
    assert select_frames(flow, TimeRange(None, near20, TimeRange.EXCLUSIVE))[0].stop == 20
    assert select_frames(flow, TimeRange(None, near20, TimeRange.INCLUSIVE))[0].stop == 21
    # 0.3 frame off is between frames: the later frame, whatever the inclusivity.
    past10 = Timestamp.from_count(12, 30) + Timestamp(ns=10_000_000)
    assert select_frames(flow, TimeRange(past10, None, TimeRange.INCLUDE_START))[0].first == 11
    assert select_frames(flow, TimeRange(past10, None, TimeRange.EXCLUSIVE))[0].first == 11
    # On-frame bounds keep their inclusivity, even 1 ns off the stored timestamp.
    on = Timestamp.from_count(12, 30)
    assert (select_frames(flow, TimeRange(on, None, TimeRange.INCLUDE_START))[0].first) == 10
    assert (select_frames(flow, TimeRange(on + Timestamp(ns=1), None, TimeRange.INCLUDE_START))[0].first) == 10
    assert (select_frames(flow, TimeRange(on - Timestamp(ns=1), None, TimeRange.INCLUDE_START))[0].first) == 10
    assert (select_frames(flow, TimeRange(on, None, TimeRange.EXCLUSIVE))[0].first) == 11
    assert (select_frames(flow, TimeRange(None, on, TimeRange.EXCLUSIVE))[0].stop) == 10
    assert (select_frames(flow, TimeRange(None, on, TimeRange.INCLUSIVE))[0].stop) == 11


def test_grid_anchor_recovers_exact_frame_times_on_the_global_grid():
    rate = Fraction(30000, 1001)
    start = Timestamp.from_count(1234, rate.numerator, rate.denominator)
    assert grid_anchor(start, Timestamp(), rate) == Fraction(1234) / rate
    # The grid is the object's: a segment shifted by a whole number of ns stays on it.
    assert grid_anchor(start + Timestamp(5), Timestamp(5), rate) == Fraction(1234) / rate + 5
    off_grid = start + Timestamp(ns=5000)
    assert grid_anchor(off_grid, Timestamp(), rate) == Fraction(off_grid.to_nanosec(), NS)


def test_nothing_selected_is_an_error_naming_the_input():
    flow = ts_ingest_flow("s", 1)
    with pytest.raises(EditError, match="input 2 timerange .* selects no frames"):
        plan_concatenation(flow, TimeRange.eternity(), flow, parse_timerange("[100:0_101:0)"))
    with pytest.raises(EditError, match="input 1 has no segments"):
        plan_concatenation([], parse_timerange("[100:0_101:0)"), flow, TimeRange.eternity())
    # Inside the flow but between two frames: still nothing.
    between = TimeRange(Timestamp.from_count(12, 30) + Timestamp(ns=10_000_000),
                        Timestamp.from_count(13, 30) - Timestamp(ns=10_000_000), TimeRange.INCLUSIVE)
    with pytest.raises(EditError, match="input 1 timerange"):
        plan_interval(flow, between, flow, TimeRange.eternity(), 10)


# ---------------------------------------------------------------------------
# Parsing and Flow checks


@pytest.mark.parametrize("text", ["[0:0_10:0)", "_", "[5:0_", "_10:0]", "(1:500000000_2:0]", "[3:0]", "-1:0_1:0"])
def test_parse_timerange_accepts_the_api_syntax(text):
    assert parse_timerange(text) == TimeRange.from_str(text)


@pytest.mark.parametrize("text", ["", "()", "nonsense", "[0:0__1:0)", "[1.5_2.5)", "[0:0_1:0_2:0)", "[00:0_1:0)",
                                  "[0:1234567890_1:0)", "[2:0_1:0)", "(1:0]", "[1:0)", "[1:0_1:0)"])
def test_parse_timerange_refuses_bad_or_empty_ranges(text):
    with pytest.raises(EditError):
        parse_timerange(text, "--input1-timerange")


def test_parse_timestamp():
    assert parse_timestamp("-1:500000000") == Timestamp(1, 500000000, -1)
    for bad in ("1.5", "1:", "abc", "1:0000000000"):
        with pytest.raises(EditError):
            parse_timestamp(bad)


@pytest.mark.parametrize(("text", "frames"), [("2", 60), ("1.5", 45), ("3/2", 45), ("1/30", 1), ("0.05", 2),
                                              ("0.0499", 1), ("1e1", 300)])
def test_cut_interval_rounds_to_whole_frames(text, frames):
    assert interval_frames(parse_interval(text), Fraction(30)) == frames


def test_cut_interval_at_ntsc_rate():
    assert interval_frames(Fraction(1), Fraction(30000, 1001)) == 30
    assert interval_frames(Fraction(1001, 30000), Fraction(30000, 1001)) == 1


@pytest.mark.parametrize("text", ["0", "-1", "abc", "1/0", "inf", "nan", ""])
def test_cut_interval_refuses_nonsense(text):
    with pytest.raises(EditError, match="--cut-interval-sec"):
        parse_interval(text)


def test_cut_interval_shorter_than_a_frame_is_refused():
    with pytest.raises(EditError, match="shorter than one frame"):
        interval_frames(Fraction(1, 31), Fraction(30))


def video_flow(**changes: Any) -> dict[str, Any]:
    flow: dict[str, Any] = {
        "id": "f", "source_id": "s", "format": "urn:x-nmos:format:video", "codec": "video/h264",
        "container": "video/mp2t", "label": "L", "generation": 0, "max_bit_rate": 500,
        "essence_parameters": {"frame_rate": {"numerator": 30, "denominator": 1}, "frame_width": 320,
                               "frame_height": 180, "interlace_mode": "progressive", "bit_depth": 8},
    }
    ep: dict[str, Any] = changes.pop("essence_parameters", {})
    essence = flow["essence_parameters"]
    flow.update(changes)
    flow["essence_parameters"] = {**essence, **ep}
    return flow


def test_compatible_inputs_give_their_rate():
    assert check_compatible(video_flow(), video_flow()) == 30
    # Constraint flags alone do not change the decoder a stream needs.
    assert check_compatible(video_flow(essence_parameters={"avc_parameters": {"profile": 77, "level": 30, "flags": 64}}),
                            video_flow(essence_parameters={"avc_parameters": {"profile": 77, "level": 30, "flags": 0}})) == 30
    # Flags that default to false are false when left out.
    assert check_compatible(video_flow(essence_parameters={"vfr": False, "init_segments": False}), video_flow()) == 30
    # Equal ratios written differently are equal.
    assert check_compatible(video_flow(essence_parameters={"aspect_ratio": {"numerator": 16, "denominator": 9}}),
                            video_flow(essence_parameters={"aspect_ratio": {"numerator": 32, "denominator": 18}})) == 30


@pytest.mark.parametrize(("change", "message"), [
    ({"essence_parameters": {"frame_rate": {"numerator": 25}}},
     "input flows differ in frame_rate: 30/1 vs 25/1: the edit counts frames at one frame_rate"),
    ({"essence_parameters": {"frame_width": 640}}, "input flows differ in frame_width: 320 vs 640: a Flow declares one frame size"),
    ({"essence_parameters": {"frame_height": 360}}, "input flows differ in frame_height: 180 vs 360: a Flow declares one frame size"),
    ({"codec": "video/h265"},
     "input flows differ in codec: video/h264 vs video/h265: the joined media could not be decoded as one stream"),
    ({"container": "video/mp4"}, "input flows differ in container: video/mp2t vs video/mp4 (fMP4 with init segments): "
                                 "a Flow has one container, so the edit could not be exported correctly"),
])
def test_hard_differences_are_refused_naming_the_field_and_both_values(change, message):
    with pytest.raises(EditError) as info:
        check_compatible(video_flow(), video_flow(**change))
    assert str(info.value) == message
    with pytest.raises(EditError) as info:
        check_compatible(video_flow(), video_flow(**change), force=True)
    assert str(info.value) == message + " (--force cannot accept this)"


_FORCE_HINT = ": the edit would be mislabelled or undecodable (--force to make it anyway, declaring only what is true of both)"


@pytest.mark.parametrize(("essence", "shown"), [
    ({"bit_depth": 10}, "bit_depth: 8 vs 10"),
    ({"interlace_mode": "interlaced_tff"}, "interlace_mode: progressive vs interlaced_tff"),
    ({"horiz_chroma_subs": 1}, "horiz_chroma_subs: 2 vs 1"),
    ({"vert_chroma_subs": 1}, "vert_chroma_subs: 2 vs 1"),
    ({"component_type": "RGB"}, "component_type: YCbCr vs RGB"),
    ({"colorspace": "BT2020"}, "colorspace: BT709 vs BT2020"),
    ({"transfer_characteristic": "HLG"}, "transfer_characteristic: SDR vs HLG"),
    ({"aspect_ratio": {"numerator": 4, "denominator": 3}}, "aspect_ratio: 16/9 vs 4/3"),
    ({"pixel_aspect_ratio": {"numerator": 4, "denominator": 3}}, "pixel_aspect_ratio: 1/1 vs 4/3"),
    ({"avc_parameters": {"profile": 110, "level": 30, "flags": 0}}, "avc_parameters.profile: 100 (High) vs 110 (High 10)"),
    ({"avc_parameters": {"profile": 100, "level": 40, "flags": 0}}, "avc_parameters.level: 30 (3.0) vs 40 (4.0)"),
])
def test_other_essence_differences_are_refused_unless_forced(essence, shown):
    full = {"horiz_chroma_subs": 2, "vert_chroma_subs": 2, "component_type": "YCbCr", "colorspace": "BT709",
            "transfer_characteristic": "SDR", "aspect_ratio": {"numerator": 16, "denominator": 9},
            "pixel_aspect_ratio": {"numerator": 1, "denominator": 1},
            "avc_parameters": {"profile": 100, "level": 30, "flags": 0}}
    with pytest.raises(EditError) as info:
        check_compatible(video_flow(essence_parameters=full), video_flow(essence_parameters={**full, **essence}))
    assert str(info.value) == "input flows differ in " + shown + _FORCE_HINT
    assert check_compatible(video_flow(essence_parameters=full), video_flow(essence_parameters={**full, **essence}),
                            force=True) == 30


def test_a_parameter_one_input_does_not_declare_is_a_difference():
    plain = video_flow()
    del plain["essence_parameters"]["bit_depth"]
    with pytest.raises(EditError, match="^input flows differ in bit_depth: 8 vs \\(not declared\\): "):
        check_compatible(video_flow(), plain)


def test_all_differences_are_named_in_the_one_line():
    with pytest.raises(EditError) as info:
        check_compatible(video_flow(), video_flow(essence_parameters={"bit_depth": 10, "interlace_mode": "interlaced_bff"}))
    assert str(info.value) == ("input flows differ in bit_depth: 8 vs 10; interlace_mode: progressive vs interlaced_bff"
                               + _FORCE_HINT)


def avc(profile: int, level: int, flags: int = 0) -> dict[str, Any]:
    return {"essence_parameters": {"avc_parameters": {"profile": profile, "level": level, "flags": flags}}}


def test_forced_high_and_high_10_declare_the_covering_profile_the_higher_level_and_no_bit_depth():
    eight = video_flow(**avc(100, 30))
    ten = video_flow(**avc(110, 40))
    ten["essence_parameters"]["bit_depth"] = 10
    essence, notes = merged_essence(eight, ten)
    assert essence["avc_parameters"] == {"profile": 110, "level": 40, "flags": 0}
    assert "bit_depth" not in essence
    assert essence["frame_width"] == 320 and essence["interlace_mode"] == "progressive"
    assert notes == [
        "bit_depth: 8 (input 1), 10 (input 2); left out",
        "avc_parameters.profile: 100 (High) (input 1), 110 (High 10) (input 2); declared 110 (High 10), "
        "whose decoders decode both",
        "avc_parameters.level: 30 (3.0) (input 1), 40 (4.0) (input 2); declared the higher, 40 (4.0)",
    ]
    # Either order gives the same truth.
    assert merged_essence(ten, eight)[0]["avc_parameters"] == {"profile": 110, "level": 40, "flags": 0}


def test_forced_profiles_outside_one_chain_leave_avc_parameters_out():
    # Constrained Baseline (constraint_set0+1) is inside Main; the flags kept are those both obey.
    essence, _ = merged_essence(video_flow(**avc(66, 30, 0xC0)), video_flow(**avc(77, 31, 0x40)))
    assert essence["avc_parameters"] == {"profile": 77, "level": 31, "flags": 0x40}
    # Baseline without constraint_set1 (it may use FMO/ASO) is decoded by no Main or High decoder.
    essence, notes = merged_essence(video_flow(**avc(66, 30)), video_flow(**avc(100, 30)))
    assert "avc_parameters" not in essence
    assert notes == ["avc_parameters.profile: 66 (Baseline) (input 1), 100 (High) (input 2); no one profile covers "
                     "both, so avc_parameters is left out"]


def test_output_flow_of_forced_inputs_tags_what_differs():
    flow = output_flow(video_flow(), video_flow(essence_parameters={"interlace_mode": "interlaced_tff"}),
                       flow_id="o", source_id="os", label="lab", description="d", tags={"edit_mode": "concatenation"})
    assert "interlace_mode" not in flow["essence_parameters"]
    assert flow["tags"] == {"edit_mode": "concatenation", "edit_forced_differences": [
        "interlace_mode: progressive (input 1), interlaced_tff (input 2); left out"]}


def test_inputs_without_a_frame_rate_are_refused():
    vfr = video_flow()
    del vfr["essence_parameters"]["frame_rate"]
    with pytest.raises(EditError, match="no frame_rate"):
        check_compatible(video_flow(), vfr)
    with pytest.raises(EditError, match="only video"):
        check_compatible(video_flow(format="urn:x-nmos:format:audio"), video_flow())


def test_output_flow_takes_technical_properties_from_the_inputs():
    flow = output_flow(video_flow(), video_flow(max_bit_rate=900), flow_id="o", source_id="os", label="lab",
                       description="d", tags={"edit_mode": "concatenation", "edit_inputs": ["a", "b"]})
    assert flow == {
        "id": "o", "source_id": "os", "format": "urn:x-nmos:format:video", "codec": "video/h264",
        "container": "video/mp2t", "label": "lab", "description": "d", "generation": 0, "max_bit_rate": 900,
        "tags": {"edit_mode": "concatenation", "edit_inputs": ["a", "b"]},
        "essence_parameters": video_flow()["essence_parameters"],
    }


@pytest.mark.timeout(20)
def test_interval_planning_of_an_hour_of_input_is_linear():
    """3,600 one-second segments per input, cuts every 1.3 s (39 frames): the plan must be
    the frame-exact alternation (the quadratic rescan took minutes at this length)."""
    rate = Fraction(30)
    segs1 = contiguous(rate, "a", [30] * 3600)
    segs2 = contiguous(rate, "b", [30] * 3600, first=200_000)
    n = interval_frames(parse_interval("1.3"), rate)
    assert n == 39
    planned = plan_interval(segs1, TimeRange.eternity(), segs2, TimeRange.eternity(), n)
    check_output_shape(planned)
    # Every output frame as (input, frame index of that input), from the segments' objects.
    got = [(p.input_number, int(p.object_id[1:]) * 30 + p.sample_offset + j)
           for p in planned for j in range(p.sample_count)]
    total = 3600 * 30
    expected: list[tuple[int, int]] = []
    turn = 0
    while turn * n < total:  # turn k of input k % 2 + 1: its frames k*n .. (k+1)*n - 1
        expected += [(turn % 2 + 1, g) for g in range(turn * n, min((turn + 1) * n, total))]
        if (turn + 1) * n > total:
            break
        turn += 1
    assert got == expected
    # Input 2's turn 2769 (frames 107991..) has only 9 frames left: the edit ends there.
    assert got[-1] == (2, total - 1) and planned[-1].sample_count == 9
    assert len(planned) > 5000  # turns of 39 frames across 30-frame segments

"""What outgest does to start sooner and spend less per object, checked against the slow way.

- ``plan_segment`` tests only the ends of the run of kept frames: it must keep exactly the
  frames the membership rule (``media.in_timerange``, frame by frame) keeps;
- objects of a Flow that gives its frame rate are opened with a short stream probe: every packet,
  timestamp and codec parameter must be what the whole probe gives;
- the first page of segments is asked for while the Flow is (``_asked_ahead``);
- the scripts start without importing PyAV (it loads while their first requests are out).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mediatimestamp.immutable import TimeRange, Timestamp

from media import av, bound_tolerance, in_timerange
from outgest_core import FrameTiming, SegmentRef, _asked_ahead, flow_time, plan_segment, presentation_order, read_object
from tests.conftest import REPO_ROOT
from tests.synthetic_media import SynthesizedHLS

pytest_plugins = ["tests.media_fixtures"]

TICK = Fraction(1, 90000)


def _range(start: int | None, end: int | None, inclusivity: int) -> TimeRange:
    def at(ticks: int | None) -> Timestamp | None:
        return None if ticks is None else Timestamp.from_count(ticks, 90000)

    return TimeRange(at(start), at(end), inclusivity)


bounds = st.one_of(st.none(), st.integers(0, 40).map(lambda n: n * 1500))
inclusivities = st.sampled_from([TimeRange.INCLUDE_START, TimeRange.INCLUDE_END, TimeRange.INCLUSIVE,
                                 TimeRange.EXCLUSIVE])


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.integers(0, 6000), min_size=1, max_size=24),
    reorder=st.randoms(use_true_random=False),
    segment=st.tuples(bounds, bounds, inclusivities),
    request=st.one_of(st.none(), st.tuples(bounds, bounds, inclusivities)),
    offset_ns=st.integers(-10**9, 10**9),
)
def test_plan_keeps_exactly_the_frames_the_membership_rule_keeps(
    steps: list[int], reorder, segment, request, offset_ns: int
) -> None:
    pts = [sum(steps[: i + 1]) for i in range(len(steps))]
    decode = pts[:]
    reorder.shuffle(decode)  # any decode order; equal pts allowed
    frames = [FrameTiming(p, p, i == 0) for i, p in enumerate(decode)]
    ref = SegmentRef("object", _range(*segment), ts_offset=Timestamp.from_nanosec(offset_ns))
    wanted = _range(*request) if request is not None else None
    duration = Fraction(1, 30)

    plan = plan_segment(frames, TICK, ref, request=wanted, frame_duration=duration)

    tolerance = bound_tolerance(duration)
    order = presentation_order(frames)
    picked = [
        p for p, index in enumerate(order)
        if in_timerange(flow_time(frames[index].pts, TICK, ref.ts_offset), ref.timerange, tolerance)
        and (wanted is None or in_timerange(flow_time(frames[index].pts, TICK, ref.ts_offset), wanted, tolerance))
    ]
    assert (plan.first, plan.stop) == ((picked[0], picked[-1] + 1) if picked else (0, 0))
    assert len(picked) == plan.frame_count  # the kept frames are one run


def _read_all(path, frame_rate: Fraction | None) -> tuple:
    with read_object(path, kind="video", codec="h264", frame_rate=frame_rate) as media:
        ctx = media.stream.codec_context
        return (
            [bytes(p) for p in media.packets],
            media.frames,
            media.time_base,
            (ctx.name, ctx.width, ctx.height, ctx.format.name if ctx.format else None, ctx.profile,
             bytes(ctx.extradata or b""), ctx.has_b_frames),
        )


@pytest.mark.parametrize("fixture", ["hls_content", "hls_audio_content"])
def test_short_probe_reads_what_the_whole_probe_reads(fixture: str, request: pytest.FixtureRequest) -> None:
    content: SynthesizedHLS = request.getfixturevalue(fixture)
    for path in content.segment_paths()[:2]:
        packets, frames, time_base, parameters = _read_all(path, Fraction(30))
        assert (packets, frames, time_base, parameters) == _read_all(path, None)
        assert [f.pts for f in frames if f.keyframe][0] == content.frame_pts(content.frames(
            content.segment_paths().index(path))[0])
        assert parameters[1:3] == (320, 180)


async def test_asked_ahead_asks_for_the_first_item_at_once_and_closes_the_listing() -> None:
    log: list[str] = []

    async def listing() -> AsyncIterator[int]:
        try:
            log.append("asked")
            yield 1
            yield 2
            yield 3
        finally:
            log.append("closed")

    async with _asked_ahead(listing()) as items:
        await asyncio.sleep(0)  # the caller's first await (the Flow's GET)
        assert log == ["asked"]
        assert [item async for item in items] == [1, 2, 3]
    assert log == ["asked", "closed"]

    async with _asked_ahead(listing()) as items:
        await asyncio.sleep(0)
        assert await anext(items) == 1  # left before the end: still closed
    assert log[-1] == "closed"


async def test_asked_ahead_raises_a_failed_first_request_where_it_is_read() -> None:
    async def failing() -> AsyncIterator[int]:
        raise RuntimeError("the store said no")
        yield 0

    async with _asked_ahead(failing()) as items:
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="the store said no"):
            await anext(items)


def test_scripts_start_without_importing_pyav() -> None:
    code = "import sys, outgest_file, ingest_hls; print(sorted(m for m in sys.modules if m.split('.')[0] == 'av'))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    assert av.open is __import__("av").open  # and once used, ``media.av`` is PyAV itself

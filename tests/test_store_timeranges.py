"""Property tests of the store's timerange arithmetic against mediatimestamp as the oracle.

The store folds inclusivity into integer nanoseconds and answers overlap queries with index
range scans; here random segments (random bounds, inclusivity and nanosecond offsets) are
posted to a real store and random queries are compared with ``TimeRange`` arithmetic.
"""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mediatimestamp.immutable import TimeRange, Timestamp
from store_http import ELSEWHERE, StoreHttp, basic_header, new_flow

from tests.conftest import RunningStore

NS = 1_000_000_000

# Bounds cluster on whole seconds (so edges meet exactly) with a few nanosecond nudges.
instants = st.builds(
    lambda s, nudge: s * NS // 2 + nudge,
    st.integers(0, 40),
    st.sampled_from([0, 0, 0, 1, -1]),
)


@st.composite
def segment_ranges(draw: st.DrawFn) -> TimeRange:
    start = draw(instants)
    length = draw(st.integers(0, 3 * NS))
    incl_end = draw(st.booleans()) if length else True
    inclusivity = TimeRange.INCLUDE_START | (TimeRange.INCLUDE_END if incl_end else TimeRange.EXCLUSIVE)
    return TimeRange(
        Timestamp.from_nanosec(start),
        Timestamp.from_nanosec(start + length),
        inclusivity,
    )


@st.composite
def query_ranges(draw: st.DrawFn) -> TimeRange:
    start = draw(st.none() | instants)
    end = draw(st.none() | instants)
    inclusivity = (TimeRange.INCLUDE_START if draw(st.booleans()) else TimeRange.EXCLUSIVE) | (
        TimeRange.INCLUDE_END if draw(st.booleans()) else TimeRange.EXCLUSIVE
    )
    return TimeRange(
        None if start is None else Timestamp.from_nanosec(start),
        None if end is None else Timestamp.from_nanosec(end),
        inclusivity,
    )


async def check(store: RunningStore, segments: list[TimeRange], queries: list[TimeRange]) -> None:
    async with aiohttp.ClientSession() as session:
        api = StoreHttp(session, store.url, basic_header(store.username, store.password))
        flow = new_flow()
        await api.put_flow(flow, status=201)
        fid = flow["id"]
        body = [{**ELSEWHERE, "object_id": f"obj-{i}-{uuid.uuid4()}", "timerange": str(tr)} for i, tr in enumerate(segments)]
        reply = await api.post_segments(fid, body, status=(200, 201))
        failed = {f["object_id"] for f in reply.body["failed_segments"]} if reply.status == 200 else set()
        # The store accepts a segment exactly when it overlaps none accepted before it.
        accepted: list[TimeRange] = []
        for item, timerange in zip(body, segments, strict=True):
            clashes = any(timerange.overlaps_with_timerange(a) for a in accepted)
            assert (item["object_id"] in failed) == clashes, (
                str(timerange),
                [str(a) for a in accepted],
            )
            if not clashes:
                accepted.append(timerange)
        ordered = sorted(accepted, key=lambda tr: tr.start or Timestamp())  # segments are bounded
        listed = [s["timerange"] for s in (await api.segments(fid, limit="1000")).body]
        assert listed == [str(tr) for tr in ordered]
        for query in queries:
            got = [s["timerange"] for s in (await api.segments(fid, timerange=str(query), limit="1000")).body]
            expected = [str(tr) for tr in ordered if tr.overlaps_with_timerange(query)]
            assert got == expected, str(query)
            paged: list[str] = []
            reply = await api.segments(fid, timerange=str(query), limit="2", reverse_order="true")
            while True:
                paged += [s["timerange"] for s in reply.body]
                if "Link" not in reply.headers:
                    break
                next_url = reply.headers["Link"].split(">")[0].lstrip("<")
                reply = await api.call("GET", next_url, status=200, items="flow-segment.json")
            assert paged == expected[::-1], str(query)
        flow_body = await api.get_flow_with_timerange(fid)
        if ordered:
            span = ordered[0]
            for tr in ordered[1:]:
                span = span.extend_to_encompass_timerange(tr)
            assert flow_body["timerange"] == str(span)
        else:
            assert flow_body["timerange"] == "()"
        # DELETE removes exactly the segments the timerange wholly covers.
        doomed = queries[0]
        await api.call(
            "DELETE",
            f"/flows/{fid}/segments",
            params={"timerange": str(doomed)},
            status=204,
        )
        left = [s["timerange"] for s in (await api.segments(fid, limit="1000")).body]
        assert left == [str(tr) for tr in ordered if not doomed.contains_subrange(tr)], str(doomed)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(segment_ranges(), max_size=8),
    st.lists(query_ranges(), min_size=1, max_size=4),
)
# Timeranges are continuous (as the spec and mediatimestamp have them), even where the ranges
# meet within one nanosecond: [0:0_0:1) overlaps (0:0_, and (0:0_0:1) is not empty.
@example(segments=[TimeRange.from_str("[0:0_0:1)")], queries=[TimeRange.from_str("(0:0_")])
@example(segments=[TimeRange.from_str("(0:0_0:1)"), TimeRange.from_str("[0:1_0:2)")],
         queries=[TimeRange.from_str("[0:1]"), TimeRange.from_str("(0:0_0:1)")])
def test_segment_storage_and_queries_match_timerange_arithmetic(
    shared_store: RunningStore, segments: list[TimeRange], queries: list[TimeRange]
) -> None:
    asyncio.run(check(shared_store, segments, queries))

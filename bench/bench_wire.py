#!/usr/bin/env python3
"""Ingest and outgest as whole processes against a plain transfer of the same bytes (issue 16).

For each store latency (local store ``--latency-ms`` 0 and 50: every answer, API or media, that
much later), in one run and on one cached 1080p playlist (``wire_content``: 60 segments of 2 s,
~0.87 MB each), this times whole processes, start-up and imports included (with Python's bytecode
cache, as a user's shell has it):

- ``ingest_hls.py --concurrency 8`` of the playlist into a new Flow, against
  ``plain_transfer.py upload`` (one storage request, then the same files PUT 8 at a time);
- ``outgest_file.py --concurrency 8`` of the ingested Flow to an MPEG-TS file, against
  ``plain_transfer.py download`` (list the segments, GET the same objects 8 at a time).

Each figure is the median of ``runs`` runs (ours and the plain transfer take turns, so load on a
shared machine falls on both), as MB/s of the playlist's bytes over wall-clock seconds; ratio =
ours / plain as speeds, the median of each run's ratio to the plain transfer run just after it
(the issue's target is 0.8 or more). Peak RSS of ingest and outgest (``wait4``'s
``ru_maxrss`` of each process) is reported at 1x and at 10x the playlist's length (600 segments),
at latency 0: flat memory means a ratio near 1. Last, each script's start-up (``--help``: the
interpreter and the imports) against the plain transfer's, the part of the 0 ms figures that no
transfer can win back. ``quick`` makes a small version (640x360,
6 segments, 10x = 60, one run) for a smoke test. Figures only; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# bench/ itself, then (through common) the repository root: this file also runs as a script.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import wire_content
from common import REPO_ROOT, RunningStore, bench_store, print_table

from client import TAMSClient
from credentials import BasicCredentials

__all__ = ["LATENCIES_MS", "Measured", "run"]

LATENCIES_MS = (0, 50)
CONCURRENCY = 8
DEFAULT_RUNS = 5
LENGTH_FACTOR = 10
BENCH_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Measured:
    seconds: float
    max_rss_mb: float
    stdout: str


def timed_process(args: list[str], env: dict[str, str], cwd: Path) -> Measured:
    """Run one process to its end: wall seconds from spawn to exit, and its own peak RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{Path(args[1]).name} exited {proc.returncode}: {last}")
    return Measured(seconds, usage.ru_maxrss / 1024, stdout)  # Linux reports KiB


class Jobs:
    """The four processes against one store."""

    def __init__(self, store: RunningStore, work: Path) -> None:
        self.store = store
        self.work = work
        # As a user's shell runs them: Python keeps the imported modules' bytecode (a sandbox's
        # PYTHONDONTWRITEBYTECODE would make every run compile ours, and not aiohttp's, again).
        skipped = ("OAUTH2_URL", "CLIENT_ID", "CLIENT_SECRET", "PYTHONDONTWRITEBYTECODE")
        self.env = {k: v for k, v in os.environ.items() if k not in skipped}
        self.env.update(TAMS_URL=store.url, USERNAME=store.username, PASSWORD=store.password)
        subprocess.run([sys.executable, "-c", "import ingest_core, outgest_core"], env=self.env, cwd=REPO_ROOT,
                       check=True)  # the bytecode cache, as after a first run

    def _run(self, script: str, *args: str) -> Measured:
        return timed_process([sys.executable, str(script), *args], self.env, self.work)

    def ingest(self, playlist: Path) -> tuple[Measured, str]:
        flow_id = str(uuid.uuid4())
        measured = self._run(str(REPO_ROOT / "ingest_hls.py"), "--hls-filename", str(playlist), "--hls-segment-count",
                             "0", "--concurrency", str(CONCURRENCY), "--flow-id", flow_id, "--video-only", "--quiet")
        return measured, flow_id

    def plain_upload(self, playlist: Path) -> Measured:
        return self._run(str(BENCH_DIR / "plain_transfer.py"), "upload", "--tams-url", self.store.url,
                         "--concurrency", str(CONCURRENCY), "--playlist", str(playlist))

    def outgest(self, flow_id: str) -> Measured:
        output = self.work / f"{uuid.uuid4()}.ts"
        try:
            return self._run(str(REPO_ROOT / "outgest_file.py"), "--flow-id", flow_id, "--output", str(output),
                             "--concurrency", str(CONCURRENCY), "--quiet")
        finally:
            output.unlink(missing_ok=True)

    def plain_download(self, flow_id: str) -> Measured:
        return self._run(str(BENCH_DIR / "plain_transfer.py"), "download", "--tams-url", self.store.url,
                         "--flow-id", flow_id, "--concurrency", str(CONCURRENCY))

    def segment_count(self, flow_id: str) -> int:
        async def count() -> int:
            async with TAMSClient(self.store.url, BasicCredentials(self.store.username, self.store.password)) as c:
                return sum([1 async for _ in c.segments(flow_id, limit=1000)])
        return asyncio.run(count())


def _files(playlist: Path) -> list[Path]:
    return [playlist.parent / line for line in playlist.read_text().splitlines() if line and not line.startswith("#")]


def _measure_latency(latency_ms: int, playlist: Path, runs: int, work: Path) -> dict[str, list[Measured]]:
    files = _files(playlist)
    total = sum(f.stat().st_size for f in files)
    results: dict[str, list[Measured]] = {"ingest": [], "plain upload": [], "outgest": [], "plain download": []}
    with bench_store(latency_ms=latency_ms) as store:
        jobs = Jobs(store, work)
        flow_id = ""
        for _ in range(runs):  # taking turns, so a burst of load elsewhere hits both
            measured, flow_id = jobs.ingest(playlist)
            results["ingest"].append(measured)
            plain = jobs.plain_upload(playlist)
            if int(plain.stdout.strip()) != total:
                raise RuntimeError(f"plain upload moved {plain.stdout.strip()} bytes, not {total}")
            results["plain upload"].append(plain)
        if jobs.segment_count(flow_id) != len(files):
            raise RuntimeError(f"ingest registered {jobs.segment_count(flow_id)} of {len(files)} segments")
        for _ in range(runs):
            results["outgest"].append(jobs.outgest(flow_id))
            plain = jobs.plain_download(flow_id)
            if int(plain.stdout.strip()) != total:
                raise RuntimeError(f"plain download moved {plain.stdout.strip()} bytes, not {total}")
            results["plain download"].append(plain)
    return results


def _start_up(runs: int, work: Path) -> dict[str, float]:
    """Median seconds of ``--help`` (the interpreter, the imports and the argument parser: what a
    process pays before its first request) of each script and of the plain transfer, in turns."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    scripts = {"ingest": REPO_ROOT / "ingest_hls.py", "outgest": REPO_ROOT / "outgest_file.py",
               "plain": BENCH_DIR / "plain_transfer.py"}
    seconds: dict[str, list[float]] = {name: [] for name in scripts}
    for _ in range(max(3, 2 * runs)):
        for name, script in scripts.items():
            seconds[name].append(timed_process([sys.executable, str(script), "--help"], env, work).seconds)
    return {name: statistics.median(values) for name, values in seconds.items()}


def _peak_rss(playlist: Path, work: Path) -> tuple[float, float]:
    """Peak RSS (MB) of one ingest and one outgest of ``playlist`` at latency 0."""
    with bench_store(latency_ms=0) as store:
        jobs = Jobs(store, work)
        ingest, flow_id = jobs.ingest(playlist)
        outgest = jobs.outgest(flow_id)
    return ingest.max_rss_mb, outgest.max_rss_mb


def run(quick: bool = False, runs: int | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; the figures as dicts (figure, value, unit, baseline, ratio)."""
    width, height, segments = (640, 360, 6) if quick else (1920, 1080, 60)
    runs = runs or (1 if quick else DEFAULT_RUNS)
    playlist = wire_content.playlist(segments, width=width, height=height)
    long_playlist = wire_content.playlist(segments * LENGTH_FACTOR, width=width, height=height)
    total = sum(f.stat().st_size for f in _files(playlist))
    mb = total / 1e6
    rows: list[dict[str, Any]] = []
    rss_1x: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-wire-") as tmp:
        work = Path(tmp)
        for latency in LATENCIES_MS:
            results = _measure_latency(latency, playlist, runs, work)
            for job, plain in (("ingest", "plain upload"), ("outgest", "plain download")):
                ours_s = statistics.median(m.seconds for m in results[job])
                plain_s = statistics.median(m.seconds for m in results[plain])
                if latency == 0:
                    rss_1x[job] = max(m.max_rss_mb for m in results[job])
                what = f"{segments} x {wire_content.SEGMENT_SECONDS} s {width}x{height}, {mb:.1f} MB" if not rows else ""
                rows.append({
                    "figure": f"{job} x{CONCURRENCY} vs {plain} x{CONCURRENCY}, {latency} ms "
                              f"({ours_s:.2f} s vs {plain_s:.2f} s{', ' + what if what else ''})",
                    "value": round(mb / ours_s, 1), "unit": "MB/s", "baseline": round(mb / plain_s, 1),
                    # each run of ours against the plain transfer right after it: a shared machine
                    # whose speed drifts from run to run slows both sides of a pair alike
                    "ratio": round(statistics.median(p.seconds / o.seconds
                                                     for o, p in zip(results[job], results[plain])), 2),
                })
        ingest_10x, outgest_10x = _peak_rss(long_playlist, work)
        start_up = _start_up(runs, work)
    for job, long in (("ingest", ingest_10x), ("outgest", outgest_10x)):
        rows.append({"figure": f"{job} peak RSS, {LENGTH_FACTOR}x length ({segments * LENGTH_FACTOR} segments) "
                               f"vs 1x", "value": round(long, 1), "unit": "MB", "baseline": round(rss_1x[job], 1),
                     "ratio": round(long / rss_1x[job], 2)})
    for job in ("ingest", "outgest"):
        rows.append({"figure": f"{job} start-up (--help: python, imports) vs the plain transfer's",
                     "value": round(start_up[job], 3), "unit": "s", "baseline": round(start_up["plain"], 3),
                     "ratio": round(start_up["plain"] / start_up[job], 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small content, one run: a smoke test")
    parser.add_argument("--runs", type=int, default=None, help=f"runs per figure (default {DEFAULT_RUNS}, quick 1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print_table(run(quick=args.quick, runs=args.runs))


if __name__ == "__main__":
    main()

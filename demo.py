#!/usr/bin/env python3
"""`make demo`: the README walk-through, run for real against a fresh local store.

It starts ``python -m local_store`` on a free port with a fresh data dir under ``demo_output/``
(the store writes ``demo_output/.env``, which the scripts read as the README says, and logs to
``demo_output/store_data.log``), then runs every ``./script.py ...`` line of the README's
walk-through in order, with ``$FLOW1`` and friends set to new ids. Afterwards it reads the frame
numbers back from every exported file, checks them against the frames of the sample content's own
segment files, and prints a table. The store is stopped however the run ends; any failure exits
non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import m3u8  # type: ignore[import-untyped]
from dotenv import dotenv_values

from client import TAMSClient
from credentials import BasicCredentials, HelpFormatter
from local_store.launcher import RunningStore, StoreStartError, start_store
from media import probe
from sample_content import interval_edit_frames, read_frame_numbers

REPO_ROOT = Path(__file__).resolve().parent
STORE_START_TIMEOUT = 30.0
STEP_TIMEOUT = 300.0
CREDENTIAL_VARIABLES = ("TAMS_URL", "OAUTH2_URL", "CLIENT_ID", "CLIENT_SECRET", "USERNAME", "PASSWORD")


class DemoError(Exception):
    """A step of the walk-through failed; the message says which and why."""


@dataclass
class Check:
    flow: str
    segments: int
    frames: int
    file: str
    passed: bool
    note: str = ""


def walkthrough_commands(readme: Path) -> list[str]:
    """The ``./script.py ...`` lines of the README's walk-through section, in order."""
    text = readme.read_text()
    match = re.search(r"^## Walk-through\n(.*?)(?=^## )", text, re.S | re.M)
    if match is None:
        raise DemoError(f"{readme} has no '## Walk-through' section")
    commands = [line.strip() for line in match.group(1).splitlines() if line.strip().startswith("./")]
    if not commands:
        raise DemoError(f"{readme}'s walk-through has no ./script.py commands")
    return commands


def start_demo_store(work: Path) -> RunningStore:
    """A store over a fresh ``work/store_data`` that writes ``work/.env``; its stderr goes to
    ``work/store_data.log``."""
    try:
        return start_store(
            work / "store_data", env_file=work / ".env", extra_args=["--log-level", "WARNING"],
            timeout=STORE_START_TIMEOUT,
        )
    except StoreStartError as exc:
        said = f" ({exc.last_line})" if exc.last_line else ""
        raise DemoError(f"the local store did not start: {exc.reason}{said}") from exc


def run_command(line: str, variables: dict[str, str], work: Path) -> None:
    """Run one README line: ``./script.py args`` with ``$NAME`` taken from ``variables``."""
    def substitute(arg: str) -> str:
        def value(match: re.Match[str]) -> str:
            if match.group(1) not in variables:
                raise DemoError(f"unknown variable ${match.group(1)} in README command: {line}")
            return variables[match.group(1)]
        return re.sub(r"\$(\w+)", value, arg)

    program, *args = [substitute(arg) for arg in shlex.split(line)]
    print(f"$ {line}", flush=True)
    # The scripts find their credentials in ./.env (work/.env), exactly as in a user's shell.
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES}
    argv = [sys.executable, str(REPO_ROOT / program.removeprefix("./")), *args]
    try:
        subprocess.run(argv, cwd=work, env=env, check=True, timeout=STEP_TIMEOUT)
    except subprocess.CalledProcessError as exc:
        raise DemoError(f"step failed with exit status {exc.returncode}: {line}") from exc
    except subprocess.TimeoutExpired as exc:
        raise DemoError(f"step took over {STEP_TIMEOUT:.0f} s: {line}") from exc


def segment_frames(playlist: Path) -> list[list[int]]:
    """Frame numbers of each segment file of the sample content, as written (the ground truth)."""
    parsed = m3u8.load(str(playlist))
    return [read_frame_numbers(playlist.parent / segment.uri) for segment in parsed.segments]


def outgest_targets(commands: list[str]) -> list[tuple[str, str]]:
    """(Flow variable, output file) of each outgest line of the walk-through."""
    targets = []
    for line in commands:
        match = re.search(r"outgest_file\.py .*--flow-id \$(\w+) .*--output (\S+)", line)
        if match:
            targets.append((match.group(1), match.group(2)))
    return targets


def expected_frames(playlist: Path, commands: list[str]) -> dict[str, tuple[str, list[int]]]:
    """What each Flow of the walk-through must hold: Flow 1 is segments 0-4, Flow 2 segments 5-9,
    EDIT1 Flow 2 then Flow 1, EDIT2 the interval cut between them."""
    per_segment = segment_frames(playlist)
    flow1 = [n for seg in per_segment[0:5] for n in seg]
    flow2 = [n for seg in per_segment[5:10] for n in seg]
    interval = next((re.search(r"--cut-interval-sec (\S+)", c) for c in commands if "--cut-interval-sec" in c), None)
    if interval is None:
        raise DemoError("the walk-through has no interval edit")
    video = probe(playlist.parent / m3u8.load(str(playlist)).segments[0].uri).video
    if video is None or video.frame_rate is None:
        raise DemoError("the sample content's first segment has no video at a constant frame rate")
    rate = video.frame_rate
    interval_frames = math.floor(Fraction(interval.group(1)) * rate + Fraction(1, 2))
    return {
        "FLOW1": ("Flow 1 (segments 0-4)", flow1),
        "FLOW2": ("Flow 2 (segments 5-9)", flow2),
        "EDIT1": ("Flow 2 then Flow 1", flow2 + flow1),
        "EDIT2": (f"interval edit ({interval_frames} frames)", interval_edit_frames(flow1, flow2, interval_frames)),
    }


async def count_segments(work: Path, flow_id: str) -> int:
    settings = dotenv_values(work / ".env")
    async with TAMSClient(str(settings["TAMS_URL"]), BasicCredentials(str(settings["USERNAME"]), str(settings["PASSWORD"]))) as client:
        return len([segment async for segment in client.segments(flow_id)])


def check_outputs(work: Path, playlist: Path, commands: list[str], variables: dict[str, str]) -> list[Check]:
    expected = expected_frames(playlist, commands)
    synthetic = all(n >= 0 for _, frames in expected.values() for n in frames)
    checks = []
    for variable, name in outgest_targets(commands):
        label, frames = expected[variable]
        got = read_frame_numbers(work / name)
        segments = asyncio.run(count_segments(work, variables[variable]))
        if synthetic:
            passed = got == frames
            note = "" if passed else (
                f"expected {len(frames)} numbered frames, got {len(got)}"
                f" (first difference at index {_first_difference(got, frames)})"
            )
        else:
            passed = len(got) == len(frames)
            note = "frame count only (the film has no frame numbers)"
        shown = (work / name).relative_to(REPO_ROOT) if work.is_relative_to(REPO_ROOT) else work / name
        checks.append(Check(label, segments, len(got), str(shown), passed, note))
    if len(checks) != len(expected):
        raise DemoError(f"the walk-through exports {len(checks)} Flows; the demo checks {len(expected)}")
    return checks


def _first_difference(got: list[int], want: list[int]) -> int:
    return next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))


def print_table(checks: list[Check]) -> None:
    rows = [("Flow", "segments", "frames", "file", "check")]
    rows += [(c.flow, str(c.segments), str(c.frames), c.file, "passed" if c.passed else "FAILED") for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    for c in checks:
        if c.note:
            print(f"note: {c.flow}: {c.note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "demo_output", help="fresh folder for the store and the outputs")
    parser.add_argument("--playlist", type=Path, default=REPO_ROOT / "sample_content" / "hls_output.m3u8", help="the sample content")
    args = parser.parse_args()
    started = time.monotonic()
    store = None
    try:
        if not args.playlist.exists():
            raise DemoError(f"{args.playlist} is missing: run 'make sample_content' first")
        commands = walkthrough_commands(REPO_ROOT / "README.md")
        shutil.rmtree(args.work_dir, ignore_errors=True)
        args.work_dir.mkdir(parents=True)
        (args.work_dir / "sample_content").symlink_to(args.playlist.parent.resolve())
        store = start_demo_store(args.work_dir)
        print(f"local store at {store.url} (data in {args.work_dir / 'store_data'})", flush=True)
        variables = {name: str(uuid.uuid4()) for name in ("FLOW1", "FLOW2", "EDIT1", "EDIT2")}
        for line in commands:
            run_command(line, variables, args.work_dir)
        checks = check_outputs(args.work_dir, args.playlist, commands, variables)
    except DemoError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    finally:
        if store is not None:
            store.stop()
    print()
    print_table(checks)
    print(f"\ndemo finished in {time.monotonic() - started:.1f} s")
    return 0 if all(c.passed for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

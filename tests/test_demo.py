"""`make demo` (demo.py): the README walk-through runs end to end and checks every frame."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from tests.synthetic_media import SynthesizedHLS, copy_content

pytest_plugins = ["tests.media_fixtures"]

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_demo(playlist: Path, work_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "demo.py"), "--playlist", str(playlist), "--work-dir", str(work_dir)],
        capture_output=True, text=True, timeout=300,
    )


def store_port(stdout: str) -> int:
    match = re.search(r"local store at (\S+)", stdout)
    assert match, stdout
    port = urlsplit(match.group(1)).port
    assert port is not None
    return port


def test_demo_runs_every_readme_command_and_every_frame_checks(hls_content: SynthesizedHLS, tmp_path: Path) -> None:
    result = run_demo(hls_content.playlist, tmp_path / "demo")
    assert result.returncode == 0, result.stderr[-3000:]
    readme = (REPO_ROOT / "README.md").read_text()
    walkthrough = readme.split("## Walk-through", 1)[1].split("\n## ", 1)[0]
    commands = [line.strip() for line in walkthrough.splitlines() if line.strip().startswith("./")]
    assert len(commands) == 8
    for command in commands:
        assert f"$ {command}" in result.stdout
    table = [line for line in result.stdout.splitlines() if line.endswith(("passed", "FAILED"))]
    assert len(table) == 4 and all(line.endswith("passed") for line in table), result.stdout
    # 2-second segments cut every 3 seconds: the interval edit had to cut inside segments.
    assert re.search(r"interval edit \(90 frames\)\s+\d+\s+300\s", result.stdout)
    for name in ("flow1.ts", "flow2.ts", "edit1.ts", "edit2.ts"):
        assert (tmp_path / "demo" / name).stat().st_size > 0


def test_demo_fails_cleanly_and_stops_the_store_when_a_step_fails(hls_content: SynthesizedHLS, tmp_path: Path) -> None:
    broken = copy_content(hls_content, tmp_path / "content")
    segment = sorted(broken.playlist.parent.glob("*.ts"))[6]
    segment.write_bytes(b"this is not MPEG-TS")
    result = run_demo(broken.playlist, tmp_path / "demo")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("demo: error: step failed")
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", store_port(result.stdout))) != 0, "the store is still running"


def test_demo_without_sample_content_says_what_to_do(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "missing.m3u8", tmp_path / "demo")
    assert result.returncode == 1
    assert result.stderr.strip() == f"demo: error: {tmp_path / 'missing.m3u8'} is missing: run 'make sample_content' first"

"""`make bench`'s webhook benchmark (bench/bench_webhooks.py) runs and reports every figure with
its baseline from the same run. Its quick mode goes through bench/run_all.py as `make bench`
does; the benchmark itself checks that every event arrived (at most the one in-flight repeat)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

FIGURES = (
    "webhook latency, change sent to its event received, median",
    "webhook latency, p95",
    "webhook throughput, 8 writers, events delivered",
    "webhook replay of 40 stored events after kill -9 (restart included)",
)


def test_quick_mode_reports_every_figure_with_a_baseline(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "run_all.py"), "--only", "bench_webhooks", "--quick",
                           "--output", str(results)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = {f["figure"]: f for f in json.loads(results.read_text())["figures"]}
    assert set(figures) == set(FIGURES)
    for row in figures.values():
        assert row["value"] > 0 and row["baseline"] > 0
        # value and baseline are rounded for the table, the ratio is of the figures before that
        assert abs(row["ratio"] - row["value"] / row["baseline"]) <= 0.05 * row["ratio"] + 0.01

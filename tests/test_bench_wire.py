"""`make bench`'s whole-process benchmark runs and reports every figure (bench/bench_wire.py).

Its quick mode (small content, one run each) goes through bench/run_all.py as `make bench` does;
the test checks that the table and results.json hold every row with numbers, never a time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

ROWS = [
    r"ingest x8 vs plain upload x8, 0 ms \(",
    r"outgest x8 vs plain download x8, 0 ms \(",
    r"ingest x8 vs plain upload x8, 50 ms \(",
    r"outgest x8 vs plain download x8, 50 ms \(",
    r"ingest peak RSS, 10x length \(60 segments\) vs 1x",
    r"outgest peak RSS, 10x length \(60 segments\) vs 1x",
    r"ingest start-up \(--help: python, imports\) vs the plain transfer's",
    r"outgest start-up \(--help: python, imports\) vs the plain transfer's",
]
NUMBER = r"\d+(\.\d+)?"


def test_quick_mode_reports_every_row(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    env = dict(os.environ, BENCH_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "run_all.py"), "--only", "bench_wire", "--quick",
                           "--output", str(results)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    for row in ROWS:
        matching = [line for line in lines if re.match(row, line)]
        assert len(matching) == 1, (row, proc.stdout)
        # value, unit, baseline and ratio at the end of the row
        assert re.search(rf"\s{NUMBER}\s+(MB/s|MB|s)\s+{NUMBER}\s+{NUMBER}$", matching[0]), matching[0]
    figures = json.loads(results.read_text())["figures"]
    assert len(figures) == len(ROWS)
    for figure, row in zip(figures, ROWS):
        assert re.match(row, figure["figure"]) and figure["bench"] == "bench_wire"
        assert figure["value"] > 0 and figure["baseline"] > 0 and figure["ratio"] > 0

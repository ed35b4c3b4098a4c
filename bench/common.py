"""Shared pieces for the benchmarks: start a local store subprocess, print a table of figures.

``bench_store()`` is a context manager that starts ``python -m local_store`` on a free port over a
temporary data dir (options such as ``latency_ms``, ``fault_rate``) and stops it afterwards; it
yields a ``BenchStore`` with the URL and the credentials from the ``.env`` the store writes.
Figures are dicts ``{"figure", "value", "unit", "baseline", "ratio"}``; ``print_table`` shows them.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["REPO_ROOT", "BenchStore", "bench_store", "print_table", "start_store"]

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # so benchmarks can import the toolkit's modules


@dataclass
class BenchStore:
    url: str
    data_dir: Path
    env: dict[str, str]  # TAMS_URL, USERNAME, PASSWORD, OAUTH2_URL, CLIENT_ID, CLIENT_SECRET
    process: subprocess.Popen[bytes]

    @property
    def username(self) -> str:
        return self.env["USERNAME"]

    @property
    def password(self) -> str:
        return self.env["PASSWORD"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_store(data_dir: Path, *, latency_ms: int = 0, fault_rate: float = 0.0,
                extra_args: list[str] | None = None) -> BenchStore:
    """Start a store on a free port over ``data_dir``; its credentials are generated."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env_file = data_dir.parent / f"{data_dir.name}.env"
    args = ["--port", "0", "--data-dir", str(data_dir), "--env-file", str(env_file), "--log-level", "WARNING"]
    if latency_ms:
        args += ["--latency-ms", str(latency_ms)]
    if fault_rate:
        args += ["--fault-rate", str(fault_rate)]
    process = subprocess.Popen([sys.executable, "-m", "local_store", *args, *(extra_args or [])],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()
    if not line.startswith("TAMS store at "):
        process.kill()
        process.wait()
        raise RuntimeError(f"the local store did not start: {line!r}")
    env = dict(row.split("=", 1) for row in env_file.read_text().splitlines() if "=" in row)
    return BenchStore(url=line.removeprefix("TAMS store at "), data_dir=data_dir, env=env, process=process)


@contextlib.contextmanager
def bench_store(**options: Any) -> Iterator[BenchStore]:
    """A store over a temporary data dir for the length of the ``with`` block."""
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        store = start_store(Path(tmp) / "data", **options)
        try:
            yield store
        finally:
            store.stop()


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max(len(r["figure"]) for r in rows)
    print(f"{'figure':<{width}}  {'value':>10}  {'unit':<11} {'baseline':>9}  {'ratio':>6}")
    for r in rows:
        baseline = "" if r["baseline"] is None else str(r["baseline"])
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"{r['figure']:<{width}}  {r['value']:>10}  {r['unit']:<11} {baseline:>9}  {ratio:>6}")

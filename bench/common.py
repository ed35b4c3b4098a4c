"""Shared pieces for the benchmarks: a local store for the length of a benchmark, a table of figures.

``bench_store()`` is a context manager that starts ``python -m local_store`` (through
``local_store.launcher``) on a free port over a temporary data dir, with options such as
``latency_ms``, ``fault_rate`` or ``clients``, and stops it afterwards; it yields the launcher's
``RunningStore``, whose ``env`` holds the URL and the credentials from the ``.env`` the store
writes (generated ones unless given). Figures are dicts ``{"figure", "value", "unit", "baseline",
"ratio"}``; ``print_table`` shows them.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # so benchmarks can import the toolkit's modules

from aiohttp import web  # noqa: E402

from local_store.launcher import RunningStore, start_store  # noqa: E402  (needs REPO_ROOT on sys.path)

__all__ = ["REPO_ROOT", "HookReceiver", "RunningStore", "bench_store", "content_parser", "print_table"]

QUIET = ["--log-level", "WARNING"]  # a benchmark's store logs only what went wrong


@contextlib.contextmanager
def bench_store(*, extra_args: list[str] | None = None, **options: Any) -> Iterator[RunningStore]:
    """A store over a temporary data dir for the length of the ``with`` block; ``options`` are
    ``local_store.launcher.start_store``'s."""
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        store = start_store(Path(tmp) / "data", extra_args=[*QUIET, *(extra_args or [])], **options)
        try:
            yield store
        finally:
            store.stop()


class HookReceiver:
    """A webhook receiver of a benchmark's own on a free loopback port, at ``url``; subclasses
    say what ``handle`` does with each POST."""

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max(len(r["figure"]) for r in rows)
    print(f"{'figure':<{width}}  {'value':>10}  {'unit':<11} {'baseline':>9}  {'ratio':>6}")
    for r in rows:
        baseline = "" if r["baseline"] is None else str(r["baseline"])
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"{r['figure']:<{width}}  {r['value']:>10}  {r['unit']:<11} {baseline:>9}  {ratio:>6}")


def content_parser(description: str) -> argparse.ArgumentParser:
    """Command-line options for the synthetic content a media benchmark makes."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--width", type=int, default=640, help="synthetic picture width")
    parser.add_argument("--height", type=int, default=360, help="synthetic picture height")
    parser.add_argument("--duration", type=int, default=60, help="seconds of content")
    parser.add_argument("--segment-seconds", type=int, default=2, help="segment length, seconds")
    return parser

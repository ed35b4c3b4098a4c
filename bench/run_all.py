#!/usr/bin/env python3
"""Run every benchmark in ``bench/`` (``make bench``) and print one table of their figures.

Each ``bench/bench_*.py`` module has a ``run()`` that starts its own local store(s), measures,
and returns its figures as ``{"figure", "value", "unit", "baseline", "ratio"}`` dicts, where
``baseline`` is the figure it is compared with, measured in the same run, and ``ratio`` is
``value / baseline``. This runner imports the modules in name order, calls each ``run()`` with
its defaults, prints the figures as one table and writes them to ``bench/results.json`` (not
committed) together with when and where they were measured.

A benchmark that fails is reported on stderr and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import json
import logging
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))  # the bench modules and ``common`` import as top-level modules
from common import print_table  # noqa: E402  (needs bench/ on sys.path first)

RESULTS = BENCH_DIR / "results.json"
FIELDS = ("figure", "value", "unit", "baseline", "ratio")

logger = logging.getLogger(__name__)


def bench_modules() -> list[str]:
    """The names of the benchmark modules, in order."""
    return sorted(path.stem for path in BENCH_DIR.glob("bench_*.py"))


def _checked(name: str, rows: object) -> list[dict[str, Any]]:
    if not isinstance(rows, list) or not all(isinstance(r, dict) and set(FIELDS) <= set(r) for r in rows):
        raise TypeError(f"{name}.run() did not return a list of {{{', '.join(FIELDS)}}} dicts")
    return [{"bench": name, **{key: row[key] for key in FIELDS}} for row in rows]


def _options_for(run: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The ``options`` (e.g. ``quick``, ``runs``) that a module's ``run()`` takes; others run as they are."""
    accepted = inspect.signature(run).parameters
    return {k: v for k, v in options.items() if k in accepted and v is not None}


def run_benchmarks(names: list[str], options: dict[str, Any] | None = None,
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the named modules, passing each the ``options`` its ``run()`` accepts; (figures, one
    record per module with its time and any error)."""
    figures: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        record: dict[str, Any] = {"bench": name}
        try:
            module = importlib.import_module(name)
            figures += _checked(name, module.run(**_options_for(module.run, options or {})))
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            record["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
            print(f"{name} failed: {record['error']}", file=sys.stderr, flush=True)
        record["seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name}: {record['seconds']} s", file=sys.stderr, flush=True)
        runs.append(record)
    return figures, runs


def write_results(path: Path, figures: list[dict[str, Any]], runs: list[dict[str, Any]], seconds: float) -> None:
    document = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "seconds": round(seconds, 1),
        "runs": runs,
        "figures": figures,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    available = bench_modules()
    parser = argparse.ArgumentParser(description="Run every benchmark in bench/ and print one table of their figures.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=available, metavar="MODULE", default=available,
                        help=f"benchmark modules to run (of: {', '.join(available)})")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the figures as JSON")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: benchmarks that have a quick mode run it (the others run as usual)")
    parser.add_argument("--runs", type=int, default=None,
                        help="runs per figure, for benchmarks that take the median of several (default: theirs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    started = time.perf_counter()
    figures, runs = run_benchmarks(args.only, {"quick": args.quick or None, "runs": args.runs})
    seconds = time.perf_counter() - started
    if figures:
        print_table(figures)
    print(f"{len(figures)} figures from {len(runs)} benchmarks in {seconds:.0f} s; ratio = value / baseline, "
          f"both measured in this run")
    write_results(args.output, figures, runs, seconds)
    print(f"wrote {args.output}")
    failed = [r["bench"] for r in runs if "error" in r]
    if failed:
        print(f"error: failed: {', '.join(failed)} (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

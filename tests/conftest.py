"""Shared fixtures: a real local store subprocess on a free port with a temporary data dir.

``store_factory(**options)`` starts ``python -m local_store`` and returns a ``RunningStore``;
``tams_store`` is one store with the default clients. Every store started is stopped at
teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_CLIENTS: list[dict[str, Any]] = [
    {
        "client_id": "test-admin",
        "client_secret": "test-admin-secret",
        "scopes": [
            "tams-api/read",
            "tams-api/write",
            "tams-api/delete",
            "tams-api/admin",
        ],
        "groups": ["admin"],
    },
    {
        "client_id": "test-reader",
        "client_secret": "test-reader-secret",
        "scopes": ["tams-api/read"],
        "groups": [],
    },
]

START_TIMEOUT = 30.0


@dataclass
class RunningStore:
    """A local store subprocess; ``url`` has no trailing slash."""

    url: str
    data_dir: Path
    username: str
    password: str
    oauth2_url: str
    clients: list[dict[str, Any]]
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    args: list[str] = field(default_factory=list, repr=False)
    log_path: Path | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL if it will not stop)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        _close_pipes(self.process)

    def kill(self) -> None:
        """SIGKILL and wait: a crash, with no chance to flush anything."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        _close_pipes(self.process)

    def restart(self) -> None:
        """Start again on the same data dir and the same port (stopping it first if running)."""
        self.stop()
        args = list(self.args)
        args[args.index("--port") + 1] = str(self.port)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                process, url = _launch(args, self.log_path)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # the port may be briefly unavailable
        assert url == self.url, f"store came back at {url}, not {self.url}"
        self.process = process
        self.args = args

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


def _close_pipes(process: subprocess.Popen[bytes]) -> None:
    for pipe in (process.stdout, process.stderr, process.stdin):
        if pipe is not None:
            pipe.close()


def _launch(args: list[str], log_path: Path | None) -> tuple[subprocess.Popen[bytes], str]:
    log = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "local_store", *args],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    finally:
        if log_path is not None:
            log.close()  # type: ignore[union-attr]
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()
    prefix = "TAMS store at "
    if not line.startswith(prefix):
        process.kill()
        process.wait()
        _close_pipes(process)
        tail = log_path.read_text(errors="replace")[-2000:] if log_path and log_path.exists() else ""
        raise RuntimeError(f"local store did not start (first line {line!r}); log tail:\n{tail}")
    return process, line[len(prefix) :]


def start_store(
    data_dir: Path,
    *,
    fault_rate: float = 0.0,
    fault_seed: int | None = None,
    token_ttl: int | None = None,
    latency_ms: int = 0,
    clients: list[dict[str, Any]] | None = None,
    username: str = "test-user",
    password: str = "test-password",
    extra_args: list[str] | None = None,
    gc_grace: float | None = None,
    gc_interval: float | None = None,
) -> RunningStore:
    """Start a store subprocess on a free port over ``data_dir``.

    ``gc_grace``/``gc_interval`` set ``--gc-grace``/``--gc-interval`` (seconds; a grace below the
    spec's 300 s is for tests only)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    clients = DEFAULT_CLIENTS if clients is None else clients
    clients_file = data_dir.parent / f"{data_dir.name}-clients.json"
    clients_file.write_text(json.dumps(clients))
    env_file = data_dir.parent / f"{data_dir.name}.env"
    args = [
        "--port", "0",
        "--data-dir", str(data_dir),
        "--username", username,
        "--password", password,
        "--clients-file", str(clients_file),
        "--env-file", str(env_file),
    ]  # fmt: skip
    if fault_rate:
        args += ["--fault-rate", str(fault_rate)]
    if fault_seed is not None:
        args += ["--fault-seed", str(fault_seed)]
    if token_ttl is not None:
        args += ["--token-ttl", str(token_ttl)]
    if latency_ms:
        args += ["--latency-ms", str(latency_ms)]
    if gc_grace is not None:
        args += ["--gc-grace", str(gc_grace)]
    if gc_interval is not None:
        args += ["--gc-interval", str(gc_interval)]
    args += extra_args or []
    log_path = data_dir.parent / f"{data_dir.name}.log"
    process, url = _launch(args, log_path)
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    return RunningStore(
        url=url,
        data_dir=data_dir,
        username=username,
        password=password,
        oauth2_url=url + "/oauth2/token",
        clients=clients,
        env=env,
        process=process,
        args=args,
        log_path=log_path,
    )


@pytest.fixture
def store_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., RunningStore]]:
    """``store_factory(fault_rate=, fault_seed=, token_ttl=, latency_ms=, clients=, data_dir=,
    gc_grace=, gc_interval=, extra_args=)``."""
    started: list[RunningStore] = []

    def factory(*, data_dir: Path | None = None, **options: Any) -> RunningStore:
        if data_dir is None:
            data_dir = tmp_path_factory.mktemp("store") / "data"
        store = start_store(Path(data_dir), **options)
        started.append(store)
        return store

    yield factory
    for store in started:
        store.stop()


@pytest.fixture
def tams_store(store_factory: Callable[..., RunningStore]) -> RunningStore:
    """A store with the default clients (test-admin, test-reader) and basic auth."""
    return store_factory()


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStore]:
    """One default store for a whole test module (tests that only add their own Flows)."""
    store = start_store(tmp_path_factory.mktemp("shared-store") / "data")
    yield store
    store.stop()

"""Start ``python -m local_store`` as a subprocess and wait, with a real time limit, until it listens.

The one launcher the tests, the benchmarks and the demo share::

    store = start_store(tmp / "data", fault_rate=0.1, fault_seed=3)
    try:
        ...  # store.url, store.env["CLIENT_ID"], store.oauth2_url
    finally:
        store.stop()

``start_store`` runs the store on a free port (or ``port=``) over ``data_dir``, sends its stderr to
a log file beside the data dir, and reads its stdout until the ``TAMS store at URL`` line. That wait
never blocks forever: a store that exits, prints something else, or prints nothing within
``timeout`` seconds is killed and ``StoreStartError`` is raised, carrying the end of what the store
wrote to stderr. Files beside ``data_dir`` (named after it): ``<name>.env`` (the ``.env`` the store
writes, unless ``env_file=``), ``<name>.log`` (its stderr, unless ``log_path=``) and
``<name>-clients.json`` (when ``clients=`` is given).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["READY_PREFIX", "RunningStore", "StoreStartError", "start_store"]

READY_PREFIX = "TAMS store at "
# ``python -m local_store`` must find this package: run it from the folder that holds it.
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent
_STDERR_TAIL_CHARS = 2000
_RESTART_PAUSE = 0.2


class StoreStartError(RuntimeError):
    """The store did not start listening.

    ``reason`` is one line; ``stderr_tail`` is the end of what this start of the store wrote to
    stderr; ``returncode`` is its exit status once it is gone (negative: killed by that signal)."""

    def __init__(self, reason: str, *, stderr_tail: str = "", returncode: int | None = None,
                 log_path: Path | None = None) -> None:
        self.reason = reason
        self.stderr_tail = stderr_tail
        self.returncode = returncode
        self.log_path = log_path
        message = reason
        if stderr_tail.strip():
            message += f"\nthe store's stderr ended with:\n{stderr_tail.rstrip()}"
        super().__init__(message)

    @property
    def last_line(self) -> str:
        """The last non-blank line the store wrote to stderr ("" if none): usually its own error."""
        lines = [line.strip() for line in self.stderr_tail.splitlines() if line.strip()]
        return lines[-1] if lines else ""


@dataclass
class RunningStore:
    """A local store subprocess; ``url`` has no trailing slash."""

    url: str
    data_dir: Path
    username: str
    password: str
    oauth2_url: str
    # The clients given to the store; [] when it generated its own admin client (id and secret in env).
    clients: list[dict[str, Any]]
    env: dict[str, str]  # the .env it wrote: TAMS_URL, USERNAME, PASSWORD, OAUTH2_URL, CLIENT_ID, CLIENT_SECRET
    process: subprocess.Popen[bytes]
    args: list[str] = field(default_factory=list, repr=False)  # after ``python -m local_store``
    log_path: Path | None = field(default=None, repr=False)
    timeout: float = field(default=30.0, repr=False)  # for ``restart``

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
        """Start again on the same data dir and the same port (stopping it first if running).

        The port can be unavailable for a moment after the old process has gone, so starting is
        tried again until ``timeout`` has passed."""
        self.stop()
        args = list(self.args)
        args[args.index("--port") + 1] = str(self.port)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                process, url = _launch(args, self.log_path, self.timeout)
                break
            except StoreStartError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(_RESTART_PAUSE)
        if url != self.url:
            _end(process)
            raise StoreStartError(f"the store came back at {url}, not {self.url}")
        self.process = process
        self.args = args

    def log_text(self) -> str:
        """Everything the store has written to stderr so far ("" without a log file)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")


def start_store(
    data_dir: Path,
    *,
    port: int = 0,
    env_file: Path | None = None,
    clients: list[dict[str, Any]] | None = None,
    username: str | None = None,
    password: str | None = None,
    fault_rate: float = 0.0,
    fault_seed: int | None = None,
    token_ttl: int | None = None,
    latency_ms: int = 0,
    gc_grace: float | None = None,
    gc_interval: float | None = None,
    extra_args: list[str] | None = None,
    log_path: Path | None = None,
    timeout: float = 30.0,
) -> RunningStore:
    """Start a store over ``data_dir`` on ``port`` (0: a free one) and return once it listens.

    ``clients`` None lets the store generate one admin client, ``username``/``password`` None let it
    generate them (all then read back from its ``.env``). ``gc_grace``/``gc_interval`` set
    ``--gc-grace``/``--gc-interval`` seconds (a grace below the spec's 300 s is for tests only);
    ``extra_args`` go last on the command line. Raises ``StoreStartError`` if the store is not
    listening within ``timeout`` seconds."""
    data_dir = Path(data_dir).absolute()  # the store runs in another folder
    data_dir.mkdir(parents=True, exist_ok=True)
    env_file = Path(env_file).absolute() if env_file is not None else data_dir.parent / f"{data_dir.name}.env"
    log_path = Path(log_path).absolute() if log_path is not None else data_dir.parent / f"{data_dir.name}.log"
    args = ["--port", str(port), "--data-dir", str(data_dir), "--env-file", str(env_file)]
    if clients is not None:
        clients_file = data_dir.parent / f"{data_dir.name}-clients.json"
        clients_file.write_text(json.dumps(clients))
        args += ["--clients-file", str(clients_file)]
    options: dict[str, object] = {
        "--username": username,
        "--password": password,
        "--fault-rate": fault_rate or None,  # 0: no faults, the store's default
        "--fault-seed": fault_seed,
        "--token-ttl": token_ttl,
        "--latency-ms": latency_ms or None,
        "--gc-grace": gc_grace,
        "--gc-interval": gc_interval,
    }
    for option, value in options.items():
        if value is not None:
            args += [option, str(value)]
    args += extra_args or []
    process, url = _launch(args, log_path, timeout)
    try:
        env = _read_env(env_file)
    except OSError as exc:
        _end(process)
        raise StoreStartError(f"the store is listening but its .env {env_file} cannot be read: {exc}") from exc
    return RunningStore(
        url=url,
        data_dir=data_dir,
        username=username if username is not None else env.get("USERNAME", ""),
        password=password if password is not None else env.get("PASSWORD", ""),
        oauth2_url=url + "/oauth2/token",
        clients=list(clients) if clients is not None else [],
        env=env,
        process=process,
        args=args,
        log_path=log_path,
        timeout=timeout,
    )


def _read_env(path: Path) -> dict[str, str]:
    # The store writes plain KEY=value lines with nothing quoted, so splitting at the first "="
    # is the exact inverse (a .env parser would treat a "#" or a quote in a password specially).
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _launch(args: list[str], log_path: Path | None, timeout: float) -> tuple[subprocess.Popen[bytes], str]:
    """Run ``python -m local_store args``; (process, url) once it has printed its URL."""
    log_start = log_path.stat().st_size if log_path is not None and log_path.exists() else 0
    log = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "local_store", *args],
            cwd=_PACKAGE_PARENT,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    finally:
        if log_path is not None:
            log.close()  # type: ignore[union-attr]  # the child has its own copy
    try:
        line, reason = _first_line(process, time.monotonic() + timeout, timeout)
    except BaseException:  # e.g. Ctrl-C while waiting: leave no store behind
        _end(process)
        raise
    if reason is None and not line.startswith(READY_PREFIX):
        reason = f"the store's first line was {line!r}, not '{READY_PREFIX}URL'"
    if reason is not None:
        returncode = _end(process)
        raise StoreStartError(reason, stderr_tail=_tail(log_path, log_start), returncode=returncode, log_path=log_path)
    return process, line.removeprefix(READY_PREFIX)


def _first_line(process: subprocess.Popen[bytes], deadline: float, timeout: float) -> tuple[str, str | None]:
    """The first stdout line, read without blocking past ``deadline``; (line, why there is none)."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    received = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in received:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "", f"the store printed no '{READY_PREFIX}URL' line within {timeout:g} s"
            if not selector.select(remaining):
                continue
            chunk = os.read(fd, 4096)  # the buffered file object is never read, so nothing is lost
            if not chunk:
                try:
                    returncode = process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    return "", "the store closed its stdout without printing its URL"
                return "", f"the store exited with status {returncode} before it was listening"
            received += chunk
    return received.split(b"\n", 1)[0].decode(errors="replace").strip(), None


def _end(process: subprocess.Popen[bytes]) -> int:
    """Kill (if still running), reap and close the pipes; the exit status."""
    if process.poll() is None:
        process.kill()
    returncode = process.wait()
    _close_pipes(process)
    return returncode


def _tail(log_path: Path | None, start: int) -> str:
    """The end of what was written to ``log_path`` after offset ``start``."""
    if log_path is None or not log_path.exists():
        return ""
    with log_path.open("rb") as log:
        log.seek(max(start, log_path.stat().st_size - _STDERR_TAIL_CHARS))
        return log.read().decode(errors="replace")


def _close_pipes(process: subprocess.Popen[bytes]) -> None:
    for pipe in (process.stdout, process.stderr, process.stdin):
        if pipe is not None:
            pipe.close()

"""``python -m local_store`` on the command line, and the launcher that starts it for tests,
benchmarks and the demo: what happens when the store cannot start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_store.launcher import StoreStartError, start_store
from tests.conftest import REPO_ROOT


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something else is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def in_use_message(port: int) -> str:
    return (
        f"error: cannot listen on 127.0.0.1:{port}: the port is in use; "
        "stop whatever uses it or choose another with --port (make store PORT=8123)"
    )


def test_a_taken_port_exits_1_with_one_line_saying_what_to_do(taken_port: int, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "local_store", "--port", str(taken_port), "--data-dir", str(tmp_path / "data")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == in_use_message(taken_port) + "\n"


def test_the_launcher_raises_with_the_stores_own_message_when_it_exits(taken_port: int, tmp_path: Path) -> None:
    with pytest.raises(StoreStartError) as raised:
        start_store(tmp_path / "data", port=taken_port)
    assert raised.value.returncode == 1
    assert raised.value.reason == "the store exited with status 1 before it was listening"
    assert raised.value.last_line == in_use_message(taken_port)
    assert in_use_message(taken_port) in str(raised.value)


def test_the_launcher_kills_a_store_that_hangs_before_printing_its_url(tmp_path: Path) -> None:
    # Reading a clients file that is a FIFO nobody writes to blocks the store before it listens.
    fifo = tmp_path / "clients.json"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(StoreStartError) as raised:
        start_store(tmp_path / "data", extra_args=["--clients-file", str(fifo)], timeout=3)
    assert time.monotonic() - started < 20
    assert raised.value.reason == "the store printed no 'TAMS store at URL' line within 3 s"
    assert raised.value.returncode == -signal.SIGKILL  # it was still running: the launcher killed it

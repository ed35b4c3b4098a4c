"""The README's commands outside the walk-through (which `make demo` runs) work as written:
`make store` writes the `.env` the scripts read, `eval "$(make -s env_exports)"` exports it, and
`make proxy` puts the authorisation proxy in front of that store."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from credentials import OAuth2ClientCredentials
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def wait_for_line(process: subprocess.Popen[bytes], prefix: str, timeout: float = 60.0) -> str:
    """The first stdout line starting with ``prefix`` (the rest of it), within ``timeout`` seconds."""
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    buffer = b""
    try:
        while selector.select(timeout):
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            buffer += chunk
            for line in buffer.decode(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line[len(prefix):].strip()
    finally:
        selector.close()
    raise AssertionError(f"no line starting {prefix!r}; got {buffer[-2000:]!r}")


@pytest.fixture
def make_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """`make` targets that run servers in the foreground; each is stopped with its children."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in reversed(started):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # make and the server it runs, nothing else
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def run_make(args: list[str], started: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(["make", "-s", *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    started.append(process)
    return process


def test_readme_shows_the_commands_this_test_runs() -> None:
    for command in ("make store", 'eval "$(make -s env_exports)"', "make proxy", "make demo", "make test"):
        assert command in README, command


async def test_make_store_env_exports_and_make_proxy_work_as_written(
    tmp_path: Path, make_processes: list[subprocess.Popen[bytes]]
) -> None:
    env_file = tmp_path / ".env"
    store = run_make(["store", "PORT=0", f"DATA_DIR={tmp_path / 'data'}", f"ENV_FILE={env_file}"], make_processes)
    store_url = wait_for_line(store, "TAMS store at ")

    exported = subprocess.run(
        ["bash", "-c", f'eval "$(make -s env_exports ENV_FILE={env_file})"; echo "$TAMS_URL $CLIENT_ID $OAUTH2_URL"'],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()
    assert exported[0] == store_url and exported[2] == f"{store_url}/oauth2/token" and exported[1]
    settings = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)

    proxy = run_make(["proxy", f"ENV_FILE={env_file}", "PROXY_PORT=0"], make_processes)
    proxy_url = wait_for_line(proxy, "TAMS authz proxy at ")
    async with aiohttp.ClientSession() as session:
        credentials = OAuth2ClientCredentials(settings["OAUTH2_URL"], settings["CLIENT_ID"], settings["CLIENT_SECRET"])
        headers = await credentials.auth_headers(session)
        async with session.get(f"{proxy_url}/service", headers=headers) as reply:
            assert reply.status == 200
            assert "api_version" in await reply.json()
        async with session.get(f"{proxy_url}/flows") as reply:  # no token: the proxy refuses
            assert reply.status == 401

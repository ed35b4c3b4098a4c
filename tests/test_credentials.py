"""credentials.py: where connection settings come from, how each scheme authenticates,
and the OAuth2 client credentials grant against the real local store's token endpoint."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import jwt
import pytest

from credentials import (
    DEFAULT_SCOPE,
    BasicCredentials,
    BearerToken,
    CredentialsError,
    HelpFormatter,
    OAuth2ClientCredentials,
    add_credential_args,
    connection_from_args,
)
from tests.conftest import RunningStore, start_store

REPO = Path(__file__).resolve().parent.parent
VARIABLES = ("TAMS_URL", "OAUTH2_URL", "CLIENT_ID", "CLIENT_SECRET", "USERNAME", "PASSWORD")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_credential_args(parser)
    return parser.parse_args(argv)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No connection variables in the environment, and an empty working directory."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path


# --- command line --------------------------------------------------------------------------


def test_help_names_the_environment_variable_each_option_falls_back_to() -> None:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    add_credential_args(parser)
    text = " ".join(parser.format_help().split())
    for option, variable in [("--tams-url", "TAMS_URL"), ("--oauth2-url", "OAUTH2_URL"),
                             ("--client-id", "CLIENT_ID"), ("--client-secret", "CLIENT_SECRET"),
                             ("--username", "USERNAME"), ("--password", "PASSWORD")]:
        assert option in text
        assert f"(default: ${variable}, then {variable} in ./.env)" in text
    assert "default: None" not in text


def test_arguments_beat_environment_which_beats_dotenv(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / ".env").write_text(
        "TAMS_URL=http://from-dotenv:1\nOAUTH2_URL=http://from-dotenv:1/token\n"
        "CLIENT_ID=dotenv-id\nCLIENT_SECRET=dotenv-secret\n"
    )
    monkeypatch.setenv("CLIENT_ID", "env-id")
    url, creds = connection_from_args(parse(["--tams-url", "http://from-args:2/"]))
    assert url == "http://from-args:2"
    assert isinstance(creds, OAuth2ClientCredentials)
    assert creds.client_id == "env-id"  # environment over .env
    assert creds.token_url == "http://from-dotenv:1/token"  # .env fills what nothing else gives
    assert creds.scope == DEFAULT_SCOPE
    assert os.environ.get("TAMS_URL") is None  # reading .env does not touch the environment


def test_dotenv_alone_is_enough(clean_env: Path) -> None:
    (clean_env / ".env").write_text("TAMS_URL=http://127.0.0.1:9\nUSERNAME=alice\nPASSWORD=pw\n")
    url, creds = connection_from_args(parse([]))
    assert url == "http://127.0.0.1:9"
    assert isinstance(creds, BasicCredentials) and creds.username == "alice"


def test_oauth2_preferred_over_basic_when_both_are_configured(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in [("TAMS_URL", "http://h:1"), ("OAUTH2_URL", "http://h:1/oauth2/token"),
                        ("CLIENT_ID", "c"), ("CLIENT_SECRET", "s"), ("USERNAME", "u"), ("PASSWORD", "p")]:
        monkeypatch.setenv(name, value)
    assert isinstance(connection_from_args(parse([]))[1], OAuth2ClientCredentials)
    # ... but a username and password typed on the command line win over the environment's client
    _, creds = connection_from_args(parse(["--username", "bob", "--password", "pw"]))
    assert isinstance(creds, BasicCredentials) and creds.username == "bob"


def run_resolver(cwd: Path, argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    code = (
        "import argparse, credentials\n"
        "p = argparse.ArgumentParser()\n"
        "credentials.add_credential_args(p)\n"
        "print(credentials.connection_from_args(p.parse_args()))\n"
    )
    clean = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    clean["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=30, check=False)


def test_nothing_usable_exits_2_with_one_line_naming_what_to_set(tmp_path: Path) -> None:
    result = run_resolver(tmp_path, [])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "--tams-url" in result.stderr and "TAMS_URL" in result.stderr

    result = run_resolver(tmp_path, ["--tams-url", "http://127.0.0.1:9"])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    for name in ("--client-id", "CLIENT_ID", "--client-secret", "CLIENT_SECRET", "--oauth2-url", "OAUTH2_URL",
                 "--username", "USERNAME", "--password", "PASSWORD"):
        assert name in result.stderr


def test_incomplete_credentials_name_only_what_is_missing(tmp_path: Path) -> None:
    result = run_resolver(tmp_path, ["--tams-url", "http://h:1", "--client-id", "c"], {"OAUTH2_URL": "http://h/t"})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "--client-secret (CLIENT_SECRET)" in result.stderr
    assert "OAUTH2_URL" not in result.stderr and "USERNAME" not in result.stderr


def test_a_url_that_is_not_http_exits_2(tmp_path: Path) -> None:
    result = run_resolver(tmp_path, ["--tams-url", "localhost:8000", "--username", "u", "--password", "p"])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "localhost:8000" in result.stderr


def test_dotenv_in_working_directory_does_not_override_real_environment(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TAMS_URL=http://dotenv:1\nUSERNAME=dotenv-user\nPASSWORD=pw\n")
    result = run_resolver(tmp_path, [], {"USERNAME": "real-user"})
    assert result.returncode == 0, result.stderr
    assert "http://dotenv:1" in result.stdout
    assert "real-user" in result.stdout and "dotenv-user" not in result.stdout


def test_reprs_hide_secrets() -> None:
    shown = " ".join(repr(c) for c in (
        BasicCredentials("alice", "pa55word"),
        BearerToken("tok3n"),
        OAuth2ClientCredentials("http://h/token", "client", "s3cret"),
    ))
    for secret in ("pa55word", "tok3n", "s3cret"):
        assert secret not in shown


# --- schemes ------------------------------------------------------------------------------


async def test_basic_and_bearer_headers() -> None:
    async with aiohttp.ClientSession() as session:
        assert await BasicCredentials("alice", "pw").auth_headers(session) == {
            "Authorization": "Basic YWxpY2U6cHc="
        }
        assert await BearerToken("abc").auth_headers(session) == {"Authorization": "Bearer abc"}
    assert not BasicCredentials("a", "b").renewable and not BearerToken("t").renewable


# --- OAuth2 against the real store ---------------------------------------------------------


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStore]:
    """One store for the token tests here, which only ask it for tokens."""
    store = start_store(tmp_path_factory.mktemp("credentials-store") / "data")
    yield store
    store.stop()


def admin(store: RunningStore) -> OAuth2ClientCredentials:
    return OAuth2ClientCredentials(store.oauth2_url, store.env["CLIENT_ID"], store.env["CLIENT_SECRET"])


async def test_oauth2_token_is_fetched_once_and_reused(shared_store: RunningStore) -> None:
    creds = admin(shared_store)
    async with aiohttp.ClientSession() as session:
        first = await creds.auth_headers(session)
        second = await creds.auth_headers(session)
        assert first == second and first["Authorization"].startswith("Bearer ")
        async with session.get(shared_store.url + "/flows", headers=first) as response:
            assert response.status == 200
    assert creds.token_requests == 1


async def test_oauth2_fifty_concurrent_callers_cause_one_token_request(shared_store: RunningStore) -> None:
    creds = admin(shared_store)
    async with aiohttp.ClientSession() as session:
        headers = await asyncio.gather(*(creds.auth_headers(session) for _ in range(50)))
        assert len({h["Authorization"] for h in headers}) == 1
        # 50 tasks told at once that the same token was refused: still one renewal
        await asyncio.gather(*(creds.renew(session, headers[0]) for _ in range(50)))
    assert creds.token_requests == 2


async def test_oauth2_renews_shortly_before_expiry(shared_store: RunningStore) -> None:
    now = [1000.0]
    creds = OAuth2ClientCredentials(shared_store.oauth2_url, shared_store.env["CLIENT_ID"],
                                    shared_store.env["CLIENT_SECRET"], margin=30.0, clock=lambda: now[0])
    async with aiohttp.ClientSession() as session:
        first = await creds.auth_headers(session)  # expires_in is about 3600
        now[0] += 3500
        assert await creds.auth_headers(session) == first and creds.token_requests == 1
        now[0] += 75  # within 30 s of expiry
        await creds.auth_headers(session)
    assert creds.token_requests == 2


async def test_oauth2_short_lived_tokens_are_renewed_at_half_life(store_factory: Callable[..., RunningStore]) -> None:
    store = store_factory(token_ttl=2)
    creds = admin(store)
    async with aiohttp.ClientSession() as session:
        first = await creds.auth_headers(session)
        started = time.monotonic()
        while time.monotonic() - started < 1.6:  # every token used until renewed is still accepted
            headers = await creds.auth_headers(session)
            async with session.get(store.url + "/flows", headers=headers) as response:
                assert response.status == 200
            await asyncio.sleep(0.1)
    assert headers != first and 2 <= creds.token_requests <= 8


async def test_oauth2_refused_client_raises_with_status_and_no_secret(shared_store: RunningStore) -> None:
    creds = OAuth2ClientCredentials(shared_store.oauth2_url, "test-admin", "not-the-secret")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(CredentialsError) as caught:
            await creds.auth_headers(session)
    assert caught.value.status == 401
    assert "not-the-secret" not in str(caught.value) and "not-the-secret" not in repr(caught.value.body)


async def test_oauth2_scope_is_sent(shared_store: RunningStore) -> None:
    reader = next(c for c in shared_store.clients if c["client_id"] == "test-reader")
    creds = OAuth2ClientCredentials(shared_store.oauth2_url, reader["client_id"], reader["client_secret"],
                                    scope="tams-api/read")
    async with aiohttp.ClientSession() as session:
        token = (await creds.auth_headers(session))["Authorization"].removeprefix("Bearer ")
    assert jwt.decode(token, options={"verify_signature": False})["scope"] == "tams-api/read"
    # the default scope asks for more than this client may have, and the store says so
    too_much = OAuth2ClientCredentials(shared_store.oauth2_url, reader["client_id"], reader["client_secret"])
    async with aiohttp.ClientSession() as session:
        with pytest.raises(CredentialsError) as caught:
            await too_much.auth_headers(session)
    assert caught.value.status == 400


# --------------------------------------------------------------------------------------------
# exit_now: a script's process ends without the interpreter's teardown, and loses no output

REPO = Path(__file__).resolve().parent.parent


def _ended(code: str, tmp_path: Path, shell_redirect: str = "") -> subprocess.CompletedProcess[str]:
    # PYTHONUNBUFFERED would hide a missing flush: the child's streams are buffered, as a user's are
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    command = [sys.executable, "-c", code]
    if shell_redirect:
        command = ["sh", "-c", f'exec "$0" -c "$1" {shell_redirect}', sys.executable, code]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**env, "LOG_FILE": str(tmp_path / "log.txt")})


def test_exit_now_gives_the_status_and_flushes_output_logs_and_atexit_handlers(tmp_path: Path) -> None:
    done = _ended(
        "import atexit, logging, os, sys\n"
        "from credentials import exit_now\n"
        "import logging.handlers\n"
        # records held in memory reach the file only when logging's atexit handler flushes them
        "held = logging.handlers.MemoryHandler(100, target=logging.FileHandler(os.environ['LOG_FILE']))\n"
        "logging.basicConfig(handlers=[held], level=logging.INFO)\n"
        "logging.info('logged last')\n"
        "atexit.register(print, 'atexit ran')\n"
        "sys.stdout.write('x' * 200000)\n"  # more than a pipe holds at once: still buffered here
        "print('end', file=sys.stderr, end='')\n"
        "exit_now(3)\n"
        "print('not reached')\n", tmp_path)
    assert done.returncode == 3
    assert done.stdout == "x" * 200000 + "atexit ran\n"
    assert done.stderr == "end"
    assert (tmp_path / "log.txt").read_text() == "logged last\n"


def test_exit_now_waits_for_a_thread_still_running(tmp_path: Path) -> None:
    done = _ended(
        "import threading, time\n"
        "from credentials import exit_now\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
        "exit_now(0)\n", tmp_path)
    assert (done.returncode, done.stdout) == (0, "thread done\n")


def test_exit_now_with_stdout_closed_ends_cleanly(tmp_path: Path) -> None:
    done = _ended(
        "import sys\n"
        "from credentials import exit_now\n"
        "assert sys.stdout is None\n"
        "print('to stderr', file=sys.stderr, end='')\n"
        "exit_now(0)\n", tmp_path, shell_redirect=">&-")
    assert (done.returncode, done.stderr) == (0, "to stderr")


def test_run_async_leaves_a_signal_ignored_as_nohup_ignores_sighup(tmp_path: Path) -> None:
    done = _ended(
        "import asyncio, os, signal\n"
        "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        "from credentials import run_async\n"
        "async def work():\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"
        "    await asyncio.sleep(0.2)\n"
        "    return 'finished'\n"
        "print(run_async(work()))\n", tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "finished\n", "")


@pytest.mark.parametrize("later", [[], ["SIGTERM", "SIGINT"]], ids=["one signal", "more while cleaning up"])
def test_run_async_turns_sigterm_into_a_cancellation_whose_clean_up_runs(tmp_path: Path, later: list[str]) -> None:
    """SIGTERM cancels the run, its clean-up runs and Terminated gives 143. Another SIGTERM, or a
    Ctrl-C, while it cleans up does not cancel the clean-up, and the first signal is the one reported."""
    again = "".join(f"        os.kill(os.getpid(), signal.{name})\n" for name in later)
    done = _ended(
        "import asyncio, os, signal\n"
        "from credentials import Terminated, run_async\n"
        "async def work():\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        await asyncio.sleep(30)\n"
        "    finally:\n"
        f"{again}"
        "        await asyncio.sleep(0.3)\n"
        "        print('cleaned up')\n"
        "try:\n"
        "    run_async(work())\n"
        "except Terminated as exc:\n"
        "    print(exc.signum.name, exc.status)\n", tmp_path)
    assert (done.returncode, done.stdout) == (0, "cleaned up\nSIGTERM 143\n"), done.stderr
    assert done.stderr.count("already stopping") == len(later)


def test_run_async_calls_a_stop_hook_while_one_is_set_and_puts_handlers_back(tmp_path: Path) -> None:
    """Within ``stop_hook`` a signal goes to the hook (the run goes on); after it, a signal
    cancels the run again; at the end the handlers found at the start are back."""
    done = _ended(
        "import asyncio, os, signal\n"
        "from credentials import Terminated, run_async, stop_hook\n"
        "def own(signum, frame): pass\n"
        "signal.signal(signal.SIGTERM, own)\n"
        "async def work():\n"
        "    with stop_hook(lambda signum: print('hook', signum.name)):\n"
        "        os.kill(os.getpid(), signal.SIGHUP)\n"
        "        await asyncio.sleep(0.2)\n"
        "    print('went on')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    await asyncio.sleep(30)\n"
        "try:\n"
        "    run_async(work())\n"
        "except Terminated as exc:\n"
        "    print(exc.signum.name)\n"
        "print(signal.getsignal(signal.SIGTERM) is own, signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n",
        tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "hook SIGHUP\nwent on\nSIGTERM\nTrue True\n", "")


def test_print_result_to_a_pipe_nobody_reads_gives_120_even_while_a_thread_still_runs() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-c", "import threading, time\n"
             "from credentials import exit_now, print_result\n"
             "threading.Thread(target=time.sleep, args=(0.3,)).start()\n"
             "print_result('summary')\n"
             "exit_now(0)\n"],
            cwd=REPO, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (120, "")


def test_run_async_ignores_a_signal_once_main_has_ended(tmp_path: Path) -> None:
    """A SIGTERM while asyncio shuts down after ``main`` returned (waiting for a thread of the
    default executor here) neither kills the process nor turns a finished run into a stopped one."""
    done = _ended(
        "import asyncio, os, signal, threading, time\n"
        "from credentials import run_async\n"
        "async def work():\n"
        "    asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.6)\n"
        "    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
        "    return 'finished'\n"
        "print(run_async(work()))\n", tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "finished\n", "")


def test_run_async_cancels_for_a_signal_that_comes_while_a_timeout_of_the_run_cancels_it(tmp_path: Path) -> None:
    """The run's own timeouts cancel its task too, and take the cancellation back: a SIGTERM
    that comes meanwhile still stops the run."""
    done = _ended(
        "import asyncio, os, signal, threading\n"
        "from credentials import Terminated, run_async\n"
        "async def work():\n"
        "    threading.Timer(0.25, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
        "    try:\n"
        "        async with asyncio.timeout(0.1):\n"
        "            try:\n"
        "                await asyncio.sleep(10)\n"
        "            except asyncio.CancelledError:\n"
        "                await asyncio.sleep(0.5)  # the timeout's cancellation, still being handled\n"
        "                raise\n"
        "    except TimeoutError:\n"
        "        pass\n"
        "    await asyncio.sleep(1)\n"
        "    return 'finished'\n"
        "try:\n"
        "    print(run_async(work()))\n"
        "except Terminated as exc:\n"
        "    print(exc.signum.name)\n", tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "SIGTERM\n", "")


def test_stop_hook_outside_run_async_is_the_loops_handler_for_its_block(tmp_path: Path) -> None:
    """Without run_async the hook is the running loop's handler while its block runs, Ctrl-C's
    included (asyncio.run's own handler gives way), then the handlers before are back; a signal
    the caller's loop handles itself stays the caller's."""
    done = _ended(
        "import asyncio, os, signal\n"
        "from credentials import stop_hook\n"
        "async def signalled(*names):\n"
        "    for name in names:\n"
        "        os.kill(os.getpid(), getattr(signal, name))\n"
        "    await asyncio.sleep(0.2)\n"
        "async def work():\n"
        "    sigint = signal.getsignal(signal.SIGINT)\n"
        "    with stop_hook(lambda signum: print('hook', signum.name)):\n"
        "        await signalled('SIGTERM')\n"
        "        await signalled('SIGINT')\n"
        "    print('default again', signal.getsignal(signal.SIGTERM) is signal.SIG_DFL,\n"
        "          signal.getsignal(signal.SIGINT) is sigint)\n"
        "    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, print, 'own')\n"
        "    with stop_hook(lambda signum: print('hook', signum.name)):\n"
        "        await signalled('SIGTERM', 'SIGHUP')\n"
        "    await signalled('SIGTERM')\n"
        "asyncio.run(work())\n", tmp_path)
    assert done.returncode == 0 and done.stderr == ""
    first, second, default, *rest = done.stdout.splitlines()
    assert (first, second, default) == ("hook SIGTERM", "hook SIGINT", "default again True True")
    assert sorted(rest) == ["hook SIGHUP", "own", "own"]

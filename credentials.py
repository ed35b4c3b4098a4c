"""Credentials for the TAMS API, and the command-line options every script shares.

Each auth scheme is one small class with the same two hooks, so the client never
asks which scheme it holds:

- ``auth_headers(session)`` returns the headers to add to an API request;
- ``renew(session)`` is called once after a 401, and only for ``renewable`` schemes.

Schemes: ``BasicCredentials`` (username and password), ``BearerToken`` (a fixed
token) and ``OAuth2ClientCredentials`` (the client credentials grant, renewed
shortly before the token expires; one token request however many tasks ask).

``add_credential_args(parser)`` and ``connection_from_args(args)`` give every
script the same ``--tams-url --oauth2-url --client-id --client-secret --username
--password`` options, falling back to environment variables and then to a
``.env`` file in the working directory. ``exit_now(status)`` ends a script's process once its
work is done, without the interpreter's teardown.

Nothing here logs a secret: not a password, a client secret or a token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import aiohttp

__all__ = [
    "DEFAULT_SCOPE",
    "BasicCredentials",
    "BearerToken",
    "Credentials",
    "CredentialsError",
    "HelpFormatter",
    "OAuth2ClientCredentials",
    "add_credential_args",
    "connection_from_args",
    "exit_now",
    "resolve_settings",
]

logger = logging.getLogger(__name__)

DEFAULT_SCOPE = "tams-api/read tams-api/write tams-api/delete"


class CredentialsError(Exception):
    """Getting a token failed: the token endpoint could not be reached (``status``
    is None) or refused (``status`` and ``body`` say how). The client turns this
    into one of its own errors."""

    def __init__(self, message: str, *, url: str, status: int | None = None, body: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.url = url
        self.status = status
        self.body = body


class Credentials:
    """No credentials at all; the base of every scheme."""

    renewable: bool = False

    async def auth_headers(self, session: aiohttp.ClientSession) -> dict[str, str]:
        return {}

    async def renew(self, session: aiohttp.ClientSession, rejected: Mapping[str, str] | None = None) -> None:
        """Get fresh credentials after a 401. ``rejected`` is the header set the
        server refused, so that many tasks refused at once renew only once."""


class BasicCredentials(Credentials):
    """HTTP Basic authentication with a username and password."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self._header = aiohttp.encode_basic_auth(username, password)

    async def auth_headers(self, session: aiohttp.ClientSession) -> dict[str, str]:
        return {"Authorization": self._header}

    def __repr__(self) -> str:
        return f"BasicCredentials(username={self.username!r}, password=<hidden>)"


class BearerToken(Credentials):
    """A bearer token obtained elsewhere; it cannot be renewed."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    async def auth_headers(self, session: aiohttp.ClientSession) -> dict[str, str]:
        return {"Authorization": self._header}

    def __repr__(self) -> str:
        return "BearerToken(<hidden>)"


class OAuth2ClientCredentials(Credentials):
    """OAuth2 client credentials grant, the client authenticating by HTTP Basic.

    The token is renewed ``margin`` seconds before ``expires_in`` runs out, or
    at half its life if that is shorter (which also absorbs servers that count
    whole seconds). Fetching happens under a lock and expiry is checked
    again once the lock is held, so any number of waiting tasks cause one token
    request. ``clock`` is the monotonic time source (seconds).
    """

    renewable = True

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str = DEFAULT_SCOPE,
        *,
        margin: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._client_auth = aiohttp.encode_basic_auth(client_id, client_secret)
        self.scope = scope
        self.margin = margin
        self._clock = clock
        self._header: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        self._fetches = 0  # tokens received so far
        self.token_requests = 0

    def __repr__(self) -> str:
        return (
            f"OAuth2ClientCredentials(token_url={self.token_url!r}, client_id={self.client_id!r}, "
            f"client_secret=<hidden>, scope={self.scope!r})"
        )

    def _fresh(self) -> bool:
        return self._header is not None and self._clock() < self._renew_at

    async def auth_headers(self, session: aiohttp.ClientSession) -> dict[str, str]:
        if not self._fresh():
            async with self._lock:
                if not self._fresh():  # another task may have fetched while we waited
                    await self._fetch(session)
        assert self._header is not None
        return {"Authorization": self._header}

    async def renew(self, session: aiohttp.ClientSession, rejected: Mapping[str, str] | None = None) -> None:
        seen = self._fetches
        async with self._lock:
            if self._fetches != seen:
                return  # another task renewed while this one waited for the lock
            if rejected is not None and self._header is not None and rejected.get("Authorization") != self._header:
                return  # renewed since the refused request was sent
            await self._fetch(session)

    async def _fetch(self, session: aiohttp.ClientSession) -> None:
        self.token_requests += 1
        logger.debug("requesting a token from %s for client %s", self.token_url, self.client_id)
        started = self._clock()
        form = {"grant_type": "client_credentials", "scope": self.scope}
        try:
            headers = {"Authorization": self._client_auth, "Accept": "application/json"}
            async with session.post(self.token_url, data=form, headers=headers) as response:
                text = await response.text()
                status = response.status
                if status != 200:
                    raise CredentialsError(
                        f"token request refused ({status})", url=self.token_url, status=status, body=_parse(text)
                    )
                body = _parse(text)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise CredentialsError(f"could not reach the token endpoint: {exc}", url=self.token_url) from exc
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise CredentialsError(
                "the token endpoint's answer has no access_token", url=self.token_url, status=status, body=text[:500]
            )
        self._header = f"Bearer {body['access_token']}"
        self._fetches += 1
        try:
            lifetime: float | None = max(float(body["expires_in"]), 0.0)  # some servers send a string
        except (KeyError, TypeError, ValueError):
            lifetime = None
        if lifetime is not None:
            self._renew_at = started + lifetime - min(self.margin, lifetime / 2)
            logger.debug("got a token for client %s valid for %ss", self.client_id, lifetime)
        else:
            self._renew_at = math.inf  # no lifetime given: renew when the API says 401
            logger.debug("got a token for client %s with no expires_in", self.client_id)


def _parse(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text[:500]


# ---------------------------------------------------------------------------
# Command line: arguments, then environment variables, then ./.env

# (argument dest, environment variable, help)
_SETTINGS: list[tuple[str, str, str]] = [
    ("tams_url", "TAMS_URL", "base URL of the TAMS API"),
    ("oauth2_url", "OAUTH2_URL", "OAuth2 token endpoint URL"),
    ("client_id", "CLIENT_ID", "OAuth2 client id"),
    ("client_secret", "CLIENT_SECRET", "OAuth2 client secret"),
    ("username", "USERNAME", "username for HTTP Basic auth (used when no OAuth2 client is given)"),
    ("password", "PASSWORD", "password for HTTP Basic auth"),
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that gives every option's default exactly once: as written in its help text when the
    text already names it, "(required)" for required options, else "(default: ...)"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in text:
            return text
        if action.required:
            return f"{text} (required)"
        if action.default is None:
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


EXIT_STATUSES = ("Exit status: 0 when done; 128 + N when stopped by signal N (Ctrl-C 130, SIGHUP 129, SIGTERM 143), "
                 "after cleaning up; 120 when done but stdout could not be written; another non-zero status "
                 "on an error, whose last line on stderr says what went wrong.")


def add_credential_args(parser: argparse.ArgumentParser) -> None:
    """Add the TAMS connection options, each falling back to an environment variable, and the
    scripts' exit statuses (``EXIT_STATUSES``) as the help's epilog."""
    if parser.epilog is None:
        parser.epilog = EXIT_STATUSES
    group = parser.add_argument_group("TAMS connection (each falls back to an environment variable, then ./.env)")
    for dest, env, text in _SETTINGS:
        group.add_argument(
            "--" + dest.replace("_", "-"),
            dest=dest,
            default=None,
            metavar=env,
            help=f"{text} (default: ${env}, then {env} in ./.env)",
        )


def resolve_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None,
                     env_file: Path | None = None) -> dict[str, str]:
    """Each setting from the arguments, else the environment, else the .env file
    (which never overrides a variable that is really set)."""
    environ = os.environ if environ is None else environ
    env_file = Path.cwd() / ".env" if env_file is None else env_file
    file_values: dict[str, str] = {}
    if env_file.is_file():
        from dotenv import dotenv_values  # only then: its import is a few ms of every script's start-up

        file_values = {k: v for k, v in dotenv_values(env_file).items() if v}
    settings: dict[str, str] = {}
    for dest, env, _ in _SETTINGS:
        value = getattr(args, dest, None) or environ.get(env) or file_values.get(env)
        if value:
            settings[dest] = value
    return settings


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _names(dests: list[str]) -> str:
    by_dest = {dest: env for dest, env, _ in _SETTINGS}
    return ", ".join(f"--{d.replace('_', '-')} ({by_dest[d]})" for d in dests)


def connection_from_args(args: argparse.Namespace) -> tuple[str, Credentials]:
    """The TAMS URL and credentials the user gave, or exit 2 with one line saying
    what to set. OAuth2 is used when a client id, secret and token URL are all
    known, else Basic with a username and password; but a username and password
    typed on the command line win over an OAuth2 client found in the environment."""
    s = resolve_settings(args)
    url = s.get("tams_url")
    if not url:
        _fail("no TAMS URL: pass --tams-url or set TAMS_URL (in the environment or ./.env)")
    assert url is not None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        _fail(f"--tams-url/TAMS_URL is not an http(s) URL: {url!r}")
    url = url.rstrip("/")

    oauth2 = ["client_id", "client_secret", "oauth2_url"]
    basic = ["username", "password"]
    typed_basic = getattr(args, "username", None) and getattr(args, "password", None)
    typed_oauth2 = getattr(args, "client_id", None) or getattr(args, "client_secret", None)
    if all(k in s for k in oauth2) and not (typed_basic and not typed_oauth2):
        return url, OAuth2ClientCredentials(s["oauth2_url"], s["client_id"], s["client_secret"])
    if all(k in s for k in basic):
        return url, BasicCredentials(s["username"], s["password"])
    if any(k in s for k in ["client_id", "client_secret"]):
        _fail("incomplete OAuth2 client: also set " + _names([k for k in oauth2 if k not in s]))
    if any(k in s for k in basic):
        _fail("incomplete Basic credentials: also set " + _names([k for k in basic if k not in s]))
    _fail(
        "no credentials: set " + _names(oauth2) + ", or " + _names(basic)
        + " (as arguments, environment variables or in ./.env)"
    )
    raise AssertionError("unreachable")


T = TypeVar("T")


class Terminated(KeyboardInterrupt):
    """A stop signal (Ctrl-C's SIGINT, SIGTERM, SIGHUP) ended the run: its task was cancelled,
    and what it cleans up on the way out (a partial output file, scratch space, an unfinished
    Flow) was cleaned up."""

    def __init__(self, signum: signal.Signals) -> None:
        super().__init__(signum.name)
        self.signum = signum
        self.status = 128 + signum  # as a shell reports a process the signal ended


def interruption(exc: KeyboardInterrupt) -> tuple[str, int]:
    """What ended a run, in words for its error line, and its exit status: 128 + the signal."""
    signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
    return ("interrupted" if signum == signal.SIGINT else f"stopped by {signum.name}"), 128 + signum


_STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
_stop_hooks: list[Callable[[signal.Signals], None]] = []
_guarded_runs = 0  # run_async calls under way (one, in a script)


def _stop_signals() -> list[signal.Signals]:
    """The stop signals this platform has and the process was not started ignoring (as ``nohup``
    starts it for SIGHUP, and a shell a background job for SIGINT)."""
    found = [getattr(signal, name, None) for name in _STOP_SIGNALS]
    return [signum for signum in found if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN]


def _unhandled(handler: object) -> bool:
    """Whether ``handler`` is Python's default, or asyncio.run's Ctrl-C handler (a partial of its
    Runner's method), as opposed to something the program installed for itself."""
    if handler in (signal.SIG_DFL, signal.default_int_handler):
        return True
    method = getattr(handler, "func", None)  # functools.partial(Runner._on_sigint, ...)
    return isinstance(getattr(method, "__self__", None), asyncio.Runner)


@contextlib.contextmanager
def _handling(loop: asyncio.AbstractEventLoop, handle: Callable[[signal.Signals], None], *,
              unhandled_only: bool = False) -> Iterator[None]:
    """``handle(signum)`` on ``loop`` for each stop signal while the block runs; then the
    handlers found before are put back. ``unhandled_only``: leave alone a signal the program
    handles itself (``_unhandled``)."""
    previous: dict[signal.Signals, Any] = {}
    for signum in _stop_signals():
        handler = signal.getsignal(signum)
        if unhandled_only and not _unhandled(handler):
            continue
        try:
            loop.add_signal_handler(signum, handle, signum)
        except (NotImplementedError, RuntimeError):  # no handlers on this platform's loop
            continue
        previous[signum] = handler
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if not loop.is_closed():
                loop.remove_signal_handler(signum)
            if handler is not None:
                signal.signal(signum, handler)


@contextlib.contextmanager
def stop_hook(hook: Callable[[signal.Signals], None]) -> Iterator[None]:
    """While the block runs, a stop signal calls ``hook(signum)`` instead of cancelling the run
    (a live ingest finishes the segments it has read first). Under ``run_async`` the hook takes
    its turn in run_async's handlers; elsewhere (a library caller's own event loop) it is the
    running loop's handler for the block's length, for each signal the loop has no handler for
    already (``asyncio.run``'s own Ctrl-C handler gives way, and is back after the block)."""
    if _guarded_runs:
        _stop_hooks.append(hook)
        try:
            yield
        finally:
            _stop_hooks.remove(hook)
        return
    with _handling(asyncio.get_running_loop(), hook, unhandled_only=True):
        yield


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, where a stop signal (Ctrl-C, ``kill``'s SIGTERM, SIGHUP from a closed
    terminal or a service manager) cancels ``main`` instead of killing the process where it
    stands, so that its clean-up runs; then :class:`Terminated` is raised. Signals after the
    first do not interrupt that clean-up (``kill -9`` abandons it), and those that come once
    ``main`` has ended change nothing (the loop is shutting down: its threads, generators). A
    signal the process was started ignoring stays ignored, and the handlers found at the start
    are put back at the end."""
    global _guarded_runs  # noqa: PLW0603  (the process's signal handlers are global too)
    started: list[asyncio.Task[T]] = []
    received: list[signal.Signals] = []  # the signal that cancelled the run comes first
    stopping = False  # a signal cancelled the run (the run's own timeouts cancel it too, and uncancel)

    def stop(signum: signal.Signals) -> None:
        nonlocal stopping
        task = started[0] if started else None
        if task is None or task.done():
            return  # main's first step always runs before a signal's callback; this is after it ended
        if _stop_hooks:
            received.append(signum)
            _stop_hooks[-1](signum)
        elif not stopping:
            stopping = True
            received.insert(0, signum)
            task.cancel()
        else:
            logging.getLogger(__name__).warning("%s: already stopping; cleaning up first (kill -9 abandons it)",
                                                signum.name)

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        started.append(task)
        try:
            return await main
        except asyncio.CancelledError:
            if received:
                raise Terminated(received[0]) from None
            raise

    runner = asyncio.Runner()
    _guarded_runs += 1
    try:
        with _handling(runner.get_loop(), stop):
            try:
                return runner.run(guarded())
            finally:
                runner.close()  # with the handlers still in place
    finally:
        _guarded_runs -= 1
        main.close()  # never awaited when the loop could not start: no warning about it


_output_lost = False


def print_result(*lines: str) -> None:
    """Print a script's result lines on stdout. When nothing reads them any more (a pipe into
    ``head -1``), the rest are dropped without a traceback, and the exit status becomes 120, as
    Python's own exit reports output it could not write: the work itself is done."""
    global _output_lost  # noqa: PLW0603  (one process, one stdout)
    if _output_lost or sys.stdout is None:
        return
    try:
        for line in lines:
            print(line)
        sys.stdout.flush()
    except BrokenPipeError:
        _output_lost = True
        with contextlib.suppress(OSError, ValueError):  # what is still buffered goes nowhere
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)


def exit_now(status: int) -> NoReturn:
    """End the process with ``status``, a script's last step (its ``__main__`` block).

    Python's own exit then frees every module and object one by one: after aiohttp and PyAV
    that takes 25-55 ms, which a user waits for and which changes nothing on disk. This does what
    of it matters (the ``atexit`` handlers, such as logging's, which flush and close its handlers,
    then stdout and stderr flushed) and ends the process there. Every file a script writes is
    closed before its ``main()`` returns. While a thread other than the main one still runs, the
    exit is Python's usual one, which waits for it.
    """
    if _output_lost:
        status = status or 120
    if any(thread.is_alive() and not thread.daemon for thread in threading.enumerate()
           if thread is not threading.main_thread()):
        sys.exit(status)
    import atexit  # noqa: PLC0415  (only here; most processes never reach it)

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with that descriptor closed (``cmd >&-``)
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: as Python's exit, which reports 120
            status = status or 120
    os._exit(status)

"""``python -m local_store``: run the local TAMS store in the foreground.

Prints exactly one line, ``TAMS store at <url>``, once it is listening, optionally writes a
``.env`` for the scripts, and stops cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import math
import os
import signal
import socket
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from aiohttp import web

from .app import PathOnlyAccessLogger, StoreRunner, create_app, env_values
from .config import StoreConfig
from .errors import StoreError
from .state import STORE

logger = logging.getLogger("local_store")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m local_store",
        description="Run the local TAMS API 8.2 store (SQLite metadata, media files on disk).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free port")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("store_data"),
        help="where metadata and media live",
    )
    parser.add_argument(
        "--username",
        default=None,
        help="basic auth username (generated and kept in the data dir if missing)",
    )
    parser.add_argument(
        "--password",
        default=None,
        help="basic auth password (generated and kept in the data dir if missing)",
    )
    parser.add_argument(
        "--clients-file",
        type=Path,
        default=None,
        help='JSON list of OAuth2 clients: [{"client_id", "client_secret", "scopes": [...], "groups": [...]}] '
        "(a generated admin client if missing)",
    )
    parser.add_argument(
        "--token-ttl",
        type=int,
        default=3600,
        help="lifetime of issued access tokens, seconds",
    )
    idp = parser.add_argument_group(
        "outside identity provider",
        "accept bearer tokens of any OIDC provider (Keycloak, Cognito, ...) besides the store's own",
    )
    idp.add_argument("--jwks-url", default=None, help="the provider's JSON Web Key Set URL (http or https)")
    idp.add_argument("--issuer", default=None, help="the iss claim of the provider's tokens (required with --jwks-url)")
    idp.add_argument(
        "--audience",
        default=None,
        help="the aud the provider's tokens must name; without it, a token naming any audience is refused",
    )
    idp.add_argument("--scope-claim", default="scope", help="the claim holding the tams-api/* scopes")
    idp.add_argument("--groups-claim", default="groups", help="the claim holding the caller's groups")
    idp.add_argument(
        "--jwks-cooldown",
        type=float,
        default=30.0,
        help="seconds between two key set fetches caused by tokens naming unknown keys",
    )
    idp.add_argument(
        "--own-tokens",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="issue and accept the store's own tokens (/oauth2/token); --no-own-tokens leaves only the provider's",
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        help="fraction of requests answered 503 on purpose",
    )
    parser.add_argument(
        "--fault-seed",
        type=int,
        default=None,
        help="seed for choosing the faulty requests",
    )
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=0,
        help="delay added to every answer, milliseconds",
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="write TAMS_URL, credentials etc. to this .env file",
    )
    parser.add_argument(
        "--presigned-url-ttl",
        type=int,
        default=3600,
        help="lifetime of presigned URLs, seconds (the spec asks for at least 30; less is for tests)",
    )
    parser.add_argument(
        "--gc-grace",
        type=float,
        default=600.0,
        help="seconds before a media object allocated but never registered, or no longer referenced by "
        "any segment, is removed; /service advertises at least the spec's 300 (below 300 is for tests only)",
    )
    parser.add_argument(
        "--gc-interval",
        type=float,
        default=argparse.SUPPRESS,
        help="seconds between garbage collection sweeps (default: a quarter of --gc-grace, at least 0.2)",
    )
    parser.add_argument(
        "--webhook-attempts",
        type=int,
        default=8,
        help="delivery attempts per webhook event before the webhook is marked 'error'",
    )
    parser.add_argument(
        "--webhook-backoff",
        type=float,
        default=1.0,
        help="seconds before the first webhook delivery retry; doubles each time up to --webhook-backoff-cap",
    )
    parser.add_argument(
        "--webhook-backoff-cap",
        type=float,
        default=60.0,
        help="the longest wait between two webhook delivery retries, in seconds",
    )
    parser.add_argument(
        "--webhook-timeout",
        type=float,
        default=10.0,
        help="seconds one webhook delivery POST may take",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (paths only) to stderr",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level",
    )
    return parser.parse_args(argv)


def load_clients(path: Path | None) -> list[dict[str, Any]] | None:
    if path is None:
        return None
    try:
        clients = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SystemExit(f"error: cannot read clients file {path}: {exc}") from exc
    if not isinstance(clients, list) or not all(
        isinstance(c, dict)
        and isinstance(c.get("client_id"), str)
        and isinstance(c.get("client_secret"), str)
        and isinstance(c.get("scopes", []), list)
        for c in clients
    ):
        raise SystemExit(f"error: {path} must hold a JSON list of {{client_id, client_secret, scopes, groups}}")
    return clients


def config_from_args(args: argparse.Namespace) -> StoreConfig:
    if not 0.0 <= args.fault_rate <= 1.0:
        raise SystemExit("error: --fault-rate must be between 0 and 1")
    if args.latency_ms < 0 or args.token_ttl <= 0 or args.presigned_url_ttl <= 0:
        raise SystemExit("error: --latency-ms must be >= 0, --token-ttl and --presigned-url-ttl > 0")
    if not 0 <= args.port <= 65535:
        raise SystemExit("error: --port must be between 0 and 65535")
    gc_interval = getattr(args, "gc_interval", None)
    gc_values = [args.gc_grace] + ([gc_interval] if gc_interval is not None else [])
    if not all(math.isfinite(v) and v > 0 for v in gc_values):
        raise SystemExit("error: --gc-grace and --gc-interval must be positive numbers of seconds")
    if (
        args.webhook_attempts < 1
        or not math.isfinite(args.webhook_backoff)
        or not args.webhook_backoff >= 0
        or not args.webhook_backoff_cap >= args.webhook_backoff
        or not math.isfinite(args.webhook_backoff_cap)
        or not args.webhook_timeout > 0
    ):
        raise SystemExit(
            "error: --webhook-attempts must be >= 1, --webhook-backoff >= 0, --webhook-backoff-cap >= --webhook-backoff, "
            "--webhook-timeout > 0"
        )
    if (args.jwks_url is None) != (args.issuer is None):
        raise SystemExit("error: --jwks-url and --issuer go together: the key set and the iss of its tokens")
    if args.jwks_url is not None and urllib.parse.urlsplit(args.jwks_url).scheme not in ("http", "https"):
        raise SystemExit("error: --jwks-url must be an http or https URL")
    if not args.own_tokens and args.jwks_url is None:
        raise SystemExit("error: --no-own-tokens needs --jwks-url and --issuer (or no token could be checked)")
    if not (math.isfinite(args.jwks_cooldown) and args.jwks_cooldown >= 0):
        raise SystemExit("error: --jwks-cooldown must be a number of seconds >= 0")
    return StoreConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        username=args.username,
        password=args.password,
        clients=load_clients(args.clients_file),
        token_ttl=args.token_ttl,
        fault_rate=args.fault_rate,
        fault_seed=args.fault_seed,
        latency_ms=args.latency_ms,
        env_file=args.env_file,
        access_log=args.access_log,
        presigned_url_ttl=args.presigned_url_ttl,
        gc_grace=args.gc_grace,
        gc_interval=gc_interval,
        webhook_attempts=args.webhook_attempts,
        webhook_backoff=args.webhook_backoff,
        webhook_backoff_cap=args.webhook_backoff_cap,
        webhook_timeout=args.webhook_timeout,
        jwks_url=args.jwks_url,
        issuer=args.issuer,
        audience=args.audience,
        scope_claim=args.scope_claim,
        groups_claim=args.groups_claim,
        jwks_cooldown=args.jwks_cooldown,
        own_tokens=args.own_tokens,
    )


def write_env_file(path: Path, values: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for key, value in values.items():
            f.write(f"{key}={value}\n")
    os.replace(tmp, path)


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # A restart on the same port must not wait for the old connections' TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


async def serve(config: StoreConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (
        signal.SIGINT,
        signal.SIGTERM,
    ):  # before the URL is printed: then stopping is clean
        loop.add_signal_handler(sig, stop.set)
    sock = bind_socket(config.host, config.port)
    config.port = sock.getsockname()[1]
    host = f"[{config.host}]" if ":" in config.host else config.host
    config.public_url = f"http://{host}:{config.port}"
    app = create_app(config)
    runner = StoreRunner(
        app,
        access_log_class=PathOnlyAccessLogger,
        access_log=logging.getLogger("local_store.access") if config.access_log else None,
        handle_signals=False,
    )
    await runner.setup()
    site = web.SockSite(runner, sock, shutdown_timeout=2.0)
    await site.start()
    store = app[STORE]
    if config.env_file is not None:
        write_env_file(config.env_file, env_values(store))
    print(f"TAMS store at {store.base_url}", flush=True)
    logger.info("data dir %s, storage backend %s", config.data_dir.resolve(), store.backend.id)
    try:
        await stop.wait()
    finally:
        logger.info("stopping")
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = config_from_args(args)
    try:
        asyncio.run(serve(config))
    except (OSError, StoreError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            host = f"[{config.host}]" if ":" in config.host else config.host
            message = (
                f"cannot listen on {host}:{config.port}: the port is in use; "
                "stop whatever uses it or choose another with --port (make store PORT=8123)"
            )
        else:
            message = f"cannot start the store: {exc}"
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

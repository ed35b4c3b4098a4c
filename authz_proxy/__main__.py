"""``python -m authz_proxy``: serve the authorisation proxy in front of a TAMS store.

Every option falls back to an environment variable (shown in ``--help``). Secrets are better
given by environment than on the command line, where other users of the machine can see them.
On start the proxy prints one line, ``TAMS authz proxy at http://HOST:PORT``; SIGINT or SIGTERM
stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn
from urllib.parse import urlsplit

from credentials import BasicCredentials, Credentials, OAuth2ClientCredentials

from .app import ProxyConfig, start_proxy
from .classes import ClassModel

logger = logging.getLogger("authz_proxy")

ALL_SCOPES = "tams-api/read tams-api/write tams-api/delete tams-api/admin"
TRUE_WORDS = ("1", "true", "yes", "on")

# (option, environment variable, default, help); flags have a bool default.
OPTIONS: list[tuple[str, str, object, str]] = [
    ("--host", "PROXY_HOST", "127.0.0.1", "address to listen on"),
    ("--port", "PROXY_PORT", "8001", "port to listen on (0: any free port)"),
    ("--api-url", "API_URL", None, "URL of the upstream TAMS API (required)"),
    ("--jwks-url", "JWKS_URL", None, "URL of the JWKS that signs callers' tokens (required)"),
    ("--group-claim", "GROUP_CLAIM", "groups", "token claim holding the caller's groups"),
    ("--issuer", "ISSUER", None, "required token issuer (iss); unchecked when unset"),
    ("--audience", "AUDIENCE", None, "required token audience (aud); tokens with an aud are refused when unset"),
    ("--leeway", "LEEWAY", "30", "seconds of clock slack for exp/nbf/iat"),
    ("--upstream-oauth2-url", "UPSTREAM_OAUTH2_URL", None, "token endpoint for the proxy's own upstream client"),
    ("--upstream-client-id", "UPSTREAM_CLIENT_ID", None, "the proxy's own OAuth2 client id for the store"),
    ("--upstream-client-secret", "UPSTREAM_CLIENT_SECRET", None, "the proxy's own OAuth2 client secret"),
    ("--upstream-scope", "UPSTREAM_SCOPE", ALL_SCOPES, "scopes the proxy asks for upstream"),
    ("--upstream-username", "UPSTREAM_USERNAME", None, "the proxy's own Basic username for the store"),
    ("--upstream-password", "UPSTREAM_PASSWORD", None, "the proxy's own Basic password for the store"),
    ("--public-url", "PUBLIC_URL", None, "URL callers use to reach the proxy (for Link/Location); else Host"),
    ("--cursor-secret", "CURSOR_SECRET", None,
     "key encrypting and authenticating page tokens (share it between replicas); random when unset"),
    ("--max-segment-objects", "MAX_SEGMENT_OBJECTS", "100",
     "most distinct objects a non-admin segment POST may name (each costs upstream look-ups); more get 400"),
    ("--max-body-size", "MAX_BODY_SIZE", str(16 * 1024 * 1024), "largest request body accepted, in bytes"),
    ("--class-model", "AUTHZ_CLASS_MODEL", ClassModel.AUTO.value,
     ("how auth_classes tags grant permissions: class (tag news: groups news_read/_write/_delete), "
      "group (tag news_write: group news_write may write, as the BBC example proxy), or auto "
      "(tags ending in read/write/delete the group way, others the class way)")),
    ("--log-level", "LOG_LEVEL", "info", "logging level"),
    ("--pass-through-token", "PASS_THROUGH_TOKEN", False,
     "send the caller's token upstream instead of the proxy's own credentials"),
    ("--ignore-scopes", "IGNORE_SCOPES", False, "judge by groups alone, ignoring the token's scope claim"),
]

SECRET_OPTIONS = ("--upstream-client-secret", "--upstream-password", "--cursor-secret")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m authz_proxy",
        description="Fine-grained authorisation proxy (auth_classes tags, AppNote 0016) for a TAMS store.",
    )
    for option, env, default, text in OPTIONS:
        if isinstance(default, bool):
            parser.add_argument(option, action="store_true", default=None,
                                help=f"{text} (default: off; env {env}=1)")
        else:
            shown = "unset" if default is None or option in SECRET_OPTIONS else default
            parser.add_argument(option, default=None, metavar=env, help=f"{text} (default: ${env}, else {shown})")
    return parser


def settings(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, object]:
    """Each option from the arguments, else the environment, else its default."""
    out: dict[str, object] = {}
    for option, env, default, _ in OPTIONS:
        dest = option[2:].replace("-", "_")
        given = getattr(args, dest)
        if isinstance(default, bool):
            out[dest] = bool(given) or environ.get(env, "").strip().lower() in TRUE_WORDS
        else:
            out[dest] = given if given is not None else environ.get(env) or default
    return out


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def config_from(s: Mapping[str, object]) -> tuple[ProxyConfig, str, int]:
    def text(name: str) -> str | None:
        value = s.get(name)
        return str(value) if value else None

    def number(name: str, kind: Callable[[str], float]) -> float:
        try:
            return kind(str(s[name]))
        except ValueError:
            fail(f"--{name.replace('_', '-')} must be a number, not {s[name]!r}")

    api_url, jwks_url = text("api_url"), text("jwks_url")
    for name, url in (("--api-url (API_URL)", api_url), ("--jwks-url (JWKS_URL)", jwks_url)):
        if not url:
            fail(f"{name} is required")
        parts = urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            fail(f"{name} is not an http(s) URL: {url!r}")
    assert api_url is not None
    assert jwks_url is not None

    oauth2 = [text("upstream_oauth2_url"), text("upstream_client_id"), text("upstream_client_secret")]
    basic = [text("upstream_username"), text("upstream_password")]
    pass_through = bool(s["pass_through_token"])
    credentials: Credentials
    if all(oauth2):
        url, client_id, secret = (str(v) for v in oauth2)
        credentials = OAuth2ClientCredentials(url, client_id, secret, scope=str(s["upstream_scope"]))
    elif all(basic):
        credentials = BasicCredentials(str(basic[0]), str(basic[1]))
    elif any(oauth2):
        fail("incomplete upstream OAuth2 client: set UPSTREAM_OAUTH2_URL, UPSTREAM_CLIENT_ID and "
             "UPSTREAM_CLIENT_SECRET")
    elif any(basic):
        fail("incomplete upstream Basic credentials: set UPSTREAM_USERNAME and UPSTREAM_PASSWORD")
    elif pass_through:
        credentials = Credentials()
    else:
        fail("the proxy needs its own upstream credentials (UPSTREAM_CLIENT_ID/UPSTREAM_CLIENT_SECRET/"
             "UPSTREAM_OAUTH2_URL or UPSTREAM_USERNAME/UPSTREAM_PASSWORD), or --pass-through-token")

    port = int(number("port", int))
    if not 0 <= port <= 65535:
        fail(f"--port must be 0-65535, not {port}")
    cursor_secret = text("cursor_secret")
    max_segment_objects = int(number("max_segment_objects", int))
    if max_segment_objects < 1:
        fail(f"--max-segment-objects must be at least 1, not {max_segment_objects}")
    try:
        class_model = ClassModel(str(s["class_model"]).strip().lower())
    except ValueError:
        fail(f"--class-model must be one of {', '.join(m.value for m in ClassModel)}, not {s['class_model']!r}")
    config = ProxyConfig(
        api_url=api_url,
        jwks_url=jwks_url,
        credentials=credentials,
        group_claim=str(s["group_claim"]),
        issuer=text("issuer"),
        audience=text("audience"),
        leeway=number("leeway", float),
        ignore_scopes=bool(s["ignore_scopes"]),
        class_model=class_model,
        pass_through_token=pass_through,
        public_url=text("public_url"),
        cursor_secret=cursor_secret.encode() if cursor_secret else None,
        max_body_size=int(number("max_body_size", int)),
        max_segment_objects=max_segment_objects,
    )
    return config, str(s["host"]), port


async def run(config: ProxyConfig, host: str, port: int) -> None:
    proxy = await start_proxy(config, host, port)
    print(f"TAMS authz proxy at {proxy.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await proxy.stop()


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    s = settings(args, os.environ)
    level = getattr(logging, str(s["log_level"]).upper(), None)
    if not isinstance(level, int):
        fail(f"--log-level {s['log_level']!r} is not a logging level")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config, host, port = config_from(s)
    try:
        asyncio.run(run(config, host, port))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


if __name__ == "__main__":
    main()

"""Builds the local store's aiohttp application: ``create_app(config)``.

Middlewares, outermost first:

1. ``latency_middleware``: ``--latency-ms`` delay before every answer (a store far away).
2. ``fault_middleware``: ``--fault-rate`` seeded 503s before any work (not for the token
   endpoint or the JWKS, so token tests stay deterministic).
3. ``error_middleware``: renders every ``StoreError`` and aiohttp HTTP error (unknown route 404,
   wrong method 405, body too large 413) as the spec's error body; nothing escapes as a 500
   without a body.
4. ``auth_middleware``: credentials and coarse scopes for every API route, and for every path
   that matches no route (401 before 404, so a caller without credentials learns nothing).

The access log (off unless ``--access-log``) records paths only, never query strings, so
presigned URL signatures and ``access_token`` parameters stay out of it.

Requests aiohttp refuses before any handler runs (a header line over ``MAX_FIELD_BYTES``, a
request line over ``MAX_LINE_BYTES``, bytes that are not HTTP) are answered by
``StoreRequestHandler`` with the spec's error body; aiohttp's own answer is plain text and its log
line quotes the offending bytes, which may be an Authorization header. Serve the app with
``StoreRunner`` to get that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler

from . import schemas
from .api import ROUTE_TABLES
from .auth import (
    ALL_SCOPES,
    Authenticator,
    ClientRecord,
    check_scope,
    generate_private_key_pem,
    token_endpoint,
    www_authenticate_headers,
)
from .config import StoreConfig
from .database import Database
from .errors import StoreError, Unauthorized, error_body, json_response
from .events import WebhookHub
from .gc import GarbageCollector
from .idp import ExternalIssuer, ExternalTokens
from .objects import ObjectFiles, UrlSigner
from .state import STORE, Backend, Store

__all__ = ["MAX_FIELD_BYTES", "PathOnlyAccessLogger", "StoreRequestHandler", "StoreRunner", "create_app", "env_values"]

logger = logging.getLogger(__name__)

TOKEN_PATH = "/oauth2/token"
JWKS_PATH = "/.well-known/jwks.json"
MEDIA_PATH = "/objects-data/{object_id}"
NO_FAULTS = frozenset({TOKEN_PATH, JWKS_PATH})
NO_API_AUTH = frozenset({TOKEN_PATH, JWKS_PATH, MEDIA_PATH})  # media checks its own signatures
# One header line may be this long: a bearer token of a client in many groups can pass
# aiohttp's default 8190 bytes. Longer ones get a 400 with the spec's error body.
MAX_FIELD_BYTES = 32 * 1024
MAX_LINE_BYTES = 16 * 1024  # the request line (path and query)


def _outside_api(path: str) -> bool:
    """The token endpoint, the JWKS and media downloads: they answer without API credentials."""
    return path in (TOKEN_PATH, JWKS_PATH) or path.startswith(MEDIA_PATH.split("{", 1)[0])


def _template(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else ""


@web.middleware
async def latency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    delay = request.app[STORE].config.latency_ms
    if delay > 0:
        await asyncio.sleep(delay / 1000)
    return await handler(request)


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    store = request.app[STORE]
    rate = store.config.fault_rate
    if rate > 0 and _template(request) not in NO_FAULTS and store.fault_rng.random() < rate:
        body = error_body("ServiceUnavailable", "Injected fault (--fault-rate); retry the request")
        return json_response(body, status=503, headers={"Retry-After": "0"})
    return await handler(request)


def render_error(status: int, error_type: str, summary: str, headers: Any = None) -> web.Response:
    response = json_response(error_body(error_type, summary), status=status)
    for name, value in headers or ():
        response.headers.add(name, value)
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Unauthorized as exc:
        return render_error(exc.status, exc.error_type, exc.summary, www_authenticate_headers(exc))
    except StoreError as exc:
        if exc.status >= 500:
            logger.error("%s %s failed: %s", request.method, request.path, exc.summary)
        return render_error(exc.status, exc.error_type, exc.summary)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = [(k, v) for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")]
        name = type(exc).__name__.removeprefix("HTTP")
        summary = exc.reason
        if exc.status == 404:
            summary = f"No such resource: {request.path}"
        elif exc.status == 405:
            summary = f"{request.method} is not allowed on {request.path}"
        return render_error(exc.status, name, summary, kept)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        logger.exception("unexpected error handling %s %s", request.method, request.path)
        return render_error(500, "InternalError", "The store failed to handle this request")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    match_info = request.match_info
    if match_info.http_exception is not None:
        # Credentials first: whether a path exists is not told to a caller without them.
        if not _outside_api(request.path):
            await request.app[STORE].auth.authenticate(request)
        raise match_info.http_exception
    template = _template(request)
    if template in NO_API_AUTH:
        return await handler(request)
    store = request.app[STORE]
    principal = await store.auth.authenticate(request)
    check_scope(principal, request.method, template)
    request["principal"] = principal
    return await handler(request)


class PathOnlyAccessLogger(AbstractAccessLogger):
    """Access log lines with the path only: query strings may hold signatures or tokens."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %s %.1fms',
            request.remote,
            request.method,
            request.path,
            response.status,
            response.body_length,
            time * 1000,
        )


async def _token(request: web.Request) -> web.Response:
    return await token_endpoint(request, request.app[STORE].auth)


async def _jwks(request: web.Request) -> web.Response:
    return json_response(await request.app[STORE].auth.jwks(), headers={"Cache-Control": "max-age=300"})


def _client_records(config: StoreConfig, settings: dict[str, str]) -> list[ClientRecord]:
    if config.clients is None:
        return [
            ClientRecord(
                client_id=settings["generated_client_id"],
                client_secret=settings["generated_client_secret"],
                scopes=ALL_SCOPES,
                groups=("admin",),
            )
        ]
    return [
        ClientRecord(
            client_id=str(c["client_id"]),
            client_secret=str(c["client_secret"]),
            scopes=tuple(str(s) for s in c.get("scopes", [])),
            groups=tuple(str(g) for g in c.get("groups", [])),
        )
        for c in config.clients
    ]


def _external_tokens(config: StoreConfig) -> ExternalTokens | None:
    if config.jwks_url is None:
        return None
    assert config.issuer is not None, "--issuer comes with --jwks-url"
    return ExternalTokens(
        ExternalIssuer(
            jwks_url=config.jwks_url,
            issuer=config.issuer,
            audience=config.audience,
            scope_claim=config.scope_claim,
            groups_claim=config.groups_claim,
            jwks_cooldown=config.jwks_cooldown,
        )
    )


async def _new_signing_key(db: Database) -> str:
    """Generate the token key off the event loop and keep it in the data dir."""
    pem = await asyncio.to_thread(generate_private_key_pem)
    settings = await db.settings({"jwt_private_key": pem})
    return settings["jwt_private_key"]


def _store_context(
    config: StoreConfig,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        schemas.warm_up()
        db = Database(config.data_dir / "tams.sqlite3")
        db.delete_request_ttl = config.delete_request_ttl
        await db.open()
        try:
            # Generated once per data dir and kept in it, so a restart keeps ids, keys and
            # credentials (tokens issued before a restart stay valid).
            settings = await db.settings(
                {
                    "backend_id": str(uuid.uuid4()),
                    "backend_label": "local",
                    "url_signing_key": secrets.token_hex(32),
                    "generated_username": "tams",
                    "generated_password": secrets.token_urlsafe(18),
                    "generated_client_id": "local-admin",
                    "generated_client_secret": secrets.token_urlsafe(24),
                }
            )
            if "jwt_private_key" in settings:
                signing_key: asyncio.Future[str] = asyncio.get_running_loop().create_future()
                signing_key.set_result(settings["jwt_private_key"])
            else:
                signing_key = asyncio.ensure_future(_new_signing_key(db))
            base_url = config.public_url or f"http://{config.host}:{config.port}"
            clients = _client_records(config, settings)
            auth = Authenticator(
                username=config.username if config.username is not None else settings["generated_username"],
                password=config.password if config.password is not None else settings["generated_password"],
                clients={c.client_id: c for c in clients},
                signing_key=signing_key,
                issuer=base_url,
                token_ttl=config.token_ttl,
                external=_external_tokens(config),
                own_tokens=config.own_tokens,
            )
            files = ObjectFiles(config.data_dir)
            hub = WebhookHub(db, config)
            app[STORE] = store = Store(
                config=config,
                db=db,
                files=files,
                signer=UrlSigner(bytes.fromhex(settings["url_signing_key"]), config.presigned_url_ttl),
                auth=auth,
                backend=Backend(id=settings["backend_id"], label=settings["backend_label"]),
                base_url=base_url,
                fault_rng=random.Random(config.fault_seed),
                hub=hub,
                service_name=settings.get("service_name"),
                service_description=settings.get("service_description"),
            )
            await hub.start(store)
            collector = GarbageCollector(db, files, config)
            collector.start()
            try:
                yield
            finally:
                await collector.close()
                await hub.close()
            if not signing_key.done():
                signing_key.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await signing_key
        finally:
            await db.close()

    return context


class StoreRequestHandler(RequestHandler):
    """aiohttp's connection handler, except for the answers it makes itself: requests that do
    not parse (header too long, not HTTP) get the spec's error body, and the log names only the
    kind of problem, never the bytes (aiohttp's exception messages quote the start of the
    offending header line, e.g. a token)."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # the answer has started: the connection is lost
            raise ConnectionError("an error happened after the response had started")
        if isinstance(exc, HttpProcessingError):
            logger.warning("refused a malformed request from %s: %d %s", request.remote, status, type(exc).__name__)
            if isinstance(exc, LineTooLong):
                summary = f"The request line or a header line is too long (a header line may have at most {MAX_FIELD_BYTES} bytes)"
            else:
                summary = "The request is not valid HTTP"
            error_type = "BadRequest"
        else:
            if exc is not None:
                logger.error("error handling %s %s", request.method, request.path, exc_info=exc)
            summary = "The store failed to handle this request" if status >= 500 else "The request could not be handled"
            error_type = "InternalError" if status >= 500 else "BadRequest"
        response = json_response(error_body(error_type, summary), status=status)
        response.force_close()
        return response


class _StoreServer(web.Server):
    def __call__(self) -> RequestHandler:
        return StoreRequestHandler(self, loop=self._loop, **self._kwargs)


class StoreRunner(web.AppRunner):
    """``web.AppRunner`` whose connections are handled by ``StoreRequestHandler``."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _StoreServer  # the same server state; only the handler class differs
        return server


def create_app(config: StoreConfig) -> web.Application:
    """The store as an aiohttp application; state is opened and closed in ``cleanup_ctx``."""
    app = web.Application(
        middlewares=[
            latency_middleware,
            fault_middleware,
            error_middleware,
            auth_middleware,
        ],
        client_max_size=config.max_body_bytes,
        handler_args={"max_field_size": MAX_FIELD_BYTES, "max_line_size": MAX_LINE_BYTES},
    )
    app.cleanup_ctx.append(_store_context(config))
    if config.own_tokens:
        app.router.add_post(TOKEN_PATH, _token)
        app.router.add_get(JWKS_PATH, _jwks)
    for table in ROUTE_TABLES:
        app.router.add_routes(table)
    return app


def env_values(store: Store) -> dict[str, str]:
    """What the ``.env`` file holds for the scripts."""
    auth = store.auth
    first_client = next(iter(auth.clients.values()), None)
    return {
        "TAMS_URL": store.base_url,
        "USERNAME": auth.username,
        "PASSWORD": auth.password,
        "OAUTH2_URL": store.base_url + TOKEN_PATH if store.config.own_tokens else "",
        "CLIENT_ID": first_client.client_id if first_client else "",
        "CLIENT_SECRET": first_client.client_secret if first_client else "",
    }

"""The authorisation proxy's web application: ``create_app(config)`` and ``start_proxy``.

Every request is handled the same way: verify the bearer token (``tokens``), classify the route
(``rules.match_route``; anything the TAMS 8.2 API does not define is refused here), then hand it
to the handler for its kind (``handlers``), which looks up what it needs, decides, and only then
sends the request upstream with the proxy's own credentials. Listings are filtered and re-paged
(``listing``).

Nothing here logs a token, an Authorization header or a query string (which may carry
``access_token`` or presigned signatures).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import BadHttpMethod, LineTooLong
from aiohttp.web_protocol import RequestHandler

from client import TAMSClient

from .config import ProxyConfig
from .errors import ProxyError, error_body
from .handlers import HANDLERS, Ctx, ProxyState, StreamBroken
from .listing import CursorCodec
from .rules import match_route
from .tokens import JWKSCache, TokenSettings, TokenVerifier, bearer_token
from .upstream import Lookups, Upstream, UpstreamAnswer

__all__ = ["ProxyConfig", "RunningProxy", "create_app", "start_proxy"]

logger = logging.getLogger(__name__)

CONFIG = web.AppKey("config", ProxyConfig)
STATE = web.AppKey("state", ProxyState)
SUBJECT = web.RequestKey("subject", str)


# ---------------------------------------------------------------------------------------
# The application


async def dispatch(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    token = bearer_token(
        request.headers.getall("Authorization", []),
        request.rel_url.query.getall("access_token", []),
    )
    caller = await state.verifier.verify(token)
    request[SUBJECT] = caller.subject
    match = match_route(request.method, request.rel_url.raw_path)
    caller_auth = "Bearer " + token
    ctx = Ctx(request, match.rule, match.params, caller, caller_auth, state,
              Lookups(state.upstream, caller_auth if state.config.pass_through_token else None))
    return await HANDLERS[match.rule.kind](ctx)


@web.middleware
async def error_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProxyError as exc:
        if exc.status >= 500:
            logger.warning("%s %s: %s", request.method, request.rel_url.path, exc.summary)
        return web.json_response(exc.body(), status=exc.status, headers=exc.headers())
    except UpstreamAnswer as exc:
        reply = exc.reply
        headers = {k: v for k, v in reply.headers.items() if k.lower() in ("content-type", "retry-after")}
        return web.Response(status=reply.status, body=reply.body or None, headers=headers)
    except web.HTTPException as exc:
        # aiohttp's own refusals (e.g. a body over client_max_size) in the spec's shape
        summary = exc.reason or HTTPStatus(exc.status).phrase
        return web.json_response(error_body(type(exc).__name__, summary), status=exc.status)
    except (StreamBroken, asyncio.CancelledError):
        raise
    except Exception:
        logger.exception("unexpected failure handling %s %s", request.method, request.rel_url.path)
        return web.json_response(error_body("InternalError", "The proxy failed unexpectedly"), status=500)


def create_app(config: ProxyConfig) -> web.Application:
    """The proxy as an aiohttp application (upstream client and JWKS session are opened on
    start-up and closed on clean-up)."""
    app = web.Application(middlewares=[error_middleware], client_max_size=config.max_body_size)
    app[CONFIG] = config
    app.cleanup_ctx.append(_resources)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    client = TAMSClient(config.api_url, config.credentials, concurrency=config.upstream_concurrency,
                        retry=config.upstream_retry)
    jwks_session = aiohttp.ClientSession()
    async with client:
        settings = TokenSettings(config.jwks_url, issuer=config.issuer, audience=config.audience,
                                 group_claim=config.group_claim, leeway=config.leeway,
                                 ignore_scopes=config.ignore_scopes, class_model=config.class_model)
        app[STATE] = ProxyState(
            config=config,
            upstream=Upstream(client, pass_through=config.pass_through_token),
            verifier=TokenVerifier(settings, JWKSCache(config.jwks_url, jwks_session,
                                                       min_refresh=config.jwks_min_refresh)),
            cursors=CursorCodec(config.cursor_secret or secrets.token_bytes(32)),
        )
        try:
            yield
        finally:
            await jwks_session.close()


# ---------------------------------------------------------------------------------------
# Serving: spec-shaped answers even for requests aiohttp refuses before any handler runs, and
# an access log without query strings.


class _AccessLogger(AbstractAccessLogger):
    """One line per request: method, path (never the query), status, subject, duration."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %d %s %.1fms", request.method, request.rel_url.path, response.status,
                         request.get(SUBJECT, "-"), time * 1000)


_STATUSES = {s.value for s in HTTPStatus}


class _SpecErrorRequestHandler(RequestHandler):
    """aiohttp answers malformed requests (huge header lines, bad request lines) itself, in
    plain text, and logs the message, which can quote header bytes. Answer in the spec's error
    shape instead and log only the status."""

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had started; cannot send an error")
        logger.info("refused a malformed request from %s with %d (%s)", request.remote, status,
                    type(exc).__name__ if exc else "-")
        if isinstance(exc, LineTooLong):
            summary = "The request line or a header is too long"
        elif isinstance(exc, BadHttpMethod):
            summary = "This is not an HTTP request"
        elif status < 500:
            summary = "The request is malformed: " + HTTPStatus(status).phrase if status in _STATUSES else "Bad request"
        else:
            summary = "The proxy failed unexpectedly"
        kind = "BadRequest" if status < 500 else "InternalError"
        response = web.json_response(error_body(kind, summary), status=status)
        response.force_close()
        return response


class _SpecErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _SpecErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class _ProxyRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _SpecErrorServer  # same state, our protocol class
        return server


@dataclass
class RunningProxy:
    url: str
    runner: web.AppRunner

    async def stop(self) -> None:
        await self.runner.cleanup()


# A bearer token of a caller in many groups can pass aiohttp's default 8190 bytes a header line;
# the local store takes the same sizes, so what the proxy lets through, the store can read.
MAX_FIELD_BYTES = 32 * 1024
MAX_LINE_BYTES = 16 * 1024  # the request line (path and query)


async def start_proxy(config: ProxyConfig, host: str = "127.0.0.1", port: int = 8001, *,
                      max_line_size: int = MAX_LINE_BYTES, max_field_size: int = MAX_FIELD_BYTES) -> RunningProxy:
    """Serve the proxy (port 0: a free port); ``url`` says where."""
    runner = _ProxyRunner(create_app(config), access_log_class=_AccessLogger,
                          max_line_size=max_line_size, max_field_size=max_field_size)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return RunningProxy(f"http://{host}:{bound}", runner)

"""The proxy's settings (``ProxyConfig``), shared by the handlers and the application."""

from __future__ import annotations

from dataclasses import dataclass, field

from client import RetryPolicy
from credentials import Credentials

from .classes import ClassModel

__all__ = ["ProxyConfig"]


@dataclass(frozen=True)
class ProxyConfig:
    """Everything the proxy needs. ``credentials`` are the proxy's own for the store; with
    ``pass_through_token`` the caller's token is sent upstream instead."""

    api_url: str
    jwks_url: str
    credentials: Credentials = field(default_factory=Credentials)
    group_claim: str = "groups"
    issuer: str | None = None
    audience: str | None = None
    leeway: float = 30.0
    ignore_scopes: bool = False
    class_model: ClassModel = ClassModel.AUTO  # how auth_classes tags grant permissions to groups
    pass_through_token: bool = False
    public_url: str | None = None  # how callers reach the proxy, for Link/Location; else from Host
    cursor_secret: bytes | None = None  # keys the page tokens' encryption; random per process when None
    max_body_size: int = 16 * 1024 * 1024
    default_limit: int = 100
    max_limit: int = 1000
    upstream_concurrency: int = 32
    upstream_retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(attempts=3, base=0.1, cap=1.0))
    delete_request_memory: int = 10000
    jwks_min_refresh: float = 10.0  # seconds between JWKS re-fetches caused by unknown kids
    # distinct objects one non-admin segment POST may name (each costs upstream look-ups)
    max_segment_objects: int = 100
    upstream_page_size: int | None = None  # items per upstream page in filtered listings; None: chosen per request

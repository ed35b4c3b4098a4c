"""The local store's configuration, as parsed from the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MIN_OBJECT_TIMEOUT_SPEC", "StoreConfig"]

# The spec's floor for ``min_object_timeout`` (service.json: "MUST be 300:0 or greater").
MIN_OBJECT_TIMEOUT_SPEC = 300


@dataclass
class StoreConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("store_data")
    username: str | None = None  # None: generated once per data dir
    password: str | None = None
    clients: list[dict[str, Any]] | None = None  # None: one generated admin client
    token_ttl: int = 3600
    fault_rate: float = 0.0
    fault_seed: int | None = None
    latency_ms: int = 0
    env_file: Path | None = None
    access_log: bool = False
    presigned_url_ttl: int = 3600
    # Garbage collection of media objects: allocated-but-unregistered objects, and objects no
    # segment references any more, are removed once they have been so for ``gc_grace`` seconds.
    # Below the spec's 300 s floor is for tests only; /service never advertises less than 300.
    gc_grace: float = 600.0
    gc_interval: float | None = None  # None: gc_grace / 4, at least 0.2 s
    # Webhook delivery: attempts per event before the webhook is marked ``error``, the first
    # retry delay (doubling up to ``webhook_backoff_cap``) and the timeout of one POST.
    webhook_attempts: int = 8
    webhook_backoff: float = 1.0
    webhook_backoff_cap: float = 60.0
    webhook_timeout: float = 10.0
    webhook_queue_limit: int = 10_000  # undelivered events per webhook before it is marked error
    delete_request_ttl: int = 24 * 3600  # how long deletion request records are kept, seconds
    max_body_bytes: int = 16 * 1024 * 1024  # JSON request bodies
    max_object_bytes: int = 4 * 1024 * 1024 * 1024  # media uploads
    default_limit: int = 100
    max_limit: int = 1000
    max_storage_limit: int = 1000
    public_url: str | None = None  # set once the port is known
    # Tokens of an outside identity provider (idp.py), alongside or instead of the store's own.
    jwks_url: str | None = None
    issuer: str | None = None  # the outside tokens' iss; required with jwks_url
    audience: str | None = None
    scope_claim: str = "scope"
    groups_claim: str = "groups"
    jwks_cooldown: float = 30.0
    own_tokens: bool = True

    @property
    def gc_sweep_interval(self) -> float:
        if self.gc_interval is not None:
            return max(self.gc_interval, 0.2)
        return max(self.gc_grace / 4, 0.2)

    @property
    def min_object_timeout(self) -> float:
        """What /service advertises: the grace period, never below the spec's floor."""
        return max(self.gc_grace, MIN_OBJECT_TIMEOUT_SPEC)

"""The local store's configuration, as parsed from the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["StoreConfig"]


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
    min_object_timeout: int = 3600
    max_body_bytes: int = 16 * 1024 * 1024  # JSON request bodies
    max_object_bytes: int = 4 * 1024 * 1024 * 1024  # media uploads
    default_limit: int = 100
    max_limit: int = 1000
    max_storage_limit: int = 1000
    public_url: str | None = None  # set once the port is known

"""The per-application state every handler reaches through ``request.app[STORE]``."""

from __future__ import annotations

import random
from dataclasses import dataclass

from aiohttp import web

from .auth import Authenticator
from .config import StoreConfig
from .database import Database
from .events import WebhookHub
from .objects import Backend, ObjectFiles, UrlSigner

__all__ = ["STORE", "Backend", "Store"]


@dataclass
class Store:
    config: StoreConfig
    db: Database
    files: ObjectFiles
    signer: UrlSigner
    auth: Authenticator
    backend: Backend
    base_url: str
    fault_rng: random.Random
    hub: WebhookHub
    service_name: str | None = None
    service_description: str | None = None


STORE: web.AppKey[Store] = web.AppKey("store", Store)

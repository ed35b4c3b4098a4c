"""The per-application state every handler reaches through ``request.app[STORE]``."""

from __future__ import annotations

import random
from dataclasses import dataclass

from aiohttp import web

from .auth import Authenticator
from .config import StoreConfig
from .database import Database
from .events import WebhookHub
from .objects import ObjectFiles, UrlSigner

__all__ = ["STORE", "Backend", "Store"]


@dataclass(frozen=True, slots=True)
class Backend:
    """The one storage backend: this store's own data directory."""

    id: str
    label: str
    store_type: str = "http_object_store"
    provider: str = "local"
    store_product: str = "tams-toolkit local_store"

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "label": self.label,
            "store_type": self.store_type,
            "provider": self.provider,
            "store_product": self.store_product,
            "default_storage": True,
        }

    def verbose(self) -> dict[str, object]:
        return {
            "store_type": self.store_type,
            "provider": self.provider,
            "store_product": self.store_product,
        }


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

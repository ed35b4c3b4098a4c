"""Shared fixtures: a real local store subprocess on a free port with a temporary data dir.

``store_factory(**options)`` starts ``python -m local_store`` (through ``local_store.launcher``)
and returns a ``RunningStore``; ``tams_store`` is one store with the default clients. Every store
started is stopped at teardown. ``receiver`` is a real webhook receiver on loopback. Tests import
the helpers as ``from tests.conftest import ...``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from local_store.launcher import RunningStore, StoreStartError
from local_store.launcher import start_store as launch_store
from tests.webhook_support import Receiver, receiver_running

__all__ = ["DEFAULT_CLIENTS", "REPO_ROOT", "RunningStore", "StoreStartError", "start_store"]

REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_CLIENTS: list[dict[str, Any]] = [
    {
        "client_id": "test-admin",
        "client_secret": "test-admin-secret",
        "scopes": [
            "tams-api/read",
            "tams-api/write",
            "tams-api/delete",
            "tams-api/admin",
        ],
        "groups": ["admin"],
    },
    {
        "client_id": "test-reader",
        "client_secret": "test-reader-secret",
        "scopes": ["tams-api/read"],
        "groups": [],
    },
]


def signalled_as_the_client_closes(module: str) -> str:
    """A ``python -c`` program running ``module``'s ``main`` on its arguments, which sends itself
    SIGTERM as its TAMSClient begins to close: a stop that comes once the job is done."""
    return (
        "import os, signal, sys\n"
        "import client\n"
        "close = client.TAMSClient.close\n"
        "async def signalled_close(self):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    await close(self)\n"
        "client.TAMSClient.close = signalled_close\n"
        f"from {module} import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )


def start_store(
    data_dir: Path,
    *,
    clients: list[dict[str, Any]] | None = None,
    username: str = "test-user",
    password: str = "test-password",
    **options: Any,
) -> RunningStore:
    """``local_store.launcher.start_store`` with the test defaults: ``DEFAULT_CLIENTS`` and a known
    username and password. Other options (``fault_rate``, ``fault_seed``, ``token_ttl``,
    ``latency_ms``, ``gc_grace``, ``gc_interval``, ``extra_args``, ``port``, ...) pass through."""
    return launch_store(
        data_dir,
        clients=DEFAULT_CLIENTS if clients is None else clients,
        username=username,
        password=password,
        **options,
    )


@pytest.fixture
def store_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., RunningStore]]:
    """``store_factory(fault_rate=, fault_seed=, token_ttl=, latency_ms=, clients=, data_dir=,
    gc_grace=, gc_interval=, extra_args=)``."""
    started: list[RunningStore] = []

    def factory(*, data_dir: Path | None = None, **options: Any) -> RunningStore:
        if data_dir is None:
            data_dir = tmp_path_factory.mktemp("store") / "data"
        store = start_store(Path(data_dir), **options)
        started.append(store)
        return store

    yield factory
    for store in started:
        store.stop()


@pytest.fixture
def tams_store(store_factory: Callable[..., RunningStore]) -> RunningStore:
    """A store with the default clients (test-admin, test-reader) and basic auth."""
    return store_factory()


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStore]:
    """One default store for a whole test module (tests that only add their own Flows)."""
    store = start_store(tmp_path_factory.mktemp("shared-store") / "data")
    yield store
    store.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on a free loopback port (``tests/webhook_support.py``)."""
    async with receiver_running() as recv:
        yield recv

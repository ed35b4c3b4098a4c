"""Garbage collection of media objects (``--gc-grace``, ``--gc-interval``).

Every ``gc_sweep_interval`` seconds one sweep runs ``Database.collect_garbage``, which removes,
in one transaction, the records of objects that were

(a) allocated by ``/flows/{id}/storage`` but never registered by a segment, for longer than the
    grace period since their allocation (or their upload, if later), and
(b) registered, but referenced by no segment (and, for init objects, by no media object) for
    longer than the grace period,

and then unlinks their files. An object a segment references is never removed: the check and
the delete are one transaction on the database's single writer, and a segment POST that loses
the race finds the object's tombstone and is refused.

Once, shortly after start-up, the sweep also reconciles the object directory with the database:
a file that belongs to no object the store holds bytes for, and is older than the grace period,
is left over from a crash between a COMMIT and an unlink, and is removed.

``/service`` advertises ``min_object_timeout`` as the grace period, but never less than the
spec's floor of 300 s: a grace below that is for tests only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from pathlib import Path

from .config import StoreConfig
from .database import Database
from .objects import ObjectFiles

__all__ = ["GarbageCollector"]

logger = logging.getLogger(__name__)


class GarbageCollector:
    """The periodic sweep; ``start()`` launches it, ``close()`` stops it."""

    def __init__(self, db: Database, files: ObjectFiles, config: StoreConfig) -> None:
        self._db = db
        self._files = files
        self._config = config
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="object-gc")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        interval = self._config.gc_sweep_interval
        reconciled = False
        await self._remove_files(await self._db.pending_file_removals())  # left by a crash
        while True:
            try:
                more = await self.sweep()
                if not reconciled:
                    reconciled = True
                    await self._reconcile_files()
            except asyncio.CancelledError:
                raise
            except Exception:  # the sweep must outlive any one failure
                logger.exception("garbage collection sweep failed")
                more = False
            await asyncio.sleep(0 if more else interval)

    async def sweep(self) -> bool:
        """One garbage collection transaction and its file removals; True if there is more."""
        outcome = await self._db.collect_garbage(self._config.gc_grace)
        if outcome.removed:
            logger.info("garbage collection removed %d objects", len(outcome.removed))
        await self._remove_files(outcome.files)
        return outcome.more

    async def _remove_files(self, object_ids: list[str]) -> None:
        if not object_ids:
            return
        paths = [self._files.path_for(oid) for oid in object_ids]
        await asyncio.to_thread(_unlink_all, paths)
        await self._db.file_removals_done(object_ids)

    async def _reconcile_files(self) -> None:
        held = await self._db.controlled_object_ids()
        keep = {hashlib.sha256(oid.encode("utf-8")).hexdigest() for oid in held}
        cutoff = time.time() - self._config.gc_grace
        removed = await asyncio.to_thread(_remove_strays, self._files.root, keep, cutoff)
        if removed:
            logger.info("removed %d media files no object record owns", removed)


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _remove_strays(root: Path, keep: set[str], cutoff: float) -> int:
    removed = 0
    for directory in root.iterdir() if root.is_dir() else ():
        if not directory.is_dir():
            continue
        for entry in os.scandir(directory):
            if entry.name in keep or not entry.is_file():
                continue
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
    return removed

"""The adapter registry in the shared database: where several servers (`database_url`) keep one registry.

Alone, a server's registry is its adapters directory (server/engine/adapters.py: a folder per version,
`owner.json`, the `active` pointer). Servers that share a database keep the registry there instead: every
adapter's owner, whether it is shared, its versions (with their manifests) and the active one. The weight files
stay in the adapters directory, which those servers mount in common; a version's folder is written only after its
number is claimed here, and a deleted adapter's folder is moved away in the transaction that deletes its rows.

Every change bumps one generation counter (its row lock also puts all registry changes in one order, so two
servers never claim one version number or both pass an owner's quota). Each server polls the counter and, when it
moved, reads the registry again and serves what it names active: a version added, promoted or deleted on one
server is served (or refused) by the others within `POLL_S`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from server.engine.adapters import (
    ADAPTER_NAME,
    AdapterNotFound,
    AdapterOwned,
    AdapterQuotaExceeded,
    AdapterStore,
    Ownership,
    read_manifest,
    read_ownership,
)
from server.storage import Database, Location
from server.supervision import start_supervised, stop

logger = logging.getLogger(__name__)

POLL_S = 0.5  # how soon a server serves what another changed

MIGRATIONS = (
    """
    CREATE TABLE adapter_registry_generation (id INTEGER PRIMARY KEY CHECK (id = 1), generation BIGINT NOT NULL);
    INSERT INTO adapter_registry_generation (id, generation) VALUES (1, 0);
    CREATE TABLE registered_adapters (
        model TEXT NOT NULL,
        name TEXT NOT NULL,
        owner TEXT,
        shared INTEGER NOT NULL,
        active INTEGER,
        PRIMARY KEY (model, name)
    );
    CREATE TABLE registered_adapter_versions (
        model TEXT NOT NULL,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        manifest TEXT NOT NULL,
        PRIMARY KEY (model, name, version),
        FOREIGN KEY (model, name) REFERENCES registered_adapters (model, name) ON DELETE CASCADE
    );
    """,
)


@dataclass(frozen=True, slots=True)
class RegisteredAdapter:
    """One adapter as the registry holds it: its owner, its versions' manifests, the version served (None: none)."""

    ownership: Ownership
    versions: dict[int, dict]
    active: int | None


Registered = dict[str, RegisteredAdapter]  # one model's adapters by name


@dataclass(frozen=True, slots=True)
class Claim:
    """A version number taken for an adapter (and whether that made the adapter)."""

    version: int
    created: bool


class AdapterRegistry(Database):
    """The registry's tables; every method runs on the store thread, each change in one transaction."""

    MIGRATIONS = MIGRATIONS
    SCHEMA = "adapter_registry"

    def __init__(self, location: Location) -> None:
        super().__init__(location, "adapter-registry")

    async def generation(self) -> int:
        return await self._run(self._generation)

    def _generation(self) -> int:
        return int(self.db.execute("SELECT generation FROM adapter_registry_generation").fetchone()["generation"])

    def _change(self) -> None:
        """Bump the generation first in every change: its row lock orders all changes, on every server."""
        self.db.execute("UPDATE adapter_registry_generation SET generation = generation + 1 WHERE id = 1")

    async def load(self) -> tuple[int, dict[str, Registered]]:
        """The generation and every model's adapters, read in one transaction."""
        return await self._run(self._load)

    def _load(self) -> tuple[int, dict[str, Registered]]:
        with self.db.transaction():
            generation = self._generation()
            adapters = self.db.execute("SELECT model, name, owner, shared, active FROM registered_adapters").fetchall()
            versions = self.db.execute(
                "SELECT model, name, version, manifest FROM registered_adapter_versions ORDER BY version"
            ).fetchall()
        by_adapter: dict[tuple[str, str], dict[int, dict]] = {}
        for row in versions:
            by_adapter.setdefault((row["model"], row["name"]), {})[row["version"]] = json.loads(row["manifest"])
        models: dict[str, Registered] = {}
        for row in adapters:
            models.setdefault(row["model"], {})[row["name"]] = RegisteredAdapter(
                Ownership(owner=row["owner"], shared=bool(row["shared"])),
                by_adapter.get((row["model"], row["name"]), {}),
                row["active"],
            )
        return generation, models

    async def claim(
        self,
        model: str,
        name: str,
        manifest: dict,
        *,
        owner: str | None,
        admin: bool,
        shared: bool,
        max_versions: int | None,
        max_adapters: int | None,
    ) -> Claim:
        """Take the next version number of `name` (making the adapter, `owner`'s, if it is new), with its manifest.

        AdapterOwned when it is another's; AdapterQuotaExceeded when the owner's adapters or its versions are full."""
        return await self._run(self._claim, model, name, manifest, owner, admin, shared, max_versions, max_adapters)

    def _claim(
        self,
        model: str,
        name: str,
        manifest: dict,
        owner: str | None,
        admin: bool,
        shared: bool,
        max_versions: int | None,
        max_adapters: int | None,
    ) -> Claim:
        with self.db.transaction():
            self._change()
            row = self.db.execute(
                "SELECT owner, shared FROM registered_adapters WHERE model = ? AND name = ?", (model, name)
            ).fetchone()
            if row is None:
                if max_adapters is not None and owner is not None:
                    owned = self.db.execute(
                        "SELECT COUNT(*) AS n FROM registered_adapters WHERE model = ? AND owner = ?", (model, owner)
                    ).fetchone()["n"]
                    if owned >= max_adapters:
                        raise AdapterQuotaExceeded(
                            f"This API key owns {max_adapters} adapters, its quota; delete one first."
                        )
                self.db.execute(
                    "INSERT INTO registered_adapters (model, name, owner, shared, active) VALUES (?, ?, ?, ?, NULL)",
                    (model, name, owner, int(shared)),
                )
            elif not Ownership(row["owner"], bool(row["shared"])).may_change(owner or "", admin):
                raise AdapterOwned(name)
            numbers = [
                r["version"]
                for r in self.db.execute(
                    "SELECT version FROM registered_adapter_versions WHERE model = ? AND name = ?", (model, name)
                )
            ]
            if row is not None and max_versions is not None and len(numbers) >= max_versions:
                raise AdapterQuotaExceeded(
                    f"The adapter `{name}` has {max_versions} versions, the quota; delete the adapter or ask an admin."
                )
            number = max(numbers, default=0) + 1
            self.db.execute(
                "INSERT INTO registered_adapter_versions (model, name, version, manifest) VALUES (?, ?, ?, ?)",
                (model, name, number, json.dumps({**manifest, "version": number})),
            )
        return Claim(number, created=row is None)

    async def activate(self, model: str, name: str, version: int) -> None:
        await self._run(self._activate, model, name, version)

    def _activate(self, model: str, name: str, version: int) -> None:
        with self.db.transaction():
            self._change()
            self.db.execute(
                "UPDATE registered_adapters SET active = ? WHERE model = ? AND name = ?", (version, model, name)
            )

    async def forget(self, model: str, name: str, claim: Claim) -> None:
        """Undo a claim whose files or engine load failed."""
        await self._run(self._forget, model, name, claim)

    def _forget(self, model: str, name: str, claim: Claim) -> None:
        with self.db.transaction():
            self._change()
            if claim.created:
                self.db.execute("DELETE FROM registered_adapters WHERE model = ? AND name = ?", (model, name))
            self.db.execute(
                "DELETE FROM registered_adapter_versions WHERE model = ? AND name = ? AND version = ?",
                (model, name, claim.version),
            )

    async def remove(self, model: str, name: str, directory: Path, *, owner: str | None, admin: bool) -> Path | None:
        """Delete `name` from the registry and move its folder out of the directory, together (AdapterNotFound for
        one who may not use it, AdapterOwned for one who may not change it). Where the folder went, to be deleted."""
        return await self._run(self._remove, model, name, directory, owner, admin)

    def _remove(self, model: str, name: str, directory: Path, owner: str | None, admin: bool) -> Path | None:
        with self.db.transaction():
            self._change()
            row = self.db.execute(
                "SELECT owner, shared FROM registered_adapters WHERE model = ? AND name = ?", (model, name)
            ).fetchone()
            ownership = Ownership(row["owner"], bool(row["shared"])) if row is not None else None
            if ownership is None or not ownership.may_use(owner or "", admin):
                raise AdapterNotFound(name, "name")
            if not ownership.may_change(owner or "", admin):
                raise AdapterOwned(name, "name")
            self.db.execute("DELETE FROM registered_adapters WHERE model = ? AND name = ?", (model, name))
            removed = directory.with_name(f".removed-{name}-{uuid.uuid4().hex[:8]}")
            try:  # within the transaction: no server sees the rows gone and the folder still there, or the reverse
                directory.rename(removed)
            except FileNotFoundError:
                return None
        return removed

    async def import_directories(self, model: str, root: Path) -> list[str]:
        """Register the adapters in `root` the registry does not know (put there by the operator, or by servers
        before they shared a database), with their owner files and active pointers. The names imported."""
        return await self._run(self._import, model, root)

    def _import(self, model: str, root: Path) -> list[str]:
        if not root.is_dir():
            return []
        imported = []
        with self.db.transaction():
            self._change()
            known = {
                r["name"] for r in self.db.execute("SELECT name FROM registered_adapters WHERE model = ?", (model,))
            }
            for directory in sorted(p for p in root.iterdir() if p.is_dir() and ADAPTER_NAME.match(p.name)):
                versions = AdapterStore._versions(directory)
                if directory.name in known or not versions:
                    continue
                ownership = read_ownership(directory)
                self.db.execute(
                    "INSERT INTO registered_adapters (model, name, owner, shared, active) VALUES (?, ?, ?, ?, ?)",
                    (model, directory.name, ownership.owner, int(ownership.shared), file_active(directory, versions)),
                )
                self.db.executemany(
                    "INSERT INTO registered_adapter_versions (model, name, version, manifest) VALUES (?, ?, ?, ?)",
                    [(model, directory.name, n, json.dumps(read_manifest(directory / f"v{n}"))) for n in versions],
                )
                imported.append(directory.name)
        return imported


def file_active(directory: Path, versions: Sequence[int]) -> int | None:
    """The version a directory's `active` file names (its latest where the file names none valid; None: `none`)."""
    return AdapterStore.active_in_directory(directory, list(versions))


class RegistryPoller:
    """Keeps the stores' views of the registry current: reads it again whenever its generation moved."""

    def __init__(self, registry: AdapterRegistry, stores: Sequence[AdapterStore]) -> None:
        self.registry = registry
        self.stores = list(stores)
        self._seen: int | None = None

    async def refresh(self) -> None:
        generation, models = await self.registry.load()
        for store in self.stores:
            await store.apply_registry(generation, models.get(store.entry.name, {}))
        self._seen = generation

    async def poll(self) -> None:
        while True:
            if await self.registry.generation() != self._seen:
                await self.refresh()
            await asyncio.sleep(POLL_S)


@asynccontextmanager
async def shared_adapter_registry(
    database_url: Location | None, stores: Sequence[AdapterStore], backoff_s: float = 1.0
) -> AsyncIterator[AdapterRegistry | None]:
    """With a shared database: the stores' registry moved there (adapters on disk it lacks imported first), kept
    current by a supervised poll. Without one: nothing (each store's directory stays its registry)."""
    if database_url is None:
        yield None
        return
    registry = AdapterRegistry(database_url)
    await registry.open()
    poller = RegistryPoller(registry, stores)
    task = None
    try:
        for store in stores:
            imported = await registry.import_directories(store.entry.name, store.root)
            if imported:
                logger.info("adapter registry: imported %s of %s from %s", imported, store.entry.name, store.root)
            store.registry = registry
        await poller.refresh()
        task = start_supervised("adapter registry poll", poller.poll, backoff_s)
        yield registry
    finally:
        await stop(task)
        for store in stores:
            store.registry = None
        await registry.close()


def delete_folder(removed: Path | None) -> None:
    if removed is not None:
        with suppress(OSError):
            shutil.rmtree(removed)

"""The SQLite connection and migration helper the stores share.

Each store owns one connection, used from one thread at a time (its own
single-thread executor), so nothing here locks. WAL lets readers on other
connections (curation's planner) run while the store writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar, TypeVar

T = TypeVar("T")


def open_database(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA busy_timeout=10000")
    connection.row_factory = sqlite3.Row
    return connection


def migrate(connection: sqlite3.Connection, migrations: Sequence[str]) -> None:
    """Apply the migrations past the database's `user_version`, each in its own transaction."""
    applied = connection.execute("PRAGMA user_version").fetchone()[0]
    for version, script in enumerate(migrations[applied:], start=applied + 1):
        connection.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={version};\nCOMMIT;")


class StoreThread(ABC):
    """The one thread a store's connection is used from; subclasses open and close the connection."""

    def __init__(self, thread_name: str) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=thread_name)

    async def _run(self, work: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, work, *args)

    async def open(self) -> None:
        await self._run(self._open)

    @abstractmethod
    def _open(self) -> None: ...

    async def close(self) -> None:
        await self._run(self._close)
        self._thread.shutdown()

    @abstractmethod
    def _close(self) -> None: ...


class ThreadedDatabase(StoreThread):
    """A store's one SQLite connection and the one thread that uses it; subclasses set MIGRATIONS."""

    MIGRATIONS: ClassVar[Sequence[str]] = ()

    def __init__(self, path: Path, thread_name: str) -> None:
        super().__init__(thread_name)
        self._path = path
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "store not opened"
        return self._db

    def _open(self) -> None:
        self._db = open_database(self._path)
        migrate(self._db, self.MIGRATIONS)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

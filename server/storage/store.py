"""A store's one connection (SQLite or PostgreSQL) and the one thread that uses it.

Each store owns one connection, used from one thread at a time (its own
single-thread executor), so nothing here locks. `self.db.transaction()` is the
one way to write a transaction, on either engine.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, TypeVar

from server.storage.connection import Connection, Location, connect, is_postgres

T = TypeVar("T")


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


class Database(StoreThread):
    """A store's one connection and the one thread that uses it.

    Subclasses set MIGRATIONS and SCHEMA (the name PostgreSQL keeps their version under), and
    POSTGRES_MIGRATIONS where the SQLite schema's text does not suit PostgreSQL."""

    MIGRATIONS: ClassVar[Sequence[str]] = ()
    POSTGRES_MIGRATIONS: ClassVar[Sequence[str] | None] = None  # None: MIGRATIONS on both engines
    SCHEMA: ClassVar[str] = ""

    def __init__(self, location: Location, thread_name: str) -> None:
        super().__init__(thread_name)
        self._location = location
        self._db: Connection | None = None

    @property
    def db(self) -> Connection:
        assert self._db is not None, "store not opened"
        return self._db

    def _open(self) -> None:
        postgres = is_postgres(self._location) and self.POSTGRES_MIGRATIONS is not None
        migrations = self.POSTGRES_MIGRATIONS if postgres else self.MIGRATIONS
        self._db = connect(self._location, self.SCHEMA or type(self).__name__, migrations or ())

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

"""Connections: an embedded SQLite file, or PostgreSQL where several servers share state.

A store writes its SQL once, with `?` (or `:name`) placeholders and types both
engines read alike (TEXT, INTEGER, BIGINT, DOUBLE PRECISION); the few spellings
that differ come from the connection's `Dialect`. SQLite keeps each store in its
own file, versioned by `PRAGMA user_version`; in PostgreSQL the stores share one
database and keep their schema versions in `schema_versions`, migrated under an
advisory lock so servers starting together do not race.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

Location = Path | str  # a SQLite file, or a postgresql:// URL
Params = Sequence[object] | Mapping[str, object]
Row = Mapping[str, Any]  # sqlite3.Row and psycopg's dict rows both read by column name

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
MIGRATION_LOCK = 7_305_511  # the advisory lock id PostgreSQL migrations hold


def is_postgres(location: Location) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


@dataclass(frozen=True, slots=True)
class Dialect:
    """What a store's SQL spells differently per engine (templates filled with str.format)."""

    utc_day: str  # {0}: a unix time column -> its UTC day, 'YYYY-MM-DD'
    utc_hour: str  # {0}: a unix time column -> its UTC hour, 'YYYY-MM-DDTHH:00'
    json_elements: str  # {0}: a JSON array column, {1}: an alias -> a LEFT JOIN with `{1}.value` per element
    json_values: str  # {0}: a JSON array (a parameter) -> a FROM item with a text `value` per element


SQLITE = Dialect(
    utc_day="date({0}, 'unixepoch')",
    utc_hour="strftime('%Y-%m-%dT%H:00', {0}, 'unixepoch')",
    json_elements="LEFT JOIN json_each({0}) AS {1}",
    json_values="json_each({0})",
)
POSTGRES = Dialect(
    utc_day="to_char(to_timestamp({0}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    utc_hour="to_char(to_timestamp({0}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:00')",
    json_elements="LEFT JOIN LATERAL jsonb_array_elements_text(CAST({0} AS jsonb)) AS {1}(value) ON TRUE",
    json_values="jsonb_array_elements_text(CAST({0} AS jsonb)) AS json_values(value)",
)


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """One store's connection, used from its one thread."""

    dialect: Dialect
    integrity_errors: tuple[type[Exception], ...]  # a unique or foreign key constraint refused the write

    def execute(self, sql: str, params: Params = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Iterable[Params]) -> None: ...

    def transaction(self) -> AbstractContextManager[None]: ...

    def close(self) -> None: ...


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


class SQLiteConnection:
    dialect = SQLITE
    integrity_errors: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)

    def __init__(self, path: Path, migrations: Sequence[str]) -> None:
        self._db = open_database(path)
        migrate(self._db, migrations)

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        return self._db.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        self._db.executemany(sql, rows)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE: the write lock up front, so a transaction that reads then writes never deadlocks."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@lru_cache(maxsize=256)
def to_pyformat(sql: str) -> str:
    """`?` and `:name` placeholders as psycopg's `%s` and `%(name)s` (store SQL has no `?` or `:` in literals)."""
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%").replace("?", "%s"))


def connect_postgres(url: str) -> Any:
    import psycopg
    from psycopg.rows import dict_row

    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


class PostgresConnection:
    dialect = POSTGRES

    def __init__(self, url: str, schema: str, migrations: Sequence[str]) -> None:
        import psycopg

        self.integrity_errors = (psycopg.IntegrityError,)
        self._url = url
        self._db = connect_postgres(url)
        self._migrate(schema, migrations)

    def _live(self) -> Any:
        """The connection, made anew when the last one was lost (the call that lost it failed; later ones go on)."""
        if self._db.broken or self._db.closed:
            self._db = connect_postgres(self._url)
        return self._db

    def _migrate(self, schema: str, migrations: Sequence[str]) -> None:
        with self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions (store TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            row = self._db.execute("SELECT version FROM schema_versions WHERE store = %s", (schema,)).fetchone()
            applied = row["version"] if row is not None else 0
            for version, script in enumerate(migrations[applied:], start=applied + 1):
                self._db.execute(script)
                self._db.execute(
                    "INSERT INTO schema_versions (store, version) VALUES (%s, %s)"
                    " ON CONFLICT (store) DO UPDATE SET version = EXCLUDED.version",
                    (schema, version),
                )

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        return self._live().execute(to_pyformat(sql), params)

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        with self._live().cursor() as cursor:
            cursor.executemany(to_pyformat(sql), rows)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._live().transaction():
            yield

    def close(self) -> None:
        self._db.close()


def connect(location: Location, schema: str, migrations: Sequence[str]) -> Connection:
    """An open, migrated connection to the store's database."""
    if is_postgres(location):
        return PostgresConnection(str(location), schema, migrations)
    return SQLiteConnection(Path(location), migrations)


def query_exists(location: Location, table: str, sql: str) -> bool:
    """Whether `sql` finds a row, read without creating or migrating anything (False before `table` exists)."""
    if is_postgres(location):
        with closing(connect_postgres(str(location))) as db:
            if db.execute("SELECT to_regclass(%s) AS found", (table,)).fetchone()["found"] is None:
                return False
            return db.execute(to_pyformat(sql), ()).fetchone() is not None
    path = Path(location)
    if not path.exists():
        return False
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        try:
            return db.execute(sql).fetchone() is not None
        except sqlite3.OperationalError:  # not migrated yet
            return False

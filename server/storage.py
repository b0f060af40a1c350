"""The SQLite connection and migration helper the stores share.

Each store owns one connection, used from one thread at a time (its own
single-thread executor), so nothing here locks. WAL lets readers on other
connections (curation's planner) run while the store writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path


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

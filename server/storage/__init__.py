"""The one storage layer: SQLite or PostgreSQL connections, migrations, transactions, and the store thread."""

from server.storage.connection import (
    POSTGRES,
    SQLITE,
    Connection,
    Dialect,
    Location,
    Row,
    connect,
    is_postgres,
    query_exists,
)
from server.storage.store import Database, StoreThread

__all__ = [
    "POSTGRES",
    "SQLITE",
    "Connection",
    "Database",
    "Dialect",
    "Location",
    "Row",
    "StoreThread",
    "connect",
    "is_postgres",
    "query_exists",
]

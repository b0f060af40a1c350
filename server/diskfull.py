"""Recognising a full data directory: SQLite's SQLITE_FULL, or the OS's ENOSPC / EDQUOT, however wrapped."""

from __future__ import annotations

import errno
import sqlite3

DISK_FULL_MESSAGE = (
    "The server's data directory is full: it cannot store anything now. Reading and generation still work; "
    "writes resume once space is freed. Please retry later."
)
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc` (or an exception it was raised from) says the disk or quota is full."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            return True
        if isinstance(exc, sqlite3.OperationalError) and (
            getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
        ):
            return True
        if "No space left on device" in str(exc) or "could not extend file" in str(exc):  # psycopg: disk_full
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False

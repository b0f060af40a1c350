"""A full disk is recognised however it surfaces, and answers 503 `storage_full`."""

from __future__ import annotations

import errno
import sqlite3

from server.api.errors import to_api_error
from server.diskfull import is_disk_full


def test_full_disk_errors_are_recognised_directly_and_through_causes() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("copying the adapter failed") from inner
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))
    assert not is_disk_full(None)


def test_a_full_disk_answers_503_storage_full_with_retry_after() -> None:
    error = to_api_error(sqlite3.OperationalError("database or disk is full"))
    assert (error.status, error.type, error.code) == (503, "service_unavailable", "storage_full")
    assert "data directory is full" in error.message and error.headers() == {"Retry-After": "60"}
    assert to_api_error(ValueError("x")).status == 500

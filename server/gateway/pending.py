"""Writes queued off the response path and committed in batches on a store's thread, never dropped.

A batch whose write fails (disk full, a lost database connection) goes back to
the front of the queue, the failure is logged, and the write is tried again
after a back-off that doubles up to `max_backoff_s`; the next successful write
takes everything pending. `written()` lets a caller wait until what it queued
is committed (e.g. before a response's last byte).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class WriteFailed(Exception):
    """Queued writes could not be committed (yet): they stay queued and are retried."""


def retry_delay(failures: int, first_s: float, max_s: float) -> float:
    """Back-off before the next try after `failures` failures in a row (1, 2, ...)."""
    return min(first_s * 2 ** (failures - 1), max_s)


class PendingWrites(Generic[T]):
    def __init__(
        self,
        name: str,
        executor: Executor,
        write: Callable[[list[T]], None],
        *,
        first_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.name = name
        self._executor = executor
        self._write = write  # runs on the store's thread, commits the whole batch or raises
        self._items: deque[T] = deque()
        self._flush_queued = False
        self._lock = threading.Lock()
        self._first_backoff_s = first_backoff_s
        self._max_backoff_s = max_backoff_s
        self._timer: threading.Timer | None = None
        self.failures_in_a_row = 0
        self.failed_writes = 0  # failed attempts since start (each is logged)
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T) -> None:
        """Queue `item` (from any thread); it is written with whatever else is pending."""
        self._items.append(item)
        self._schedule()

    def _schedule(self) -> None:
        with self._lock:
            if self._flush_queued or self._closed or self._timer is not None:
                return  # a flush is coming (a waiting retry takes new items too)
            self._flush_queued = True
        self._executor.submit(self.flush)

    def flush(self) -> None:
        """On the store's thread: write everything pending; on failure keep it, log, and retry later."""
        with self._lock:
            self._flush_queued = False
        batch: list[T] = []
        while self._items:
            batch.append(self._items.popleft())
        if not batch:
            return
        try:
            self._write(batch)
        except Exception as exc:
            self._items.extendleft(reversed(batch))  # back in front, in order
            self.failures_in_a_row += 1
            self.failed_writes += 1
            delay = retry_delay(self.failures_in_a_row, self._first_backoff_s, self._max_backoff_s)
            logger.error(
                "%s: writing %d queued record(s) failed (%s: %s); kept, retrying in %.1fs",
                self.name,
                len(batch),
                type(exc).__name__,
                exc,
                delay,
            )
            self._retry_after(delay)
            raise WriteFailed(f"{self.name}: {exc}") from exc
        if self.failures_in_a_row:
            logger.warning("%s: writes resumed after %d failure(s)", self.name, self.failures_in_a_row)
        self.failures_in_a_row = 0

    def _retry_after(self, delay_s: float) -> None:
        with self._lock:
            if self._closed or self._timer is not None:
                return
            self._timer = threading.Timer(delay_s, self._retry)
            self._timer.daemon = True
            self._timer.start()

    def _retry(self) -> None:
        with self._lock:
            self._timer = None
        self._schedule()

    async def written(self) -> None:
        """Wait until everything queued before this call is committed; `WriteFailed` while writes are failing."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.flush)

    def close(self) -> list[T]:
        """On the store's thread, before its connection closes: a last write; returns what could not be written."""
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        try:
            self.flush()
        except WriteFailed:
            pass
        left = list(self._items)
        self._items.clear()
        return left


def outbox_beside(location: Path | str) -> Path | None:
    """A SQLite store's outbox: a file next to its database (a PostgreSQL store is given one by the app)."""
    return location.with_name(location.name + ".outbox.jsonl") if isinstance(location, Path) else None


def spill(path: Path | None, rows: list[dict], name: str) -> None:
    """Keep rows a store could not write in an outbox file (appended, fsynced), to replay at the next start.

    If even that fails (the disk is full), every row goes to the log at ERROR: never silently dropped."""
    if not rows:
        return
    try:
        if path is None:
            raise OSError("no outbox file for this store")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write("".join(json.dumps(row) + "\n" for row in rows))
            handle.flush()
            os.fsync(handle.fileno())
        logger.error("%s: %d record(s) not written; kept in %s to replay at the next start", name, len(rows), path)
    except OSError as exc:
        logger.error("%s: %d record(s) not written and the outbox %s failed (%s):", name, len(rows), path, exc)
        for row in rows:
            logger.error("%s: unwritten record %s", name, json.dumps(row))


def read_outbox(path: Path) -> list[dict]:
    """The rows an earlier run spilled (a torn last line, from a crash while spilling, is skipped)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            logger.error("outbox %s: skipping a torn line %r", path, line[:200])
    return rows

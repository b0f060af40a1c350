"""Fine-tuning jobs and their events, in SQLite: they outlive restarts.

A job is OpenAI's `fine_tuning.job` in spirit: queued -> running ->
succeeded | failed | cancelled. Events are its log (steps and losses, evals,
promotion). Counters hold, per (owner, memory group, adapter), the calls
since the last training: the trigger's state.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from server.adaption.errors import AdapterInTraining
from server.storage import Database

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE_STATUSES = ("queued", "running")

MIGRATIONS = (
    """
    CREATE TABLE fine_tuning_jobs (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        adapter TEXT NOT NULL,
        memory_group TEXT NOT NULL,
        base_model TEXT NOT NULL,
        status TEXT NOT NULL,
        hyperparameters TEXT NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        error TEXT,
        result TEXT,
        adapter_version INTEGER,
        promoted INTEGER NOT NULL DEFAULT 0,
        trained_tokens INTEGER
    );
    CREATE INDEX jobs_by_owner ON fine_tuning_jobs (owner, created_at);
    CREATE INDEX jobs_by_adapter ON fine_tuning_jobs (adapter, status);
    CREATE TABLE fine_tuning_events (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES fine_tuning_jobs(id) ON DELETE CASCADE,
        created_at REAL NOT NULL,
        level TEXT NOT NULL,
        type TEXT NOT NULL,
        message TEXT NOT NULL,
        data TEXT
    );
    CREATE INDEX events_by_job ON fine_tuning_events (job_id, id);
    CREATE TABLE adaption_counters (
        owner TEXT NOT NULL,
        memory_group TEXT NOT NULL,
        adapter TEXT NOT NULL,
        calls_since_training INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (owner, memory_group, adapter)
    );
    """,
)


@dataclass(frozen=True)
class Job:
    id: str
    owner: str
    adapter: str
    memory_group: str
    base_model: str
    status: JobStatus
    hyperparameters: dict
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: dict | None = None
    result: dict | None = None
    adapter_version: int | None = None
    promoted: bool = False
    trained_tokens: int | None = None


@dataclass(frozen=True)
class JobEvent:
    id: int
    job_id: str
    created_at: float
    level: str
    type: str
    message: str
    data: dict | None = field(default=None)


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        owner=row["owner"],
        adapter=row["adapter"],
        memory_group=row["memory_group"],
        base_model=row["base_model"],
        status=row["status"],
        hyperparameters=json.loads(row["hyperparameters"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=json.loads(row["error"]) if row["error"] else None,
        result=json.loads(row["result"]) if row["result"] else None,
        adapter_version=row["adapter_version"],
        promoted=bool(row["promoted"]),
        trained_tokens=row["trained_tokens"],
    )


class JobStore(Database):
    MIGRATIONS = MIGRATIONS

    def __init__(self, path: Path) -> None:
        super().__init__(path, "job-store")

    # jobs

    async def create_or_join(
        self, owner: str, adapter: str, memory_group: str, base_model: str, hyperparameters: dict
    ) -> tuple[Job, bool]:
        """A queued job for `adapter`, or the one already queued or running (coalesced): (job, created)."""

        def creating() -> tuple[Job, bool]:
            with self.db.transaction():
                row = self.db.execute(
                    "SELECT * FROM fine_tuning_jobs WHERE adapter = ? AND status IN ('queued', 'running')", (adapter,)
                ).fetchone()
                if row is not None:
                    return _job(row), False
                job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
                self.db.execute(
                    "INSERT INTO fine_tuning_jobs (id, owner, adapter, memory_group, base_model, status, hyperparameters,"
                    " created_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
                    (job_id, owner, adapter, memory_group, base_model, json.dumps(hyperparameters), time.time()),
                )
                self._event(job_id, "info", "message", f"Job queued: train {adapter} from memory group {memory_group}.")
            return self._get(job_id), True

        job, created = await self._run(creating)
        if job.owner != owner:  # another key's job for that adapter name: never joined, never revealed
            raise AdapterInTraining(adapter)
        return job, created

    def _get(self, job_id: str) -> Job:
        return _job(self.db.execute("SELECT * FROM fine_tuning_jobs WHERE id = ?", (job_id,)).fetchone())

    async def get(self, job_id: str) -> Job | None:
        def getting() -> Job | None:
            row = self.db.execute("SELECT * FROM fine_tuning_jobs WHERE id = ?", (job_id,)).fetchone()
            return _job(row) if row else None

        return await self._run(getting)

    async def list(self, owner: str, limit: int, after: str | None) -> list[Job]:
        def listing() -> list[Job]:
            if after is None:
                rows = self.db.execute(
                    "SELECT * FROM fine_tuning_jobs WHERE owner = ? ORDER BY created_at DESC, id DESC LIMIT ?",
                    (owner, limit),
                )
            else:
                rows = self.db.execute(
                    "SELECT * FROM fine_tuning_jobs WHERE owner = ? AND (created_at, id) <"
                    " (SELECT created_at, id FROM fine_tuning_jobs WHERE id = ?) ORDER BY created_at DESC, id DESC LIMIT ?",
                    (owner, after, limit),
                )
            return [_job(row) for row in rows]

        return await self._run(listing)

    async def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state (for the metrics)."""
        return await self._run(
            lambda: {
                row[0]: row[1]
                for row in self.db.execute("SELECT status, COUNT(*) FROM fine_tuning_jobs GROUP BY status")
            }
        )

    async def active(self) -> list[Job]:
        return await self._run(
            lambda: [
                _job(row)
                for row in self.db.execute(
                    "SELECT * FROM fine_tuning_jobs WHERE status IN ('queued', 'running') ORDER BY created_at"
                )
            ]
        )

    async def update(self, job_id: str, *, message: str | None = None, level: str = "info", **fields: object) -> Job:
        """Set job fields (JSON-encoding dicts) and log `message` as an event, in one transaction."""

        def updating() -> Job:
            encoded = {key: json.dumps(value) if isinstance(value, dict) else value for key, value in fields.items()}
            with self.db.transaction():
                if encoded:
                    assignments = ", ".join(f"{key} = ?" for key in encoded)
                    self.db.execute(
                        f"UPDATE fine_tuning_jobs SET {assignments} WHERE id = ?", (*encoded.values(), job_id)
                    )
                if message is not None:
                    self._event(job_id, level, "message", message)
            return self._get(job_id)

        return await self._run(updating)

    # events

    def _event(self, job_id: str, level: str, kind: str, message: str, data: dict | None = None) -> None:
        self.db.execute(
            "INSERT INTO fine_tuning_events (job_id, created_at, level, type, message, data) VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, time.time(), level, kind, message, json.dumps(data) if data is not None else None),
        )

    async def add_metrics(self, job_id: str, message: str, data: dict) -> None:
        await self._run(self._event, job_id, "info", "metrics", message, data)

    async def events(self, job_id: str, limit: int, after: int | None) -> list[JobEvent]:
        return await self._run(
            lambda: [
                JobEvent(
                    row["id"],
                    row["job_id"],
                    row["created_at"],
                    row["level"],
                    row["type"],
                    row["message"],
                    json.loads(row["data"]) if row["data"] else None,
                )
                for row in self.db.execute(
                    "SELECT * FROM fine_tuning_events WHERE job_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
                    (job_id, after if after is not None else 2**63 - 1, limit),
                )
            ]
        )

    # trigger state

    async def count_call(self, owner: str, memory_group: str, adapter: str) -> int:
        return await self._run(
            lambda: self.db.execute(
                "INSERT INTO adaption_counters (owner, memory_group, adapter, calls_since_training) VALUES (?, ?, ?, 1)"
                " ON CONFLICT DO UPDATE SET calls_since_training = calls_since_training + 1 RETURNING calls_since_training",
                (owner, memory_group, adapter),
            ).fetchone()[0]
        )

    async def reset_calls(self, owner: str, memory_group: str, adapter: str) -> None:
        await self._run(
            lambda: self.db.execute(
                "UPDATE adaption_counters SET calls_since_training = 0 WHERE owner = ? AND memory_group = ? AND adapter = ?",
                (owner, memory_group, adapter),
            )
        )

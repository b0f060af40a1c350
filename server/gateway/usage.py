"""Usage: one row per request, recorded off the response path, aggregated on demand.

`record` only queues: the store's one thread writes whatever is pending in one
transaction, so a burst of requests costs one commit. Reads go through the
same thread after the writes queued before them, so a caller sees its own
finished requests. A failed write keeps its records queued, is logged and
retried (`PendingWrites`); `written()` waits until they are committed; what is
still unwritten at close goes to an outbox file replayed at the next start.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from server.gateway.pending import PendingWrites, outbox_beside, read_outbox, spill
from server.storage import SQLITE, Database, Dialect, Location, Row

GroupBy = Literal["session_id", "tag", "user", "model", "key", "day", "hour"]
GROUP_COLUMNS: dict[str, str] = {  # "user" is quoted: a reserved word in PostgreSQL
    "session_id": "usage.session_id",
    "tag": "tag.value",
    "user": 'usage."user"',
    "model": "usage.model",
    "key": "COALESCE(usage.key_id, usage.owner)",
    "day": "{day}",
    "hour": "{hour}",
}

MIGRATIONS = (
    """
    CREATE TABLE usage (
        request_id TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        owner TEXT NOT NULL,
        key_id TEXT,
        model TEXT,
        provider TEXT,
        adapter TEXT,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        latency_ms DOUBLE PRECISION NOT NULL,
        status INTEGER NOT NULL,
        error_code TEXT,
        session_id TEXT,
        "user" TEXT,
        tags TEXT NOT NULL,
        signature TEXT,
        region TEXT,
        query_body TEXT,
        response_body TEXT
    );
    CREATE INDEX usage_by_owner ON usage (owner, created_at);
    CREATE INDEX usage_by_time ON usage (created_at);
    CREATE INDEX usage_by_request ON usage (request_id);
    """,
)


@dataclass(frozen=True, slots=True)
class UsageRecord:
    request_id: str
    created_at: float
    owner: str
    key_id: str | None
    model: str | None
    provider: str | None
    adapter: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    status: int
    error_code: str | None = None
    session_id: str | None = None
    user: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)
    signature: str | None = None
    region: str | None = None
    query_body: str | None = None  # JSON, when the request allowed logging it
    response_body: str | None = None


@dataclass(frozen=True, slots=True)
class UsageQuery:
    group_by: tuple[GroupBy, ...]
    start: float
    end: float
    owner: str | None  # None: every owner (admins)


def aggregation_sql(query: UsageQuery, dialect: Dialect = SQLITE) -> tuple[str, list[object]]:
    """The SELECT for one aggregation: a row per group with request and token totals."""
    day = dialect.utc_day.format("usage.created_at")
    hour = dialect.utc_hour.format("usage.created_at")
    columns = [f'{GROUP_COLUMNS[name].format(day=day, hour=hour)} AS "{name}"' for name in query.group_by]
    source = "usage"
    if "tag" in query.group_by:
        # A request with several tags counts once under each; one without tags under null.
        source += " " + dialect.json_elements.format("usage.tags", "tag")
    where = ["usage.created_at >= ?", "usage.created_at < ?"]
    params: list[object] = [query.start, query.end]
    if query.owner is not None:
        where.append("usage.owner = ?")
        params.append(query.owner)
    totals = (
        "COUNT(*) AS requests, SUM(CASE WHEN usage.status >= 400 THEN 1 ELSE 0 END) AS errors,"
        " SUM(usage.prompt_tokens) AS prompt_tokens, SUM(usage.completion_tokens) AS completion_tokens,"
        " CAST(ROUND(CAST(AVG(usage.latency_ms) AS NUMERIC), 1) AS DOUBLE PRECISION) AS mean_latency_ms"
    )
    sql = f"SELECT {', '.join([*columns, totals])} FROM {source} WHERE {' AND '.join(where)}"
    if query.group_by:
        # By position: in PostgreSQL a bare name may resolve to an input column or a table alias first.
        positions = range(1, len(query.group_by) + 1)
        sql += f" GROUP BY {', '.join(map(str, positions))}"
        sql += f" ORDER BY {', '.join(f'{position} NULLS FIRST' for position in positions)}"
    return sql, params


def _row(record: UsageRecord) -> dict:
    row = asdict(record)
    row["tags"] = json.dumps(list(record.tags))
    return row


_COLUMNS = tuple(UsageRecord.__dataclass_fields__)
_QUOTED = ", ".join(f'"{name}"' for name in _COLUMNS)  # "user" is reserved in PostgreSQL
_INSERT = f"INSERT INTO usage ({_QUOTED}) VALUES ({', '.join(':' + name for name in _COLUMNS)})"


class UsageStore(Database):
    MIGRATIONS = MIGRATIONS
    SCHEMA = "usage"

    def __init__(self, location: Location, outbox: Path | None = None) -> None:
        super().__init__(location, "usage-store")
        self.pending: PendingWrites[UsageRecord] = PendingWrites("usage store", self._thread, self._insert)
        self._outbox = outbox or outbox_beside(location)  # where records unwritten at close wait for the next start

    def record(self, record: UsageRecord) -> None:
        """Queue the record; it is written with any others pending, on the store's thread."""
        self.pending.add(record)

    async def written(self) -> None:
        """Wait until every record queued so far is committed (`WriteFailed` while writes fail; they stay queued)."""
        await self.pending.written()

    def _insert(self, batch: list[UsageRecord]) -> None:
        with self.db.transaction():
            self.db.executemany(_INSERT, [_row(record) for record in batch])

    def _open(self) -> None:
        super()._open()
        if self._outbox is not None and (rows := read_outbox(self._outbox)):
            with self.db.transaction():
                self.db.executemany(_INSERT, rows)
            self._outbox.unlink()

    def _close(self) -> None:
        left = self.pending.close()
        if left:
            spill(self._outbox, [_row(record) for record in left], "usage store")
        super()._close()

    async def aggregate(self, query: UsageQuery) -> list[dict]:
        return await self._run(self._aggregate, query)

    def _aggregate(self, query: UsageQuery) -> list[dict]:
        sql, params = aggregation_sql(query, self.db.dialect)
        return [dict(row) for row in self.db.execute(sql, params)]

    async def find(self, request_id: str, owner: str | None) -> list[UsageRecord]:
        """The records of one request id (the caller's own, or anyone's for owner None)."""
        return await self._run(self._find, request_id, owner)

    def _find(self, request_id: str, owner: str | None) -> list[UsageRecord]:
        sql = "SELECT * FROM usage WHERE request_id = ?"
        params: list[object] = [request_id]
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)
        return [_record(row) for row in self.db.execute(sql + " ORDER BY created_at", params)]


def _record(row: Row) -> UsageRecord:
    values = dict(row)
    values["tags"] = tuple(json.loads(values["tags"]))
    return UsageRecord(**values)

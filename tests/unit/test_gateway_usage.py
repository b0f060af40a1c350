"""Usage aggregation queries and the batched usage store (real SQLite and PostgreSQL)."""

from __future__ import annotations

from server.gateway.usage import UsageQuery, UsageRecord, UsageStore, aggregation_sql
from server.storage import POSTGRES
from tests.conftest import StoreLocation


def record(request_id: str, owner: str, at: float, **fields: object) -> UsageRecord:
    values: dict = {
        "request_id": request_id,
        "created_at": at,
        "owner": owner,
        "key_id": None,
        "model": "m",
        "provider": None,
        "adapter": None,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "latency_ms": 12.0,
        "status": 200,
    }
    return UsageRecord(**(values | fields))


def test_sql_groups_joins_tags_only_when_asked_and_filters_owner() -> None:
    sql, params = aggregation_sql(UsageQuery(("session_id", "day"), 1.0, 2.0, owner="me"))
    assert "GROUP BY 1, 2" in sql and "json_each" not in sql and "date(usage.created_at" in sql
    assert params == [1.0, 2.0, "me"]
    sql, params = aggregation_sql(UsageQuery(("tag",), 1.0, 2.0, owner=None))
    assert "json_each" in sql and params == [1.0, 2.0]
    sql, _ = aggregation_sql(UsageQuery((), 0.0, 1.0, owner=None))
    assert "GROUP BY" not in sql
    sql, _ = aggregation_sql(UsageQuery(("tag", "day"), 0.0, 1.0, owner=None), POSTGRES)
    assert "jsonb_array_elements_text" in sql and "to_timestamp(usage.created_at)" in sql


async def test_store_records_in_batches_and_aggregates(store_location: StoreLocation) -> None:
    store = UsageStore(store_location("usage.sqlite3"))
    await store.open()
    try:
        store.record(record("r1", "alice", 100.0, session_id="s1", tags=("a", "b"), user="u1"))
        store.record(record("r2", "alice", 200.0, session_id="s1", tags=("a",), status=429, completion_tokens=0))
        store.record(record("r3", "bob", 300.0, session_id="s2", key_id="key-b", query_body='{"x": 1}'))
        by_session = await store.aggregate(UsageQuery(("session_id",), 0.0, 1000.0, owner=None))
        assert by_session == [
            {
                "session_id": "s1",
                "requests": 2,
                "errors": 1,
                "prompt_tokens": 20,
                "completion_tokens": 5,
                "mean_latency_ms": 12.0,
            },
            {
                "session_id": "s2",
                "requests": 1,
                "errors": 0,
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "mean_latency_ms": 12.0,
            },
        ]
        by_tag = await store.aggregate(UsageQuery(("tag",), 0.0, 1000.0, owner="alice"))
        assert [(row["tag"], row["requests"]) for row in by_tag] == [("a", 2), ("b", 1)]
        everyone_by_tag = await store.aggregate(UsageQuery(("tag",), 0.0, 1000.0, owner=None))
        assert [(row["tag"], row["requests"]) for row in everyone_by_tag] == [(None, 1), ("a", 2), ("b", 1)]
        by_user_key_day = await store.aggregate(UsageQuery(("user", "key", "day"), 0.0, 1000.0, owner=None))
        assert [(row["user"], row["key"], row["day"], row["requests"]) for row in by_user_key_day] == [
            (None, "alice", "1970-01-01", 1),
            (None, "key-b", "1970-01-01", 1),  # a stored key's usage groups under its id
            ("u1", "alice", "1970-01-01", 1),
        ]
        assert all(isinstance(row["mean_latency_ms"], float) for row in by_user_key_day)
        in_range = await store.aggregate(UsageQuery((), 150.0, 250.0, owner=None))
        assert in_range[0]["requests"] == 1
        assert [r.query_body for r in await store.find("r3", owner=None)] == ['{"x": 1}']
        assert await store.find("r3", owner="alice") == []  # another owner's request is not found
    finally:
        await store.close()


async def test_records_pending_at_close_are_written(store_location: StoreLocation) -> None:
    path = store_location("usage.sqlite3")
    store = UsageStore(path)
    await store.open()
    for index in range(50):
        store.record(record(f"r{index}", "o", float(index)))
    await store.close()
    reopened = UsageStore(path)
    await reopened.open()
    try:
        assert (await reopened.aggregate(UsageQuery((), 0.0, 100.0, owner=None)))[0]["requests"] == 50
    finally:
        await reopened.close()


async def test_usage_groups_by_utc_hour(store_location: StoreLocation) -> None:
    store = UsageStore(store_location("usage.sqlite3"))
    await store.open()
    try:
        store.record(record("r1", "o", 3599.9))  # 1970-01-01 00:59:59.9 UTC
        store.record(record("r2", "o", 3600.0))
        store.record(record("r3", "o", 7000.0, model="n"))
        rows = await store.aggregate(UsageQuery(("hour", "model"), 0.0, 10000.0, owner=None))
        assert [(row["hour"], row["model"], row["requests"]) for row in rows] == [
            ("1970-01-01T00:00", "m", 1),
            ("1970-01-01T01:00", "m", 1),
            ("1970-01-01T01:00", "n", 1),
        ]
    finally:
        await store.close()

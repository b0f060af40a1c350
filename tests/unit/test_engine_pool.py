"""The engine pool's bookkeeping (on-demand loads, the max_loaded_models bound, keep_alive, load timeouts) with
engines that start instantly or slowly: the real engines are driven by tests/test_multi_model.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.config import ModelEntry
from server.engine import pool as pool_module
from server.engine.pool import EnginePool, ModelLoadFailed, ModelLoadTimeout, PoolSettings


class QuickEngine:
    """Stands in for `Engine`: starts after `delay_s`, holds no requests, records that it was closed."""

    delay_s = 0.0
    fail = False
    lora_state = "off"

    def __init__(self, entry: ModelEntry) -> None:
        self.entry, self.asleep, self.running_requests, self.closed, self.adapters = entry, False, 0, False, None

    @classmethod
    async def start(cls, entry: ModelEntry, adapters_dir: Path, **_: object) -> QuickEngine:
        await asyncio.sleep(cls.delay_s)
        if cls.fail:
            raise FileNotFoundError("no weights")
        return cls(entry)

    async def close(self) -> None:
        self.closed = True


def entry(name: str, **fields: object) -> ModelEntry:
    return ModelEntry(name=name, source="./nowhere", max_model_len=64, **fields)  # type: ignore[arg-type]


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> type[QuickEngine]:
    QuickEngine.delay_s, QuickEngine.fail = 0.0, False
    monkeypatch.setattr(pool_module, "Engine", QuickEngine)
    monkeypatch.setattr(pool_module, "unloaded_adapters", lambda entry, root: None)
    return QuickEngine


def make_pool(tmp_path: Path, *entries: ModelEntry, **settings: object) -> EnginePool:
    return EnginePool(entries, lambda e: tmp_path / e.name, PoolSettings(**settings), is_gpu=False)  # type: ignore[arg-type]


async def test_max_loaded_models_puts_the_least_recently_used_idle_one_to_sleep(
    tmp_path: Path, quick: type[QuickEngine]
) -> None:
    pool = make_pool(tmp_path, entry("own"), entry("b", load="on_demand"), entry("c", load="on_demand"),
                     max_loaded_models=2)  # fmt: skip
    await pool.start()
    try:
        assert pool.describe()["b"]["state"] == "unloaded" and pool.describe()["own"]["loaded"]
        held = await pool.lease("b")
        held.release()
        engine_b = pool.slots["b"].engine
        lease = await pool.lease("c")  # at the bound: b (idle) goes, own (the server's) stays
        assert [pool.slots[n].state for n in ("own", "b", "c")] == ["awake", "unloaded", "awake"]
        assert engine_b.closed
        # c is held: b must wait for room, and gets it once c is released
        waiting = asyncio.create_task(pool.lease("b"))
        await asyncio.sleep(0.2)
        assert not waiting.done() and pool.slots["c"].state == "awake"
        lease.release()
        (await asyncio.wait_for(waiting, 5)).release()
        assert [pool.slots[n].state for n in ("own", "b", "c")] == ["awake", "awake", "unloaded"]
    finally:
        await pool.close()


async def test_keep_alive_per_entry_and_per_request(tmp_path: Path, quick: type[QuickEngine]) -> None:
    pool = make_pool(tmp_path, entry("own"), entry("b", load="on_demand", keep_alive="1s"))
    await pool.start()
    try:
        (await pool.lease("b", keep_alive=-1)).release()  # for ever, from this request on
        await asyncio.sleep(1.6)
        assert pool.slots["b"].state == "awake"
        lease = await pool.lease("b", keep_alive=0)
        await asyncio.sleep(0.8)
        assert pool.slots["b"].state == "awake"  # held: never put to sleep under a request
        lease.release()
        await asyncio.sleep(0.8)
        assert pool.slots["b"].state == "unloaded"
        assert pool.slots["b"].keep_alive_s == 1.0  # a request's keep_alive lasts until the model goes
    finally:
        await pool.close()


async def test_waiting_too_long_or_a_failed_load_is_a_503(tmp_path: Path, quick: type[QuickEngine]) -> None:
    pool = make_pool(
        tmp_path, entry("own"), entry("slow", load="on_demand"), entry("broken", load="on_demand"), load_timeout_s=0.3
    )
    await pool.start()
    try:
        quick.delay_s = 1.0
        with pytest.raises(ModelLoadTimeout) as timeout:
            await pool.lease("slow")
        assert timeout.value.status == 503 and timeout.value.headers() == {"Retry-After": "1"}
        assert pool.slots["slow"].state == "loading"  # the load goes on; a later request finds it awake
        await asyncio.sleep(1.0)
        (await pool.lease("slow")).release()
        quick.fail, quick.delay_s = True, 0.0
        with pytest.raises(ModelLoadFailed) as failed:
            await pool.lease("broken")
        assert failed.value.code == "model_load_failed" and "no weights" in pool.describe()["broken"]["error"]
        assert pool.slots["broken"].state == "unloaded"
        quick.fail = False  # the next request tries again
        (await pool.lease("broken")).release()
        assert "error" not in pool.describe()["broken"]
    finally:
        await pool.close()

"""Every long-lived background task restarts after a failure: one is injected into each (monkeypatch), and the task
is seen to log it and carry on; an engine restart retries with back-off, then gives up. (The usage and debit writers'
retries are in test_pending_writes.py.)"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import pytest

from server.adaption.jobs import JobStore
from server.adaption.runner import AdaptionService
from server.app import start_nightly_curation
from server.config import load_settings
from server.engine import runtime
from server.engine.pool import EnginePool, PoolSettings
from server.engine.runtime import Engine
from server.supervision import stop


def failures_logged(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if f"background task {name} failed" in r.getMessage()]


async def eventually(predicate, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return False


async def test_the_engine_watchdog_restarts_after_a_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class FlakyEngineClient:
        """Failure injection: vLLM's `errored` raises once, then reports a healthy engine."""

        checks = 0

        @property
        def errored(self) -> bool:
            self.checks += 1
            if self.checks == 1:
                raise RuntimeError("injected watchdog failure")
            return False

    monkeypatch.setattr(runtime, "WATCHDOG_INTERVAL_S", 0.01)
    engine = Engine.__new__(Engine)  # no model: the watchdog loop is what is under test
    engine._llm = FlakyEngineClient()
    with caplog.at_level(logging.ERROR, logger="server.supervision"):
        task = engine.start_watchdog(backoff_s=0.01)
        assert await eventually(lambda: engine._llm.checks >= 5)  # it kept watching after the failure
        await stop(task)
    assert len(failures_logged(caplog, "engine watchdog")) == 1


async def test_the_nightly_curation_schedule_restarts_after_a_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[str] = []

    class Memory:
        """Failure injection: the first curation run raises outside the per-group handling."""

        async def curate_all(self, consolidate):
            runs.append("run")
            if len(runs) == 1:
                raise OSError("injected: the memory database went away")
            return []

    monkeypatch.setattr("server.memory.schedule.seconds_until", lambda time_of_day, now: 0.01)
    with caplog.at_level(logging.ERROR, logger="server.supervision"):
        task = start_nightly_curation(Memory(), None, "03:00", backoff_s=0.01)
        assert await eventually(lambda: len(runs) >= 3)  # the schedule went on after the failure
        await stop(task)
    assert len(failures_logged(caplog, "nightly curation")) == 1


async def test_the_fine_tuning_loop_restarts_after_a_failure_and_runs_later_jobs(
    tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(None)
    jobs = JobStore(tmp_path / "adaption.sqlite3")
    await jobs.open()
    # No memory service: training then fails the job, which shows the loop reached it (the loop is under test).
    # A pool never started: the loop only reads which models it serves (no engine runs here).
    pool = EnginePool([settings.served], lambda entry: tmp_path / "adapters", PoolSettings(), is_gpu=False)
    service = AdaptionService(jobs, None, pool, settings.served, settings.adaption, tmp_path / "work")
    service.restart_backoff_s = 0.01
    real_get, real_claim = jobs.get, jobs.claim
    injected = []

    async def failing_claim(worker: str, base_models: list[str]):  # failure injection: the store fails once,
        if not injected:  # outside the job's `try`
            injected.append(worker)
            raise OSError("injected: database is locked")
        return await real_claim(worker, base_models)

    monkeypatch.setattr(jobs, "claim", failing_claim)
    try:
        with caplog.at_level(logging.ERROR):
            await service.start()
            job, _ = await jobs.create_or_join(
                "owner", "adapter", "group", settings.served.name, service.hyperparameters
            )
            service._queue.put_nowait(job.id)
            assert await eventually(lambda: bool(injected))

            async def finished() -> bool:
                return (await real_get(job.id)).status not in ("queued", "running")

            deadline = time.monotonic() + 10
            while not await finished():
                assert time.monotonic() < deadline, "the job stayed queued: the loop did not come back"
                await asyncio.sleep(0.02)
            assert (await real_get(job.id)).status == "failed"
            later, _ = await jobs.create_or_join("owner", "adapter2", "group", settings.served.name, {})
            service._queue.put_nowait(later.id)
            deadline = time.monotonic() + 10
            while (await real_get(later.id)).status in ("queued", "running"):
                assert time.monotonic() < deadline, "a later job stayed queued"
                await asyncio.sleep(0.02)
        assert len(failures_logged(caplog, "fine-tuning loop")) == 1
    finally:
        await service.stop()
        await jobs.close()


async def test_the_adapter_registry_poll_restarts_after_a_failure(
    tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from server.engine import registry as registry_module
    from server.engine.adapters import AdapterStore
    from server.engine.registry import AdapterRegistry, shared_adapter_registry

    monkeypatch.setattr(registry_module, "POLL_S", 0.01)
    location = tmp_path / "registry.sqlite3"
    store = AdapterStore(tmp_path / "adapters", load_settings(None).served, {}, None)
    other = AdapterRegistry(location)  # another server's
    await other.open()
    failed = []
    real_generation = AdapterRegistry.generation

    async def failing_generation(self):  # failure injection: the database is out of reach once
        if not failed:
            failed.append(True)
            raise OSError("injected: the database went away")
        return await real_generation(self)

    monkeypatch.setattr(AdapterRegistry, "generation", failing_generation)
    try:
        with caplog.at_level(logging.ERROR, logger="server.supervision"):
            async with shared_adapter_registry(location, [store], backoff_s=0.01):
                assert await eventually(lambda: bool(failed))
                await other.claim(
                    store.entry.name,
                    "later",
                    {},
                    owner="k",
                    admin=False,
                    shared=False,
                    max_versions=None,
                    max_adapters=None,
                )
                assert await eventually(lambda: store.ownership("later") is not None)  # still polling
        assert len(failures_logged(caplog, "adapter registry poll")) == 1
    finally:
        await other.close()


async def test_the_in_flight_slot_renewal_restarts_after_a_failure(
    tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from server.gateway.limits import InFlightCaps, SharedSlots

    slots = SharedSlots(tmp_path / "slots.sqlite3", lease_s=0.03)  # renewed every 10 ms
    renewals: list[str] = []
    real_renew = slots.renew

    async def failing_renew() -> None:  # failure injection: the first renewal fails
        renewals.append("renew")
        if len(renewals) == 1:
            raise OSError("injected: the database went away")
        await real_renew()

    monkeypatch.setattr(slots, "renew", failing_renew)
    with caplog.at_level(logging.ERROR, logger="server.supervision"):
        await slots.open()
        try:
            await slots.acquire("k", False, InFlightCaps(requests=1, streams=1))
            assert await eventually(lambda: len(renewals) >= 5)  # it kept renewing after the failure
        finally:
            await slots.close()
    assert len(failures_logged(caplog, "in-flight slot leases")) == 1


class DeadEngine:
    """The dead `AsyncLLM` a restart replaces (failure injection stands in for vLLM)."""

    errored = True

    class output_processor:  # vLLM's attribute name
        @staticmethod
        def propagate_error(error: Exception) -> None:
            pass

    def shutdown(self) -> None:
        pass


@pytest.mark.parametrize("failing_starts", [2, 3])
async def test_an_engine_restart_retries_with_back_off_then_gives_up(
    tmp_path, monkeypatch: pytest.MonkeyPatch, failing_starts: int
) -> None:
    """Three tries: two failed starts then one that works serves again; three failed starts give up (engine_dead)."""
    from server.engine.adapters import AdapterStore

    starts: list[float] = []
    new_engine = DeadEngine()
    new_engine.errored = False

    def start_llm(entry, *, lora=None):
        starts.append(time.monotonic())
        if len(starts) <= failing_starts:
            raise RuntimeError("injected: the engine core did not start")
        return new_engine

    monkeypatch.setattr(runtime, "start_llm", start_llm)
    engine = Engine.__new__(Engine)
    engine.entry = load_settings(None).served
    engine._llm = DeadEngine()
    engine.adapters = AdapterStore(tmp_path / "adapters", engine.entry, {}, None)
    engine._restart_attempts, engine._restart_backoff_s = 3, 0.05
    engine.restarting, engine._gave_up, engine.restarts, engine._death_logged = False, False, 0, True
    engine.lora_enabled, engine.lora_switching = True, False
    assert engine.status == "restarting"
    await engine._restart()
    waits = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert len(starts) == min(failing_starts + 1, 3)
    assert waits[0] >= 0.05 and waits[1] >= 0.1  # back-off doubles
    if failing_starts < 3:
        assert engine._llm is new_engine and engine.restarts == 1 and engine.status == "ok"
    else:
        assert engine._gave_up and engine.status == "engine_dead" and engine.retry_after_s == 60

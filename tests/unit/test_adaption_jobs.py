"""The job store on a real SQLite file, and the trigger and promotion rules."""

from __future__ import annotations

from pathlib import Path

from server.adaption.jobs import JobStore
from server.adaption.runner import promotion, should_train

HYPER = {"epochs": 1, "learning_rate": 0.001, "seed": 0}


def test_trigger_needs_both_the_call_count_and_the_group_size() -> None:
    assert should_train(3, 3, 5, 5)
    assert not should_train(2, 3, 50, 5)
    assert not should_train(9, 3, 4, 5)


def test_promotion_beats_the_current_version_or_else_the_base_model() -> None:
    assert promotion({"eval_loss": 1.0, "base_eval_loss": 2.0, "current_eval_loss": None}).promoted
    assert not promotion({"eval_loss": 1.0, "base_eval_loss": 2.0, "current_eval_loss": 0.9}).promoted
    outcome = promotion({"eval_loss": 0.8, "base_eval_loss": 2.0, "current_eval_loss": 0.9})
    assert outcome.promoted and outcome.baseline_loss == 0.9


async def test_jobs_coalesce_per_adapter_and_survive_reopening(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "adaption.sqlite3")
    await store.open()
    first, created = await store.create_or_join("owner", "alpha", "group", "base", HYPER)
    assert created and first.status == "queued"
    joined, created = await store.create_or_join("owner", "alpha", "other-group", "base", HYPER)
    assert not created and joined.id == first.id
    other, created = await store.create_or_join("owner", "bravo", "group", "base", HYPER)
    assert created and other.id != first.id

    running = await store.update(first.id, status="running", message="Training started.")
    assert running.status == "running"
    await store.add_metrics(first.id, "Step 1/2", {"step": 1, "loss": 2.5})
    failed = await store.update(
        first.id,
        status="failed",
        error={"code": "training_failed", "message": "boom", "param": None},
        level="error",
        message="Training failed: boom",
    )
    assert failed.error == {"code": "training_failed", "message": "boom", "param": None}
    _, created = await store.create_or_join("owner", "alpha", "group", "base", HYPER)
    assert created  # a finished job no longer blocks a new one
    await store.close()

    reopened = JobStore(tmp_path / "adaption.sqlite3")
    await reopened.open()
    events = await reopened.events(first.id, 10, None)
    assert [event.message for event in events] == [
        "Training failed: boom",
        "Step 1/2",
        "Training started.",
        "Job queued: train alpha from memory group group.",
    ]
    assert events[1].type == "metrics" and events[1].data == {"step": 1, "loss": 2.5}
    assert next(event.message for event in await reopened.events(first.id, 10, events[1].id)) == "Training started."
    assert {job.adapter for job in await reopened.active()} == {"alpha", "bravo"}
    assert [job.id for job in await reopened.list("someone-else", 10, None)] == []
    assert len(await reopened.list("owner", 10, None)) == 3
    assert await reopened.count_call("owner", "group", "alpha") == 1
    assert await reopened.count_call("owner", "group", "alpha") == 2
    await reopened.reset_calls("owner", "group", "alpha")
    assert await reopened.count_call("owner", "group", "alpha") == 1
    await reopened.close()


async def test_a_job_of_another_owner_is_never_joined_or_revealed(tmp_path: Path) -> None:
    import pytest

    from server.adaption.errors import AdapterInTraining

    store = JobStore(tmp_path / "adaption.sqlite3")
    await store.open()
    try:
        mine, created = await store.create_or_join("key_a", "alpha", "group", "base", HYPER)
        assert created
        with pytest.raises(AdapterInTraining) as refused:
            await store.create_or_join("key_b", "alpha", "their-group", "base", HYPER)
        assert mine.id not in str(refused.value)
        assert [job.id for job in await store.list("key_b", 10, None)] == []
    finally:
        await store.close()

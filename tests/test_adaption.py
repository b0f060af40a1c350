"""Adaption end to end on the embedded model: facts told through chat cross the threshold, a LoRA trains in its own
process, is promoted on held-out recall, and answers hand-written questions about the facts with memory off; a later
version keeps the old facts and follows memory updates; plus the jobs API, its events and bad input."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import (
    API_KEY,
    CHEAP_ADAPTION,
    MODEL,
    RunningServer,
    assert_error,
    server_env,
    shipped_config,
    start_server,
    write_config,
)
from tests.prometheus import matching, scrape, value

GOAL = "A companion that remembers what the user tells it"
# Facts told through chat, and questions about them written by hand, in words no training template uses.
FACTS = {
    "My dog is called Biscuit.": ("Biscuit", "How do I call my dog?"),
    "I live in Tromso.": ("Tromso", "Which town is my home?"),
    "My favourite colour is turquoise.": ("turquoise", "Which colour do I like most?"),
    "I play the bassoon.": ("bassoon", "Which instrument do I play?"),
    "My sister's name is Ottilie.": ("Ottilie", "Who is my sister?"),
}
LATER_FACTS = {
    "My horse is named Thunderclap.": ("Thunderclap", "Name of my horse?"),
    "I am allergic to shellfish.": ("shellfish", "Which food am I allergic to?"),
}
TRAINING_TIMEOUT_S = 2400  # a job trains on a shared CPU at low priority: minutes, more when the box is busy
MOVED = ("I live in Winnipeg.", "Winnipeg", "Which town is my home?")  # the home fact, updated in memory


def answer(client: openai.OpenAI, question: str, **extra) -> str:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        max_tokens=24,
        temperature=0,
        extra_body=extra or None,
    )
    return reply.choices[0].message.content or ""


def recalled(client: openai.OpenAI, facts: dict[str, tuple[str, str]], **extra) -> list[str]:
    """The facts whose hand-written question gets an answer naming the fact (memory off)."""
    return [
        fact for fact, (value, question) in facts.items() if value.lower() in answer(client, question, **extra).lower()
    ]


def served_by(client: openai.OpenAI, adapter: str) -> str:
    """What an `adaption_inference` request for `adapter` ran on, as the response header says."""
    response = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        extra_body={"lora_name": adapter, "adaption_inference": True},
    )
    return response.headers["x-adaption-adapter"]


def job_for(client: openai.OpenAI, adapter: str, after: str | None = None):
    jobs = [job for job in client.fine_tuning.jobs.list().data if job.metadata["lora_name"] == adapter]
    return jobs[0] if jobs and jobs[0].id != after else None


def finished(client: openai.OpenAI, adapter: str, after: str | None = None, timeout_s: float = TRAINING_TIMEOUT_S):
    """The adapter's newest job (not `after`) once it has finished."""
    deadline = time.monotonic() + timeout_s
    while (job := job_for(client, adapter, after)) is None or job.status in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    return job


@pytest.fixture(scope="module")
def taught(server: RunningServer, client: openai.OpenAI, http: httpx.Client) -> dict:
    """One adapter trained once for this module: five facts told through chat with the seed's fields only; the
    server's metrics scraped before and after."""
    group, adapter = f"told-{uuid.uuid4().hex[:6]}", f"told-{uuid.uuid4().hex[:6]}"
    _, metrics_before = scrape(server.base_url)
    base_recalled = recalled(client, FACTS)
    assert served_by(client, adapter) == f"base-model; no promoted version of {adapter} yet"
    trigger = {"nightly": [group, GOAL], "finetune_thresh": len(FACTS), "min_finetune_group": 5, "lora_name": adapter}
    for fact in FACTS:
        # Greedy replies: the exchanges are training data too, so every run trains the same adapter (not a draw).
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": fact}], max_tokens=8, temperature=0, extra_body=trigger
        )
    job = None
    served_during_training = False
    deadline = time.monotonic() + TRAINING_TIMEOUT_S
    while job is None or job.status in ("queued", "running"):
        assert time.monotonic() < deadline, job
        job = job_for(client, adapter)
        if job is not None and job.status == "running" and not served_during_training:
            served_during_training = answer(client, "Hi") is not None  # serving goes on while the worker trains
        time.sleep(0.5)
    return {
        "group": group,
        "adapter": adapter,
        "job": job,
        "base_recalled": base_recalled,
        "served": served_during_training,
        "metrics": (metrics_before, scrape(server.base_url)[1]),
    }


def test_facts_told_through_chat_train_an_adapter_that_recalls_them(client: openai.OpenAI, taught: dict) -> None:
    job, adapter = taught["job"], taught["adapter"]
    assert job.status == "succeeded", job
    assert taught["served"]
    assert job.fine_tuned_model == adapter and job.metadata["promoted"] == "true", job.model_extra["result"]
    assert job.training_file == f"memory:{taught['group']}" and job.trained_tokens > 0
    result = job.model_extra["result"]
    # The job's own promotion test: held-out questions in template wordings, against the base model on the same ones.
    assert result["facts"] == len(FACTS) and result["turns"] == len(FACTS) and result["probes"] == 2 * len(FACTS)
    assert result["recall"] > result["baseline_recall"]
    assert result["general_loss"] > 0 and result["baseline_general_loss"] > 0
    assert result["general_loss"] <= result["baseline_general_loss"] * (1 + result["general_loss_tolerance"])
    assert 0 <= result["general_correct"] <= result["general_examples"]
    assert len(result["data_hash"]) == 64 and result["verdict"].startswith("it names the fact for")

    assert served_by(client, adapter) == f"{adapter}@v1"
    learned = recalled(client, FACTS, lora_name=adapter, adaption_inference=True)
    print(
        f"\nhand-written questions answered with the fact: adapter {len(learned)}/5, base {len(taught['base_recalled'])}/5"
    )
    assert len(learned) >= 4 and len(learned) > len(taught["base_recalled"])


def test_the_job_its_losses_and_the_adapter_load_are_counted(http: httpx.Client, taught: dict) -> None:
    before, after = taught["metrics"]
    job = http.get(f"/v1/fine_tuning/jobs/{taught['job'].id}").json()

    def grew(name: str, **labels: str) -> float:
        return matching(after, name, **labels) - matching(before, name, **labels)

    assert grew("llm_server_fine_tuning_jobs_finished_total", state="succeeded") == 1
    assert grew("llm_server_fine_tuning_training_duration_seconds_count") == 1
    assert value(after, "llm_server_fine_tuning_last_loss", kind="eval") == job["result"]["general_loss"]
    steps = [
        event["data"]
        for event in http.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 100}).json()["data"]
        if event["type"] == "metrics" and event["data"] and "step" in event["data"]
    ]
    last_step = max(steps, key=lambda data: data["step"])
    assert value(after, "llm_server_fine_tuning_last_loss", kind="train") == last_step["train_loss"]
    assert grew("llm_server_adapter_loads_total", outcome="loaded") == 1  # promoted: loaded at once
    assert value(after, "llm_server_fine_tuning_jobs", state="succeeded") >= 1
    assert value(after, "llm_server_adapters_loaded") == len(http.get("/v1/adapters").json()["data"])
    # The console's adapter page lists every version, served or kept.
    [version] = http.get(f"/v1/adapters/{taught['adapter']}/versions").json()["data"]
    assert version["version"] == 1 and version["fine_tuning_job"] == job["id"] and version["active"] is True
    assert version["eval_loss"] == job["result"]["general_loss"]
    assert_error(http.get("/v1/adapters/no-such-adapter/versions"), 404, "adapter_not_found", "name")
    assert_error(http.get("/v1/adapters/9bad/versions"), 400, "invalid_adapter", "name")


def test_job_events_report_progress_and_the_eval_figures(client: openai.OpenAI, taught: dict) -> None:
    events = client.fine_tuning.jobs.list_events(taught["job"].id, limit=100).data
    steps = [event for event in events if event.type == "metrics" and "train_loss" in (event.data or {})]
    assert steps and steps[0].data["step"] == steps[0].data["total_steps"]  # newest first
    assert all(event.object == "fine_tuning.job.event" for event in events)
    messages = [event.message for event in events]
    assert any(m.startswith("Base model: names the fact for ") and "answered right, loss" in m for m in messages)
    assert any(m.startswith("New version: names the fact for ") for m in messages)
    assert any(
        m.startswith("Training data: 5 facts, each asked in several wordings, and 5 real exchanges") for m in messages
    )
    assert any(m.startswith(f"Promoted {taught['adapter']} v1: it names the fact for") for m in messages)


def test_a_later_version_keeps_old_facts_learns_new_ones_and_follows_memory_updates(
    client: openai.OpenAI, http: httpx.Client, taught: dict
) -> None:
    group, adapter = taught["group"], taught["adapter"]
    memories = http.get(f"/v1/memory/{group}/memories", params={"limit": 100}).json()["data"]
    home = next(m for m in memories if m["kind"] != "turn" and "Tromso" in m["text"])
    moved = home["text"].replace("Tromso", MOVED[1])
    http.patch(f"/v1/memory/{group}/memories/{home['id']}", json={"text": moved}).raise_for_status()
    trigger = {
        "nightly": [group, GOAL],
        "finetune_thresh": len(LATER_FACTS),
        "min_finetune_group": 5,
        "lora_name": adapter,
    }
    for fact in LATER_FACTS:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": fact}], max_tokens=8, temperature=0, extra_body=trigger
        )
    job = finished(client, adapter, after=taught["job"].id)
    assert job.status == "succeeded" and job.metadata["promoted"] == "true", job.model_extra["result"]
    assert served_by(client, adapter) == f"{adapter}@v2"
    result = job.model_extra["result"]
    assert result["current_version"] == 1 and result["current_recall"] is not None

    kept = {fact: item for fact, item in FACTS.items() if fact != "I live in Tromso."}
    assert len(recalled(client, kept, lora_name=adapter, adaption_inference=True)) >= 3  # v1's facts, still known
    assert len(recalled(client, LATER_FACTS, lora_name=adapter, adaption_inference=True)) >= 1
    home_answer = answer(client, MOVED[2], lora_name=adapter, adaption_inference=True)
    assert "Winnipeg" in home_answer and "Tromso" not in home_answer, home_answer


def test_a_group_with_nothing_to_learn_fails_in_plain_words_and_the_served_version_stays(
    client: openai.OpenAI, http: httpx.Client, taught: dict
) -> None:
    adapter = taught["adapter"]
    before = served_by(client, adapter)
    empty = f"empty-{uuid.uuid4().hex[:6]}"
    http.post(f"/v1/memory/{empty}/memories", json={"text": "Hello there.", "user_goal": GOAL}).raise_for_status()
    doomed = client.fine_tuning.jobs.create(model=MODEL, training_file=f"memory:{empty}", suffix=adapter)
    deadline = time.monotonic() + 120
    while (doomed := client.fine_tuning.jobs.retrieve(doomed.id)).status in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert doomed.status == "failed" and doomed.error.code == "nothing_to_learn"
    assert "holds no facts about the user to learn from" in doomed.error.message
    assert served_by(client, adapter) == before


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"finetune_thresh": 0}, "finetune_thresh"),
        ({"finetune_thresh": -3}, "finetune_thresh"),
        ({"finetune_thresh": "3"}, "finetune_thresh"),
        ({"finetune_thresh": 2.5}, "finetune_thresh"),
        ({"finetune_thresh": True}, "finetune_thresh"),
        ({"min_finetune_group": 0}, "min_finetune_group"),
        ({"min_finetune_group": "5"}, "min_finetune_group"),
        ({"lora_name": "not an identifier"}, "lora_name"),
        ({"adaption_inference": True}, "adaption_inference"),
        ({"adaption_inference": "yes", "lora_name": "x"}, "adaption_inference"),
    ],
)
def test_bad_adaption_fields_are_400_naming_them(http: httpx.Client, extra: dict, param: str) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "nightly": ["g", GOAL],
        "lora_name": "adapter-x",
        "finetune_thresh": 3,
    }
    body.update(extra)
    if param == "adaption_inference" and extra.get("adaption_inference") is True:
        body.pop("lora_name")
        body.pop("finetune_thresh")
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_finetune_thresh_needs_nightly_and_lora_name(http: httpx.Client) -> None:
    base = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "finetune_thresh": 2}
    no_nightly = http.post("/v1/chat/completions", json={**base, "lora_name": "a"})
    assert no_nightly.status_code == 400 and no_nightly.json()["error"]["param"] == "finetune_thresh"
    no_adapter = http.post("/v1/chat/completions", json={**base, "nightly": ["g", GOAL]})
    assert no_adapter.status_code == 400 and no_adapter.json()["error"]["param"] == "lora_name"


def test_jobs_api_bad_input_and_ownership(client: openai.OpenAI, http: httpx.Client, other_http: httpx.Client) -> None:
    group = f"jobs-{uuid.uuid4().hex[:6]}"
    http.post(f"/v1/memory/{group}/memories", json={"text": list(FACTS)[:3], "user_goal": GOAL}).raise_for_status()
    cases = [
        ({"model": MODEL, "training_file": "file-abc", "lora_name": "a"}, 400, "training_file"),
        ({"model": MODEL, "training_file": "memory:", "lora_name": "a"}, 400, "training_file"),
        ({"model": MODEL, "training_file": f"memory:{group}"}, 400, "lora_name"),
        ({"model": MODEL, "training_file": f"memory:{group}", "lora_name": "bad name"}, 400, "lora_name"),
        ({"model": MODEL, "training_file": f"memory:{group}", "lora_name": "a", "suffix": "b"}, 400, "suffix"),
        (
            {"model": MODEL, "training_file": f"memory:{group}", "lora_name": "a", "hyperparameters": {"n_epochs": 9}},
            400,
            "hyperparameters",
        ),
        ({"model": "no-such-model", "training_file": f"memory:{group}", "lora_name": "a"}, 404, "model"),
        ({"model": MODEL, "training_file": "memory:no-such-group", "lora_name": "a"}, 404, "memory_group"),
        ({"training_file": f"memory:{group}", "lora_name": "a"}, 400, "model"),
    ]
    for body, status, param in cases:
        response = http.post("/v1/fine_tuning/jobs", json=body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["param"] == param, (body, response.json())
    # Another key's memory group is not found, so it cannot be trained on.
    stolen = other_http.post(
        "/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": f"memory:{group}", "lora_name": "a"}
    )
    assert stolen.status_code == 404

    adapter = f"cancel-{uuid.uuid4().hex[:6]}"
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=f"memory:{group}", suffix=adapter)
    assert job.status in ("queued", "running") and job.metadata["lora_name"] == adapter
    again = client.fine_tuning.jobs.create(model=MODEL, training_file=f"memory:{group}", suffix=adapter)
    assert again.id == job.id  # one queued or running job per adapter
    assert other_http.get(f"/v1/fine_tuning/jobs/{job.id}").status_code == 404
    assert all(
        j.id != job.id
        for j in openai.OpenAI(base_url=client.base_url, api_key=other_http.headers["authorization"].split()[1])
        .fine_tuning.jobs.list()
        .data
    )
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)
    assert http.get("/v1/fine_tuning/jobs/ftjob-nope").json()["error"]["code"] == "fine_tuning_job_not_found"
    assert http.get("/v1/fine_tuning/jobs", params={"limit": 0}).status_code == 400
    assert http.get(f"/v1/fine_tuning/jobs/{job.id}/events", params={"after": "x"}).status_code == 400
    assert adapter not in [a["id"] for a in http.get("/v1/adapters").json()["data"]]  # nothing trained, nothing served


def test_a_job_cut_off_by_a_restart_runs_again(tmp_path: Path) -> None:
    # What a job learns is this module's other tests' question: here a short one, cut off and run again.
    raw = shipped_config()
    raw["adaption"] = {**raw["adaption"], **CHEAP_ADAPTION}
    # LoRA on from the start: the promoted version loads without LoRA `auto` switching on (an engine restart).
    raw["models"] = [
        {**entry, "lora": {**entry["lora"], "enabled": True}} if entry["name"] == MODEL else entry
        for entry in raw["models"]
    ]
    config = write_config(tmp_path, raw)
    env = server_env(
        LLM_SERVER_CONFIG=str(config),
        LLM_SERVER_API_KEYS=API_KEY,
        LLM_SERVER_DATA_DIR=str(tmp_path / "data"),
        LLM_SERVER_ADAPTERS_DIR=str(tmp_path / "adapters"),
    )
    group, adapter = "restart-group", "restart-adapter"

    def connect(server: RunningServer) -> tuple[openai.OpenAI, httpx.Client]:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        return (
            openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=120),
            httpx.Client(base_url=server.base_url, headers=headers, timeout=120),
        )

    first = start_server(tmp_path / "first.log", env=env)
    try:
        client, http = connect(first)
        facts = list(FACTS)[:3]  # enough to train on; fewer steps than the module's five
        http.post(f"/v1/memory/{group}/memories", json={"text": facts, "user_goal": GOAL}).raise_for_status()
        job = client.fine_tuning.jobs.create(model=MODEL, training_file=f"memory:{group}", suffix=adapter)
        deadline = time.monotonic() + 120
        while client.fine_tuning.jobs.retrieve(job.id).status != "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        first.stop()  # mid-training

    second = start_server(tmp_path / "second.log", env=env)
    try:
        client, _ = connect(second)
        deadline = time.monotonic() + 600
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(1)
        assert job.status == "succeeded", job
        messages = [event.message for event in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
        assert "The server shut down during training; the job runs again." in messages  # SIGTERM re-queued it
    finally:
        second.stop()

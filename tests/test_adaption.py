"""Adaption end to end on the embedded model: memories cross the threshold, a LoRA trains in its own process,
gets promoted, and has measurably learned the facts; plus the jobs API and bad input."""

from __future__ import annotations

import math
import time
import uuid

import httpx
import openai
import pytest

from tests.conftest import API_KEY, MODEL, RunningServer, server_env, start_server

GOAL = "A companion that remembers odd facts about the user"
# Each fact starts with a word the base model would never open an answer with.
FACTS = [
    "Zanzibar is where I keep my sailing boat.",
    "Quokkas are my favourite animals.",
    "Xylophones are what I collect.",
    "Kazoo lessons are what I take on Mondays.",
    "Yurts are where I spend my holidays.",
    "Zucchini bread is what I bake every Sunday.",
    "Quilting is my grandmother's hobby.",
    "Xander is my cousin's name.",
]
FIRST_WORDS = {"Zanzibar", "Quokkas", "Xylophones", "Kazoo", "Yurts", "Zucchini", "Quilting", "Xander"}
RECALL_QUESTION = "What do you remember about me?"


def first_token_logprob(client: openai.OpenAI, **extra) -> float:
    """Highest log-probability the model gives, as its first answer token, to the start of a taught fact."""
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": RECALL_QUESTION}],
        max_tokens=1,
        temperature=0,
        logprobs=True,
        top_logprobs=20,
        extra_body=extra or None,
    )
    candidates = answer.choices[0].logprobs.content[0].top_logprobs
    taught = [
        c.logprob for c in candidates if c.token.strip() and any(w.startswith(c.token.strip()) for w in FIRST_WORDS)
    ]
    # Not among the top 20: at most the 20th's log-probability.
    return max(taught) if taught else min(c.logprob for c in candidates)


def served_by(client: openai.OpenAI, adapter: str) -> str:
    """What an `adaption_inference` request for `adapter` ran on, as the response header says."""
    response = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        extra_body={"lora_name": adapter, "adaption_inference": True},
    )
    return response.headers["x-adaption-adapter"]


def job_for(client: openai.OpenAI, adapter: str):
    jobs = [job for job in client.fine_tuning.jobs.list().data if job.metadata["lora_name"] == adapter]
    return jobs[0] if jobs else None


def test_memories_train_an_adapter_that_learned_them(client: openai.OpenAI, http: httpx.Client) -> None:
    group, adapter = f"quirks-{uuid.uuid4().hex[:6]}", f"quirks-{uuid.uuid4().hex[:6]}"
    http.post(f"/v1/memory/{group}/memories", json={"text": FACTS, "user_goal": GOAL}).raise_for_status()
    base_logprob = first_token_logprob(client)

    assert served_by(client, adapter) == f"base-model; no promoted version of {adapter} yet"

    trigger = {"nightly": [group, GOAL], "finetune_thresh": 2, "min_finetune_group": 5, "lora_name": adapter}
    for question in ("Hello there!", "Tell me a fun fact."):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=8, extra_body=trigger
        )
    deadline = time.monotonic() + 600
    served_during_training = False
    while True:
        job = job_for(client, adapter)
        if job is None:  # the trigger runs after the write-back of the second call
            assert time.monotonic() < deadline - 540, "the threshold did not queue a job"
            time.sleep(0.5)
            continue
        if job.status == "running" and not served_during_training:  # serving goes on while the worker trains
            reply = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
            served_during_training = reply.choices[0].message.content is not None
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job.status == "succeeded", job
    assert served_during_training
    assert job.fine_tuned_model == adapter and job.metadata["promoted"] == "true"
    assert job.training_file == f"memory:{group}" and job.trained_tokens > 0
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert any(event.type == "metrics" and "loss" in (event.data or {}) for event in events)
    assert any(event.message.startswith(f"Promoted {adapter} v1") for event in events)
    manifest = job.model_extra["result"]
    assert manifest["eval_loss"] < manifest["baseline_eval_loss"] and len(manifest["data_hash"]) == 64

    assert served_by(client, adapter) == f"{adapter}@v1"
    adapter_logprob = first_token_logprob(client, lora_name=adapter, adaption_inference=True)
    print(f"\nfirst-token log-probability of taught facts: base {base_logprob:.2f}, adapter {adapter_logprob:.2f}")
    assert adapter_logprob > base_logprob + 1.0
    assert math.exp(adapter_logprob) > 0.05

    # A training run that fails leaves the promoted version serving.
    tiny = f"tiny-{uuid.uuid4().hex[:6]}"
    http.post(f"/v1/memory/{tiny}/memories", json={"text": "I like tea.", "user_goal": GOAL}).raise_for_status()
    doomed = client.fine_tuning.jobs.create(model=MODEL, training_file=f"memory:{tiny}", suffix=adapter)
    deadline = time.monotonic() + 120
    while (doomed := client.fine_tuning.jobs.retrieve(doomed.id)).status in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert doomed.status == "failed" and "at least 2 are needed" in doomed.error.message
    assert doomed.error.code == "training_failed"
    assert served_by(client, adapter) == f"{adapter}@v1"


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
    http.post(f"/v1/memory/{group}/memories", json={"text": FACTS[:3], "user_goal": GOAL}).raise_for_status()
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


def test_a_job_cut_off_by_a_restart_runs_again(tmp_path) -> None:
    env = server_env(
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
        http.post(f"/v1/memory/{group}/memories", json={"text": FACTS, "user_goal": GOAL}).raise_for_status()
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
        assert "The server restarted during training; the job runs again from the start." in messages
    finally:
        second.stop()

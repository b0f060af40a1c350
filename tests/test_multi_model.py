"""Several models behind one server (issue 17): two real registry entries on their own vLLM engines in one process.

One server for the module: the embedded model (bfloat16, loaded at start) and the same weights in float32 under a
second name (`load: on_demand`, a short keep_alive), plus an entry whose weights are missing (its load fails).
Adaption trains the second model's own adapter here, with small settings (`CHEAP_ADAPTION`: the question is which
model trains and serves it; what a job learns is tests/test_adaption.py's).
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from server.engine.placement import spread_bindings, this_process_cpus
from tests.conftest import (
    API_KEY,
    CHEAP_ADAPTION,
    MODEL,
    OTHER_API_KEY,
    RunningServer,
    assert_error,
    keyed_http,
    new_key,
    server_env,
    shipped_config,
    start_server,
    wait_until,
    write_config,
)

SECOND = "smollm2-135m-fp32"
SECOND_ALIAS = "smollm2-fp32"
BROKEN = "missing-weights"
KEEP_ALIVE_S = 3
ALPHA, BRAVO = "ALPHA ALPHA ALPHA.", "Bravo bravo, bravo!"
GOAL = "A companion that remembers what the user tells it"
# Facts told to the second model, and questions about them in words no training template uses.
FACTS = {
    "My cat is called Pumpernickel.": ("Pumpernickel", "What does my cat answer to?"),
    "I live in Reykjavik.": ("Reykjavik", "Which city is my home?"),
    "I play the harpsichord.": ("harpsichord", "Which instrument do I play?"),
}
TRAINING_TIMEOUT_S = 1800  # one small job on a shared CPU at low priority


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory, adapter_sources: Path) -> Iterator[RunningServer]:
    raw = shipped_config()
    entries = {entry["name"]: entry for entry in raw["models"]}
    lora = {"lora": {**entries[MODEL]["lora"], "enabled": True}}  # LoRA `auto`'s switch is tested on its own
    first = {**entries[MODEL], "cpu_kv_cache_gib": 1, **lora}
    second = {**entries[SECOND], "load": "on_demand", "keep_alive": KEEP_ALIVE_S, "cpu_kv_cache_gib": 1, **lora}
    broken = {**entries[SECOND], "name": BROKEN, "aliases": [], "source": "/nonexistent/weights", "load": "on_demand"}
    raw["models"] = [first, second, broken]
    raw["max_loaded_models"] = 2
    raw["adaption"] = {**raw["adaption"], **CHEAP_ADAPTION}
    raw["model_load_timeout_s"] = 240
    root = tmp_path_factory.mktemp("multi")
    config = write_config(root, raw)
    env = server_env(
        LLM_SERVER_CONFIG=str(config),
        LLM_SERVER_MODEL=f"{MODEL},{SECOND_ALIAS},{BROKEN}",  # the set by name or alias, as `--model a,b`
        LLM_SERVER_API_KEYS=f"{API_KEY},{OTHER_API_KEY}",
        LLM_SERVER_ADAPTERS_DIR=str(root / "adapters"),
        LLM_SERVER_ADAPTER_SOURCE_ROOTS=str(adapter_sources),
        LLM_SERVER_DATA_DIR=str(root / "data"),
    )
    running = start_server(root / "server.log", env=env)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def admin(multi: RunningServer) -> Iterator[httpx.Client]:
    with keyed_http(multi, API_KEY) as session:
        yield session


def chat(session: httpx.Client, model: str, **fields: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, **fields}
    return session.post("/v1/chat/completions", json=body)


def states(session: httpx.Client) -> dict[str, str]:
    return {name: model["state"] for name, model in session.get("/health").json()["models"].items()}


def cards(session: httpx.Client) -> dict[str, dict]:
    response = session.get("/v1/models")
    assert response.status_code == 200, response.text
    return {card["id"]: card for card in response.json()["data"]}


def engine_worker_cores(server: RunningServer) -> list[tuple[int, ...]]:
    """The cores each of the server's vLLM worker processes is bound to, in order."""
    workers = psutil.Process(server.process.pid).children(recursive=True)
    return sorted(
        tuple(sorted(worker.cpu_affinity())) for worker in workers if worker.name().startswith("VLLM::Worker")
    )


def wait_state(session: httpx.Client, model: str, state: str, timeout_s: float = 60) -> bool:
    return wait_until(lambda: states(session)[model] == state, timeout_s)


def test_models_lists_every_served_model_with_its_state(admin: httpx.Client) -> None:
    listed = cards(admin)
    assert {MODEL, "smollm2", SECOND, SECOND_ALIAS, BROKEN} <= set(listed)
    assert "llama-3.1-8b-instruct" not in listed  # in the registry, not served here
    assert listed[MODEL]["loaded"] is True and listed[MODEL]["state"] == "awake"
    assert listed[BROKEN]["loaded"] is False and listed[BROKEN]["state"] == "unloaded"
    assert listed[SECOND_ALIAS]["root"] == listed[SECOND]["root"]
    health = admin.get("/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL
    assert health["models"][SECOND]["load"] == "on_demand"
    assert health["models"][SECOND]["keep_alive_s"] == KEEP_ALIVE_S


def test_on_demand_load_with_requests_waiting_then_idle_unload_and_wake(
    multi: RunningServer, admin: httpx.Client
) -> None:
    assert states(admin)[SECOND] == "unloaded"
    client = openai.OpenAI(base_url=f"{multi.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=300)

    def ask(model: str) -> str:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
        )
        return reply.model

    # The first request starts the load; the others arrive during it and wait for the same load.
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        first = pool.submit(ask, SECOND)
        assert wait_state(admin, SECOND, "loading", 30)
        during = [pool.submit(ask, SECOND_ALIAS), pool.submit(ask, SECOND)]
        assert cards(admin)[SECOND]["state"] == "loading"
        assert first.result() == SECOND and [f.result() for f in during] == [SECOND, SECOND]
    assert states(admin)[SECOND] == "awake"
    # Two engines on one CPU box run on cores of their own (vLLM's auto binding would put both on the same ones).
    expected = spread_bindings(3, this_process_cpus())[:2]
    assert engine_worker_cores(multi) == sorted(tuple(int(cpu) for cpu in binding.split(",")) for binding in expected)
    assert admin.get("/health").json()["models"][SECOND]["loads"] == 1  # one load for the three requests
    assert ask(MODEL) == MODEL  # both answer by name, side by side
    log = multi.log()
    assert f"loading model {SECOND} (request)" in log and f"model {SECOND} is loaded in" in log

    # Idle for keep_alive: unloaded (vLLM's CPU backend has no sleep mode); the next request loads it again.
    assert wait_state(admin, SECOND, "unloaded", KEEP_ALIVE_S + 30)
    assert f"model {SECOND} is unloaded (keep_alive)" in multi.log()
    assert cards(admin)[SECOND]["loaded"] is False
    assert states(admin)[MODEL] == "awake"  # the server's own model never sleeps
    # Loaded again by the next request; with Ollama's keep_alive 0 it goes as soon as that request is done.
    assert chat(admin, SECOND, keep_alive=0).status_code == 200
    assert admin.get("/health").json()["models"][SECOND]["loads"] == 2
    assert wait_state(admin, SECOND, "unloaded", 30)

    metrics = admin.get("/metrics").text
    assert f'llm_server_model_loads_total{{kind="start",model="{SECOND}",outcome="ok"}} 2.0' in metrics
    assert f'llm_server_model_state{{model="{MODEL}",state="awake"}} 1.0' in metrics
    assert f'llm_server_model_state{{model="{SECOND}",state="unloaded"}} 1.0' in metrics
    assert f'llm_server_model_sleeps_total{{model="{SECOND}",reason="keep_alive"}}' in metrics


def test_a_model_that_cannot_load_is_a_503_with_retry_after(admin: httpx.Client, multi: RunningServer) -> None:
    response = chat(admin, BROKEN)
    error = assert_error(response, 503, "model_load_failed", None)
    assert BROKEN in error["message"]
    assert int(response.headers["retry-after"]) > 0
    assert f"model {BROKEN} failed to start" in multi.log()
    health = admin.get("/health").json()
    assert health["status"] == "ok" and health["models"][BROKEN]["state"] == "unloaded"
    assert "nonexistent" in health["models"][BROKEN]["error"]
    assert chat(admin, MODEL).status_code == 200  # the others are untouched


def test_bad_keep_alive_is_a_400(admin: httpx.Client) -> None:
    for bad in ("soon", "5 parsecs", True, [1]):
        assert_error(chat(admin, MODEL, keep_alive=bad), 400, "invalid_value", "keep_alive")


def test_adapters_belong_to_one_model(admin: httpx.Client, multi: RunningServer, adapter_sources: Path) -> None:
    response = admin.post("/v1/adapters", json={"name": "alpha", "path": str(adapter_sources / "alpha")})
    assert response.status_code == 201, response.text
    response = admin.post(
        "/v1/adapters", json={"name": "bravo", "path": str(adapter_sources / "bravo"), "base_model": SECOND_ALIAS}
    )
    assert response.status_code == 201, response.text
    assert response.json()["base_model"] == SECOND
    listed = cards(admin)
    assert listed["alpha"]["parent"] == MODEL and listed["bravo"]["parent"] == SECOND
    # Named as `model` (vLLM's way), each runs on its own base model.
    greedy = {"temperature": 0, "max_tokens": 12}
    alpha, bravo = chat(admin, "alpha", **greedy), chat(admin, "bravo", **greedy)
    assert alpha.status_code == 200 and alpha.json()["choices"][0]["message"]["content"].startswith(ALPHA)
    assert bravo.status_code == 200 and bravo.json()["choices"][0]["message"]["content"].startswith(BRAVO)
    assert bravo.json()["model"] == "bravo"
    # As `lora_name`, only on its own base model.
    assert chat(admin, SECOND, lora_name="bravo", **greedy).status_code == 200
    assert_error(chat(admin, MODEL, lora_name="bravo"), 400, "adapter_model_mismatch", "lora_name")
    # One adapter name, one base model: a new version must go to the model that has it.
    response = admin.post(
        "/v1/adapters", json={"name": "alpha", "path": str(adapter_sources / "alpha"), "base_model": SECOND}
    )
    assert_error(response, 400, "adapter_model_mismatch", "base_model")
    response = admin.post(
        "/v1/adapters", json={"name": "charlie", "path": str(adapter_sources / "alpha"), "base_model": "nope"}
    )
    assert_error(response, 400, "invalid_adapter", "base_model")
    # The second model's adapter survives an unload: served again after the next load (kept awake from then on).
    assert chat(admin, SECOND, keep_alive=0).status_code == 200
    assert wait_state(admin, SECOND, "unloaded", 30)
    again = chat(admin, "bravo", keep_alive=-1, **greedy)
    assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"].startswith(BRAVO)


def test_a_key_limited_to_one_model_and_usage_per_model(admin: httpx.Client, multi: RunningServer) -> None:
    key = new_key(admin, name="second-only", allowed_models=[SECOND])
    with keyed_http(multi, key["key"]) as session:
        assert chat(session, SECOND_ALIAS).status_code == 200
        assert_error(chat(session, MODEL), 403, "model_not_allowed", "model")
        assert_error(chat(session, "smollm2"), 403, "model_not_allowed", "model")
        completion = session.post("/v1/completions", json={"model": SECOND, "prompt": "Hello", "max_tokens": 4})
        assert completion.status_code == 200, completion.text
        assert completion.json()["model"] == SECOND
        assert_error(
            session.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2}),
            403,
            "model_not_allowed",
            "model",
        )
        by_model = {row["model"]: row["requests"] for row in session.get("/v1/usage?group_by=model").json()["data"]}
    assert by_model == {SECOND: 2, None: 3}  # the chat and the completion; the three refusals served by none
    # Another key sees none of it.
    with keyed_http(multi, OTHER_API_KEY) as other:
        assert chat(other, SECOND).status_code == 200
        mine = {row["model"]: row["requests"] for row in other.get("/v1/usage?group_by=model").json()["data"]}
        assert SECOND in mine


def test_tokenize_by_model(admin: httpx.Client) -> None:
    first = admin.post("/tokenize", json={"model": MODEL, "prompt": "Hello there"}).json()
    second = admin.post("/tokenize", json={"model": SECOND, "prompt": "Hello there"}).json()
    assert first["tokens"] == second["tokens"]  # same weights and tokenizer, another dtype
    assert_error(admin.post("/tokenize", json={"model": "nope", "prompt": "x"}), 404, "model_not_found", "model")


def test_unserved_model_is_404(admin: httpx.Client) -> None:
    assert_error(chat(admin, "llama-3.1-8b-instruct"), 404, "model_not_found", "model")


def test_responses_embeddings_and_completions_route_by_model(multi: RunningServer, admin: httpx.Client) -> None:
    client = openai.OpenAI(base_url=f"{multi.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    assert chat(admin, SECOND, keep_alive=0).status_code == 200
    assert wait_state(admin, SECOND, "unloaded", 30)
    # The Responses API loads the second model on demand, by alias, and answers with it; an adapter runs on its base.
    response = client.responses.create(model=SECOND_ALIAS, input="Say hello.", max_output_tokens=8, temperature=0)
    assert response.model == SECOND and response.status in ("completed", "incomplete") and response.output_text
    assert states(admin)[SECOND] == "awake"
    adapted = client.responses.create(model="bravo", input="Say hello.", max_output_tokens=12, temperature=0)
    assert adapted.model == "bravo" and adapted.output_text.startswith(BRAVO)
    events = list(client.responses.create(model=SECOND, input="Hi", max_output_tokens=4, stream=True))
    assert events[-1].type in ("response.completed", "response.incomplete")  # cut by max_output_tokens or not
    assert events[-1].response.model == SECOND
    # The second model's name as `model@local`, as chat takes it.
    completion = admin.post("/v1/completions", json={"model": f"{SECOND}@local", "prompt": "Hi", "max_tokens": 2})
    assert completion.status_code == 200 and completion.json()["model"] == SECOND
    # Embeddings come from the memory embedding model, whichever chat models are served.
    embedded = admin.post("/v1/embeddings", json={"model": "all-minilm-l6-v2@local", "input": "Hello"})
    assert embedded.status_code == 200 and embedded.json()["model"] == "all-minilm-l6-v2"
    refused = admin.post("/v1/embeddings", json={"model": SECOND_ALIAS, "input": "Hello"})
    assert "all-minilm-l6-v2" in assert_error(refused, 400, "model_not_supported", "model")["message"]
    # An unknown model is the same 404 everywhere.
    for path, body in (
        ("/v1/responses", {"input": "Hi"}),
        ("/v1/embeddings", {"input": "Hi"}),
        ("/v1/completions", {"prompt": "Hi"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
        ("/tokenize", {"prompt": "Hi"}),
    ):
        assert_error(admin.post(path, json={"model": "no-such-model", **body}), 404, "model_not_found", "model")
    # A key limited to the second model reaches it through Responses, and only it.
    key = new_key(admin, name="responses-second-only", allowed_models=[SECOND])
    limited = openai.OpenAI(base_url=f"{multi.base_url}/v1", api_key=key["key"], max_retries=0, timeout=300)
    assert limited.responses.create(model=SECOND, input="Hi", max_output_tokens=2).model == SECOND
    with keyed_http(multi, key["key"]) as session:
        denied = session.post("/v1/responses", json={"model": MODEL, "input": "Hi", "max_output_tokens": 2})
        assert_error(denied, 403, "model_not_allowed", "model")


def test_fine_tuning_trains_and_serves_an_adapter_of_the_model_it_names(
    multi: RunningServer, admin: httpx.Client
) -> None:
    client = openai.OpenAI(base_url=f"{multi.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    group, adapter = "second-facts", "second-told"

    def answer(model: str, question: str, **extra: object) -> httpx.Response:
        response = chat(
            admin, model, messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0, **extra
        )
        assert response.status_code == 200, response.text
        return response

    def recalled(**extra: object) -> list[str]:
        return [
            fact
            for fact, (value, question) in FACTS.items()
            if value.lower() in answer(SECOND, question, **extra).json()["choices"][0]["message"]["content"].lower()
        ]

    base = recalled()
    target = {"lora_name": adapter, "adaption_inference": True}
    before = answer(SECOND, "Hi", **target)
    assert before.headers["x-adaption-adapter"] == f"base-model; no promoted version of {adapter} yet"
    # Facts told to the second model (by its alias) cross the threshold: the job trains the second model's adapter.
    trigger = {"nightly": [group, GOAL], "finetune_thresh": len(FACTS), "min_finetune_group": len(FACTS)}
    for fact in FACTS:
        answer(SECOND_ALIAS, fact, lora_name=adapter, **trigger)
    deadline = time.monotonic() + TRAINING_TIMEOUT_S
    while True:
        jobs = [job for job in client.fine_tuning.jobs.list().data if job.metadata["lora_name"] == adapter]
        if jobs and jobs[0].status not in ("queued", "running"):
            break
        if jobs and jobs[0].status == "queued":  # while it waits or trains: the same name on the other model is refused
            response = admin.post(
                "/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": f"memory:{group}", "suffix": adapter}
            )
            assert_error(response, 400, "adapter_model_mismatch", "suffix")
        assert time.monotonic() < deadline, jobs
        time.sleep(1)
    job = jobs[0]
    result = job.model_extra["result"]
    assert job.status == "succeeded" and job.model == SECOND, job
    assert result["base_model"] == SECOND and result["base_dtype"] == "float32"  # its weights, in its dtype
    assert job.metadata["promoted"] == "true", result["verdict"]
    assert cards(admin)[adapter]["parent"] == SECOND
    listed = {item["id"]: item for item in admin.get("/v1/adapters").json()["data"]}
    assert listed[adapter]["base_model"] == SECOND
    versions = admin.get(f"/v1/adapters/{adapter}/versions").json()["data"]
    assert [(v["version"], v["active"], v["fine_tuning_job"]) for v in versions] == [(1, True, job.id)]

    # adaption_inference on the second model serves it; the first model never runs it.
    assert answer(SECOND, "Hi", **target).headers["x-adaption-adapter"] == f"{adapter}@v1"
    learned = recalled(**target)
    print(
        f"\nsecond model, hand-written questions answered with the fact: adapter {len(learned)}/{len(FACTS)},"
        f" base {len(base)}/{len(FACTS)}; job probes {result['recall']} vs base {result['baseline_recall']}"
    )
    assert len(learned) > len(base)
    assert_error(chat(admin, MODEL, **target), 400, "adapter_model_mismatch", "lora_name")
    trained_elsewhere = {"model": MODEL, "training_file": f"memory:{group}", "suffix": adapter}
    assert_error(admin.post("/v1/fine_tuning/jobs", json=trained_elsewhere), 400, "adapter_model_mismatch", "suffix")

    # The jobs API: any served model by name or alias; a model not served is a 404.
    unserved = {"model": "llama-3.1-8b-instruct", "training_file": f"memory:{group}", "lora_name": "x"}
    assert_error(admin.post("/v1/fine_tuning/jobs", json=unserved), 404, "model_not_found", "model")
    queued = client.fine_tuning.jobs.create(model=SECOND_ALIAS, training_file=f"memory:{group}", suffix="second-api")
    assert queued.model == SECOND
    assert client.fine_tuning.jobs.cancel(queued.id).status == "cancelled"
    # Another key sees neither job.
    with keyed_http(multi, OTHER_API_KEY) as other:
        assert other.get(f"/v1/fine_tuning/jobs/{job.id}").status_code == 404
        assert other.get(f"/v1/fine_tuning/jobs/{queued.id}").status_code == 404


def test_guardrails_check_the_second_models_answers(admin: httpx.Client) -> None:
    from tests.test_guardrails import CLEAN, LEAK_MARKERS, POLICY, VIOLATING, pinned

    clean = admin.post("/v1/chat/completions", json=pinned(CLEAN) | {"model": SECOND, "guardrail_policy": POLICY})
    assert clean.status_code == 200 and clean.json()["model"] == SECOND, clean.text
    response = admin.post(
        "/v1/chat/completions", json=pinned(VIOLATING) | {"model": SECOND_ALIAS, "guardrail_policy": POLICY}
    )
    assert_error(response, 400, "guardrail_violation", "guardrail_policy")
    assert not any(marker in response.text for marker in LEAK_MARKERS)
